"""Airflow plugin that lets the UI's Test button work for ``smart_fhir`` connections.

The connections list of Airflow 3's UI sends ``port: Number(connection.port)`` with every test, which is
``0`` when the stored port is NULL, and the API refuses a test whose host or port differs from the
stored connection ("The host or port to test differs from the stored connection"). A ``smart_fhir``
connection never has a port (the FHIR base URL in the host carries it, and the form hides the field), so
every connection made in the UI failed with "Bad Request".

This middleware of the API server removes ``"port": 0`` from a connection test request of type
``smart_fhir`` before Airflow reads it. Without the field, Airflow tests the stored connection as it is:
the destination is still the stored one, so no credential can be sent anywhere else. Requests of other
connection types, other ports and other endpoints pass through untouched.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from airflow.plugins_manager import AirflowPlugin

CONN_TYPE = "smart_fhir"
TEST_PATH_SUFFIX = "/connections/test"
#: A connection test body is a few KiB (a key, a few extras); larger bodies are passed on unread.
MAX_BODY_BYTES = 1024 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def drop_unset_port(body: bytes) -> bytes | None:
    """The body without ``"port": 0`` when it tests a ``smart_fhir`` connection; None to keep it as is."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("conn_type") != CONN_TYPE:
        return None
    port = data.get("port")
    if port != 0 or isinstance(port, bool):  # False == 0 in Python; only a numeric 0 is the UI's NULL
        return None
    del data["port"]
    return json.dumps(data).encode()


class SmartConnectionTestPortMiddleware:
    """ASGI middleware applying :func:`drop_unset_port` to ``POST .../connections/test``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope.get("type") == "http"
            and scope.get("method") == "POST"
            and str(scope.get("path", "")).rstrip("/").endswith(TEST_PATH_SUFFIX)
        ):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        more = True
        while more:
            message = await receive()
            messages.append(message)
            if message.get("type") != "http.request":
                break  # e.g. http.disconnect: hand on what arrived
            size += len(message.get("body", b""))
            more = bool(message.get("more_body", False))
            if size > MAX_BODY_BYTES:
                break
        rewritten = None
        complete = not more and size <= MAX_BODY_BYTES
        if complete and all(m.get("type") == "http.request" for m in messages):
            rewritten = drop_unset_port(b"".join(m.get("body", b"") for m in messages))
        if rewritten is not None:
            messages = [{"type": "http.request", "body": rewritten, "more_body": False}]
            headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
            scope = dict(scope, headers=[*headers, (b"content-length", str(len(rewritten)).encode())])
        replay = iter(messages)

        async def replayed() -> Message:
            following = next(replay, None)
            return following if following is not None else await receive()

        await self.app(scope, replayed, send)


class SmartConnectionTestPlugin(AirflowPlugin):
    """Registers :class:`SmartConnectionTestPortMiddleware` with the API server."""

    name = "smart_fhir_connection_test"
    fastapi_root_middlewares = [  # noqa: RUF012 (AirflowPlugin declares it as a class attribute)
        {
            "middleware": SmartConnectionTestPortMiddleware,
            "args": [],
            "kwargs": {},
            "name": "smart_fhir: test connections stored without a port",
        }
    ]
