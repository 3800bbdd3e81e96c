"""Run the sandbox in a background thread: ``with SandboxServer() as server: ...``."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType
from typing import Any

from airflow_provider_smart.sandbox.state import SandboxConfig, SandboxState

HOST = "127.0.0.1"  # loopback only: the sandbox is never reachable from another machine


def build_state(config: SandboxConfig) -> SandboxState:
    """A state with the configured data: generated patients and/or NDJSON directories."""
    from airflow_provider_smart.sandbox.generator import SyntheticDataset, load_ndjson_dir

    state = SandboxState(config)
    if config.patients:
        state.store.add_source(SyntheticDataset(config.patients, config.seed))
    for directory in config.ndjson_dirs:
        state.store.load(load_ndjson_dir(directory))
    return state


class SandboxServer:
    """A running sandbox on 127.0.0.1 (uvicorn in a daemon thread).

    :param config: settings (:class:`~airflow_provider_smart.sandbox.state.SandboxConfig`); defaults are
        10 generated patients with seed 42.
    :param port: TCP port; 0 picks a free one.
    :param state: an already built state to serve instead of building one from ``config``.
    """

    def __init__(self, config: SandboxConfig | None = None, port: int = 0, state: SandboxState | None = None) -> None:
        self.config = config or (state.config if state is not None else SandboxConfig())
        self.state = state or build_state(self.config)
        self._requested_port = port
        self._servers: list[tuple[Any, threading.Thread, socket.socket]] = []
        self.port = 0
        self.files_port = 0

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def fhir_base(self) -> str:
        return self.base_url + "/fhir"

    @property
    def token_url(self) -> str:
        return self.base_url + "/auth/token"

    @property
    def admin_auth(self) -> tuple[str, str]:
        """(user, password) of the admin credential, usable as ``requests``' ``auth=``."""
        return self.state.admin_auth

    @property
    def files_base_url(self) -> str:
        """Root URL of the second origin serving Bulk Data files behind presigned URLs."""
        return f"http://{HOST}:{self.files_port}"

    def start(self, timeout: float = 30.0) -> SandboxServer:
        from airflow_provider_smart.sandbox.app import create_app
        from airflow_provider_smart.sandbox.file_origin_app import OriginLogMiddleware, create_file_origin_app

        if self._servers:
            raise RuntimeError("the sandbox server is already running")
        try:
            fhir_app = OriginLogMiddleware(create_app(self.state), self.state, "fhir")
            self.port = self._serve(fhir_app, self._requested_port, "smart-sandbox", timeout)
            if self.config.base_url is None:
                # The audience and links come from here, never from a request's Host header.
                self.state.base_url = self.base_url
            # A second origin (another port) for presigned export files, as an object store would be.
            self.files_port = self._serve(create_file_origin_app(self.state), 0, "smart-sandbox-files", timeout)
        except BaseException:
            self.stop()
            raise
        self.state.bulk.files_base_url = self.files_base_url
        return self

    def _serve(self, app: Any, port: int, name: str, timeout: float) -> int:
        """Run ``app`` with uvicorn in a daemon thread on 127.0.0.1:``port``; return the bound port."""
        import uvicorn

        # Bind first, so the port is known (and taken) before uvicorn starts.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), name=name, daemon=True)
        self._servers.append((server, thread, sock))
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"the {name} server failed to start (see the log above)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {name} server did not start within {timeout} seconds")
            time.sleep(0.01)
        return int(sock.getsockname()[1])

    def stop(self) -> None:
        for server, _, _ in self._servers:
            server.should_exit = True
        for _, thread, sock in self._servers:
            thread.join(timeout=10)
            sock.close()
        self._servers = []
        self.state.bulk.files_base_url = None
        self.state.bulk.close()  # the export files live in a temporary directory

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SandboxServer(base_url={self.base_url!r})"
