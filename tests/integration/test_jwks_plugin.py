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


def test_serves_current_and_next_keys_and_skips_broken_connections(caplog):
    connections = [
        ConnectionKeys("rotating", private_jwks_text(), {"kid": "current"}),
        ConnectionKeys("pem_conn", pem(ec_key("P-256")), None),
        ConnectionKeys("broken_conn", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", None),
        ConnectionKeys("duplicate", pem(ec_key("P-256")), None),
    ]
    with caplog.at_level(logging.WARNING), serve(mounted(lambda: connections)) as base:
        response = requests.get(base + "/.well-known/jwks.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/jwk-set+json")
    keys = response.json()["keys"]
    assert [k["kid"] for k in keys][:2] == ["current", "next"]
    assert len(keys) == 3  # the duplicate key is published once
    assert {k["alg"] for k in keys} == {"RS384", "ES384", "ES256"}
    for jwk in keys:
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
        assert jwk["use"] == "sig"
    assert "broken_conn" in caplog.text and "AAAA" not in caplog.text


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
    """Airflow's own plugin integration mounts the app; env and database connections are both served."""
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
            keys = requests.get(base + "/.well-known/jwks.json", timeout=10).json()["keys"]
    finally:
        with create_session() as session:
            session.query(Connection).filter(Connection.conn_id == "smart_db_jwks").delete()
    kids = {k["kid"]: k for k in keys}
    assert kids["db-key"]["alg"] == "ES384"
    assert any(k["kty"] == "RSA" for k in keys)
