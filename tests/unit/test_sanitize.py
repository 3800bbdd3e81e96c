"""Server text made safe: secrets redacted, control characters gone, length capped."""

from __future__ import annotations

import pytest

from airflow_provider_smart.transport.sanitize import (
    REDACTED,
    cap,
    forget_secrets,
    remember_secret,
    safe_text,
    strip_control,
)

JWT = "eyJhbGciOiJSUzM4NCJ9.eyJpc3MiOiJjbGllbnQifQ.c2lnbmF0dXJlLWJ5dGVz"


@pytest.fixture(autouse=True)
def _forget() -> None:
    forget_secrets()


def test_echoed_authorization_header_is_redacted() -> None:
    body = '{"echo": {"Authorization": "Bearer abc.def-ghi_123456"}}'
    text = safe_text(body)
    assert "abc.def-ghi_123456" not in text
    assert REDACTED in text


def test_jwt_shaped_strings_are_redacted() -> None:
    text = safe_text(f"your assertion {JWT} was refused")
    assert JWT not in text
    assert "c2lnbmF0dXJlLWJ5dGVz" not in text
    assert text == f"your assertion {REDACTED} was refused"


def test_remembered_secret_is_redacted_even_without_a_recognisable_shape() -> None:
    remember_secret("opaque-token-0123456789")
    assert safe_text("token=opaque-token-0123456789 in body").count("opaque-token-0123456789") == 0
    forget_secrets()
    assert "opaque-token-0123456789" in safe_text("plain opaque-token-0123456789")


def test_explicit_secrets_and_credential_fields() -> None:
    assert "s3cr3t-value!" not in safe_text("x s3cr3t-value! y", secrets=("s3cr3t-value!",))
    text = safe_text('{"access_token": "zzzzzzzzzz", "client_assertion": "aaaa"}')
    assert "zzzzzzzzzz" not in text
    assert '"aaaa"' not in text


def test_presigned_query_strings_are_dropped() -> None:
    text = safe_text("GET https://files.example/x.ndjson?X-Amz-Signature=deadbeef&X-Amz-Credential=k failed")
    assert "deadbeef" not in text
    assert "https://files.example/x.ndjson?" in text


def test_control_characters_and_escapes_are_removed() -> None:
    assert strip_control("\x1b[31mred\x1b[0m\r\nnext\x00line\x07") == "red next line"
    assert strip_control("\x1b]0;title\x07done") == "done"


def test_length_is_capped_and_says_how_much_was_cut() -> None:
    text = safe_text("a" * 5000, limit=100)
    assert text.startswith("a" * 100)
    assert text.endswith("(4900 more characters)")
    assert cap("short", 100) == "short"


def test_huge_bytes_cost_bounded_work() -> None:
    text = safe_text(b"x" * 50_000_000, limit=50)
    assert len(text) < 120


def test_secret_straddling_the_cap_does_not_survive() -> None:
    remember_secret("SECRET-TOKEN-VALUE-1234")
    text = safe_text("a" * 95 + "SECRET-TOKEN-VALUE-1234", limit=100)
    assert "SECRET-TOK" not in text
