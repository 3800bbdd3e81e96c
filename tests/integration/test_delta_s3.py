"""Current-state tables on S3: moto's server over loopback, credentials from an Airflow ``aws`` connection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_smart.operators.tables import FhirDeltaMergeOperator, storage_options_for
from tests.integration.test_delta_merge_behaviour import observation
from tests.s3_fixtures import MotoS3

pytestmark = pytest.mark.integration


def land_export(root: ObjectStoragePath, label: str, tt: str, resources: list[dict], deleted: list[str]) -> None:
    """An export as the bulk operator lays it out (markers included), written to S3."""
    files: dict[str, list[str]] = {"Observation": [f"Observation/{label}/Observation.00000.ndjson"]}
    (root / "Observation" / label / "Observation.00000.ndjson").write_text(
        "".join(json.dumps(r) + "\n" for r in resources)
    )
    (root / "Observation" / label / "_SUCCESS").write_text("{}")
    if deleted:
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"request": {"method": "DELETE", "url": f"Observation/{i}"}} for i in deleted],
        }
        (root / "deleted" / label / "Bundle.00000.ndjson").write_text(json.dumps(bundle) + "\n")
        (root / "deleted" / label / "_SUCCESS").write_text("{}")
        files["deleted"] = [f"deleted/{label}/Bundle.00000.ndjson"]
    (root / "_exports" / label / "_SUCCESS").write_text(
        json.dumps({"transaction_time": tt, "files": files, "counts": {"Observation": len(resources)}})
    )


def test_merge_operator_writes_delta_tables_to_s3(moto_s3: MotoS3, tmp_path: Path) -> None:
    from deltalake import DeltaTable

    from airflow_provider_smart.tables.read import read_table

    root = ObjectStoragePath(f"s3://{moto_s3.bucket}/fhir", conn_id=moto_s3.conn_id)
    land_export(root, "run1", "2024-01-01T00:00:00Z", [observation(i) for i in range(20)], [])
    land_export(root, "run2", "2024-01-02T00:00:00Z", [observation(3, 2)], ["obs-5", "obs-6"])

    def merge(label: str) -> dict:
        op = FhirDeltaMergeOperator(
            task_id=f"merge_{label}",
            output=f"s3://{moto_s3.bucket}/fhir",
            output_conn_id=moto_s3.conn_id,
            run_label=label,
            resource_types=["Observation"],
        )
        return op.execute({})

    first = merge("run1")
    assert first["tables"]["Observation"] == f"s3://{moto_s3.bucket}/fhir/tables/Observation"
    created = first["results"]["Observation"]
    assert (created["files_rewritten"], created["bytes_rewritten"]) == (0, 0) and created["files_added"] == 1
    second = merge("run2")
    assert second["results"]["Observation"]["updated"] == 1 and second["results"]["Observation"]["deleted"] == 2
    # 20 rows make one bucket and one file: the update and the deletions rewrite exactly that file.
    changed = second["results"]["Observation"]
    assert (changed["buckets"], changed["files_rewritten"]) == (1, 1)
    assert changed["bytes_rewritten"] == created["bytes_added"]
    assert any(k.startswith("fhir/tables/Observation/_fhir_bucket=0/") for k in moto_s3.keys("fhir/tables/"))
    assert any(k.startswith("fhir/tables/Observation/_delta_log/") for k in moto_s3.keys("fhir/tables/"))
    options = storage_options_for(root, moto_s3.conn_id)
    assert options["AWS_ENDPOINT_URL"] == moto_s3.endpoint_url and options["AWS_ALLOW_HTTP"] == "true"
    table = DeltaTable(f"s3://{moto_s3.bucket}/fhir/tables/Observation", storage_options=options)
    got = {r["id"]: r["meta"]["versionId"] for r in read_table(table, ["id", "meta"]).to_pylist()}
    assert got == {f"obs-{i}": ("2" if i == 3 else "1") for i in range(20) if i not in (5, 6)}
    # Merging again changes nothing.
    again = merge("run2")
    assert again["results"]["Observation"]["committed"] is False
    assert again["results"]["Observation"]["version"] == second["results"]["Observation"]["version"]
