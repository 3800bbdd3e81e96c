"""Parquet tables written to S3 (moto's server over loopback, through an Airflow ``aws`` connection)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_smart.parquet import FhirParquetWriter, iter_resources
from tests.s3_fixtures import MotoS3

pytestmark = pytest.mark.integration

OBS = [{"resourceType": "Observation", "id": f"o{i}", "valueQuantity": {"value": i + 0.5}} for i in range(20)]


def test_write_commit_and_read_back_on_s3(moto_s3: MotoS3, tmp_path: Path) -> None:
    source = tmp_path / "Observation.ndjson"
    source.write_text("".join(json.dumps(o) + "\n" for o in OBS))
    out = ObjectStoragePath(f"s3://{moto_s3.bucket}/parquet", conn_id=moto_s3.conn_id)
    writer = FhirParquetWriter(out, "r1", row_group_bytes=1, part_bytes=1)
    writer.write_ndjson(str(source))
    assert all("/_tmp." in key for key in moto_s3.keys("parquet/Observation/r1/"))
    result = writer.commit()
    keys = moto_s3.keys("parquet/")
    assert "parquet/Observation/_schema.json" in keys and "parquet/Observation/r1/_SUCCESS" in keys
    parts = [k for k in keys if k.startswith("parquet/Observation/r1/part-")]
    assert parts == ["parquet/Observation/r1/part-00000.parquet"]
    assert result["Observation"]["rows"] == 20
    table = pq.read_table(io.BytesIO(moto_s3.read(parts[0])))
    assert table.column("valueQuantity").to_pylist()[3] == {"value": 3.5}
    back = list(iter_resources(out / "Observation" / "r1" / "part-00000.parquet"))
    assert back == OBS


def _schema_of(moto_s3: MotoS3, key: str) -> dict[str, str]:
    schema = pq.read_schema(io.BytesIO(moto_s3.read(key)))
    return {name: str(schema.field(name).type) for name in schema.names}


def test_schema_grows_across_runs_on_s3(moto_s3: MotoS3, tmp_path: Path) -> None:
    """A later run with new fields only adds columns; the schema record on S3 carries the old ones forward."""
    out = ObjectStoragePath(f"s3://{moto_s3.bucket}/grow", conn_id=moto_s3.conn_id)
    first = tmp_path / "first.ndjson"
    first.write_text("".join(json.dumps(o) + "\n" for o in OBS))
    with FhirParquetWriter(out, "r1") as writer:
        writer.write_ndjson(str(first))
    record_1 = json.loads(moto_s3.read("grow/Observation/_schema.json"))
    # New fields, and none of the old valueQuantity: the old column must stay (a schema only grows).
    later = [
        {"resourceType": "Observation", "id": f"n{n}", "issued": "2024-01-01T10:00:00Z", "status": "final"}
        for n in range(3)
    ]
    second = tmp_path / "second.ndjson"
    second.write_text("".join(json.dumps(o) + "\n" for o in later))
    with FhirParquetWriter(out, "r2") as writer:
        writer.write_ndjson(str(second))
    record_2 = json.loads(moto_s3.read("grow/Observation/_schema.json"))

    cols_1 = _schema_of(moto_s3, "grow/Observation/r1/part-00000.parquet")
    cols_2 = _schema_of(moto_s3, "grow/Observation/r2/part-00000.parquet")
    assert {"issued", "status"} <= set(cols_2) - set(cols_1)
    assert all(cols_2[name] == kind for name, kind in cols_1.items())  # no column changes type or goes away
    assert set(record_2["fields"]) > set(record_1["fields"])
    assert record_2["fields"]["valueQuantity"] == record_1["fields"]["valueQuantity"]
    assert list(iter_resources(out / "Observation" / "r2" / "part-00000.parquet")) == later
    # The first run's files are untouched and still read back exactly.
    assert list(iter_resources(out / "Observation" / "r1" / "part-00000.parquet")) == OBS
