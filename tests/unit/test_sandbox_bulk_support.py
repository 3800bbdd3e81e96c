"""Small parts of the sandbox's Bulk Data: Accept-Encoding, URL signing, the export fault switches."""

from __future__ import annotations

import pytest

from airflow_provider_smart.sandbox.bulk_faults import BulkFaults
from airflow_provider_smart.sandbox.bulk_serve import accepts_gzip
from airflow_provider_smart.sandbox.file_origin import OriginLog, UrlSigner


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", True),
        ("deflate, gzip;q=0.5", True),
        ("*", True),
        ("gzip;q=0", False),
        ("identity", False),
        (None, False),
        ("gzip;q=nonsense", False),
    ],
)
def test_accepts_gzip(header, expected):
    assert accepts_gzip(header) is expected


def test_signed_urls_check_signature_and_expiry():
    signer = UrlSigner(b"k" * 32)
    url = signer.sign("http://127.0.0.1:1", "job", "Patient.0001", 3, ttl=60)
    query = dict(part.split("=") for part in url.split("?", 1)[1].split("&"))
    assert url.startswith("http://127.0.0.1:1/bulk-files/job/Patient.0001.ndjson?")
    assert signer.check("job", "Patient.0001", query["generation"], query["expires"], query["signature"]) is None
    assert "does not match" in signer.check(
        "job", "Patient.0002", query["generation"], query["expires"], query["signature"]
    )
    assert "does not match" in signer.check("job", "Patient.0001", "4", query["expires"], query["signature"])
    assert "integers" in signer.check("job", "Patient.0001", "x", query["expires"], query["signature"])
    stale = signer.sign("http://h", "job", "f", 1, ttl=-1)
    q = dict(part.split("=") for part in stale.split("?", 1)[1].split("&"))
    assert signer.check("job", "f", q["generation"], q["expires"], q["signature"]) == "the request has expired"
    assert UrlSigner().check("job", "f", q["generation"], q["expires"], q["signature"]) is not None  # other key


def test_origin_log():
    log = OriginLog()
    log.record("files", authorization=False)
    assert not log.authorization_seen("files")
    log.record("files", authorization=True)
    assert log.authorization_seen("files") and log.requests["files"] == 2
    log.reset()
    assert log.requests == {}


def test_bulk_faults_counters_and_json():
    faults = BulkFaults()
    faults.apply_json({"expire_files": 2, "invalidate_tokens_after_downloads": 2, "error_file": True})
    assert [faults.take_expire_file() for _ in range(3)] == [True, True, False]
    assert [faults.count_download() for _ in range(3)] == [False, True, False]
    assert faults.to_json()["error_file"] is True
    with pytest.raises(ValueError, match="unknown bulk fault"):
        faults.apply_json({"explode": True})
    with pytest.raises(ValueError, match="JSON object"):
        faults.apply_json(["fail_exports"])
    faults.apply_json({"endless_files": "1024", "strip_ids": 2, "errors_in_output": True})
    assert (faults.endless_files, faults.strip_ids, faults.to_json()["errors_in_output"]) == (1024, 2, True)
    manifest = {"output": [{"type": "Patient", "url": "u", "count": 3}], "error": [{"type": "OperationOutcome"}]}
    assert faults.rewrite_manifest(manifest) == {
        "output": [{"type": "Patient", "url": "u"}, {"type": "OperationOutcome"}]
    }
    faults.reset()
    assert faults.to_json() == BulkFaults().to_json()
