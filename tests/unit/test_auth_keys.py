"""Key loading, algorithms, kid thumbprints and the public JWKS."""

from __future__ import annotations

import json
import pickle

import jwt
import pytest
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from airflow_provider_smart.auth.errors import KeyLoadError
from airflow_provider_smart.auth.keys import (
    SigningKey,
    jwk_thumbprint,
    load_key_file,
    load_keys,
    public_jwks,
)
from tests.smart_keys import ec_key, pem, public_pem, rsa_key

RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMs"
    "tn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5"
    "hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)


def private_jwk(key, **extra):
    algo = RSAAlgorithm if hasattr(key, "key_size") and not hasattr(key, "curve") else ECAlgorithm
    data = algo.to_jwk(key, as_dict=True)
    data.update(extra)
    return data


def test_rfc7638_example_thumbprint():
    jwk = {"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("fmt", ["pkcs8", "pkcs1"])
def test_rsa_pem_defaults_to_rs384_with_thumbprint_kid(fmt):
    keys = load_keys(pem(rsa_key(), fmt))
    key = keys.signing_key
    assert key.algorithm == "RS384"
    public = key.public_jwk()
    assert key.kid == jwk_thumbprint(public)
    assert public["kid"] == key.kid and public["alg"] == "RS384"
    assert public["use"] == "sig" and public["key_ops"] == ["verify"]
    assert "d" not in public and "p" not in public


@pytest.mark.parametrize(("curve", "alg"), [("P-256", "ES256"), ("P-384", "ES384"), ("P-521", "ES512")])
@pytest.mark.parametrize("fmt", ["pkcs8", "pkcs1"])
def test_ec_pem_default_algorithm_per_curve(curve, alg, fmt):
    key = load_keys(pem(ec_key(curve), fmt)).signing_key
    assert key.algorithm == alg
    assert key.public_jwk()["crv"] == curve
    assert "d" not in key.public_jwk()


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS384"])
def test_explicit_rsa_algorithms(alg):
    key = load_keys(pem(rsa_key()), algorithm=alg.lower()).signing_key
    assert key.algorithm == alg
    token = jwt.encode({"x": 1}, key.private_key, algorithm=alg)
    assert jwt.decode(token, key.private_key.public_key(), algorithms=[alg]) == {"x": 1}


@pytest.mark.parametrize(
    ("curve", "wrong"), [("P-384", "RS384"), ("P-384", "ES256"), ("P-256", "ES384"), ("P-521", "PS384")]
)
def test_algorithm_that_does_not_fit_the_key(curve, wrong):
    with pytest.raises(KeyLoadError) as info:
        load_keys(pem(ec_key(curve)), algorithm=wrong)
    message = str(info.value)
    assert f"algorithm {wrong} does not fit" in message
    assert curve in message and "algorithm extra" in message
    assert "PRIVATE" not in message


def test_rsa_key_with_ec_algorithm():
    with pytest.raises(KeyLoadError, match=r"ES384 does not fit the signing key .*RSA key .*one of PS384, RS256"):
        load_keys(pem(rsa_key()), algorithm="ES384")


def test_unknown_algorithm():
    with pytest.raises(KeyLoadError, match="unsupported signing algorithm 'HS256'"):
        load_keys(pem(rsa_key()), algorithm="HS256")


def test_jwk_and_jwks_with_rotation():
    current = private_jwk(rsa_key(0), kid="current-2026")
    nxt = private_jwk(ec_key("P-384"), kid="next-2027")
    text = json.dumps({"keys": [nxt, current]})
    keys = load_keys(text, kid="current-2026")
    assert keys.signing_key.kid == "current-2026"
    assert keys.signing_key.algorithm == "RS384"
    published = keys.public_jwks()
    assert [k["kid"] for k in published["keys"]] == ["next-2027", "current-2026"]
    assert {k["alg"] for k in published["keys"]} == {"RS384", "ES384"}
    assert all("d" not in k for k in published["keys"])
    # Without a kid the first key signs.
    assert load_keys(text).signing_key.kid == "next-2027"


def test_several_pem_blocks_are_rotation_too():
    text = pem(rsa_key(0)) + "\n" + pem(rsa_key(1))
    keys = load_keys(text)
    assert len(keys) == 2
    second = keys.keys[1].kid
    assert load_keys(text, kid=second).signing_key.kid == second


def test_kid_extra_names_a_single_key_without_kid():
    keys = load_keys(pem(ec_key("P-384")), kid="my-registered-kid")
    assert keys.signing_key.kid == "my-registered-kid"


def test_kid_extra_matching_no_key():
    text = json.dumps({"keys": [private_jwk(rsa_key(), kid="a"), private_jwk(ec_key(), kid="b")]})
    with pytest.raises(KeyLoadError, match=r"kid 'zzz' matches none .*kids: a, b"):
        load_keys(text, kid="zzz")


def test_jwk_alg_is_checked():
    with pytest.raises(KeyLoadError, match="ES256 does not fit"):
        load_keys(json.dumps(private_jwk(ec_key("P-384"), alg="ES256", kid="k")))


def test_explicit_algorithm_applies_to_fitting_rotation_keys():
    text = json.dumps({"keys": [private_jwk(rsa_key(0), kid="a"), private_jwk(rsa_key(1), kid="b")]})
    keys = load_keys(text, algorithm="RS256")
    assert [k.algorithm for k in keys] == ["RS256", "RS256"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "is empty"),
        ("not a key at all", "neither PEM"),
        ("/etc/keys/client.pem", "private_key_file extra"),
        ("-----BEGIN PRIVATE KEY-----\nAAAA", "no complete PEM block"),
        ("-----BEGIN PRIVATE KEY-----\nAAAABBBB\n-----END PRIVATE KEY-----\n", "could not be read"),
        ('{"kty": "RSA"', "not valid JSON"),
        ('{"keys": []}', "without keys"),
        ('{"kty": "oct", "k": "abc", "d": "x"}', "kty 'oct'"),
        ('{"kty": "RSA", "n": "AQAB", "e": "AQAB", "d": "AQAB"}', "could not be read"),
    ],
)
def test_bad_key_text(text, needle):
    with pytest.raises(KeyLoadError, match=needle):
        load_keys(text)


