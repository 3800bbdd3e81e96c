"""FHIR search extraction through real HTTP against the sandbox: paging, _include, faults, intervals, reruns,
S3, and the example DAG under ``airflow dags test``."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_smart.fhir.errors import FhirError
from airflow_provider_smart.fhir.search import parse_instant
from airflow_provider_smart.operators.search import FhirSearchOperator, interval_label
from airflow_provider_smart.sandbox.server import SandboxServer
from airflow_provider_smart.sandbox.state import SandboxConfig
from tests.conftest import run_airflow
from tests.integration.asset_helpers import active_asset_uris, run_scheduler_asset_pass
from tests.s3_fixtures import MotoS3
from tests.sandbox_fixtures import SmartClient

pytestmark = pytest.mark.integration

HBA1C = "http://loinc.org|4548-4"
PATIENTS = 40  # enough for a few dozen HbA1c results (diabetic patients have them)


@pytest.fixture(scope="module")
def sandbox_server() -> Iterator[SandboxServer]:
    """Overrides the shared fixture's server (10 patients) with a bigger population for this module."""
    with SandboxServer(SandboxConfig(patients=PATIENTS, seed=42)) as server:
        yield server


@pytest.fixture
def fresh_sandbox(sandbox_factory: Callable[..., SandboxServer]) -> SandboxServer:
    return sandbox_factory(patients=PATIENTS, seed=42)


def is_hba1c(resource: dict[str, Any]) -> bool:
    codings = (resource.get("code") or {}).get("coding") or []
    return any(c.get("system") == "http://loinc.org" and c.get("code") == "4548-4" for c in codings)


def updated(resource: dict[str, Any]) -> datetime:
    when = parse_instant(resource["meta"]["lastUpdated"])
    assert when is not None
    return when


def expected_hba1c(
    server: SandboxServer, start: datetime | None = None, end: datetime | None = None
) -> list[dict[str, Any]]:
    """The sandbox's own answer: HbA1c Observations with lastUpdated in [start, end)."""
    return [
        r
        for r in server.state.store.iter_type("Observation")
        if is_hba1c(r) and (start is None or updated(r) >= start) and (end is None or updated(r) < end)
    ]


def patient_ids(observations: Iterable[dict[str, Any]]) -> set[str]:
    return {r["subject"]["reference"].split("/", 1)[1] for r in observations}


def read_dir(directory: Path) -> list[dict[str, Any]]:
    """Every resource in a committed run directory (in part order), checking the marker first."""
    assert (directory / "_SUCCESS").exists(), f"{directory} has no _SUCCESS marker"
    out: list[dict[str, Any]] = []
    for part in sorted(directory.glob("part-*.ndjson*")):
        raw = gzip.decompress(part.read_bytes()) if part.suffix == ".gz" else part.read_bytes()
        out.extend(json.loads(line) for line in raw.splitlines())
    return out


