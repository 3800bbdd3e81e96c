"""FhirBulkExportOperator end to end over loopback against the sandbox's Bulk Data endpoints."""

from __future__ import annotations

import fnmatch
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from airflow_provider_smart.fhir.bulk.manifest import parse_manifest, plan_files
from airflow_provider_smart.fhir.bulk.sync import ExportFailedError
from airflow_provider_smart.operators.bulk_export import (
    FhirBulkDownloadOperator,
    FhirBulkExportFinalizeOperator,
    FhirBulkExportOperator,
)
from airflow_provider_smart.sandbox.bulk_runtime import (
    FHIR_FILE_PATHS,
    KICKOFF_PATHS,
    PRESIGNED_FILE_PATHS,
    STATUS_PATHS,
)
from airflow_provider_smart.sandbox.faults import FaultRule
from airflow_provider_smart.sandbox.server import SandboxServer
from airflow_provider_smart.storage.atomic import temp_sibling
from airflow_provider_smart.storage.export_landing import ExportOutcomeError
from airflow_provider_smart.storage.export_state import ExportStateError
from tests.integration.bulk_helpers import (
    committed_records,
    context,
    export_operator,
    kickoffs,
    kill_worker_when,
    landed,
    run_deferred,
    start_worker,
    store_view,
    wait_for,
)
from tests.sandbox_fixtures import SmartClient

pytestmark = pytest.mark.integration


def export_op(tmp_path: Path, **kwargs: Any) -> FhirBulkExportOperator:
    return export_operator(tmp_path / "out", **{"max_download_attempts": 3, **kwargs})


def status_gone(server: SandboxServer, client: SmartClient, status_url: str) -> bool:
    return client.session().get(status_url, timeout=30).status_code == 404


