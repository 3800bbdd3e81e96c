"""The deleted-file reader and the version order, without a table."""

from __future__ import annotations

import gzip
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from airflow_provider_smart.tables.deleted import DeletedFileError, iter_deletions, read_deletions
from airflow_provider_smart.tables.versions import deletes_mask, instants, newer_mask, parse_instant, version_ids

TS = pa.timestamp("us", tz="UTC")


def bundle(*urls: str, when: str | None = "2024-05-01T10:00:00Z") -> bytes:
    body = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": u}} for u in urls],
    }
    if when:
        body["meta"] = {"lastUpdated": when}
    return json.dumps(body).encode() + b"\n"


def test_reads_every_delete_entry_plain_and_gzipped(tmp_path: Path) -> None:
    plain = tmp_path / "Bundle.00000.ndjson"
    plain.write_bytes(bundle("Patient/p1", "Observation/o-1.x") + b"\n" + bundle("Patient/p2", when=None))
    zipped = tmp_path / "Bundle.00001.ndjson"
    zipped.write_bytes(gzip.compress(bundle("Condition/c1")))
    found = read_deletions([plain, zipped])
    assert [(d.resource_type, d.resource_id, d.deleted_at) for d in found] == [
        ("Patient", "p1", "2024-05-01T10:00:00Z"),
        ("Observation", "o-1.x", "2024-05-01T10:00:00Z"),
        ("Patient", "p2", None),
        ("Condition", "c1", "2024-05-01T10:00:00Z"),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{not json\n", "not valid JSON"),
        (b'{"resourceType": "Patient"}\n', "not a Bundle"),
        (bundle("Patient/../../etc"), "is not '<ResourceType>/<id>'"),
        (bundle("patient/p1"), "is not '<ResourceType>/<id>'"),
        (bundle("Patient/" + "x" * 65), "is not '<ResourceType>/<id>'"),
        (
            json.dumps(
                {"resourceType": "Bundle", "entry": [{"request": {"method": "PUT", "url": "Patient/1"}}]}
            ).encode(),
            "without request.method DELETE",
        ),
    ],
)
def test_a_line_that_does_not_fit_is_an_error_naming_file_and_line(line: bytes, message: str) -> None:
    with pytest.raises(DeletedFileError, match=message) as err:
        list(iter_deletions(io.BytesIO(bundle("Patient/ok") + line), "deleted/x/Bundle.00000.ndjson"))
    assert "Bundle.00000.ndjson line 2" in str(err.value)


def test_an_overlong_line_is_refused_without_reading_it_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    import airflow_provider_smart.tables.deleted as deleted

    monkeypatch.setattr(deleted, "MAX_LINE_BYTES", 100)
    with pytest.raises(DeletedFileError, match="over 100 bytes"):
        list(iter_deletions(io.BytesIO(b"x" * 1000 + b"\n"), "f"))


def test_instants_and_versions() -> None:
    assert parse_instant("2024-05-01T10:00:00.123456789+02:00") == datetime(2024, 5, 1, 8, 0, 0, 123456, tzinfo=UTC)
    assert parse_instant("2024-05-01") is None and parse_instant("2024-05-01T10:00:00") is None
    got = instants(pa.array(["2024-05-01T10:00:00Z", "2024-05-01T10:00:00.123456789-05:00", "bad", None]))
    assert got.to_pylist()[0] == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert got.to_pylist()[1] == datetime(2024, 5, 1, 15, 0, 0, 123456, tzinfo=UTC)
    assert got.to_pylist()[2:] == [None, None]
    assert version_ids(pa.array(["3", "12", "v2", "9" * 19, None])).to_pylist() == [3, 12, None, None, None]


def ts(*hours: int | None) -> pa.Array:
    return pa.array([None if h is None else datetime(2024, 1, 1, h, tzinfo=UTC) for h in hours], TS)


def test_newer_uses_version_then_last_updated_then_transaction_time() -> None:
    # rows: newer version | older version but later lastUpdated | same version | no versions, later
    # lastUpdated | no versions or lastUpdated, later run | same everything | no target row
    s_v = pa.array([2, 1, 3, None, None, None, 1], pa.int64())
    t_v = pa.array([1, 2, 3, None, None, None, None], pa.int64())
    s_lu, t_lu = ts(1, 9, 9, 5, None, 3, 1), ts(1, 1, 1, 4, None, 3, None)
    s_tt, t_tt = ts(1, 1, 9, 1, 6, 3, 1), ts(1, 1, 1, 9, 5, 3, None)
    got = newer_mask(s_v, s_lu, s_tt, t_v, t_lu, t_tt).to_pylist()
    assert got == [True, False, False, True, True, False, True]


def test_a_deletion_skips_rows_of_later_runs_and_later_copies() -> None:
    d_tt = ts(5, 5, 5, 5)
    d_lu = ts(5, None, 5, 5)
    t_tt = ts(4, 4, 6, None)
    t_lu = ts(4, 9, 4, None)
    assert deletes_mask(d_tt, d_lu, t_tt, t_lu).to_pylist() == [True, True, False, False]
