"""The JWKS plugin's app over real HTTP on 127.0.0.1, mounted the way the Airflow API server mounts it."""

from __future__ import annotations

import json
import logging

import pytest
import requests

from airflow_provider_smart.plugins.jwks import (
    URL_PREFIX,
    ConnectionKeys,
    SmartJwksPlugin,
    collect_public_jwks,
    create_jwks_app,
    env_connections,
)
from tests.loopback import serve
from tests.smart_keys import ec_key, pem, rsa_key

pytestmark = pytest.mark.integration


def mounted(source):
    from fastapi import FastAPI

    root = FastAPI()
    root.mount(URL_PREFIX, create_jwks_app(source))
    return root


def private_jwks_text() -> str:
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    current = RSAAlgorithm.to_jwk(rsa_key(0), as_dict=True) | {"kid": "current"}
    nxt = ECAlgorithm.to_jwk(ec_key("P-384"), as_dict=True) | {"kid": "next"}
    return json.dumps({"keys": [current, nxt]})


def connections_with_rotation_and_a_broken_key() -> list[ConnectionKeys]:
    return [
        ConnectionKeys("rotating", private_jwks_text(), {"kid": "current"}),
        ConnectionKeys("pem_conn", pem(ec_key("P-256")), None),
        ConnectionKeys("broken_conn", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", None),
        ConnectionKeys("same_key", pem(ec_key("P-256")), None),
    ]


def test_each_connection_is_served_at_its_own_url(caplog):
    connections = connections_with_rotation_and_a_broken_key()
    with caplog.at_level(logging.WARNING), serve(mounted(lambda: connections)) as base:
        rotating = requests.get(base + "/.well-known/jwks/rotating.json", timeout=10)
        single = requests.get(base + "/.well-known/jwks/pem_conn.json", timeout=10)
        broken = requests.get(base + "/.well-known/jwks/broken_conn.json", timeout=10)
        unknown = requests.get(base + "/.well-known/jwks/nobody.json", timeout=10)
        no_suffix = requests.get(base + "/.well-known/jwks/rotating", timeout=10)
    assert rotating.status_code == 200
    assert rotating.headers["content-type"].startswith("application/jwk-set+json")
    keys = rotating.json()["keys"]
    assert [k["kid"] for k in keys] == ["current", "next"]  # the rotation's next key is published too
    assert {k["alg"] for k in keys} == {"RS384", "ES384"}
    (only,) = single.json()["keys"]  # nothing of the other connections
    assert only["alg"] == "ES256" and only["kid"] not in ("current", "next")
    for jwk in [*keys, only]:
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
        assert jwk["use"] == "sig"
    assert broken.status_code == 503 and "broken_conn" in broken.json()["error"]
    assert "AAAA" not in broken.text and "AAAA" not in caplog.text and "broken_conn" in caplog.text
    assert unknown.status_code == 404 and "nobody" in unknown.json()["error"]
    assert "/jwks/<conn_id>.json" in unknown.json()["error"]
    assert no_suffix.status_code == 404


def test_merged_set_is_off_unless_configured(monkeypatch):
    monkeypatch.delenv("AIRFLOW__SMART_FHIR__JWKS_MERGED", raising=False)
    connections = connections_with_rotation_and_a_broken_key()
    with serve(mounted(lambda: connections)) as base:
        off = requests.get(base + "/.well-known/jwks.json", timeout=10)
        monkeypatch.setenv("AIRFLOW__SMART_FHIR__JWKS_MERGED", "true")  # read at each request
        on = requests.get(base + "/.well-known/jwks.json", timeout=10)
    assert off.status_code == 404
    assert "jwks_merged" in off.json()["error"] and "/jwks/<conn_id>.json" in off.json()["error"]
    assert off.json() != {"keys": []} and "keys" not in off.json()
    assert on.status_code == 200
    keys = on.json()["keys"]
    assert [k["kid"] for k in keys][:2] == ["current", "next"]
    assert len(keys) == 3  # the key two connections share is published once; the broken one is skipped


def test_merged_set_refuses_a_kid_claimed_by_two_connections_with_different_keys(caplog):
    victim = ConnectionKeys("victim", pem(ec_key("P-384")), {"kid": "team-key"})
    intruder = ConnectionKeys("intruder", pem(rsa_key(0)), {"kid": "team-key"})
    bystander = ConnectionKeys("bystander", pem(ec_key("P-256")), {"kid": "other"})
    for order in ([victim, intruder, bystander], [intruder, victim, bystander]):
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            keys = collect_public_jwks(order)["keys"]
        assert [k["kid"] for k in keys] == ["other"]  # neither claimant wins, whatever the order
        assert "team-key" in caplog.text and "intruder" in caplog.text and "victim" in caplog.text
    with serve(mounted(lambda: [victim, intruder, bystander])) as base:  # its own URL is unaffected
        (own,) = requests.get(base + "/.well-known/jwks/victim.json", timeout=10).json()["keys"]
    assert own["kid"] == "team-key" and own["kty"] == "EC"


def test_a_connection_url_as_jwks_uri_of_the_sandbox(sandbox):
    """The sandbox fetches a client's keys from its connection's URL; another connection's key, even under
    the same kid, does not sign for that client."""
    from tests.sandbox_fixtures import SmartClient, make_key, register_client

    key, key_pem, public = make_key("ES384")
    other_key, other_pem, _ = make_key("RS384")
    connections = [
        ConnectionKeys("intruder", other_pem, {"kid": public["kid"]}),  # claims the clinic's kid, listed first
        ConnectionKeys("clinic", key_pem, {"kid": public["kid"], "algorithm": "ES384"}),
    ]
    with serve(mounted(lambda: connections)) as base:
        uri = base + "/.well-known/jwks/clinic.json"
        register_client(sandbox, "clinic-client", jwks_uri=uri)
        client = SmartClient(sandbox, "clinic-client", "clinic", "ES384", key, key_pem, public, jwks_uri=uri)
        granted = client.token_response()
        forged = client.token_response(assertion=client.assertion(key=other_key, headers={"alg": "RS384"}))
    assert granted.status_code == 200, granted.text
    assert forged.status_code == 401 and forged.json()["error"] == "invalid_client"
    assert sandbox.state.jwks_fetches[uri] >= 1


def test_plugin_registers_the_app_at_well_known():
    (entry,) = SmartJwksPlugin.fastapi_apps
    assert entry["url_prefix"] == "/.well-known"
    assert SmartJwksPlugin.fastapi_apps is SmartJwksPlugin.fastapi_apps  # built once


def test_env_connections_are_found(monkeypatch):
    key = pem(rsa_key())
    environ = {
        "AIRFLOW_CONN_SMART_A": json.dumps(
            {"conn_type": "smart_fhir", "host": "http://x/fhir", "login": "a", "password": key}
        ),
        "AIRFLOW_CONN_HTTP_B": json.dumps({"conn_type": "http", "host": "x"}),
        "AIRFLOW_CONN_BROKEN": "{not json",
    }
    found = env_connections(environ)
    assert [c.conn_id for c in found] == ["smart_a"]
    assert len(collect_public_jwks(found)["keys"]) == 1
    assert key not in repr(found)


def test_mounted_by_airflow_api_server_plugin_loading(airflow_db, monkeypatch):
    """Airflow's own plugin integration mounts the app; env and database connections are served at their URLs."""
    from airflow.api_fastapi.app import init_plugins
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session
    from fastapi import FastAPI

    env_key, db_key = rsa_key(0), ec_key("P-384")
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMART_ENV_JWKS",
        json.dumps({"conn_type": "smart_fhir", "host": "http://x/fhir", "login": "a", "password": pem(env_key)}),
    )
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == "smart_db_jwks").delete()
        session.add(
            Connection(
                conn_id="smart_db_jwks",
                conn_type="smart_fhir",
                host="http://x/fhir",
                login="b",
                password=pem(db_key),
                extra=json.dumps({"kid": "db-key"}),
            )
        )
    try:
        app = FastAPI()
        init_plugins(app)
        with serve(app) as base:
            db_keys = requests.get(base + "/.well-known/jwks/smart_db_jwks.json", timeout=10).json()["keys"]
            env_keys = requests.get(base + "/.well-known/jwks/smart_env_jwks.json", timeout=10).json()["keys"]
    finally:
        with create_session() as session:
            session.query(Connection).filter(Connection.conn_id == "smart_db_jwks").delete()
    assert [(k["kid"], k["alg"]) for k in db_keys] == [("db-key", "ES384")]
    assert [k["kty"] for k in env_keys] == ["RSA"]