def ids(resources: Iterable[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in resources]


def operator(tmp_path: Path, **kwargs: Any) -> FhirSearchOperator:
    kwargs.setdefault("search_params", {"code": HBA1C, "_include": "Observation:patient"})
    kwargs.setdefault("output", str(tmp_path / "out"))
    kwargs.setdefault("incremental", None)
    return FhirSearchOperator(task_id="search", resource_type="Observation", **kwargs)


def ctx(run_id: str = "run", start: datetime | None = None, end: datetime | None = None) -> Any:
    return {"run_id": run_id, "data_interval_start": start, "data_interval_end": end}


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_search_of_several_pages_lands_exactly_the_matching_resources(
    sandbox: SandboxServer, smart_client: SmartClient, tmp_path: Path, method: str
) -> None:
    expected = expected_hba1c(sandbox)
    assert len(expected) >= 12, "the sandbox data should hold a few dozen HbA1c results"
    page_size = max(1, len(expected) // 4)
    summary = operator(tmp_path, page_size=page_size, method=method).execute(ctx())
    run = tmp_path / "out" / "Observation" / "run"
    landed = read_dir(run)
    assert sorted(ids(landed)) == sorted(ids(expected))  # each exactly once
    assert landed == expected  # byte-for-byte the server's resources, in server order
    patients = read_dir(tmp_path / "out" / "Patient" / "run")
    assert sorted(ids(patients)) == sorted(patient_ids(expected))  # every include, each once
    assert summary["pages"] >= 4
    assert summary["counts"] == {"Observation": len(expected), "Patient": len(patient_ids(expected))}
    assert summary["high_water_mark"] == max(expected, key=updated)["meta"]["lastUpdated"]
    assert summary["server_total"] == len(expected)
    # The token never reached a file, the summary or the marker.
    token_free = json.dumps(summary) + (run / "_SUCCESS").read_text()
    assert "Bearer" not in token_free and smart_client.private_key_pem[40:80] not in token_free


@pytest.mark.parametrize("style", ["relative", "path"])
def test_relative_next_links_and_gzip(
    sandbox_factory: Callable[..., SandboxServer],
    smart_client_factory: Callable[..., SmartClient],
    tmp_path: Path,
    style: str,
) -> None:
    server = sandbox_factory(patients=PATIENTS, seed=42, next_links=style)
    smart_client_factory(server=server)
    expected = expected_hba1c(server)
    summary = operator(tmp_path, page_size=2, compression="gzip", search_params={"code": HBA1C}).execute(ctx())
    assert summary["pages"] > 2
    assert all(p.endswith(".ndjson.gz") for p in summary["paths"]["Observation"])
    assert ids(read_dir(tmp_path / "out" / "Observation" / "run")) == ids(expected)


def test_injected_429s_5xx_and_a_dropped_response_land_the_same_set(
    sandbox: SandboxServer, smart_client: SmartClient, tmp_path: Path
) -> None:
    expected = expected_hba1c(sandbox)
    faults = sandbox.state.faults
    faults.throttle("/fhir/Observation*", times=2, retry_after=0)
    faults.fail("/fhir/Observation*", status=502, times=1)
    faults.fail("/fhir/Observation*", status=503, times=1)
    faults.drop("/fhir/Observation*", times=2, after_bytes=300)
    # One retry budget per page, shared by the client and the search: six faults may hit one page.
    op = operator(tmp_path, page_size=max(1, len(expected) // 3), page_retries=6)
    # Short waits: the client retries answers, the search re-fetches pages, both from the page's budget.
    op.get_http = lambda: _quick(op, max_retries=1)  # type: ignore[method-assign]
    summary = op.execute(ctx())
    assert sum(faults.fired.values()) == 6  # every fault was hit
    assert summary["retries"] >= 2  # some were retried page-wise, by fetching the same page again
    landed = read_dir(tmp_path / "out" / "Observation" / "run")
    assert ids(landed) == ids(expected)
    assert sorted(ids(read_dir(tmp_path / "out" / "Patient" / "run"))) == sorted(patient_ids(expected))
    assert summary["counts"]["Observation"] == len(expected)


def test_an_access_token_expiring_between_pages_does_not_break_the_search(
    sandbox: SandboxServer, smart_client: SmartClient, tmp_path: Path
) -> None:
    expected = expected_hba1c(sandbox)
    # Tokens live 3 s (whole seconds: 2-3 s in practice) and each page takes 0.8 s: 6+ pages outlive one.
    sandbox.state.faults.expire_tokens_after(3)
    sandbox.state.faults.slow("/fhir/Observation*", delay=0.8)
    summary = operator(tmp_path, page_size=max(1, len(expected) // 6), search_params={"code": HBA1C}).execute(ctx())
    assert summary["pages"] >= 6
    assert sandbox.state.faults.count("/auth/token") >= 2  # a new token was fetched on the way
    assert ids(read_dir(tmp_path / "out" / "Observation" / "run")) == ids(expected)


def test_a_lasting_outage_fails_the_run_and_commits_nothing(
    sandbox: SandboxServer, smart_client: SmartClient, tmp_path: Path
) -> None:
    sandbox.state.faults.fail("/fhir/Observation*", status=503, times=None)
    op = operator(tmp_path, page_retries=1)
    op.get_http = lambda: _quick(op)  # type: ignore[method-assign]
    with pytest.raises(
        FhirError,
        match=r"^search page 1 \(http://\S+/fhir/Observation\) failed 2 times .* answered HTTP 503 \(gave up: ",
    ) as info:
        op.execute(ctx())
    assert str(info.value).endswith("error/transient: sandbox fault: status 503 made on purpose")
    assert not (tmp_path / "out" / "Observation" / "run").exists()


def _quick(op: FhirSearchOperator, max_retries: int = 1) -> Any:
    """The connection's client with short waits, so fault tests do not wait for minutes."""
    client = FhirSearchOperator.get_http(op)
    client.max_retries = max_retries  # type: ignore[attr-defined]
    client.backoff_base = 0.01  # type: ignore[attr-defined]
    return client


def test_unknown_parameter_stops_with_the_operation_outcome_text(
    sandbox: SandboxServer, smart_client: SmartClient, tmp_path: Path
) -> None:
    # No retry sends other parameters: the task fails at once, the server's refusal as the cause.
    with pytest.raises(
        AirflowFailException,
        match=r"^search page 1 of Observation\?colour=… failed: GET http://\S+/fhir/Observation answered HTTP 400: "
        r"error/not-supported: unknown search parameter 'colour' for Observation",
    ) as info:
        operator(tmp_path, search_params={"colour": "red"}).execute(ctx())
    assert isinstance(info.value.__cause__, FhirError)
    assert "Bearer" not in str(info.value)
    assert not (tmp_path / "out" / "Observation").exists()


def test_lenient_handling_lands_the_matches_and_logs_the_servers_note(
    sandbox: SandboxServer, smart_client: SmartClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING")
    op = operator(tmp_path, handling="lenient", search_params={"code": HBA1C, "colour": "red"})
    summary = op.execute(ctx())
    assert ids(read_dir(tmp_path / "out" / "Observation" / "run")) == ids(expected_hba1c(sandbox))
    assert "colour" in caplog.text  # the outcome entry, logged as a warning
    assert summary["counts"] == {"Observation": len(expected_hba1c(sandbox))}  # outcomes are not data


def _split_points(server: SandboxServer) -> tuple[datetime, datetime, datetime]:
    """Three instants cutting the HbA1c results in two non-empty intervals (cut between two results)."""
    times = sorted(updated(r) for r in expected_hba1c(server))
    middle = len(times) // 2
    cut = times[middle - 1] + (times[middle] - times[middle - 1]) / 2
    return (
        times[0] - timedelta(days=1),
        cut.replace(microsecond=0) + timedelta(seconds=1),
        times[-1] + timedelta(days=1),
    )


def test_two_consecutive_data_intervals_land_disjoint_complete_sets(
    sandbox: SandboxServer, smart_client: SmartClient, tmp_path: Path
) -> None:
    start, cut, end = _split_points(sandbox)
    op = operator(tmp_path, incremental="data_interval")
    first = op.execute(ctx("scheduled__1", start, cut))
    second = op.execute(ctx("scheduled__2", cut, end))
    a = read_dir(tmp_path / "out" / "Observation" / first["run"])
    b = read_dir(tmp_path / "out" / "Observation" / second["run"])
    assert first["run"] == interval_label(start, cut) and second["run"] == interval_label(cut, end)
    assert a and b and not set(ids(a)) & set(ids(b))
    assert ids(a) == ids(expected_hba1c(sandbox, start, cut))
    assert ids(b) == ids(expected_hba1c(sandbox, cut, end))
    assert sorted(ids(a) + ids(b)) == sorted(ids(expected_hba1c(sandbox)))
    assert first["window"] == {"start": first["window"]["start"], "end": second["window"]["start"]}


def test_a_rerun_of_the_same_interval_replaces_its_output_and_nothing_else(
    fresh_sandbox: SandboxServer, smart_client_factory: Callable[..., SmartClient], tmp_path: Path
) -> None:
    smart_client_factory(server=fresh_sandbox)
    store = fresh_sandbox.state.store
    start, cut, _ = _split_points(fresh_sandbox)
    end = datetime.now().astimezone() + timedelta(hours=1)
    op = operator(tmp_path, incremental="data_interval", page_size=2, max_part_lines=3)
    first = op.execute(ctx("scheduled__a", start, cut))
    other_dir = tmp_path / "out" / "Observation" / first["run"]
    other_before = {p.name: p.read_bytes() for p in other_dir.iterdir()}
    run1 = op.execute(ctx("scheduled__b", cut, end))
    run_dir = tmp_path / "out" / "Observation" / run1["run"]
    parts_before = sorted(p.name for p in run_dir.glob("part-*"))

    # The data changes: one result is deleted, one is added (lastUpdated = now, inside the interval).
    gone = expected_hba1c(fresh_sandbox, cut, end)[0]
    store.delete("Observation", gone["id"])
    template = dict(expected_hba1c(fresh_sandbox, cut, end)[0])
    template["id"] = "obs-new-hba1c"
    store.put(template)

    rerun = op.execute(ctx("manual__rerun", cut, end))  # another run id, same interval
    assert rerun["run"] == run1["run"]
    landed = read_dir(run_dir)
    assert ids(landed) == ids(expected_hba1c(fresh_sandbox, cut, end))
    assert gone["id"] not in ids(landed) and "obs-new-hba1c" in ids(landed)
    assert sorted(p.name for p in run_dir.glob("part-*")) == [
        f"part-{i:05d}.ndjson" for i in range((len(landed) + 2) // 3)
    ]
    assert len(parts_before) >= 1
    assert json.loads((run_dir / "_SUCCESS").read_text())["count"] == len(landed)
    # The other interval was not touched, and no staging leftovers remain.
    assert {p.name: p.read_bytes() for p in other_dir.iterdir()} == other_before
    assert not [p for p in (tmp_path / "out").rglob("_tmp.*")]


def test_watermark_mode_against_the_sandbox(
    fresh_sandbox: SandboxServer, smart_client_factory: Callable[..., SmartClient], tmp_path: Path
) -> None:
    smart_client_factory(server=fresh_sandbox)
    op = operator(tmp_path, incremental="watermark", search_params={"code": HBA1C})
    first = op.execute(ctx("r1"))
    assert first["counts"]["Observation"] == len(expected_hba1c(fresh_sandbox))
    template = dict(expected_hba1c(fresh_sandbox)[0])
    template["id"] = "obs-after-watermark"
    fresh_sandbox.state.store.put(template)
    second = op.execute(ctx("r2"))
    assert ids(read_dir(tmp_path / "out" / "Observation" / "r2")) == ["obs-after-watermark"]
    assert second["watermark"] > first["watermark"]
    third = op.execute(ctx("r3"))
    assert third["counts"]["Observation"] == 0 and third["watermark"] == second["watermark"]


def test_search_into_s3_on_moto(sandbox: SandboxServer, smart_client: SmartClient, moto_s3: MotoS3) -> None:
    expected = expected_hba1c(sandbox)
    summary = FhirSearchOperator(
        task_id="s3",
        resource_type="Observation",
        search_params={"code": HBA1C, "_include": "Observation:patient"},
        output=f"s3://{moto_s3.bucket}/fhir",
        output_conn_id=moto_s3.conn_id,
        incremental=None,
        compression="gzip",
        page_size=5,
    ).execute(ctx("s3run"))
    keys = moto_s3.keys("fhir/")
    assert "fhir/Observation/s3run/_SUCCESS" in keys and "fhir/Patient/s3run/_SUCCESS" in keys
    assert not [k for k in keys if "/_tmp." in k]
    landed = [
        json.loads(line)
        for key in keys
        if key.startswith("fhir/Observation/s3run/part-")
        for line in gzip.decompress(moto_s3.read(key)).splitlines()
    ]
    assert ids(landed) == ids(expected)
    assert summary["paths"]["Observation"][0].startswith(f"s3://{moto_s3.bucket}/fhir/Observation/s3run/part-")


def test_example_dag_under_airflow_dags_test(
    airflow_db: Path, sandbox: SandboxServer, smart_client: SmartClient, tmp_path: Path
) -> None:
    # A day that holds HbA1c results: the daily timetable's manual interval for a logical date is the
    # day before it, so run the day after a result's day.
    result = expected_hba1c(sandbox)[0]
    day = updated(result).replace(hour=0, minute=0, second=0, microsecond=0)
    start, end = day, day + timedelta(days=1)
    out = tmp_path / "dag-out"
    proc = run_airflow(
        "dags",
        "test",
        "fhir_search_hba1c",
        end.isoformat(),
        "--conf",
        json.dumps({"output": str(out)}),
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert (out / "Observation").exists(), log[-6000:]
    run_dirs = list((out / "Observation").iterdir())
    assert len(run_dirs) == 1, (run_dirs, log[-3000:])
    landed = read_dir(run_dirs[0])
    window = run_dirs[0].name
    expected = expected_hba1c(sandbox, start, end) if window == interval_label(start, end) else None
    assert expected is not None, f"unexpected interval {window}; {log[-2000:]}"
    assert ids(landed) == ids(expected)
    assert sorted(ids(read_dir(out / "Patient" / window))) == sorted(patient_ids(expected))
    assert smart_client.private_key_pem[40:80] not in log
    # The templated output's Assets came through the alias: Airflow lists them after the scheduler's pass.
    run_scheduler_asset_pass()
    assert active_asset_uris(f"file://{out}") == {f"file://{out}/Observation", f"file://{out}/Patient"}


def test_watermark_on_s3_stays_put_after_a_failed_run(
    fresh_sandbox: SandboxServer, smart_client_factory: Callable[..., SmartClient], moto_s3: MotoS3
) -> None:
    smart_client_factory(server=fresh_sandbox)
    op = FhirSearchOperator(
        task_id="s3_watermark",
        resource_type="Observation",
        search_params={"code": HBA1C},
        output=f"s3://{moto_s3.bucket}/wm",
        output_conn_id=moto_s3.conn_id,
        incremental="watermark",
        page_size=5,
        page_retries=1,
    )
    first = op.execute(ctx("r1"))
    assert first["counts"]["Observation"] == len(expected_hba1c(fresh_sandbox))
    template = dict(expected_hba1c(fresh_sandbox)[0])
    template["id"] = "obs-during-outage"
    fresh_sandbox.state.store.put(template)

    fresh_sandbox.state.faults.fail("/fhir/Observation*", status=503, times=None)
    op.get_http = lambda: _quick(op)  # type: ignore[method-assign]
    with pytest.raises(
        FhirError,
        match=r"^search page 1 \(http://\S+/fhir/Observation\) failed 2 times .* answered HTTP 503 \(gave up: ",
    ) as info:
        op.execute(ctx("r2"))
    assert str(info.value).endswith("error/transient: sandbox fault: status 503 made on purpose")
    assert not [key for key in moto_s3.keys("wm/") if "/r2/" in key]  # nothing of the failed run committed
    fresh_sandbox.state.faults.reset()

    # The failed run did not move the watermark: the next run still finds what changed after the first.
    third = op.execute(ctx("r3"))
    assert third["counts"]["Observation"] == 1 and third["watermark"] > first["watermark"]
    landed = [
        json.loads(line)
        for key in moto_s3.keys("wm/Observation/r3/")
        if "/part-" in key
        for line in moto_s3.read(key).splitlines()
    ]
    assert ids(landed) == ["obs-during-outage"]
    fourth = op.execute(ctx("r4"))
    assert fourth["counts"]["Observation"] == 0 and fourth["watermark"] == third["watermark"]
