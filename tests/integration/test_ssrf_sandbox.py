"""URLs from data against the address policy and the header rule, through the operators over loopback.

Everything here runs on 127.0.0.1, the sandbox's FHIR origin included. Any other loopback port is an
internal host like a database or an admin page: a URL from the server's data (an attachment URL, a
redirect, a presigned file URL, a status URL) may reach it only when the connection lists it in
``allowed_internal_hosts``. The listeners record every request, so "refused" means zero requests there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_smart.fhir.bulk.sync import ExportFailedError
from airflow_provider_smart.fhir.errors import FhirError
from airflow_provider_smart.fhir.http import RefusedRequestError
from airflow_provider_smart.operators.search import FhirSearchOperator
from airflow_provider_smart.sandbox.bulk_runtime import FHIR_FILE_PATHS, KICKOFF_PATHS, STATUS_PATHS
from airflow_provider_smart.sandbox.server import SandboxServer
from tests.integration.bulk_helpers import context, landed, run_deferred, store_view
from tests.integration.sandbox_content import put_document
from tests.integration.test_bulk_export_operator import export_op, status_gone
from tests.integration.test_hostile_sandbox import Bouncer, _assert_nowhere, _logs, _token_of
from tests.loopback import AnswerServer, Seen, recording
from tests.sandbox_fixtures import SmartClient

pytestmark = pytest.mark.integration
TYPES = ["Patient", "Condition"]
API_KEY = "gateway-key-5f1c2e9a7b"


@pytest.fixture
def fhir(bulk_server: Callable[..., tuple[SandboxServer, SmartClient]]) -> SandboxServer:
    return bulk_server(patients=4, seed=11, polls_to_complete=2)[0]


@pytest.fixture
def listener() -> Iterator[tuple[AnswerServer, Seen]]:
    """Another loopback port, as an internal admin page: records path and headers, answers some bytes."""
    with recording(b"admin: secret") as started:
        yield started


def _connect(smart_client_factory: Callable[..., SmartClient], server: SandboxServer, **extra: Any) -> SmartClient:
    """The default connection again, with these extras (a newly registered client of the same sandbox)."""
    return smart_client_factory(server=server, extra=extra)


def _search_attachments(out: Path) -> dict[str, Any]:
    op = FhirSearchOperator(
        task_id="docs", resource_type="DocumentReference", output=str(out), incremental=None, attachments=True
    )
    summary: dict[str, Any] = op.execute(context())
    return summary


def _records(out: Path, run: str) -> dict[str, dict[str, Any]]:
    lines = (out / "attachments" / run / "index.ndjson").read_text().splitlines()
    return {record["resource_id"]: record for record in map(json.loads, lines)}


# -- attachments ----------------------------------------------------------------------------------------------


def test_attachment_urls_to_another_loopback_port_are_skipped_and_never_sent(
    fhir: SandboxServer,
    listener: tuple[AnswerServer, Seen],
    smart_client_factory: Callable[..., SmartClient],
    tmp_path: Path,
) -> None:
    internal, seen = listener
    put_document(fhir, "doc-direct", {"contentType": "text/plain", "url": f"{internal.url}/admin/config"})
    # A same-origin Binary URL that the server redirects to the internal port: judged again at that hop.
    put_document(fhir, "doc-redirect", {"contentType": "text/plain", "url": "Binary/moved-1"})
    fhir.state.faults.redirect("/fhir/Binary/moved-1", to=internal.url, times=None)

    summary = _search_attachments(tmp_path / "refused")

    assert seen == []
    records = _records(tmp_path / "refused", summary["run"])
    for doc_id in ("doc-direct", "doc-redirect"):
        record = records[doc_id]
        assert (record["status"], record["reason_code"]) == ("skipped", "unsafe_url"), record
        assert "loopback" in record["reason"] and "allowed_internal_hosts" in record["reason"]
    assert summary["attachments"]["skipped"] == {"unsafe_url": 2}
    assert summary["attachments"]["landed"] > 0  # the sandbox's own Binary notes still land

    # Listed in allowed_internal_hosts, the same port is reached (directly and through the redirect).
    _connect(smart_client_factory, fhir, allowed_internal_hosts=internal.url)
    summary = _search_attachments(tmp_path / "allowed")
    assert sorted(path for path, _ in seen) == ["/admin/config", "/fhir/Binary/moved-1"]
    records = _records(tmp_path / "allowed", summary["run"])
    assert records["doc-direct"]["status"] == records["doc-redirect"]["status"] == "landed"


def test_the_headers_extra_stays_on_the_fhir_origin_unless_named(
    fhir: SandboxServer,
    listener: tuple[AnswerServer, Seen],
    smart_client_factory: Callable[..., SmartClient],
    tmp_path: Path,
) -> None:
    internal, seen = listener
    put_document(fhir, "doc-elsewhere", {"contentType": "text/plain", "url": f"{internal.url}/blob/1"})
    headers = {"X-Api-Key": API_KEY}
    _connect(smart_client_factory, fhir, headers=headers, allowed_internal_hosts=[internal.url])

    summary = _search_attachments(tmp_path / "home")
    assert _records(tmp_path / "home", summary["run"])["doc-elsewhere"]["status"] == "landed"
    assert [path for path, _ in seen] == ["/blob/1"]
    assert not any(name.lower() == "x-api-key" for name in seen[0][1])

    _connect(smart_client_factory, fhir, headers=headers, allowed_internal_hosts=[internal.url],
             header_origins=[internal.url])  # fmt: skip
    _search_attachments(tmp_path / "named")
    assert seen[1][1].get("X-Api-Key") == API_KEY


@pytest.mark.parametrize("deferrable", [True, False], ids=["trigger", "worker"])
def test_headers_extra_never_reaches_a_redirected_file_host(
    bulk_server: Callable[..., tuple[SandboxServer, SmartClient]],
    smart_client_factory: Callable[..., SmartClient],
    tmp_path: Path,
    deferrable: bool,
) -> None:
    server, _ = bulk_server(patients=4, seed=11, polls_to_complete=2)
    storage = Bouncer(server.base_url)  # a file host on another port, allowed as internal storage
    try:
        _connect(smart_client_factory, server, headers={"X-Api-Key": API_KEY}, allowed_internal_hosts=storage.url)
        server.state.faults.redirect(FHIR_FILE_PATHS, to=storage.url, times=2)
        server.state.faults.redirect(STATUS_PATHS, to=storage.url, times=1)
        run_deferred(export_op(tmp_path, types=TYPES, deferrable=deferrable), context())
        assert landed(tmp_path / "out", "manual__run1") == store_view(server, TYPES)
        assert len(storage.seen) == 3
        assert [h for _, seen in storage.seen for h in seen if h.lower() in ("x-api-key", "authorization")] == []
    finally:
        storage.close()


# -- Bulk Data file and status URLs -------------------------------------------------------------------------------


def test_presigned_files_on_an_unlisted_loopback_origin_are_refused_unsent(
    bulk_server: Callable[..., tuple[SandboxServer, SmartClient]], tmp_path: Path
) -> None:
    server, client = bulk_server(patients=4, seed=11, presigned_files=True)
    op = export_op(tmp_path, types=TYPES, deferrable=False, retries=2)
    with pytest.raises(AirflowFailException, match=r"loopback address.*allowed_internal_hosts") as info:
        run_deferred(op, context())
    # A refusal is final: not retried file by file, and the task fails now instead of spending its retries
    # on the same manifest; the export is cancelled on the server rather than kept for a retry.
    assert "attempts" not in str(info.value) and "No retry" in str(info.value)
    assert isinstance(info.value.__cause__.__cause__, RefusedRequestError)  # "2 of 2 files failed", from it
    assert server.state.bulk.origins.requests.get("files", 0) == 0
    state = json.loads(next((tmp_path / "out").glob("_exports/manual__run1/state.json")).read_text())
    assert state["phase"] == "failed"
    assert status_gone(server, client, state["status_url"])
    assert not list((tmp_path / "out").glob("[A-Z]*/manual__run1/*.ndjson"))  # no resource file (the log is kept)


@pytest.mark.parametrize("deferrable", [True, False], ids=["trigger", "worker"])
def test_status_url_redirected_to_an_internal_port_is_refused_unsent(
    bulk_server: Callable[..., tuple[SandboxServer, SmartClient]], tmp_path: Path, deferrable: bool
) -> None:
    server, _ = bulk_server(patients=4, seed=11, polls_to_complete=2)
    internal = Bouncer(server.base_url)
    try:
        server.state.faults.redirect(STATUS_PATHS, to=internal.url, times=None)
        # The trigger reports the refusal in its event (the task fails on it); the worker's own poll raises it.
        expected = RuntimeError if deferrable else ExportFailedError
        with pytest.raises(expected, match=r"loopback address.*allowed_internal_hosts") as info:
            run_deferred(export_op(tmp_path, types=TYPES, deferrable=deferrable), context())
        assert type(info.value) is expected
        assert internal.seen == []
    finally:
        internal.close()


# -- a token in the status URL --------------------------------------------------------------------------------------


def test_a_status_url_carrying_the_token_is_refused_and_never_stored_or_logged(
    fhir: SandboxServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rule = fhir.state.faults.token_in_location(KICKOFF_PATHS)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(FhirError, match="status URL that carries this client's access token") as info:
        run_deferred(export_op(tmp_path, types=TYPES, deferrable=False), context())
    assert fhir.state.faults.fired[rule.id] == 1
    token = _token_of(fhir, KICKOFF_PATHS)
    _assert_nowhere(token, tmp_path / "out", [str(info.value), repr(info.value), *_logs(caplog, capsys)], wrote=False)
