"""A sandbox turned hostile, driven through the real operators and trigger over loopback.

* Redirects of a status URL, a file or a search page to another origin: the foreign server (a stdlib
  server on another port, recording every header) never sees the token. It bounces status and file
  requests back to the sandbox, so the export still completes; a search page is refused before any
  request leaves.
* Same-origin redirects are followed by the trigger and the worker alike (with the token).
* Error bodies that echo the request's ``Authorization`` header (kick-off, status, file): the token never
  reaches an exception message, the TriggerEvent, a log line, ``state.json`` or any file under the output.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import json
import logging
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from airflow_provider_smart.fhir.download import DownloadError
from airflow_provider_smart.fhir.errors import FhirError
from airflow_provider_smart.operators.search import FhirSearchOperator
from airflow_provider_smart.sandbox.bulk_runtime import FHIR_FILE_PATHS, KICKOFF_PATHS, STATUS_PATHS
from airflow_provider_smart.sandbox.faults import HOP_PREFIX
from airflow_provider_smart.sandbox.server import SandboxServer
from tests.integration.bulk_helpers import context, first_event, kickoffs, landed, run_deferred, store_view
from tests.integration.test_bulk_export_operator import export_op
from tests.loopback import AnswerServer
from tests.sandbox_fixtures import SmartClient

pytestmark = pytest.mark.integration
TYPES = ["Patient", "Condition"]


class Bouncer:
    """Another origin: records every request's path and headers, and sends it back to the sandbox under
    ``/hop`` (served there as the original path) so the run can finish."""

    def __init__(self, sandbox_base: str) -> None:
        self.sandbox_base = sandbox_base
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.httpd = AnswerServer(self._answer)
        self.url = self.httpd.url

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        self.seen.append((request.path, dict(request.headers.items())))
        request.send_response(307)
        request.send_header("Location", f"{self.sandbox_base}{HOP_PREFIX}{request.path}")
        request.send_header("Content-Length", "0")
        request.end_headers()

    def authorization_seen(self) -> list[str]:
        return [headers[name] for _, headers in self.seen for name in headers if name.lower() == "authorization"]

    def close(self) -> None:
        self.httpd.close()


@pytest.fixture
def bulk_server(
    bulk_server: Callable[..., tuple[SandboxServer, SmartClient]],
) -> Callable[..., tuple[SandboxServer, SmartClient]]:
    """The shared fixture (tests/sandbox_fixtures.py) on a small data set."""
    return functools.partial(bulk_server, patients=4, seed=11)


@pytest.fixture
def bouncer(
    bulk_server: Callable[..., Any], smart_client_factory: Callable[..., SmartClient]
) -> Iterator[tuple[SandboxServer, Bouncer]]:
    server, _ = bulk_server(polls_to_complete=2)
    foreign = Bouncer(server.base_url)
    # The other origin is another loopback port: the connection must list it, or nothing is sent there
    # at all (tests/integration/test_ssrf_sandbox.py); these tests are about the token on the way.
    smart_client_factory(server=server, extra={"allowed_internal_hosts": foreign.url})
    yield server, foreign
    foreign.close()


def _authorized(server: SandboxServer, pattern: str) -> list[bool]:
    return [
        value is not None
        for path, values in server.state.faults.authorization.items()
        if fnmatch.fnmatchcase(path, pattern)
        for value in values
    ]


# -- redirects ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("deferrable", [True, False], ids=["trigger", "worker"])
@pytest.mark.parametrize("route", ["status", "file"])
def test_cross_origin_redirect_never_carries_the_token(
    bouncer: tuple[SandboxServer, Bouncer], tmp_path: Path, route: str, deferrable: bool
) -> None:
    server, foreign = bouncer
    server.state.faults.redirect(STATUS_PATHS if route == "status" else FHIR_FILE_PATHS, to=foreign.url, times=2)
    summary, _ = run_deferred(export_op(tmp_path, types=TYPES, deferrable=deferrable), context())
    assert landed(tmp_path / "out", "manual__run1") == store_view(server, TYPES)
    assert summary["counts"] == {t: len(v) for t, v in store_view(server, TYPES).items()}
    assert len(foreign.seen) == 2, foreign.seen  # the redirects were followed to the other origin ...
    assert foreign.authorization_seen() == []  # ... without the token
    # Back on the FHIR origin (under /hop) the token is sent again: the origin decides, at every hop.
    assert _authorized(server, f"{HOP_PREFIX}/*") == [True, True]


@pytest.mark.parametrize("deferrable", [True, False], ids=["trigger", "worker"])
def test_same_origin_redirect_of_the_status_url_is_followed(
    bulk_server: Callable[..., Any], tmp_path: Path, deferrable: bool
) -> None:
    server, _ = bulk_server(polls_to_complete=2)
    rule = server.state.faults.redirect(STATUS_PATHS, times=None)  # every poll answers 307 first
    run_deferred(export_op(tmp_path, types=TYPES, deferrable=deferrable), context())
    assert landed(tmp_path / "out", "manual__run1") == store_view(server, TYPES)
    hops = _authorized(server, f"{HOP_PREFIX}/fhir/$bulk-status/*")
    assert hops and all(hops)  # followed, with the token (same origin)
    assert server.state.faults.fired[rule.id] == len(hops) == server.state.faults.count("/fhir/$bulk-status/*")


def test_search_page_redirected_to_another_origin_is_refused(
    bouncer: tuple[SandboxServer, Bouncer], tmp_path: Path
) -> None:
    server, foreign = bouncer
    server.state.faults.redirect("/fhir/Patient", to=foreign.url, times=1)
    op = FhirSearchOperator(task_id="search", resource_type="Patient", output=str(tmp_path / "out"), incremental=None)
    with pytest.raises(
        FhirError, match=r"^search page 1 of Patient failed: GET http://\S+/fhir/Patient was redirected to another"
    ) as info:
        op.execute(context())
    assert info.type is FhirError
    assert str(info.value).endswith("Fix the server's base URL setting or the connection's host.")
    assert foreign.url in str(info.value)  # names where it was sent
    assert foreign.seen == []  # refused before anything was sent there
    assert not list((tmp_path / "out").rglob("*.ndjson"))


def test_search_page_redirected_on_its_own_origin_is_followed(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    server, _ = bulk_server()
    rule = server.state.faults.redirect("/fhir/Patient", times=1)
    op = FhirSearchOperator(task_id="search", resource_type="Patient", output=str(tmp_path / "out"), incremental=None)
    op.execute(context())
    assert server.state.faults.fired[rule.id] == 1
    assert _authorized(server, f"{HOP_PREFIX}/fhir/Patient") == [True]
    ids = [
        json.loads(line)["id"]
        for p in (tmp_path / "out/Patient").rglob("*.ndjson")
        for line in p.read_text().splitlines()
    ]
    assert sorted(ids) == sorted(store_view(server, ["Patient"])["Patient"])


# -- Authorization echo ---------------------------------------------------------------------------------


def _token_of(server: SandboxServer, pattern: str) -> str:
    """The bare access token the client sent to a path matching ``pattern``."""
    sent = [
        value
        for path, values in server.state.faults.authorization.items()
        if fnmatch.fnmatchcase(path, pattern)
        for value in values
        if value
    ]
    assert sent, f"no authorized request on {pattern}"
    token = sent[-1].split()[1]
    assert len(token) > 40
    return token


def _assert_nowhere(token: str, root: Path, texts: list[str], *, wrote: bool = True) -> None:
    """The token (or any long piece of it) is in no file under ``root`` and in none of ``texts``."""
    pieces = [token, token[-40:], token[:40]]
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files or not wrote, "nothing was written: the scan would prove nothing"
    for path in files:
        data = path.read_bytes().decode("utf-8", "replace")
        assert not any(piece in data for piece in pieces), f"token in {path}"
    for text in texts:
        assert not any(piece in text for piece in pieces), f"token in {text[:300]!r}"


def _logs(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [record.getMessage() for record in caplog.records] + capsys.readouterr().out.splitlines()


def test_status_echo_stays_out_of_the_event_the_error_state_and_logs(
    bulk_server: Callable[..., Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, _ = bulk_server(polls_to_complete=3)
    rule = server.state.faults.echo_authorization(STATUS_PATHS, status=400, after=1)
    caplog.set_level(logging.DEBUG)
    op = export_op(tmp_path, types=TYPES)
    ctx = context()
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)
    event = asyncio.run(first_event(deferred.value.trigger))
    assert server.state.faults.fired[rule.id] == 1
    assert event["status"] == "error"
    with pytest.raises(
        RuntimeError, match=r"^Bulk Data export failed: status http://\S+ answered HTTP 400: error/forbidden: "
    ) as info:
        op.execute_complete(ctx, event)
    assert info.type is RuntimeError
    token = _token_of(server, STATUS_PATHS)
    state = (tmp_path / "out/_exports/manual__run1/state.json").read_text()
    assert json.loads(state)["phase"] == "failed"
    _assert_nowhere(
        token, tmp_path / "out", [json.dumps(event), str(info.value), repr(info.value), *_logs(caplog, capsys)]
    )
    assert "request refused" in json.dumps(event)  # the server's text did arrive, redacted


@pytest.mark.parametrize("route", ["kickoff", "file"])
@pytest.mark.parametrize("status", [400, 503])
def test_kickoff_and_file_echo_stays_out_of_errors_logs_and_files(
    bulk_server: Callable[..., Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    route: str,
    status: int,
) -> None:
    server, _ = bulk_server(polls_to_complete=1)
    pattern = KICKOFF_PATHS if route == "kickoff" else FHIR_FILE_PATHS
    # A 503 echo is transient: retried (its text goes to the wait's log line), then the export completes.
    server.state.faults.echo_authorization(pattern, status=status, content_type="text/plain")
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    if status == 400:
        # A refused kick-off is the kick-off's error; a refused file is the download's. No retry sends other
        # parameters, so the task fails at once with that error as the cause.
        expected, where = (FhirError, "kick-off to") if route == "kickoff" else (DownloadError, "Patient.00000 (")
        with pytest.raises(
            AirflowFailException, match=r"HTTP 400: non-JSON answer \(text/plain\): 'request refused"
        ) as info:
            run_deferred(export_op(tmp_path, types=TYPES, deferrable=False), context())
        assert type(info.value.__cause__) is expected and str(info.value).startswith(where)
        texts += [str(info.value), repr(info.value), str(info.value.__cause__), repr(info.value.__cause__)]
    else:
        run_deferred(export_op(tmp_path, types=TYPES, deferrable=False), context())
        assert landed(tmp_path / "out", "manual__run1") == store_view(server, TYPES)
    assert kickoffs(server) == 1 + (route == "kickoff" and status == 503)
    lines = _logs(caplog, capsys)
    # The server's text arrives, redacted: in the error when refused, in the retry's log line when transient.
    if status == 400:
        assert "'request refused; it carried Authorization: <redacted>" in texts[0]
    else:
        assert any("request refused" in line for line in lines)
    wrote = not (route == "kickoff" and status == 400)  # a refused kick-off leaves nothing to scan
    _assert_nowhere(_token_of(server, pattern), tmp_path / "out", texts + lines, wrote=wrote)
