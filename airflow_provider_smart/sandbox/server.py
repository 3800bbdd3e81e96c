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
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.port = 0

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

    def start(self, timeout: float = 30.0) -> SandboxServer:
        import uvicorn

        from airflow_provider_smart.sandbox.app import create_app

        if self._thread is not None:
            raise RuntimeError("the sandbox server is already running")
        # Bind first, so the port is known (and taken) before uvicorn starts.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, self._requested_port))
        self._socket = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.state),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[sock])), name="smart-sandbox", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the sandbox server failed to start (see the log above)")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the sandbox server did not start within {timeout} seconds")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SandboxServer(base_url={self.base_url!r})"
