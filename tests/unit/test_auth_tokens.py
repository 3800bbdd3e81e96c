"""Token responses: parsing variants, scopes, and one clear message per failure."""

from __future__ import annotations

import json
import logging

import pytest

from airflow_provider_smart.auth.errors import TokenRequestError
from airflow_provider_smart.auth.tokens import (
    DEFAULT_EXPIRES_IN,
    TokenContext,
    parse_token_response,
    scope_report,
    split_scopes,
)

CTX = TokenContext(
    "my-client", "https://ehr.example.org/auth/token", "kid-1", "RS384", "system/Patient.read system/Observation.read"
)
NOW = 1_800_000_000.0


def parse(body, status=200, content_type="application/json", ctx=CTX, scrub=()):
    text = body if isinstance(body, str) else json.dumps(body)
    return parse_token_response(status, text.encode(), content_type, ctx, now=NOW, scrub=scrub)


def test_full_response():
    token = parse(
        {
            "access_token": "tok-123",
            "token_type": "bearer",
            "expires_in": 600,
            "scope": "system/Patient.read system/Observation.read",
        }
    )
    assert token.value == "tok-123"
    assert token.token_type == "Bearer"
    assert token.expires_at == NOW + 600 and token.lifetime == 600
    assert token.scopes == ("system/Patient.read", "system/Observation.read")
    assert token.requested_scopes == ("system/Patient.read", "system/Observation.read")
    assert "tok-123" not in repr(token) and "tok-123" not in str(token)
    assert "tok-123" not in json.dumps(token.summary())


@pytest.mark.parametrize("token_type", ["Bearer", "BEARER", "bearer"])
def test_token_type_case_insensitive(token_type):
    assert parse({"access_token": "t", "token_type": token_type, "expires_in": 60}).token_type == "Bearer"


def test_other_token_type_is_refused():
    with pytest.raises(TokenRequestError, match="type 'DPoP'"):
        parse({"access_token": "t", "token_type": "DPoP", "expires_in": 60})


@pytest.mark.parametrize(("raw", "expected"), [("900", 900.0), (" 120 ", 120.0), (3599.5, 3599.5)])
def test_expires_in_variants(raw, expected):
    assert parse({"access_token": "t", "token_type": "bearer", "expires_in": raw}).lifetime == expected


@pytest.mark.parametrize("raw", [None, "soon", -5, 0, True])
def test_missing_or_bad_expires_in_uses_default_and_warns(raw, caplog):
    body = {"access_token": "t", "token_type": "bearer"}
    if raw is not None:
        body["expires_in"] = raw
    with caplog.at_level(logging.WARNING):
        token = parse(body)
    assert token.lifetime == DEFAULT_EXPIRES_IN
    assert "expires_in" in caplog.text


def test_missing_scope_means_requested(caplog):
    token = parse({"access_token": "t", "token_type": "bearer", "expires_in": 60})
    assert token.scopes == token.requested_scopes


def test_granted_scopes_logged_and_missing_warned(caplog):
    with caplog.at_level(logging.INFO):
        token = parse({"access_token": "t", "token_type": "bearer", "expires_in": 60, "scope": "system/Patient.read"})
    assert token.scopes == ("system/Patient.read",)
    assert "grants 1 scope(s): system/Patient.read" in caplog.text
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "system/Observation.read" in warnings[0].getMessage()


def test_wildcard_expansion_is_not_a_warning(caplog):
    ctx = TokenContext("c", CTX.token_url, "k", "RS384", "system/*.read")
    with caplog.at_level(logging.INFO):
        token = parse(
            {
                "access_token": "t",
                "token_type": "bearer",
                "expires_in": 60,
                "scope": "system/Patient.read system/Observation.read",
            },
            ctx=ctx,
        )
    assert token.scopes == ("system/Patient.read", "system/Observation.read")
    assert "expanded system/*.read" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_scope_report_understands_v1_and_v2():
    report = scope_report(
        ["system/Patient.read", "system/Observation.rs", "system/Encounter.read", "system/Condition.write", "launch"],
        ["system/*.rs", "system/Condition.c"],
    )
    assert report.granted == ["system/Patient.read", "system/Observation.rs", "system/Encounter.read"]
    assert report.missing == ["system/Condition.write", "launch"]
    assert scope_report(["system/*.read"], ["system/*.read"]).granted == ["system/*.read"]
    assert scope_report(["system/*.read"], ["system/Patient.r"]).expanded == ["system/*.read"]
    assert scope_report(["system/*.read"], ["patient/Patient.read"]).missing == ["system/*.read"]
    assert split_scopes("a  b a\tc") == ["a", "b", "c"]
    assert split_scopes(["a b", "c"]) == ["a", "b", "c"]


def test_invalid_client_message():
    with pytest.raises(TokenRequestError) as info:
        parse({"error": "invalid_client", "error_description": "signature check failed"}, status=400)
    err = info.value
    assert err.error == "invalid_client" and err.status == 400
    text = str(err)
    assert text.startswith("invalid_client (signature check failed): the server rejected the client assertion")
    assert "kid=kid-1" in text and "'my-client'" in text and CTX.token_url in text and "aud" in text


def test_invalid_scope_message():
    with pytest.raises(
        TokenRequestError, match=r"invalid_scope: the server refused the requested scope 'system/Patient"
    ):
        parse({"error": "invalid_scope"}, status=400)


@pytest.mark.parametrize(
    ("code", "needle"),
    [
        ("invalid_grant", "clock"),
        ("unauthorized_client", "may not use the client_credentials grant"),
        ("unsupported_grant_type", "does not support client_credentials"),
        ("invalid_request", "malformed"),
        ("server_error", r"refused the token request \(HTTP 400\)"),
    ],
)
def test_other_oauth_errors(code, needle):
    with pytest.raises(TokenRequestError, match=needle):
        parse({"error": code}, status=400)


def test_error_status_without_error_code():
    with pytest.raises(TokenRequestError, match=r"^HTTP 500: .*refused the token request \(HTTP 500\)"):
        parse({"message": "boom"}, status=500)


def test_non_json_answer():
    with pytest.raises(TokenRequestError) as info:
        parse("<html><body>Bad Gateway</body></html>", status=502, content_type="text/html; charset=utf-8")
    text = str(info.value)
    assert "answered HTTP 502 with a non-JSON body (text/html)" in text
    assert "Bad Gateway" in text and "token_url extra" in text


def test_empty_and_non_object_answers():
    with pytest.raises(TokenRequestError, match="empty body"):
        parse("", status=200)
    with pytest.raises(TokenRequestError, match="non-JSON"):
        parse("[1, 2]", status=200)


def test_missing_access_token():
    with pytest.raises(TokenRequestError, match="without an access_token"):
        parse({"token_type": "bearer"})


def test_server_text_echoing_the_assertion_is_scrubbed():
    assertion = "eyJhbGciOiJSUzM4NCJ9.payload.signature"
    with pytest.raises(TokenRequestError) as info:
        parse(
            {"error": "invalid_client", "error_description": f"bad assertion {assertion}"},
            status=401,
            scrub=[assertion],
        )
    assert assertion not in str(info.value)
    with pytest.raises(TokenRequestError) as info:
        parse(f"oops: {assertion}", status=500, content_type="text/plain", scrub=[assertion])
    assert assertion not in str(info.value)
