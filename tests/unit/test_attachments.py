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
        AttachmentSettings.from_option("yes")  # type: ignore[arg-type]
