"""The answers the fault switches send instead of the real response (one function per kind of answer).

Used by :class:`~airflow_provider_smart.sandbox.faults.FaultMiddleware`; the rules and their fields are
described in :mod:`airflow_provider_smart.sandbox.faults`.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.transport.retry import format_http_date

if TYPE_CHECKING:
    from airflow_provider_smart.sandbox.faults import FaultRule

#: The forms ``Retry-After`` can be sent in (``FaultRule.retry_after_form``).
RETRY_AFTER_FORMS = ("delta-seconds", "http-date", "epoch-seconds", "epoch-milliseconds")


def retry_after_value(until: float, now: float, form: str) -> str:
    """``Retry-After`` for "come back at ``until``" (epoch seconds) in one of :data:`RETRY_AFTER_FORMS`.

    Rounded up, never down: a client that honours the value exactly is not early.
    """
    if form == "delta-seconds":
        seconds = max(0.0, until - now)
        return str(int(seconds)) if float(seconds).is_integer() else str(math.ceil(seconds * 1000) / 1000)
    if form == "http-date":
        return format_http_date(datetime.fromtimestamp(math.ceil(until), UTC))
    if form == "epoch-seconds":
        return str(math.ceil(until))
    if form == "epoch-milliseconds":
        return str(math.ceil(until * 1000))
    raise ValueError(f"unknown Retry-After form {form!r}: use one of {', '.join(RETRY_AFTER_FORMS)}")


def _outcome(code: str, diagnostics: str) -> bytes:
    issue = {"severity": "error", "code": code, "diagnostics": diagnostics}
    return json.dumps({"resourceType": "OperationOutcome", "issue": [issue]}).encode()


async def _send(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"content-type", b"application/fhir+json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_status(rule: FaultRule, retry_after: str | None, send: Any) -> None:
    """An error status (429, 5xx, ...) with an OperationOutcome and, if given, ``Retry-After``."""
    transient = rule.status >= 500 or rule.status == 429
    code = "throttled" if rule.status == 429 else ("transient" if transient else "exception")
    body = _outcome(code, f"sandbox fault: status {rule.status} made on purpose")
    headers = [] if retry_after is None else [(b"retry-after", retry_after.encode("latin-1"))]
    await _send(send, rule.status, body, headers)


async def send_redirect(status: int, location: str, send: Any) -> None:
    """A redirect to ``location`` with an empty body."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"location", location.encode("latin-1")), (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b""})


async def send_echo(rule: FaultRule, authorization: str | None, send: Any) -> None:
    """An error whose body repeats the request's ``Authorization`` header, and its bare token, back.

    Some servers do this in their error pages; a client must never let the echo reach a log, an
    exception, an event or a file.
    """
    carried = authorization or "(none)"
    bare = carried.split(None, 1)[-1]
    text = f"request refused; it carried Authorization: {carried} (token {bare})"
    if rule.content_type == "text/plain":
        body = text.encode("latin-1", "replace")
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": rule.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    transient = rule.status >= 500 or rule.status == 429
    await _send(send, rule.status, _outcome("transient" if transient else "forbidden", text), [])


def token_into_location(authorization: str | None, send: Any) -> Any:
    """``send`` with the bare bearer token appended to the path of a ``Content-Location`` header."""
    token = (authorization or "").split(None, 1)[-1].encode("latin-1", "replace") if authorization else b""

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and token:
            headers = [
                (name, value.rstrip(b"/") + b"/" + token if name.lower() == b"content-location" else value)
                for name, value in message.get("headers", [])
            ]
            message = dict(message, headers=headers)
        await send(message)

    return wrapped