def test_a_key_file_outside_private_key_dir_is_not_read_by_the_api_server(monkeypatch, tmp_path, caplog):
    """Whoever may edit connections picks private_key_file: the API server reads only [smart_fhir] private_key_dir."""
    keys, elsewhere = tmp_path / "keys", tmp_path / "elsewhere"
    keys.mkdir()
    elsewhere.mkdir()
    (keys / "inside.pem").write_text(pem(ec_key("P-256")))
    (elsewhere / "outside.pem").write_text(pem(ec_key("P-256")))
    monkeypatch.setenv("AIRFLOW__SMART_FHIR__PRIVATE_KEY_DIR", str(keys))
    connections = [
        ConnectionKeys("inside", None, {"private_key_file": "inside.pem"}),
        ConnectionKeys("outside", None, {"private_key_file": str(elsewhere / "outside.pem")}),
    ]
    with caplog.at_level(logging.WARNING), serve(mounted(lambda: connections)) as base:
        inside = requests.get(base + "/.well-known/jwks/inside.json", timeout=10)
        outside = requests.get(base + "/.well-known/jwks/outside.json", timeout=10)
    assert inside.status_code == 200 and len(inside.json()["keys"]) == 1
    assert outside.status_code == 503 and "outside" in outside.json()["error"]
    assert "KeyLoadError" in caplog.text
