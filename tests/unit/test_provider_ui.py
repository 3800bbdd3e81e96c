"""What Airflow's UI gets from this provider: form fields, the docs link, the Test button's port fix."""

from __future__ import annotations

import json
from importlib.metadata import distribution
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from airflow_provider_smart.auth.keys import SUPPORTED_ALGORITHMS, load_keys
from airflow_provider_smart.auth.settings import SmartConnectionSettings
from airflow_provider_smart.get_provider_info import get_provider_info
from airflow_provider_smart.plugins.connection_test import SmartConnectionTestPortMiddleware, drop_unset_port


def connection_type() -> dict[str, Any]:
    types = get_provider_info()["connection-types"]
    return dict(next(t for t in types if t["connection-type"] == "smart_fhir"))


def non_null_types(schema: dict[str, Any]) -> list[str]:
    kinds = schema.get("type", [])
    return [k for k in ([kinds] if isinstance(kinds, str) else kinds) if k != "null"]


def test_documentation_url_is_this_projects() -> None:
    urls = dict(entry.split(",", 1) for entry in distribution("airflow-provider-smart").metadata.get_all("Project-URL"))
    url = urls["Documentation"].strip()
    assert url.startswith("https://") and "apache.org" not in url


def test_every_field_gets_a_single_purpose_widget() -> None:
    for name, field in connection_type()["conn-fields"].items():
        schema = field["schema"]
        # Airflow's form falls back to a free JSON textarea for a field of several types without a list.
        assert len(non_null_types(schema)) == 1, name
        assert None not in schema.get("enum", []), f"{name}: null would show as the option 'null'"
        if "default" in schema and schema["default"] is not None and non_null_types(schema) == ["object"]:
            assert isinstance(schema["default"], dict)


def test_algorithm_choices_are_what_the_key_loader_supports() -> None:
    assert tuple(connection_type()["conn-fields"]["algorithm"]["schema"]["enum"]) == SUPPORTED_ALGORITHMS


def test_help_texts_name_the_real_fields() -> None:
    info = connection_type()
    key_file = info["conn-fields"]["private_key_file"]["description"]
    assert "password field" not in key_file
    assert "Private key field" in key_file and "wins" in key_file
    assert info["ui-field-behaviour"]["relabeling"]["password"].startswith("Private key")
    assert "one line" in info["ui-field-behaviour"]["placeholders"]["password"]
    assert "extra" not in info["ui-field-behaviour"]["placeholders"]  # the form prefills Extra: never shown


def test_what_the_form_saves_by_default_is_a_valid_connection() -> None:
    # Airflow's form saves every field: its default, or null when it has none.
    extra = {name: field["schema"].get("default") for name, field in connection_type()["conn-fields"].items()}
    settings = SmartConnectionSettings.from_fields(
        "ui", host="https://fhir.example.org/r4", login="client", password="-----BEGIN", extra=json.dumps(extra)
    )
    assert settings.scope == "system/*.read"
    assert settings.verify is True and settings.timeout == 60 and settings.headers == {}
    assert settings.kid is None and settings.algorithm is None and settings.token_url is None
    assert settings.allow_insecure_http is False and settings.max_retry_after == 300
    assert settings.allowed_internal_hosts == () and settings.header_origins == ()
    for text, verify in (("false", False), ("true", True)):
        assert (
            SmartConnectionSettings.from_fields(
                "ui", host="https://x/r4", login="c", password="k", extra={"verify": text}
            ).verify
            is verify
        )


def _pem(key: Any, fmt: serialization.PrivateFormat) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


@pytest.mark.parametrize(
    "pem",
    [
        _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048), serialization.PrivateFormat.PKCS8),
        _pem(
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            serialization.PrivateFormat.TraditionalOpenSSL,
        ),
        _pem(ec.generate_private_key(ec.SECP384R1()), serialization.PrivateFormat.PKCS8),
    ],
    ids=["rsa-pkcs8", "rsa-pkcs1", "ec-p384"],
)
@pytest.mark.parametrize("joiner", ["", " "], ids=["line-breaks-dropped", "line-breaks-as-spaces"])
def test_a_pem_pasted_into_the_one_line_field_is_the_same_key(pem: str, joiner: str) -> None:
    # A browser drops the line breaks of text pasted into <input type=password>.
    pasted = joiner.join(pem.splitlines())
    assert "\n" not in pasted
    original = load_keys(pem, source="test key").keys[0]
    restored = load_keys(pasted, source="test key").keys[0]
    assert restored.kid == original.kid and restored.algorithm == original.algorithm


# --- the Test button's port ----------------------------------------------------------------------------


def test_drop_unset_port_only_for_smart_fhir_and_port_zero() -> None:
    body = {"connection_id": "c", "conn_type": "smart_fhir", "host": "https://x/r4", "port": 0, "password": "***"}
    rewritten = drop_unset_port(json.dumps(body).encode())
    assert rewritten is not None
    assert json.loads(rewritten) == {k: v for k, v in body.items() if k != "port"}
    assert drop_unset_port(json.dumps({**body, "port": 8443}).encode()) is None
    assert drop_unset_port(json.dumps({**body, "port": False}).encode()) is None
    assert drop_unset_port(json.dumps({**body, "conn_type": "http"}).encode()) is None
    assert drop_unset_port(json.dumps({k: v for k, v in body.items() if k != "port"}).encode()) is None
    assert drop_unset_port(b"not json") is None
    assert drop_unset_port(b"[0]") is None


def _echo_app() -> Any:
    async def echo(request: Request) -> JSONResponse:
        raw = await request.body()
        return JSONResponse({"body": json.loads(raw) if raw else None, "length": request.headers.get("content-length")})

    routes = [
        Route(path, echo, methods=["GET", "POST"]) for path in ("/api/v2/connections/test", "/api/v2/connections")
    ]
    return SmartConnectionTestPortMiddleware(Starlette(routes=routes))


@pytest.mark.parametrize(
    ("path", "body", "dropped"),
    [
        ("/api/v2/connections/test", {"conn_type": "smart_fhir", "port": 0, "host": "h"}, True),
        ("/api/v2/connections/test", {"conn_type": "http", "port": 0, "host": "h"}, False),
        ("/api/v2/connections/test", {"conn_type": "smart_fhir", "port": 443, "host": "h"}, False),
        ("/api/v2/connections", {"conn_type": "smart_fhir", "port": 0, "host": "h"}, False),
    ],
)
def test_the_middleware_rewrites_only_smart_fhir_connection_tests(
    path: str, body: dict[str, Any], dropped: bool
) -> None:
    with TestClient(_echo_app()) as client:
        answer = client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"}).json()
    expected = {k: v for k, v in body.items() if not (dropped and k == "port")}
    assert answer["body"] == expected
    assert int(answer["length"]) == len(json.dumps(expected) if dropped else json.dumps(body))


def test_the_middleware_passes_large_bodies_and_other_methods_through() -> None:
    big = {"conn_type": "smart_fhir", "port": 0, "extra": "x" * (2 * 1024 * 1024)}
    with TestClient(_echo_app()) as client:
        assert client.post("/api/v2/connections/test", json=big).json()["body"]["port"] == 0
        assert client.get("/api/v2/connections/test").json()["body"] is None
