"""What the browser tests share: Debian's chromium driven by Playwright, a real ``airflow api-server`` on
127.0.0.1 reading this worker's metadata DB, and a folder for each module's screenshots."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

CHROMIUM = os.environ.get("SMART_UI_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
AIRFLOW_BIN = str(Path(sys.executable).with_name("airflow"))


def _require_browser() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:  # pragma: no cover - a dev install has it
        pytest.fail("playwright is not installed: run `make setup`")
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: `make test-ui` installs Debian's chromium (apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_session(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Stop ``proc`` and every process it started (it runs in a session of its own: ``start_new_session``).

    Airflow's servers start children of their own (the scheduler its LocalExecutor workers and
    ``serve-logs``, the API server its uvicorn workers); stopping only the parent leaves them running.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    # Whatever is left of the session (children that ignore SIGTERM or outlive their parent).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def api_server(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``airflow api-server`` on 127.0.0.1 with connection tests enabled and every user an admin."""
    from cryptography.fernet import Fernet

    _require_browser()
    port = _free_port()
    log_path = tmp_path_factory.mktemp("api-server") / "api-server.log"
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            # One key for the server's processes: in unit-test mode each process would make its own.
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        }
    )
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [AIRFLOW_BIN, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                pytest.fail(f"airflow api-server exited: {log_path.read_text(errors='replace')[-3000:]}")
            try:
                if requests.get(f"{base}/api/v2/version", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"airflow api-server did not start: {log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(1)
        yield base
    finally:
        stop_session(server)


@pytest.fixture
def page(api_server: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 1400})
        finally:
            browser.close()


@pytest.fixture(scope="module")
def artifacts(request: pytest.FixtureRequest) -> Path:
    """``tests/ui/artifacts/<test module>/``, emptied first (one folder per module: xdist runs them at once)."""
    folder = ARTIFACTS / Path(str(request.path)).stem
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder
