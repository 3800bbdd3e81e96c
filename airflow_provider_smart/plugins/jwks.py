"""Airflow plugin serving each smart_fhir connection's public JWKS at ``/.well-known/jwks/<conn_id>.json``.

A FHIR server uses that URL as the ``jwks_uri`` of the client the connection signs for: keys added to the
connection (for rotation) are published at once, only public keys ever leave the process, and no other
connection's keys appear there, so whoever may add a connection cannot sign as another connection's
client. The merged set of all connections at ``/.well-known/jwks.json`` is served only when
``[smart_fhir] jwks_merged`` is on, and refuses a ``kid`` two connections claim with different keys.

Connections come from the metadata database and from ``AIRFLOW_CONN_*`` environment variables; a
connection whose key cannot be loaded is skipped with a warning that names it (and no key material).

The FastAPI app is built lazily, the first time the API server asks for ``fastapi_apps``, so processes
that merely load plugins (scheduler, workers) never import FastAPI for it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_smart.auth.settings import load_connection_keys
from airflow_provider_smart.config import private_key_dir
from airflow_provider_smart.transport.sanitize import safe_text

if TYPE_CHECKING:
    from fastapi import FastAPI, Response

log = logging.getLogger(__name__)

CONN_TYPE = "smart_fhir"
#: Mounted by Airflow under this prefix; the app serves ``/jwks/<conn_id>.json`` (and, opted in,
#: ``/jwks.json``) below it.
URL_PREFIX = "/.well-known"
CONNECTION_PATH = "/jwks"
JWKS_PATH = "/jwks.json"
CONFIG_SECTION = "smart_fhir"
MERGED_OPTION = "jwks_merged"
# Airflow's own rule for connection ids (letters, digits, ``_.-``), bounded.
_CONN_ID = re.compile(r"[A-Za-z0-9_.-]{1,250}")


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


def connection_jwks(conn: ConnectionKeys) -> dict[str, Any]:
    """The public JWKS of one connection (every key it holds, so a rotation's next key shows too)."""
    return load_connection_keys(conn.conn_id, conn.password, conn.extra, private_key_dir()).public_jwks()


def _skip_broken(conn: ConnectionKeys, exc: Exception) -> None:
    # Only the exception type and the conn id: nothing of the key is ever formatted here.
    log.warning(
        "Skipping smart_fhir connection %s in the public JWKS: its key cannot be loaded (%s)",
        conn.conn_id,
        type(exc).__name__,
    )


def collect_public_jwks(connections: Iterable[ConnectionKeys]) -> dict[str, Any]:
    """The merged public JWKS of all connections (only served when :func:`merged_jwks_enabled`).

    The same key held by several connections is published once. A ``kid`` claimed by two connections with
    different keys is refused: neither key is published under it and an error names the kid and the
    connections, because a FHIR server picks the key by ``kid`` and a first-wins choice would let one
    connection sign as, or lock out, the other's client. Broken connections are skipped.
    """
    keys: dict[str, dict[str, Any]] = {}
    owners: dict[str, list[str]] = {}
    refused: set[str] = set()
    for conn in connections:
        try:
            jwks = connection_jwks(conn)
        except Exception as exc:
            _skip_broken(conn, exc)
            continue
        for jwk in jwks["keys"]:
            kid = jwk["kid"]
            known = keys.get(kid)
            if known is None:
                keys[kid] = jwk
            elif _public_part(known) != _public_part(jwk):
                refused.add(kid)
            owners.setdefault(kid, []).append(conn.conn_id)
    for kid in sorted(refused):
        log.error(
            "Refusing kid %s in the merged JWKS: connections %s hold different keys under it. Give each key "
            "its own kid, or register each client's own URL (%s/jwks/<conn_id>.json) instead of the merged set",
            safe_text(kid, limit=200),
            ", ".join(sorted(set(owners[kid]))),
            URL_PREFIX,
        )
    return {"keys": [jwk for kid, jwk in keys.items() if kid not in refused]}


def _public_part(jwk: dict[str, Any]) -> tuple[Any, ...]:
    """The members that make the key (not its labels such as alg or use)."""
    return tuple(jwk.get(name) for name in ("kty", "crv", "x", "y", "n", "e"))


def merged_jwks_enabled() -> bool:
    """Whether ``/jwks.json`` serves the merged set: ``[smart_fhir] jwks_merged = True`` in the Airflow
    configuration (``AIRFLOW__SMART_FHIR__JWKS_MERGED=true``). Off by default."""
    from airflow.configuration import conf

    return conf.getboolean(CONFIG_SECTION, MERGED_OPTION, fallback=False)


def _jwks_response(body: dict[str, Any]) -> Response:
    from fastapi import Response

    return Response(
        content=json.dumps(body),
        media_type="application/jwk-set+json",
        headers={"Cache-Control": "public, max-age=60"},
    )


def _error(status: int, message: str) -> Response:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers={"Cache-Control": "no-store"})


def create_jwks_app(source: ConnectionSource | None = None, *, merged: bool | None = None) -> FastAPI:
    """A FastAPI app serving ``GET /jwks/<conn_id>.json`` per connection and, when opted in, the merged
    ``GET /jwks.json`` (mounted at ``/.well-known`` by the plugin).

    :param source: returns the connections to publish; default: database and environment connections.
    :param merged: serve the merged set; default: the Airflow configuration, read at each request.
    """
    from fastapi import FastAPI

    get_connections = source or configured_connections
    app = FastAPI(title="SMART on FHIR public JWKS", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get(CONNECTION_PATH + "/{name}")
    def connection(name: str) -> Response:
        conn_id = name.removesuffix(".json")
        found = None
        if name.endswith(".json") and _CONN_ID.fullmatch(conn_id):
            found = next((c for c in get_connections() if c.conn_id == conn_id), None)
        if found is None:
            return _error(
                404,
                f"no smart_fhir connection {safe_text(conn_id, limit=250)!r} is published here; the URL is "
                f"{URL_PREFIX}{CONNECTION_PATH}/<conn_id>.json with the id of a smart_fhir connection",
            )
        try:
            return _jwks_response(connection_jwks(found))
        except Exception as exc:
            _skip_broken(found, exc)
            return _error(
                503,
                f"the key of connection {conn_id!r} cannot be loaded ({type(exc).__name__}); "
                "the API server's log names the problem",
            )

    @app.get(JWKS_PATH)
    def jwks() -> Response:
        if not (merged_jwks_enabled() if merged is None else merged):
            return _error(
                404,
                f"the merged JWKS of all connections is off: register each client's own URL "
                f"{URL_PREFIX}{CONNECTION_PATH}/<conn_id>.json, or set [{CONFIG_SECTION}] {MERGED_OPTION} = True "
                f"(AIRFLOW__{CONFIG_SECTION.upper()}__{MERGED_OPTION.upper()}=true) to serve it",
            )
        return _jwks_response(collect_public_jwks(get_connections()))

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
    """Serves each smart_fhir connection's public keys at ``/.well-known/jwks/<conn_id>.json``."""

    name = "smart_fhir_jwks"
    fastapi_apps = _LazyFastApiApps()  # type: ignore[assignment]
