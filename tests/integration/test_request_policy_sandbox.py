"""The request policy over loopback: one retry budget per file, the connection's max_retry_after, the
process-wide reuse of discovery and the token across deferral, and the refusal of an http token
endpoint advertised by an https server."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smart.auth.client import SmartAuthClient
from airflow_provider_smart.auth.errors import DiscoveryError
from airflow_provider_smart.fhir.download import DownloadError
from airflow_provider_smart.hooks.smart import SmartFhirHook
from airflow_provider_smart.sandbox.bulk_runtime import FHIR_FILE_PATHS
from airflow_provider_smart.sandbox.server import SandboxServer
from tests.integration.bulk_helpers import context, export_operator, landed, run_deferred, store_view
from tests.sandbox_fixtures import SmartClient

TOKEN_PATH = "/auth/token"
DISCOVERY_PATH = "/fhir/.well-known/smart-configuration"


def set_extras(monkeypatch: pytest.MonkeyPatch, client: SmartClient, **extra: Any) -> None:
    conn = json.loads(client.connection_json())
    conn["extra"].update(extra)
    monkeypatch.setenv(f"AIRFLOW_CONN_{client.conn_id.upper()}", json.dumps(conn))


def seen(server: SandboxServer, path: str) -> int:
    return server.state.faults.count(path)


def test_a_file_answering_503_forever_costs_max_download_attempts_requests(
    bulk_server: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, client = bulk_server(seconds_to_complete=0)
    # The server asks for an hour; the connection caps any single wait at one second.
    set_extras(monkeypatch, client, max_retry_after=1)
    server.state.faults.fail(FHIR_FILE_PATHS, status=503, times=None, retry_after=3600)
    op = export_operator(tmp_path / "out", deferrable=False, max_download_attempts=2)
    with pytest.raises(DownloadError):
        run_deferred(op, context())
    per_file = {p: n for p, n in server.state.faults.requests.items() if "$bulk-file" in p}
    assert per_file, "no file was requested"
    # One budget per file: the HTTP client's retries (5 by default) do not multiply the 2 attempts.
    assert set(per_file.values()) == {2}


def test_trigger_and_resumed_operator_reuse_discovery_and_the_token(
    bulk_server: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_smart.auth import cache

    server, _ = bulk_server(seconds_to_complete=1)

    def run(label: str) -> tuple[int, int]:
        cache.clear()
        server.state.faults.reset()
        _summary, triggers = run_deferred(export_operator(tmp_path / label), context(f"manual__{label}"))
        assert len(triggers) == 1  # execute, then the trigger, then execute_complete: three hooks
        assert landed(tmp_path / label, f"manual__{label}") == store_view(server)
        return seen(server, TOKEN_PATH), seen(server, DISCOVERY_PATH)

    shared = run("shared")
    # The same run with the cache switched off: every hook fetches discovery and a token of its own.
    from airflow_provider_smart.auth.cache import AuthState

    monkeypatch.setattr("airflow_provider_smart.hooks.smart.shared_state", lambda *a, **k: AuthState())
    unshared = run("unshared")
    assert shared == (1, 1)
    assert unshared == (3, 3)  # two token requests and two discoveries saved by the cache


def test_the_token_is_still_renewed_before_it_expires_when_shared(
    bulk_server: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = bulk_server(seconds_to_complete=0)
    # The clients read the sandbox's clock, so time is moved, not waited for: no assertion on machine speed.
    monkeypatch.setitem(SmartAuthClient.__init__.__kwdefaults__, "clock", server.state.clock.time)
    server.state.faults.expire_tokens_after(60)  # the refresh margin is 30 s: fresh for the first 30 s
    first = SmartFhirHook().get_token()
    again = SmartFhirHook().get_token()
    assert again is first  # shared while fresh (a slow machine has 30 s for the two calls)
    assert seen(server, TOKEN_PATH) == 1
    # 31 s on: inside the margin, still valid on the server (and the assertion's iat stays within the
    # sandbox's 60 s clock skew, which is checked against real time).
    server.state.clock.advance(31)
    renewed = SmartFhirHook().get_token()
    assert renewed.value != first.value
    assert seen(server, TOKEN_PATH) == 2


# --- an https FHIR server that advertises an http token endpoint -----------------------------------


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@contextmanager
def http_server(handler: Callable[[BaseHTTPRequestHandler], None], tls: ssl.SSLContext | None = None) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            handler(self)

        do_POST = do_GET

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def answer(req: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    req.send_response(status)
    req.send_header("Content-Type", "application/json")
    req.send_header("Content-Length", str(len(data)))
    req.end_headers()
    req.wfile.write(data)


def test_https_server_advertising_an_http_token_endpoint_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.smart_keys import ec_key, pem

    cert, key = self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    posts: list[str] = []

    def token_endpoint(req: BaseHTTPRequestHandler) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        posts.append(req.rfile.read(length).decode())
        answer(req, 200, {"access_token": "cleartext-token-0123456789", "token_type": "bearer", "expires_in": 300})

    with http_server(token_endpoint) as plain:

        def fhir(req: BaseHTTPRequestHandler) -> None:
            if req.path == "/fhir/.well-known/smart-configuration":
                answer(req, 200, {"token_endpoint": f"{plain}/token"})
            else:
                answer(req, 404, {})

        with http_server(fhir, tls) as secure:
            conn = {"conn_type": "smart_fhir", "host": f"{secure}/fhir", "login": "c", "password": pem(ec_key())}

            def hook(**extra: Any) -> SmartFhirHook:
                monkeypatch.setenv(
                    "AIRFLOW_CONN_TLS_TEST", json.dumps({**conn, "extra": {"verify": str(cert), **extra}})
                )
                return SmartFhirHook("tls_test")

            with pytest.raises(DiscoveryError) as info:
                hook().get_token()
            text = str(info.value)
            assert f"{plain}/token" in text and "allow_insecure_http" in text and "TLS downgrade" in text
            assert posts == []  # the signed assertion never travelled in clear

            from airflow_provider_smart.auth import cache

            cache.clear()
            assert hook(allow_insecure_http=True).get_token().value == "cleartext-token-0123456789"
            assert len(posts) == 1


def test_state_json_keeps_no_presigned_query_and_a_resume_still_lands_everything(
    bulk_server: Callable[..., Any], tmp_path: Path
) -> None:
    from airflow_provider_smart.sandbox.bulk_runtime import PRESIGNED_FILE_PATHS, STATUS_PATHS

    server, _ = bulk_server(
        max_file_resources=10, presigned_files=True, presign_ttl=60, seconds_to_complete=0, allow_files_origin=True
    )
    out = tmp_path / "out"
    # One file fails for good on the first run (404); the others land. Retries follow, so the export stays.
    server.state.faults.fail(PRESIGNED_FILE_PATHS, status=404, times=1)
    with pytest.raises(DownloadError):
        run_deferred(export_operator(out, deferrable=False, retries=1), context())
    state_text = (out / "_exports/manual__run1/state.json").read_text()
    state = json.loads(state_text)
    assert state["phase"] == "downloading" and state["file_urls_redacted"] is True
    assert "signature=" not in state_text and "expires=" not in state_text
    urls = [f["url"] for f in state["manifest"]["output"]]
    assert urls and all(url.endswith("?<redacted>") for url in urls)
    files_before = server.state.faults.count(PRESIGNED_FILE_PATHS)
    polls_before = server.state.faults.count(STATUS_PATHS)

    run_deferred(export_operator(out, deferrable=False, retries=1, delete_on_success=False), context())
    assert landed(out, "manual__run1") == store_view(server)
    # The resume read fresh URLs from the status URL once and fetched only the missing file with them.
    assert server.state.faults.count(STATUS_PATHS) == polls_before + 1
    assert server.state.faults.count(PRESIGNED_FILE_PATHS) == files_before + 1
    for path in out.rglob("*.json"):
        assert "signature=" not in path.read_text(), path
