"""Attachments: where they sit in resources, what to ask for, how a wrapped Binary opens, the settings."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smart.fhir.attachments import (
    AttachmentError,
    accept_header,
    is_binary_url,
    is_wrapped_binary,
    iter_attachments,
    type_allowed,
    unwrap_binary,
)
from airflow_provider_smart.storage.attachments import AttachmentSettings, land_attachments


def test_positions_of_every_attachment() -> None:
    doc = {
        "resourceType": "DocumentReference",
        "id": "d1",
        "content": [
            {"attachment": {"contentType": "text/plain", "data": "aGk="}},
            {"attachment": {"contentType": "application/pdf", "url": "Binary/b1", "size": 10, "hash": "x"}},
            {"format": {"code": "no attachment here"}},
        ],
    }
    refs = list(iter_attachments(doc))
    assert [(r.position, r.url, r.has_data) for r in refs] == [
        ("content[0].attachment", None, True),
        ("content[1].attachment", "Binary/b1", False),
    ]
    assert refs[1].declared_size == 10 and refs[1].declared_sha1 == "x"
    report = {"resourceType": "DiagnosticReport", "id": "r", "presentedForm": [{"url": "https://x/a.pdf"}]}
    assert [r.position for r in iter_attachments(report)] == ["presentedForm[0]"]
    media = {"resourceType": "Media", "id": "m", "content": {"url": "Binary/m"}}
    assert [r.position for r in iter_attachments(media)] == ["content"]
    assert list(iter_attachments({"resourceType": "Observation", "id": "o", "valueString": "x"})) == []


def test_keys_differ_by_resource_position_and_url() -> None:
    doc = {"resourceType": "DocumentReference", "id": "d", "content": [{"attachment": {"url": "Binary/a"}}] * 2}
    first, second = iter_attachments(doc)
    assert first.key != second.key


def test_bad_values_in_attachments_are_ignored_not_trusted() -> None:
    doc = {
        "resourceType": "DocumentReference",
        "id": "d",
        "content": [{"attachment": {"url": 5, "size": "big", "contentType": ["x"]}}, {"attachment": "nope"}],
    }
    (ref,) = iter_attachments(doc)
    assert ref.url is None and ref.declared_size is None and ref.content_type is None


def test_accept_header() -> None:
    assert accept_header("application/pdf") == "application/pdf, application/fhir+json;q=0.1"
    assert accept_header("text/plain; charset=utf-8") == "text/plain, application/fhir+json;q=0.1"
    assert accept_header(None) == "*/*"
    assert accept_header("text/plain\r\nX-Injected: 1") == "*/*"
    assert accept_header("application/fhir+json") == "application/fhir+json"


def test_wrapped_binary_detection_and_unwrap() -> None:
    assert is_binary_url("https://ehr/fhir/Binary/abc-1")
    assert not is_binary_url("https://ehr/files/Binary.pdf")
    assert is_wrapped_binary("Binary/x", "application/fhir+json; charset=utf-8", "text/plain")
    assert not is_wrapped_binary("Binary/x", "text/plain", "text/plain")
    assert not is_wrapped_binary("https://cdn/x", "application/json", "text/plain")
    body = json.dumps({"resourceType": "Binary", "contentType": "text/plain", "data": base64.b64encode(b"hi").decode()})
    assert unwrap_binary(body.encode()) == (b"hi", "text/plain")
    for bad, why in [
        (b"not json", "not JSON"),
        (b'{"resourceType": "Patient"}', "not a Binary"),
        (b'{"resourceType": "Binary", "data": "%%%"}', "base64"),
        (b'{"resourceType": "Binary", "data": 5}', "base64 string"),
    ]:
        with pytest.raises(AttachmentError, match=why):
            unwrap_binary(bad)


def test_type_allowlist() -> None:
    assert type_allowed("application/pdf", None)
    assert type_allowed("text/plain; charset=utf-8", ("text/*",))
    assert not type_allowed("image/png", ("text/*", "application/pdf"))
    assert not type_allowed(None, ("text/*",))


def test_settings_from_the_operator_option() -> None:
    assert AttachmentSettings.from_option(False) is None
    assert AttachmentSettings.from_option(None) is None
    assert AttachmentSettings.from_option(True) == AttachmentSettings()
    settings = AttachmentSettings.from_option({"max_bytes": 10, "allowed_types": ["text/*"]})
    assert settings is not None and settings.allowed_types == ("text/*",)
    with pytest.raises(ValueError, match="unknown attachments option"):
        AttachmentSettings.from_option({"max_size": 10})
    with pytest.raises(ValueError, match="max_bytes must be positive"):
        AttachmentSettings(max_bytes=0)
    with pytest.raises(ValueError, match="on_error"):
        AttachmentSettings(on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        AttachmentSettings.from_option(5)  # type: ignore[arg-type]


def test_settings_from_a_rendered_template() -> None:
    # "{{ params.attachments }}" renders a boolean param as "True"/"False".
    assert AttachmentSettings.from_option("True") == AttachmentSettings()
    assert AttachmentSettings.from_option("false") is None
    assert AttachmentSettings.from_option("") is None
    assert AttachmentSettings.from_option("None") is None
    settings = AttachmentSettings.from_option('{"max_bytes": 10, "allowed_types": ["text/*"], "on_error": "record"}')
    assert settings == AttachmentSettings(max_bytes=10, allowed_types=("text/*",), on_error="record")
    assert AttachmentSettings.from_option(settings.to_option()) == settings
    with pytest.raises(ValueError, match="neither true/false nor a JSON object"):
        AttachmentSettings.from_option("maybe")
    with pytest.raises(ValueError, match="neither true/false nor a JSON object"):
        AttachmentSettings.from_option("[1, 2]")
    with pytest.raises(ValueError, match="unknown attachments option"):
        AttachmentSettings.from_option('{"max_size": 1}')


def test_operators_check_the_option_when_the_dag_is_parsed() -> None:
    from airflow_provider_smart.operators.bulk_export import FhirBulkExportOperator
    from airflow_provider_smart.operators.search import FhirSearchOperator

    with pytest.raises(ValueError, match="unknown attachments option"):
        FhirBulkExportOperator(task_id="e", output="/tmp/x", attachments={"max_size": 1})
    with pytest.raises(ValueError, match="max_bytes must be positive"):
        FhirSearchOperator(task_id="s", resource_type="Media", output="/tmp/x", attachments={"max_bytes": 0})
    with pytest.raises(ValueError, match="attachments need 'ndjson'"):
        FhirSearchOperator(
            task_id="s", resource_type="DocumentReference", output="/tmp/x", formats=("parquet",), attachments=True
        )
    # Off, or a template (judged once rendered), is fine with Parquet only.
    for off in (False, None, "false", "{{ params.attachments }}"):
        FhirSearchOperator(task_id="s", resource_type="Media", output="/tmp/x", formats=("parquet",), attachments=off)
    # Rendered on: refused before anything is searched.
    parquet_only = FhirSearchOperator(
        task_id="p", resource_type="Media", output="/tmp/x", formats=("parquet",), attachments="{{ x }}"
    )
    parquet_only.attachments = "True"
    with pytest.raises(ValueError, match="attachments need 'ndjson'"):
        parquet_only.execute({})  # type: ignore[arg-type]
    # A template is checked once rendered; off is the default.
    op = FhirBulkExportOperator(task_id="e", output="/tmp/x", attachments="{{ params.attachments }}")
    assert "attachments" in op.template_fields and op.attachments == "{{ params.attachments }}"
    assert FhirBulkExportOperator(task_id="e2", output="/tmp/x")._attachments_spec() is None
    spec = FhirBulkExportOperator(task_id="e3", output="/tmp/x", attachments={"workers": 2})._attachments_spec()
    assert spec is not None and spec["workers"] == 2
    assert "attachments" in FhirSearchOperator.template_fields


class _Raw:
    """The raw stream of an answer, read as the body reader reads it (``read1``)."""

    def __init__(self, body: bytes) -> None:
        self.stream = io.BytesIO(body)

    def read1(self, size: int, decode_content: bool = False) -> bytes:
        return self.stream.read1(size)


class _Answer:
    def __init__(self, body: bytes, content_type: str = "text/plain") -> None:
        self.status_code = 200
        self.headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
        self.raw = _Raw(body)

    def close(self) -> None:
        pass


class _Client:
    """Answers every URL with its own path as the bytes, and remembers what was asked."""

    base_url = "https://fhir.example.org/r4"

    def __init__(self) -> None:
        self.asked: list[str] = []

    def request(self, method: str, url: str, **_: Any) -> _Answer:
        self.asked.append(url)
        return _Answer(url.rsplit("/", 1)[-1].encode())


def _landed_run(tmp_path: Path, *urls: str) -> Path:
    run = tmp_path / "DocumentReference" / "run1"
    run.mkdir(parents=True)
    docs = [
        {"resourceType": "DocumentReference", "id": f"d{i}", "content": [{"attachment": {"url": u}}]}
        for i, u in enumerate(urls)
    ]
    (run / "part-00000.ndjson").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return run / "part-00000.ndjson"


def test_summary_counts_duplicates_and_skips_by_reason_and_never_requests_an_unsafe_url(tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    source = _landed_run(
        tmp_path,
        "Binary/same",
        "https://files.example.org/x/same",  # another URL, the same bytes: stored once, counted a duplicate
        "Binary/other",
        "http://127.0.0.1:1\\@127.0.0.1:2/Binary/x",
        "https://user@fhir.example.org/r4/Binary/y",
    )
    client = _Client()
    destination = ObjectStoragePath(f"file://{tmp_path}/attachments/run1")
    summary = land_attachments(client, [ObjectStoragePath(f"file://{source}")], destination, AttachmentSettings())
    assert summary["landed"] == 3 and summary["duplicates"] == 1
    assert summary["skipped"] == {"unsafe_url": 2} and summary["failed"] == 0
    assert len(list((tmp_path / "attachments/run1/blobs").iterdir())) == 2
    assert all("@" not in url and "\\" not in url for url in client.asked)
    assert len(client.asked) == 3


def test_a_rerun_after_rewrite_urls_does_not_fetch_the_stored_blobs(tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    source = _landed_run(tmp_path, "Binary/a", "Binary/b")
    destination = ObjectStoragePath(f"file://{tmp_path}/attachments/run1")
    settings = AttachmentSettings(rewrite_urls=True)
    first = _Client()
    land_attachments(first, [ObjectStoragePath(f"file://{source}")], destination, settings)
    assert len(first.asked) == 2
    rewritten = [json.loads(line)["content"][0]["attachment"]["url"] for line in source.read_text().splitlines()]
    assert all(url.startswith(f"file://{tmp_path}/attachments/run1/blobs/") for url in rewritten)

    again = _Client()
    summary = land_attachments(again, [ObjectStoragePath(f"file://{source}")], destination, settings)
    assert again.asked == [] and summary["landed"] == 2 and summary["failed"] == 0


@pytest.mark.parametrize("step", [1, 3, 7, 64, 1 << 20])
def test_a_wrapped_binary_unwraps_the_same_in_any_pieces(step: int) -> None:
    from airflow_provider_smart.fhir.attachments import BinaryUnwrapper

    data = bytes(range(256)) * 5 + b"\xff\xfe"
    resource = {
        "meta": {"tag": [{"code": "data", "display": 'a "data" key: "x"'}]},  # a nested "data" is not it
        "data": base64.b64encode(data).decode(),
        "contentType": "application/pdf",
        "resourceType": "Binary",
    }
    bodies = [
        json.dumps(resource).encode(),
        json.dumps(resource, indent=2).encode(),
        json.dumps(resource).encode().replace(b"/", b"\\/"),  # JSON may escape the slashes of base64
    ]
    for body in bodies:
        unwrapper = BinaryUnwrapper()
        pieces = [body[i : i + step] for i in range(0, len(body), step)]
        assert b"".join(unwrapper.unwrap(pieces)) == data
        assert unwrapper.content_type == "application/pdf"


def test_a_wrapped_binary_with_a_big_envelope_or_a_cut_body_is_refused() -> None:
    from airflow_provider_smart.fhir.attachments import BinaryUnwrapper

    padded = json.dumps({"resourceType": "Binary", "text": "x" * 100_000, "data": "aGk="}).encode()
    with pytest.raises(AttachmentError, match="more than 65536 bytes besides its data"):
        list(BinaryUnwrapper().unwrap([padded]))
    with pytest.raises(AttachmentError, match="ended before its JSON did"):
        list(BinaryUnwrapper().unwrap([b'{"resourceType":"Binary","data":"aGk']))
    with pytest.raises(AttachmentError, match="escape base64 never needs"):
        list(BinaryUnwrapper().unwrap([b'{"resourceType":"Binary","data":"aG\\tk="}']))