def test_system_export_deferred_lands_exactly_the_store(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    server, client = bulk_server(polls_to_complete=2, max_file_resources=20)
    summary, triggers = run_deferred(export_op(tmp_path), context())
    assert len(triggers) == 1  # polled by the trigger with httpx, not in the worker
    out = tmp_path / "out"
    assert landed(out, "manual__run1") == store_view(server)
    assert summary["counts"] == {t: len(v) for t, v in store_view(server).items()}
    assert summary["deleted_on_server"] is True
    assert status_gone(server, client, triggers[0].status_url)
    assert (out / "Observation/manual__run1/_SUCCESS").exists()
    observations = len(store_view(server)["Observation"])
    assert len(list((out / "Observation/manual__run1").glob("*.ndjson"))) == -(-observations // 20)  # 20 per file
    assert (out / "_exports/manual__run1/_SUCCESS").exists()
    assert not list(out.rglob("_tmp.*"))
    text = json.dumps(summary)
    assert client.private_key_pem not in text and "Bearer" not in text and "access_token" not in text
    assert kickoffs(server) == 1


def test_patient_level_post_with_patients(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    server, _ = bulk_server()
    op = export_op(tmp_path, level="patient", patients=["pat-1", "Patient/pat-2"], deferrable=False)
    run_deferred(op, context())
    got = landed(tmp_path / "out", "manual__run1")
    assert got  # something landed
    assert got == store_view(server, sorted(got), patients={"pat-1", "pat-2"})
    assert set(got["Patient"]) == {"pat-1", "pat-2"}


def test_group_export_lands_the_members_compartments(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    server, _ = bulk_server()
    members = set(server.state.store.group_member_ids("grp-diabetes") or [])
    assert members
    run_deferred(export_op(tmp_path, level="group", group_id="grp-diabetes", types=["Patient", "Condition"]), context())
    got = landed(tmp_path / "out", "manual__run1")
    assert set(got) == {"Patient", "Condition"}
    assert got == store_view(server, ["Patient", "Condition"], patients=members)


def test_presigned_files_never_see_an_authorization_header(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    server, _ = bulk_server(presigned_files=True, max_file_resources=30, allow_files_origin=True)
    summary, _ = run_deferred(export_op(tmp_path), context())
    origins = server.state.bulk.origins
    assert origins.requests["files"] >= len(store_view(server))
    assert not origins.authorization_seen("files")
    assert landed(tmp_path / "out", "manual__run1") == store_view(server)
    assert summary["counts"]["Observation"] == len(store_view(server)["Observation"])


def test_organize_output_by_and_partial_manifests(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    server, _ = bulk_server(max_file_resources=7, manifest_page_size=2)
    op = export_op(tmp_path, organize_output_by="Patient", allow_partial_manifests=True, types=["Patient", "Condition"])
    run_deferred(op, context())
    got = landed(tmp_path / "out", "manual__run1")
    want = store_view(server, ["Patient", "Condition"])
    assert got == want
    blocks = list((tmp_path / "out").glob("by-Patient/manual__run1/block.*.ndjson"))
    assert len(blocks) > 1
    headers = [line for b in blocks for line in b.read_text().splitlines() if '"header"' in line]
    assert len(headers) >= len(want["Patient"])  # one block per patient, headers repeated on continuation


CLEAN_TYPES = ["Patient", "Observation", "Condition"]


# Each fault switches itself on and returns a check that it really happened during the run, so a test
# cannot pass because the fault never fired.
FaultCheck = Callable[[], None]


def _rule_fired(server: SandboxServer, rule: FaultRule, times: int) -> FaultCheck:
    def check() -> None:
        assert server.state.faults.fired[rule.id] == times

    return check


def _fault_throttle_kickoff(server: SandboxServer) -> FaultCheck:
    return _rule_fired(server, server.state.faults.throttle(KICKOFF_PATHS, times=1, retry_after=1), 1)


def _fault_throttle_status(server: SandboxServer) -> FaultCheck:
    return _rule_fired(server, server.state.faults.throttle(STATUS_PATHS, times=2, retry_after=1), 2)


def _fault_transient_status(server: SandboxServer) -> FaultCheck:
    return _rule_fired(server, server.state.faults.fail(STATUS_PATHS, status=503, times=2), 2)


def _fault_drop_file(server: SandboxServer) -> FaultCheck:
    return _rule_fired(server, server.state.faults.drop(FHIR_FILE_PATHS, times=2, after_bytes=200), 2)


def _fault_expire_file(server: SandboxServer) -> FaultCheck:
    server.state.bulk.faults.expire_files = 1

    def check() -> None:
        assert server.state.bulk.faults.expire_files == 0  # the one 410 Gone was served
        # The manifest was fetched again for fresh URLs: a 410 answer is not counted as a file served.
        assert server.state.faults.count(STATUS_PATHS) >= 2

    return check


def _fault_token_revoked(server: SandboxServer) -> FaultCheck:
    server.state.bulk.faults.invalidate_tokens_after_downloads = 2

    def check() -> None:
        faults = server.state.faults
        assert faults.bulk.invalidate_tokens_after_downloads is None and faults.tokens_not_before > 0  # revoked
        # Files were fetched with a token issued after the revocation: the run got a new one and used it.
        issued_ms = [
            jwt.decode(value.split()[1], options={"verify_signature": False})["iat_ms"]
            for path, values in faults.authorization.items()
            if fnmatch.fnmatchcase(path, FHIR_FILE_PATHS)
            for value in values
            if value
        ]
        assert min(issued_ms) < faults.tokens_not_before * 1000 <= max(issued_ms)

    return check


@pytest.mark.parametrize(
    "fault",
    [
        _fault_throttle_kickoff,
        _fault_throttle_status,
        _fault_transient_status,
        _fault_drop_file,
        _fault_expire_file,
        _fault_token_revoked,
    ],
)
@pytest.mark.parametrize("deferrable", [True, False])
def test_faults_are_survived_with_the_same_data(
    bulk_server: Callable[..., Any], tmp_path: Path, fault: Callable[[SandboxServer], FaultCheck], deferrable: bool
) -> None:
    server, _ = bulk_server(max_file_resources=25)
    fired = fault(server)
    summary, _ = run_deferred(export_op(tmp_path, types=CLEAN_TYPES, deferrable=deferrable), context())
    assert landed(tmp_path / "out", "manual__run1") == store_view(server, CLEAN_TYPES)
    assert summary["counts"] == {t: len(v) for t, v in store_view(server, CLEAN_TYPES).items()}
    assert kickoffs(server) == 1 + (fault is _fault_throttle_kickoff)
    fired()


@pytest.mark.parametrize("deferrable", [True, False])
def test_failed_export_fails_with_the_servers_message(
    bulk_server: Callable[..., Any], tmp_path: Path, deferrable: bool
) -> None:
    server, _ = bulk_server()
    server.state.bulk.faults.fail_exports = True
    # The deferred path fails in execute_complete with the trigger's text; the synchronous one raises the
    # poller's error itself. Both carry the server's OperationOutcome.
    expected, prefix = (RuntimeError, "Bulk Data export failed: ") if deferrable else (ExportFailedError, "")
    with pytest.raises(expected) as info:
        run_deferred(export_op(tmp_path, types=["Patient"], deferrable=deferrable), context())
    assert info.type is expected
    assert re.fullmatch(
        rf"{prefix}status http://127\.0\.0\.1:\d+/fhir/\$bulk-status/\w+ answered HTTP 500: fatal/exception: "
        r"the export failed in the sandbox \(fault fail_exports\)",
        str(info.value),
    ), str(info.value)
    state = json.loads((tmp_path / "out/_exports/manual__run1/state.json").read_text())
    assert state["phase"] == "failed"
    # A retry starts a new export (the failed one is over on the server).
    server.state.bulk.faults.fail_exports = False
    run_deferred(export_op(tmp_path, types=["Patient"], deferrable=deferrable), context())
    assert kickoffs(server) == 2
    assert landed(tmp_path / "out", "manual__run1") == store_view(server, ["Patient"])


def test_fatal_error_file_fails_after_the_data_landed(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    server, _ = bulk_server()
    server.state.bulk.faults.error_file = True
    with pytest.raises(
        ExportOutcomeError,
        match=r"^the export's OperationOutcomes \(its error files, and any output files of type OperationOutcome\) "
        r"report 1 issue\(s\) at severity 'error' or worse",
    ) as info:
        run_deferred(export_op(tmp_path, types=["Patient", "Condition"]), context())
    assert "[fatal] fatal/exception: export " in str(info.value)
    assert "a storage node failed while writing part of the export" in str(info.value)
    assert "landed files are kept, unpublished, under file://" in str(info.value)
    out = tmp_path / "out"
    # Every file landed, unpublished: readers of <output>/<Type> see nothing of this export.
    staging = out / "_exports/manual__run1/staging"
    assert landed(out, "manual__run1") == {}
    assert {p.parent.name for p in staging.rglob("*.ndjson")} == {"Patient", "Condition", "errors"}
    assert not (out / "_exports/manual__run1/_SUCCESS").exists()
    assert not list(out.glob("_watermarks/*.json"))  # the watermark does not move past an incomplete export

    # Told to accept fatal issues, the same kind of export succeeds and reports them.
    summary, _ = run_deferred(
        export_op(tmp_path, types=["Patient", "Condition"], fail_on_severity="none", export_label="accepting"),
        context(),
    )
    assert summary["errors"]["counts"]["fatal"] >= 1 and summary["errors"]["counts"]["information"] >= 1
    assert summary["error_messages"][0].startswith("[fatal]")


def test_retry_while_pending_reattaches_without_a_second_kickoff(
    bulk_server: Callable[..., Any], tmp_path: Path
) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    server, _ = bulk_server(polls_to_complete=3)
    with pytest.raises(TaskDeferred) as first:
        export_op(tmp_path).execute(context())
    # The worker dies here; the retry is a new operator instance in a new process.
    with pytest.raises(TaskDeferred) as second:
        export_op(tmp_path).execute(context())
    assert second.value.trigger.status_url == first.value.trigger.status_url
    assert kickoffs(server) == 1
    summary, _ = run_deferred(export_op(tmp_path), context())
    assert kickoffs(server) == 1
    assert landed(tmp_path / "out", "manual__run1") == store_view(server)
    assert summary["transaction_time"]


_WORKER = """
import sys
from airflow_provider_smart.operators.bulk_export import FhirBulkExportOperator
from tests.integration.bulk_helpers import context, run_deferred
op = FhirBulkExportOperator(task_id="export", output=sys.argv[1], deferrable=False, poll_interval=0.2,
                            min_poll_interval=0, max_poll_interval=1)
run_deferred(op, context())
"""


def test_worker_killed_while_pending_reattaches_on_retry(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    server, _ = bulk_server(seconds_to_complete=4, polls_to_complete=1)
    out = tmp_path / "out"
    state_file = out / "_exports/manual__run1/state.json"
    kill_worker_when(start_worker(_WORKER, str(out)), state_file.exists, settle=0.5)
    assert json.loads(state_file.read_text())["phase"] == "pending"
    run_deferred(export_op(tmp_path, deferrable=False), context())
    assert kickoffs(server) == 1
    assert landed(out, "manual__run1") == store_view(server)


def test_run_killed_mid_download_resumes_with_only_the_missing_files(
    bulk_server: Callable[..., Any], tmp_path: Path
) -> None:
    server, _ = bulk_server(max_file_resources=10, seconds_to_complete=0)
    out = tmp_path / "out"
    # Files are slow to serve: the worker is killed after a few have been committed.
    server.state.faults.slow(FHIR_FILE_PATHS, delay=1.5)
    records = out / "_exports/manual__run1/files"
    kill_worker_when(start_worker(_WORKER, str(out)), lambda: len(committed_records(records)) >= 3)
    # Only committed records count: files finish together, so the kill may leave _tmp. records too.
    committed = {p.stem for p in committed_records(records)}
    total_files = sum(-(-len(v) // 10) for v in store_view(server).values())
    assert 3 <= len(committed) < total_files
    # What a kill mid-commit leaves, for sure (the kill above only sometimes lands there): a partial
    # record of each file still to come. The resume must not take them for records, and clears them.
    export_dir = out / "_exports/manual__run1"
    manifest = parse_manifest(json.loads((export_dir / "state.json").read_text())["manifest"])
    missing = [p.key for p in plan_files(manifest) if p.key not in committed]
    assert len(missing) == total_files - len(committed)
    for key in missing:
        temp_sibling(records / f"{key}.json").write_text('{"kind": "out')
    server.state.faults.reset()
    before = sum(n for path, n in server.state.faults.requests.items() if "$bulk-file" in path)
    assert before == 0  # reset clears the request log too
    summary, _ = run_deferred(export_op(tmp_path, deferrable=False), context())
    fetched = sum(n for path, n in server.state.faults.requests.items() if "$bulk-file" in path)
    assert fetched == total_files - len(committed)
    assert kickoffs(server) == 0  # the retry did not kick off again
    assert landed(out, "manual__run1") == store_view(server)
    assert summary["counts"]["Observation"] == len(store_view(server)["Observation"])
    assert not [p.name for p in records.iterdir() if p.name.startswith("_tmp.")]  # leftovers cleaned


def test_incremental_second_run_exports_only_changes(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    server, _ = bulk_server()
    first, _ = run_deferred(export_op(tmp_path, since="watermark"), context("scheduled__1"))
    assert first["since"] is None
    store = server.state.store
    time.sleep(1.1)  # transactionTime has second precision on some servers
    patient = dict(store.get("Patient", "pat-3") or {})
    patient["active"] = False
    store.put(patient)
    new_obs = {
        "resourceType": "Observation",
        "id": "obs-new-1",
        "status": "final",
        "code": {"text": "new"},
        "subject": {"reference": "Patient/pat-3"},
    }
    store.put(new_obs)
    store.delete("Condition", next(iter(store_view(server, ["Condition"])["Condition"])))
    second, _ = run_deferred(export_op(tmp_path, since="watermark"), context("scheduled__2"))
    assert second["since"] == first["transaction_time"]
    got = landed(tmp_path / "out", "scheduled__2")
    assert set(got) == {"Patient", "Observation"}
    assert set(got["Patient"]) == {"pat-3"} and got["Patient"]["pat-3"]["active"] is False
    assert set(got["Observation"]) == {"obs-new-1"}
    assert second["deleted_bundles"] >= 1
    deleted = (tmp_path / "out/deleted/scheduled__2").glob("Bundle.*.ndjson")
    assert any("Condition/" in p.read_text() for p in deleted)
    wm = json.loads(Path(second["watermark"].removeprefix("file://")).read_text())
    assert wm["transaction_time"] == second["transaction_time"]


def test_since_data_interval(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    from datetime import UTC, datetime

    server, _ = bulk_server()
    start = datetime(2020, 1, 1, tzinfo=UTC)
    summary, _ = run_deferred(
        export_op(tmp_path, since="data_interval", types=["Patient"]), context(data_interval_start=start)
    )
    assert summary["since"] == "2020-01-01T00:00:00Z"
    assert landed(tmp_path / "out", "manual__run1") == store_view(server, ["Patient"])


def test_fanout_batches_land_the_same_data(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    server, _ = bulk_server(max_file_resources=10)
    ctx = context()
    batches, _ = run_deferred(export_op(tmp_path, download_mode="fanout", max_batches=4), ctx)
    assert 1 < len(batches) <= 4
    ref = ctx["ti"].xcoms["export"]
    for n, batch in enumerate(batches):
        FhirBulkDownloadOperator(task_id=f"download_{n}", batch=batch).execute(context())
    summary = FhirBulkExportFinalizeOperator(task_id="finalize", export=ref).execute(context())
    assert landed(tmp_path / "out", "manual__run1") == store_view(server)
    assert (
        summary["counts"]["Observation"] == len(store_view(server)["Observation"])
        and summary["deleted_on_server"] is True
    )
    # Running a batch again downloads nothing.
    again = FhirBulkDownloadOperator(task_id="again", batch=batches[0]).execute(context())
    assert again["downloaded"] == 0 and again["skipped"] == len(batches[0]["keys"])


def _fanout(server: SandboxServer, tmp_path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Kick off and wait in fan-out mode: the batches the download tasks get, and the export reference."""
    ctx = context()
    batches, _ = run_deferred(export_op(tmp_path, download_mode="fanout", max_batches=2), ctx)
    assert len(batches) == 2
    return batches, ctx["ti"].xcoms["export"]


def _download_and_finalize(server: SandboxServer, tmp_path: Path, batches: list[dict[str, Any]], ref: Any) -> None:
    for n, batch in enumerate(batches):
        FhirBulkDownloadOperator(task_id=f"download_{n}", batch=batch).execute(context())
    FhirBulkExportFinalizeOperator(task_id="finalize", export=ref).execute(context())
    assert landed(tmp_path / "out", "manual__run1") == store_view(server)


def test_fanout_download_refetches_the_manifest_after_410(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    server, _ = bulk_server(max_file_resources=10)
    batches, ref = _fanout(server, tmp_path)
    status_polls = server.state.faults.count(STATUS_PATHS)
    # The first file request answers 410 Gone and every URL of the stored manifest expires with it: the first
    # download task meets the 410, the second starts from expired URLs; both must fetch fresh ones.
    server.state.bulk.faults.expire_files = 1
    _download_and_finalize(server, tmp_path, batches, ref)
    assert server.state.bulk.faults.expire_files == 0  # the 410 was served
    # Fresh URLs came from the manifest (the status URL) fetched again by the download tasks.
    assert server.state.faults.count(STATUS_PATHS) > status_polls


def test_fanout_presigned_403_is_an_expired_url(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    server, _ = bulk_server(max_file_resources=10, presigned_files=True, presign_ttl=60, allow_files_origin=True)
    batches, ref = _fanout(server, tmp_path)
    files = sum(len(batch["keys"]) for batch in batches)
    status_polls = server.state.faults.count(STATUS_PATHS)
    # The download tasks start after the manifest's presigned URLs expired: the store answers 403 (as S3 does),
    # which must be taken as "fetch the manifest again", not as a refusal.
    server.state.clock.advance(61)
    _download_and_finalize(server, tmp_path, batches, ref)
    presigned = server.state.faults.count(PRESIGNED_FILE_PATHS)
    # state.json keeps no presigned query, so each download task reads fresh URLs from the status URL
    # first: every file is fetched once, with a valid signature.
    assert presigned == files
    assert server.state.faults.count(STATUS_PATHS) > status_polls
    assert not server.state.bulk.origins.authorization_seen("files")


def test_export_timeout_cancels_with_delete(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    server, client = bulk_server(seconds_to_complete=60)
    with pytest.raises(RuntimeError, match="DELETE"):
        run_deferred(export_op(tmp_path, export_timeout=1.5), context())
    state = json.loads((tmp_path / "out/_exports/manual__run1/state.json").read_text())
    assert state["phase"] == "failed"
    assert status_gone(server, client, state["status_url"])


def test_on_kill_cancels_the_pending_export(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    server, client = bulk_server(seconds_to_complete=60)
    op = export_op(tmp_path, deferrable=False)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            op.execute(context())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    state_file = tmp_path / "out/_exports/manual__run1/state.json"
    wait_for(state_file.exists)
    wait_for(lambda: op._active is not None)
    op.on_kill()
    thread.join(60)
    assert not thread.is_alive(), "the polling loop kept running after the export was cancelled"
    state = json.loads(state_file.read_text())
    assert state["phase"] == "failed"
    assert status_gone(server, client, state["status_url"])
    # The polling loop stopped because the export disappeared (404 after the DELETE), nothing else.
    assert len(errors) == 1 and isinstance(errors[0], ExportFailedError), errors
    assert errors[0].status == 404


def test_scope_mismatch_under_one_label_is_refused(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    bulk_server()
    run_deferred(export_op(tmp_path, types=["Patient"]), context())
    with pytest.raises(ExportStateError, match=r"/_exports/manual__run1 already holds a different export \(") as info:
        export_op(tmp_path, types=["Condition"]).execute(context())
    assert str(info.value).endswith("use another output location or export_label")


def test_completed_export_is_not_repeated(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    server, _ = bulk_server()
    first, _ = run_deferred(export_op(tmp_path, types=["Patient"]), context())
    again, triggers = run_deferred(export_op(tmp_path, types=["Patient"]), context())
    assert again == first and triggers == [] and kickoffs(server) == 1


def test_unknown_connection_fails_clearly(tmp_path: Path) -> None:
    from airflow.sdk.exceptions import AirflowNotFoundException

    with pytest.raises(AirflowNotFoundException, match=r"^The conn_id `nope` isn't defined$"):
        export_op(tmp_path, smart_fhir_conn_id="nope").execute(context())


def test_no_token_or_key_in_state_files(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    _, client = bulk_server()
    run_deferred(export_op(tmp_path, types=["Patient"]), context())
    for path in (tmp_path / "out").rglob("*.json"):
        text = path.read_text()
        assert "Bearer" not in text and client.private_key_pem[40:80] not in text


def test_one_export_per_client_refuses_a_second_kickoff_clearly(
    bulk_server: Callable[..., Any], tmp_path: Path
) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    from airflow_provider_smart.fhir.errors import FhirError

    server, _ = bulk_server(seconds_to_complete=120)
    server.state.bulk.faults.one_export_per_client = True
    with pytest.raises(TaskDeferred):
        export_op(tmp_path).execute(context())
    with pytest.raises(FhirError, match="another export by this client is still running") as info:
        export_op(tmp_path, export_label="second").execute(context())
    assert info.value.status == 429
    assert kickoffs(server) >= 2
    assert not (tmp_path / "out/_exports/second/state.json").exists()  # nothing to re-attach to
