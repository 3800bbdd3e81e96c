"""The client assertion: every header and claim SMART App Launch 2.2 asks for."""

from __future__ import annotations

import time

import jwt
import pytest

from airflow_provider_smart.auth.assertion import (
    CLIENT_ASSERTION_TYPE,
    MAX_ASSERTION_LIFETIME,
    build_client_assertion,
)
from airflow_provider_smart.auth.keys import load_keys
from tests.smart_keys import ec_key, pem, rsa_key

TOKEN_URL = "https://ehr.example.org/auth/token"


def decode(assertion: str, key) -> tuple[dict, dict]:
    header = jwt.get_unverified_header(assertion)
    claims = jwt.decode(
        assertion,
        key.private_key.public_key(),
        algorithms=[header["alg"]],
        audience=TOKEN_URL,
        options={"require": ["exp", "iss", "sub", "aud", "jti"]},
    )
    return header, claims


@pytest.mark.parametrize(
    ("key_pem", "alg"),
    [
        (lambda: pem(rsa_key()), "RS384"),
        (lambda: pem(ec_key("P-384")), "ES384"),
        (lambda: pem(rsa_key()), "RS256"),
        (lambda: pem(rsa_key()), "RS512"),
        (lambda: pem(rsa_key()), "PS384"),
        (lambda: pem(ec_key("P-256")), "ES256"),
        (lambda: pem(ec_key("P-521")), "ES512"),
    ],
)
def test_header_and_claims(key_pem, alg):
    key = load_keys(key_pem(), algorithm=alg).signing_key
    before = time.time()
    assertion = build_client_assertion("my-client", TOKEN_URL, key)
    header, claims = decode(assertion, key)
    assert header == {"alg": alg, "kid": key.kid, "typ": "JWT"}
    assert claims["iss"] == claims["sub"] == "my-client"
    assert claims["aud"] == TOKEN_URL
    assert claims["exp"] <= int(time.time()) + 300
    assert claims["exp"] > before + 60
    assert abs(claims["iat"] - before) <= 2
    assert len(claims["jti"]) >= 22


def test_default_lifetime_is_under_five_minutes():
    key = load_keys(pem(ec_key())).signing_key
    _, claims = decode(build_client_assertion("c", TOKEN_URL, key, now=time.time()), key)
    assert claims["exp"] - claims["iat"] <= MAX_ASSERTION_LIFETIME
    assert claims["exp"] - claims["iat"] >= MAX_ASSERTION_LIFETIME - 30


def test_jti_is_unique_per_assertion():
    key = load_keys(pem(ec_key())).signing_key
    jtis = {decode(build_client_assertion("c", TOKEN_URL, key), key)[1]["jti"] for _ in range(200)}
    assert len(jtis) == 200


def test_iat_is_optional():
    key = load_keys(pem(ec_key())).signing_key
    _, claims = decode(build_client_assertion("c", TOKEN_URL, key, include_iat=False), key)
    assert "iat" not in claims


@pytest.mark.parametrize("lifetime", [0, -1, 301, 3600])
def test_lifetime_over_the_cap_is_refused(lifetime):
    key = load_keys(pem(ec_key())).signing_key
    with pytest.raises(ValueError, match="assertion lifetime"):
        build_client_assertion("c", TOKEN_URL, key, lifetime=lifetime)


def test_signature_fails_with_another_key():
    key = load_keys(pem(ec_key("P-384", 0))).signing_key
    other = load_keys(pem(ec_key("P-384", 1))).signing_key
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            build_client_assertion("c", TOKEN_URL, key), other.private_key.public_key(), ["ES384"], audience=TOKEN_URL
        )


def test_assertion_type_constant():
    assert CLIENT_ASSERTION_TYPE == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
