"""Attachments: where they sit in resources, what to ask for, how a wrapped Binary opens, the settings."""

from __future__ import annotations

import base64
import json

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
from airflow_provider_smart.storage.attachments import AttachmentSettings


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
    # A template is checked once rendered; off is the default.
    op = FhirBulkExportOperator(task_id="e", output="/tmp/x", attachments="{{ params.attachments }}")
    assert "attachments" in op.template_fields and op.attachments == "{{ params.attachments }}"
    assert FhirBulkExportOperator(task_id="e2", output="/tmp/x")._attachments_spec() is None
    spec = FhirBulkExportOperator(task_id="e3", output="/tmp/x", attachments={"workers": 2})._attachments_spec()
    assert spec is not None and spec["workers"] == 2
    assert "attachments" in FhirSearchOperator.template_fields
