"""FhirSearchOperator over faked HTTP: incremental windows, watermark, summary, outlets, bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import responses
from airflow.sdk import DAG, Asset, AssetAlias, ObjectStoragePath
from airflow.sdk.execution_time.context import OutletEventAccessors
from responses import matchers

from airflow_provider_smart.fhir.errors import FhirError
from airflow_provider_smart.operators.search import FhirSearchOperator, interval_label, resolve_incremental
from tests.fhir_fakes import BASE, PlainHttp, bundle, outcome, resource

OBS = f"{BASE}/Observation"
START = datetime(2024, 3, 1, tzinfo=UTC)
END = START + timedelta(days=1)


class FakeHttpOperator(FhirSearchOperator):
    def get_http(self) -> PlainHttp:
        return PlainHttp()


def make(tmp_path: Path, **kwargs: Any) -> FakeHttpOperator:
    kwargs.setdefault("resource_type", "Observation")
    kwargs.setdefault("output", str(tmp_path / "out"))
    kwargs.setdefault("search_params", {"code": "http://loinc.org|4548-4"})
    kwargs.setdefault("page_retries", 0)
    return FakeHttpOperator(task_id="search", **kwargs)


def context(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "data_interval_start": START,
        "data_interval_end": END,
        "run_id": "scheduled__x",
        "outlet_events": OutletEventAccessors(),
    }
    base.update(values)
    return base


@responses.activate
def test_data_interval_window_and_summary(tmp_path: Path) -> None:
    responses.get(
        OBS,
        match=[
            matchers.query_param_matcher(
                {
                    "code": "http://loinc.org|4548-4",
                    "_include": "Observation:patient",
                    "_count": "2",
                    "_lastUpdated": ["ge2024-03-01T00:00:00Z", "lt2024-03-02T00:00:00Z"],
                }
            )
        ],
        json=bundle(
            [
                resource("Observation", "1", "2024-03-01T05:00:00Z", subject={"reference": "Patient/p"}),
                resource("Observation", "2", "2024-03-01T07:00:00Z"),
            ],
            includes=[resource("Patient", "p")],
            next_url="Observation?page=2",
        ),
    )
    responses.get(
        OBS,
        match=[matchers.query_param_matcher({"page": "2"})],
        json=bundle([resource("Observation", "3", "2024-03-01T06:00:00Z")], includes=[resource("Patient", "p")]),
    )
    op = make(
        tmp_path, search_params={"code": "http://loinc.org|4548-4", "_include": "Observation:patient"}, page_size=2
    )
    ctx = context()
    summary = op.execute(ctx)
    json.dumps(summary)  # JSON-safe
    label = "20240301T000000Z_20240302T000000Z"
    assert summary["run"] == label == interval_label(START, END)
    assert summary["counts"] == {"Observation": 3, "Patient": 1}
    assert summary["high_water_mark"] == "2024-03-01T07:00:00Z"
    assert summary["duplicates_dropped"] == 1
    assert summary["window"] == {"start": "2024-03-01T00:00:00Z", "end": "2024-03-02T00:00:00Z"}
    assert summary["paths"]["Patient"] == [f"file://{tmp_path}/out/Patient/{label}/part-00000.ndjson"]
    assert (tmp_path / "out" / "Observation" / label / "_SUCCESS").exists()
    asset = Asset(uri=f"file://{tmp_path}/out/Observation")
    assert op.outlets == [asset]
    assert ctx["outlet_events"][asset].extra["count"] == 3


def test_data_interval_mode_needs_an_interval(tmp_path: Path) -> None:
    op = make(tmp_path, incremental="data_interval")
    with pytest.raises(ValueError, match="non-empty data interval"):
        op.execute(context(data_interval_start=None, data_interval_end=None))
    with pytest.raises(ValueError, match="non-empty data interval"):
        op.execute(context(data_interval_start=START, data_interval_end=START))


@pytest.mark.parametrize(
    ("start", "end", "mode"),
    [
        (START, END, "data_interval"),  # a data-interval timetable (or its manual run)
        (None, None, "watermark"),  # schedule=None: a manual run has no interval
        (START, START, "watermark"),  # a trigger timetable: start == end
    ],
)
def test_the_default_mode_fits_the_run(tmp_path: Path, start: Any, end: Any, mode: str) -> None:
    assert resolve_incremental("auto", context(data_interval_start=start, data_interval_end=end)) == mode
    assert make(tmp_path).incremental == "auto"
    for explicit in ("data_interval", "watermark", None):
        assert resolve_incremental(explicit, context(data_interval_start=start, data_interval_end=end)) == explicit


@responses.activate
def test_the_default_mode_without_an_interval_keeps_a_watermark(tmp_path: Path) -> None:
    responses.get(OBS, json=bundle([resource("Observation", "1", "2024-03-01T10:00:00Z")]))
    summary = make(tmp_path).execute(context(data_interval_start=None, data_interval_end=None, run_id="manual__1"))
    assert summary["incremental"] == "watermark"
    assert summary["run"] == "manual__1"
    assert summary["watermark"] == "2024-03-01T10:00:00Z"
    assert "_lastUpdated" not in responses.calls[0].request.url  # the first run takes everything
    responses.replace(responses.GET, OBS, json=bundle([]))
    make(tmp_path).execute(context(data_interval_start=None, data_interval_end=None, run_id="manual__2"))
    assert "_lastUpdated=gt2024-03-01T10%3A00%3A00Z" in responses.calls[1].request.url


def test_own_last_updated_conflicts_with_incremental(tmp_path: Path) -> None:
    op = make(tmp_path, search_params={"_lastUpdated": "ge2020-01-01"})
    with pytest.raises(ValueError, match="incremental=None"):
        op.execute(context())


@responses.activate
def test_watermark_advances_only_after_the_data_landed(tmp_path: Path) -> None:
    op = make(tmp_path, incremental="watermark")
    # First run: no watermark yet, so no _lastUpdated bound.
    responses.get(
        OBS,
        match=[matchers.query_param_matcher({"code": "http://loinc.org|4548-4"})],
        json=bundle(
            [resource("Observation", "1", "2024-01-01T00:00:00Z"), resource("Observation", "2", "2024-01-05T00:00:00Z")]
        ),
    )
    first = op.execute(context(run_id="run1"))
    assert first["watermark"] == "2024-01-05T00:00:00Z" and first["run"] == "run1"
    state_files = list((tmp_path / "out" / "Observation").glob("_watermark.*.json"))
    assert len(state_files) == 1
    assert json.loads(state_files[0].read_text())["watermark"] == "2024-01-05T00:00:00Z"

    # Second run fails on page 2: nothing committed, the watermark stays.
    responses.get(
        OBS,
        match=[
            matchers.query_param_matcher({"code": "http://loinc.org|4548-4", "_lastUpdated": "gt2024-01-05T00:00:00Z"})
        ],
        json=bundle([resource("Observation", "3", "2024-02-01T00:00:00Z")], next_url="Observation?page=2"),
    )
    responses.get(OBS, match=[matchers.query_param_matcher({"page": "2"})], status=400, json=outcome("page expired"))
    with pytest.raises(FhirError, match="page expired"):
        op.execute(context(run_id="run2"))
    assert json.loads(state_files[0].read_text())["watermark"] == "2024-01-05T00:00:00Z"
    assert not (tmp_path / "out" / "Observation" / "run2").exists()

    # Third run succeeds and moves it on.
    responses.replace(
        responses.GET,
        OBS,
        match=[matchers.query_param_matcher({"page": "2"})],
        json=bundle([resource("Observation", "4", "2024-02-02T00:00:00Z")]),
    )
    third = op.execute(context(run_id="run3"))
    assert third["counts"] == {"Observation": 2} and third["watermark"] == "2024-02-02T00:00:00Z"

    # A different search keeps its own watermark.
    other = make(tmp_path, incremental="watermark", search_params={"code": "http://loinc.org|2345-7"})
    responses.get(OBS, match=[matchers.query_param_matcher({"code": "http://loinc.org|2345-7"})], json=bundle([]))
    assert other.execute(context(run_id="run4"))["watermark"] is None


@responses.activate
def test_no_incremental_uses_the_run_id_and_post(tmp_path: Path) -> None:
    responses.post(
        f"{OBS}/_search",
        match=[matchers.urlencoded_params_matcher({"code": "http://loinc.org|4548-4"})],
        json=bundle([resource("Observation", "1")]),
    )
    op = make(tmp_path, incremental=None, method="post", compression="gzip")
    summary = op.execute(context(run_id="manual__2024-01-01T00:00:00+00:00"))
    assert summary["run"] == "manual__2024-01-01T00_00_00_00_00"
    assert summary["paths"]["Observation"][0].endswith("part-00000.ndjson.gz")


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unsupported output format\(s\) \['csv'\]"):
        make(tmp_path, formats=("ndjson", "csv"))
    with pytest.raises(ValueError, match="incremental must be"):
        make(tmp_path, incremental="daily")
    with pytest.raises(ValueError, match="page_size"):
        make(tmp_path, page_size=0)
    with pytest.raises(ValueError, match="'GET' or 'POST'"):
        make(tmp_path, method="PUT")
    with pytest.raises(ValueError, match="compression"):
        make(tmp_path, compression="bz2")
    with pytest.raises(ValueError, match="resource type name"):
        make(tmp_path, resource_type="observation").execute(context())


@responses.activate
def test_templated_output_declares_an_alias_and_adds_assets_at_run_time(tmp_path: Path) -> None:
    responses.get(OBS, json=bundle([resource("Observation", "1")], includes=[resource("Patient", "p")]))
    with DAG("fhir_dag", schedule=None):
        op = FakeHttpOperator(
            task_id="search",
            resource_type="Observation",
            output="{{ params.out }}",
            search_params={"_include": "Observation:patient"},
        )
    assert op.outlets == [AssetAlias(name="fhir-search/fhir_dag/search")]
    op.output_location = str(tmp_path / "rendered")  # what rendering the template gives
    ctx = context()
    op.execute(ctx)
    events = ctx["outlet_events"][AssetAlias(name="fhir-search/fhir_dag/search")].asset_alias_events
    assert sorted(e.dest_asset_key.uri for e in events) == [
        f"file://{tmp_path}/rendered/Observation",
        f"file://{tmp_path}/rendered/Patient",
    ]


def test_output_as_object_storage_path(tmp_path: Path) -> None:
    op = make(tmp_path, output=ObjectStoragePath(f"file://{tmp_path}/osp"))
    assert op.outlets == [Asset(uri=f"file://{tmp_path}/osp/Observation")]


@responses.activate
def test_a_different_search_may_not_replace_another_searchs_run(tmp_path: Path) -> None:
    responses.get(OBS, json=bundle([resource("Observation", "1")]))
    make(tmp_path, search_params={"code": "http://loinc.org|4548-4"}).execute(context())
    make(tmp_path, search_params={"code": "http://loinc.org|4548-4"}, page_size=10).execute(context())  # same search
    with pytest.raises(ValueError, match="holds the output of another search"):
        make(tmp_path, search_params={"code": "http://loinc.org|2345-7"}).execute(context())
    label = interval_label(START, END)
    assert json.loads((tmp_path / "out" / "Observation" / label / "_SUCCESS").read_text())["count"] == 1


@responses.activate
def test_a_manual_run_whose_window_holds_nothing_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The example DAG triggered by hand searched yesterday, found nothing (the data lay in 2023-2025) and
    went green without a word: now the log names the window and how to reach older data."""
    responses.get(OBS, json=bundle([]))
    op = make(tmp_path, incremental="data_interval")
    summary = op.execute(context(run_id="manual__2026-12-07T04:00:00+00:00"))
    assert summary["counts"] == {"Observation": 0}
    text = capsys.readouterr().out + caplog.text
    (line,) = [entry for entry in text.splitlines() if "This run landed no Observation" in entry]
    assert "warning" in line.lower()
    assert "[2024-03-01T00:00:00Z, 2024-03-02T00:00:00Z)" in line and "airflow dags test" in line


@responses.activate
def test_a_scheduled_empty_day_is_information_not_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    responses.get(OBS, json=bundle([]))
    make(tmp_path, incremental="data_interval").execute(context(run_id="scheduled__2024-03-01"))
    text = capsys.readouterr().out + caplog.text
    (line,) = [entry for entry in text.splitlines() if "This run landed no Observation" in entry]
    assert "warning" not in line.lower()
