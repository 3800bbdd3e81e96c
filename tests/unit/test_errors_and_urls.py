from __future__ import annotations

import pytest

from airflow_provider_smart.fhir.errors import (
    describe_error_body,
    is_transient_outcome,
    operation_outcome_text,
)
from airflow_provider_smart.transport.urls import origin, redact_url, resolve, same_origin

OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [
        {"severity": "error", "code": "invalid", "diagnostics": "Unknown parameter 'foo'"},
        {"severity": "warning", "code": "processing", "details": {"text": "slow"}, "expression": ["x"]},
    ],
}


def test_outcome_text_names_every_issue() -> None:
    text = operation_outcome_text(OUTCOME)
    assert "error/invalid: Unknown parameter 'foo'" in text
    assert "warning/processing: slow (at x)" in text


def test_transient_only_when_all_errors_are_transient() -> None:
    transient = {"issue": [{"severity": "error", "code": "transient"}]}
    assert is_transient_outcome(transient)
    assert not is_transient_outcome(OUTCOME)
    assert not is_transient_outcome({"issue": []})


def test_describe_error_body_variants() -> None:
    assert describe_error_body(b'{"error":"invalid_client","error_description":"bad kid"}') == (
        "invalid_client: bad kid"
    )
    assert "Unknown parameter" in describe_error_body(str(OUTCOME).replace("'", '"'))
    assert describe_error_body(b"<html>Gateway</html>", "text/html").startswith("non-JSON answer (text/html)")
    assert describe_error_body(b"").startswith("empty answer")


def test_origins() -> None:
    assert origin("HTTPS://Example.org/fhir") == ("https", "example.org", 443)
    assert same_origin("http://127.0.0.1:80/a", "http://127.0.0.1/b")
    assert not same_origin("http://127.0.0.1:8000/a", "http://127.0.0.1:8001/a")
    assert not same_origin("https://a.example/x", "http://a.example/x")
    assert not same_origin("/relative", "http://a.example/x")
    with pytest.raises(ValueError, match="only absolute http"):
        origin("/fhir")


def test_resolve_and_redact() -> None:
    assert resolve("http://h/fhir/Patient?x=1", "?page=2") == "http://h/fhir/Patient?page=2"
    assert resolve("http://h/fhir/Patient", "http://g/y") == "http://g/y"
    assert redact_url("https://u:p@s3.example/b/k?X-Amz-Signature=abc") == "https://s3.example/b/k?<redacted>"
    assert redact_url("http://h:81/p") == "http://h:81/p"
    assert redact_url("http://[::1]:8080/f?sig=x") == "http://[::1]:8080/f?<redacted>"
    assert len(redact_url("https://h/" + "a" * 1000)) == 300  # log lines stay short


def test_stored_urls_keep_their_whole_path_and_ipv6_brackets_but_never_the_query():
    from airflow_provider_smart.transport.urls import without_query

    long_path = "https://h/" + "a" * 1000 + ".ndjson"
    assert without_query(long_path) == long_path
    assert (
        without_query("https://u:p@[2001:db8::1]:9/k?X-Amz-Signature=abc#f") == "https://[2001:db8::1]:9/k?<redacted>"
    )
    assert without_query("http://[::1") is None