def test_public_key_instead_of_private():
    with pytest.raises(KeyLoadError, match="is public; the connection needs the PRIVATE key"):
        load_keys(public_pem(rsa_key()))
    public_only = {k: v for k, v in private_jwk(ec_key(), kid="x").items() if k != "d"}
    with pytest.raises(KeyLoadError, match=r"no private part \('d'\)"):
        load_keys(json.dumps({"keys": [public_only]}))


def test_encrypted_pem_is_refused():
    from cryptography.hazmat.primitives import serialization

    encrypted = (
        rsa_key()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
        .decode()
    )
    with pytest.raises(KeyLoadError, match="encrypted with a passphrase"):
        load_keys(encrypted)


def test_small_rsa_key_and_odd_curve_are_refused():
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    with pytest.raises(KeyLoadError, match="1024 bits"):
        load_keys(pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))  # noqa: S505 - the test needs a weak key
    with pytest.raises(KeyLoadError, match="secp256k1"):
        load_keys(pem(ec.generate_private_key(ec.SECP256K1())))


def test_escaped_newlines_from_env_vars():
    text = pem(ec_key()).replace("\n", "\\n")
    assert load_keys(text).signing_key.algorithm == "ES384"


def test_duplicate_kids():
    text = json.dumps({"keys": [private_jwk(rsa_key(0), kid="same"), private_jwk(rsa_key(1), kid="same")]})
    with pytest.raises(KeyLoadError, match="share the kid"):
        load_keys(text)


def test_private_material_never_in_repr_or_pickle():
    key_pem = pem(rsa_key())
    keys = load_keys(key_pem)
    signing = keys.signing_key
    numbers = signing.private_key.private_numbers()
    for shown in (repr(keys), str(keys), repr(signing), str(signing), repr(keys.keys)):
        assert "PRIVATE" not in shown
        assert str(numbers.d)[:20] not in shown
        assert signing.kid in shown
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(signing)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(keys)


def test_error_messages_hold_no_key_material():
    damaged = pem(rsa_key()).replace("A", "#", 3)
    with pytest.raises(KeyLoadError) as info:
        load_keys(damaged)
    body_line = damaged.splitlines()[1]
    assert body_line not in str(info.value)


def test_key_file(tmp_path):
    path = tmp_path / "client.pem"
    path.write_text(pem(ec_key("P-256")))
    assert load_key_file(path).signing_key.algorithm == "ES256"
    with pytest.raises(KeyLoadError, match=r"cannot read the private key file .*missing\.pem"):
        load_key_file(tmp_path / "missing.pem")


def test_public_jwks_function_and_signing_key():
    a = SigningKey(rsa_key(0))
    b = SigningKey(ec_key("P-384"), kid="b")
    jwks = public_jwks([a, b])
    assert [k["kty"] for k in jwks["keys"]] == ["RSA", "EC"]
    assert jwks["keys"][1]["kid"] == "b"
