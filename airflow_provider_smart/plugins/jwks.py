"""Airflow plugin serving the public JWKS of every smart_fhir connection at ``/.well-known/jwks.json``.

A FHIR server can use that URL as the client's ``jwks_uri``: keys added to a connection (for rotation)
are published at once, and only public keys ever leave the process. Connections come from the metadata
database and from ``AIRFLOW_CONN_*`` environment variables; a connection whose key cannot be loaded is
skipped with a warning that names it (and no key material).

The FastAPI app is built lazily, the first time the API server asks for ``fastapi_apps``, so processes
that merely load plugins (scheduler, workers) never import FastAPI for it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_smart.auth.settings import load_connection_keys

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)

CONN_TYPE = "smart_fhir"
#: Mounted by Airflow under this prefix; the app serves ``/jwks.json`` below it.
URL_PREFIX = "/.well-known"
JWKS_PATH = "/jwks.json"


@dataclass(frozen=True)
class ConnectionKeys:
    """The key-related fields of one connection (the password is the private key: never shown)."""

    conn_id: str
    password: str | None = field(repr=False)
    extra: str | dict[str, Any] | None = None


ConnectionSource = Callable[[], Iterable[ConnectionKeys]]


def env_connections(environ: dict[str, str] | None = None) -> list[ConnectionKeys]:
    """smart_fhir connections defined as ``AIRFLOW_CONN_<ID>`` environment variables (JSON or URI form)."""
    from airflow.models.connection import Connection

    found: list[ConnectionKeys] = []
    for name, value in sorted((environ if environ is not None else os.environ).items()):
        if not name.startswith("AIRFLOW_CONN_"):
            continue
        conn_id = name[len("AIRFLOW_CONN_") :].lower()
        try:
            text = value.strip()
            conn = (
                Connection.from_json(text, conn_id=conn_id) if text.startswith("{") else Connection(conn_id, uri=text)
            )
        except Exception:
            log.warning("Skipping connection %s from the environment: it cannot be parsed", conn_id)
            continue
        if conn.conn_type == CONN_TYPE:
            found.append(ConnectionKeys(conn_id, conn.password, conn.extra))
    return found


def db_connections() -> list[ConnectionKeys]:
    """smart_fhir connections stored in the metadata database (decrypted by the Connection model)."""
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(Connection).where(Connection.conn_type == CONN_TYPE)).all()
        return [ConnectionKeys(row.conn_id, row.password, row.extra) for row in rows]


def configured_connections() -> list[ConnectionKeys]:
    """Database connections plus environment ones (the environment wins for the same conn_id, as in Airflow)."""
    by_id: dict[str, ConnectionKeys] = {}
    try:
        by_id.update((c.conn_id, c) for c in db_connections())
    except Exception as exc:  # the JWKS of env connections is still worth serving
        log.warning("Cannot list smart_fhir connections from the metadata database: %s", type(exc).__name__)
    by_id.update((c.conn_id, c) for c in env_connections())
    return [by_id[k] for k in sorted(by_id)]


def collect_public_jwks(connections: Iterable[ConnectionKeys]) -> dict[str, Any]:
    """The public JWKS of all keys of all connections, each key once; broken connections are skipped."""
    keys: dict[str, dict[str, Any]] = {}
    for conn in connections:
        try:
            keyset = load_connection_keys(conn.conn_id, conn.password, conn.extra)
        except Exception as exc:
            # Only the exception type and the conn id: a message could quote a file path, never a key,
            # but the rule is simple to keep if nothing of the key is ever formatted here.
            log.warning(
                "Skipping smart_fhir connection %s in the public JWKS: its key cannot be loaded (%s)",
                conn.conn_id,
                type(exc).__name__,
            )
            continue
        for jwk in keyset.public_jwks()["keys"]:
            keys.setdefault(jwk["kid"], jwk)
    return {"keys": list(keys.values())}


def create_jwks_app(source: ConnectionSource | None = None) -> FastAPI:
    """A FastAPI app serving ``GET /jwks.json`` (mounted at ``/.well-known`` by the plugin).

    :param source: returns the connections to publish; default: database and environment connections.
    """
    from fastapi import FastAPI, Response

    get_connections = source or configured_connections
    app = FastAPI(title="SMART on FHIR public JWKS", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get(JWKS_PATH)
    def jwks() -> Response:
        body = collect_public_jwks(get_connections())
        return Response(
            content=json.dumps(body),
            media_type="application/jwk-set+json",
            headers={"Cache-Control": "public, max-age=60"},
        )

    return app


class _LazyFastApiApps:
    """Builds the plugin's app on first access, so loading the plugin does not import FastAPI."""

    def __init__(self) -> None:
        self._apps: list[dict[str, Any]] | None = None

    def __get__(self, instance: object, owner: type | None = None) -> list[dict[str, Any]]:
        if self._apps is None:
            self._apps = [
                {"app": create_jwks_app(), "url_prefix": URL_PREFIX, "name": "SMART on FHIR public JWKS"},
            ]
        return self._apps


class SmartJwksPlugin(AirflowPlugin):
    """Serves the public keys of the smart_fhir connections at ``/.well-known/jwks.json``."""

    name = "smart_fhir_jwks"
    fastapi_apps = _LazyFastApiApps()  # type: ignore[assignment]
