"""Incremental Bulk exports into S3 (moto's server over loopback): the watermark lives beside the data on
S3, moves only after a complete export, and the next run starts from it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_smart.sandbox.server import SandboxServer
from tests.integration.bulk_helpers import context, export_operator, run_deferred, store_view
from tests.s3_fixtures import MotoS3

pytestmark = pytest.mark.integration
TYPES = ["Patient", "Observation"]


def landed_on_s3(moto_s3: MotoS3, label: str) -> dict[str, set[str]]:
    """resourceType -> ids in the published NDJSON files of an export label."""
    found: dict[str, set[str]] = {}
    for key in moto_s3.keys("fhir/"):
        parts = key.split("/")
        if parts[2:3] != [label] or not key.endswith(".ndjson") or parts[1].startswith("_"):
            continue
        for line in moto_s3.read(key).splitlines():
            resource = json.loads(line)
            found.setdefault(resource["resourceType"], set()).add(resource["id"])
    return found


def watermarks(moto_s3: MotoS3) -> list[dict[str, Any]]:
    return [json.loads(moto_s3.read(key)) for key in moto_s3.keys("fhir/_watermarks/")]


def test_watermark_on_s3_moves_only_after_a_complete_export(
    bulk_server: Callable[..., tuple[SandboxServer, Any]], moto_s3: MotoS3
) -> None:
    server, _ = bulk_server(patients=4, seed=7)
    output = f"s3://{moto_s3.bucket}/fhir"

    def export(run_id: str) -> dict[str, Any]:
        op = export_operator(output, output_conn_id=moto_s3.conn_id, since="watermark", types=TYPES)
        summary, _ = run_deferred(op, context(run_id))
        return dict(summary)

    first = export("scheduled__1")
    assert first["since"] is None  # no watermark yet: a full export
    everything = {t: set(v) for t, v in store_view(server, TYPES).items()}
    assert landed_on_s3(moto_s3, "scheduled__1") == everything
    (mark,) = watermarks(moto_s3)
    assert mark["transaction_time"] == first["transaction_time"]
    (key,) = moto_s3.keys("fhir/_watermarks/")
    assert first["watermark"].endswith(f"{moto_s3.bucket}/{key}")  # the summary names the file on S3

    store = server.state.store
    patient = dict(store.get("Patient", "pat-1") or {})
    patient["active"] = False
    store.put(patient)

    # An export that fails on the server commits nothing and leaves the watermark where it was.
    server.state.bulk.faults.fail_exports = True
    with pytest.raises(RuntimeError, match=r"answered HTTP 500: fatal/exception: .* \(fault fail_exports\)$") as info:
        export("scheduled__2")
    assert info.type is RuntimeError and str(info.value).startswith("Bulk Data export failed: status http://")
    server.state.bulk.faults.fail_exports = False
    assert landed_on_s3(moto_s3, "scheduled__2") == {}
    assert watermarks(moto_s3) == [mark]

    # The next run starts from the first run's transactionTime: only the change made since then lands.
    third = export("scheduled__3")
    assert third["since"] == first["transaction_time"]
    assert landed_on_s3(moto_s3, "scheduled__3") == {"Patient": {"pat-1"}}
    (moved,) = watermarks(moto_s3)
    assert moved["transaction_time"] == third["transaction_time"] > first["transaction_time"]

    # Nothing changed since: the next run lands nothing, and the watermark moves to its transactionTime.
    fourth = export("scheduled__4")
    assert fourth["since"] == third["transaction_time"]
    assert landed_on_s3(moto_s3, "scheduled__4") == {}
    (last,) = watermarks(moto_s3)
    assert last["transaction_time"] == fourth["transaction_time"] > third["transaction_time"]
