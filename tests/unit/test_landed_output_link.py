"""The "Landed output" button's URL: a web page for every kind of output root, since Airflow's UI shows a
link only when it is http(s), mailto, or on the UI's own origin."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from airflow_provider_smart.operators.links import (
    LANDED_OUTPUT_KEY,
    FhirOutputLink,
    landed_output_url,
    store_output_link,
    task_xcom_page,
)
from airflow_provider_smart.storage.web_urls import console_url

TI = SimpleNamespace(
    dag_id="nightly", task_id="group.export", run_id="scheduled__2026-01-02T02:00:00+00:00", map_index=-1
)
XCOM_PAGE = "/dags/nightly/runs/scheduled__2026-01-02T02%3A00%3A00%2B00%3A00/tasks/group.export/xcom"


@pytest.fixture(autouse=True)
def _no_endpoint_or_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AIRFLOW__API__BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def _aws_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **extra: str) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "aws", "extra": extra}))


@pytest.mark.parametrize(
    ("uri", "region", "expected"),
    [
        ("s3://bucket/fhir/bulk", None, "https://s3.console.aws.amazon.com/s3/buckets/bucket?prefix=fhir%2Fbulk%2F"),
        (
            "s3://bucket/fhir",
            "eu-west-1",
            "https://s3.console.aws.amazon.com/s3/buckets/bucket?region=eu-west-1&prefix=fhir%2F",
        ),
        ("s3a://bucket", None, "https://s3.console.aws.amazon.com/s3/buckets/bucket"),
        ("gs://bucket/fhir/my run", None, "https://console.cloud.google.com/storage/browser/bucket/fhir/my%20run"),
        ("gcs://bucket", None, "https://console.cloud.google.com/storage/browser/bucket"),
    ],
)
def test_the_clouds_with_a_console_page(uri: str, region: str | None, expected: str) -> None:
    assert console_url(uri, region=region) == expected


@pytest.mark.parametrize(
    "uri", ["file:///data/fhir", "abfs://container/fhir", "s3:///no-bucket", "s3://user@bucket/x", "/data/fhir"]
)
def test_roots_without_a_console_page(uri: str) -> None:
    assert console_url(uri) is None


def test_an_s3_compatible_server_has_no_console_page() -> None:
    assert console_url("s3://bucket/fhir", custom_endpoint=True) is None


def test_the_task_page_lives_under_the_api_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    assert task_xcom_page(TI) == XCOM_PAGE  # without a base URL: on the UI's own origin
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.org/team/")
    assert task_xcom_page(TI) == "https://airflow.example.org/team" + XCOM_PAGE
    mapped = SimpleNamespace(dag_id="d", task_id="download", run_id="r", map_index=3)
    assert task_xcom_page(mapped) == "https://airflow.example.org/team/dags/d/runs/r/tasks/download/mapped/3/xcom"


def test_s3_on_aws_opens_the_console(monkeypatch: pytest.MonkeyPatch) -> None:
    _aws_connection(monkeypatch, "aws_prod", region_name="eu-central-1")
    url = landed_output_url(TI, "s3://lake/fhir", "aws_prod")
    assert url == "https://s3.console.aws.amazon.com/s3/buckets/lake?region=eu-central-1&prefix=fhir%2F"


@pytest.mark.parametrize("where", ["connection", "service_config", "environment"])
def test_s3_on_another_endpoint_opens_the_task_page(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    if where == "connection":
        _aws_connection(monkeypatch, "minio", endpoint_url="http://127.0.0.1:9000")
    elif where == "service_config":
        monkeypatch.setenv(
            "AIRFLOW_CONN_MINIO",
            json.dumps({"conn_type": "aws", "extra": {"service_config": {"s3": {"endpoint_url": "http://minio"}}}}),
        )
    else:
        _aws_connection(monkeypatch, "minio")
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert landed_output_url(TI, "s3://lake/fhir", "minio") == XCOM_PAGE


def test_an_s3_connection_that_cannot_be_read_opens_the_task_page(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.amazon.aws.hooks import s3

    def broken(**_: object) -> None:
        raise ValueError("the connection's extra is not JSON")

    monkeypatch.setattr(s3, "S3Hook", broken)
    assert landed_output_url(TI, "s3://lake/fhir", "aws_prod") == XCOM_PAGE


def test_a_local_root_opens_the_task_page_and_the_root_is_pushed_beside_it() -> None:
    pushed: dict[str, object] = {}
    ti = SimpleNamespace(**vars(TI), xcom_push=lambda key, value: pushed.__setitem__(key, value))
    store_output_link({"ti": ti}, "file:///data/fhir")
    assert pushed == {LANDED_OUTPUT_KEY: "file:///data/fhir", FhirOutputLink().xcom_key: XCOM_PAGE}
