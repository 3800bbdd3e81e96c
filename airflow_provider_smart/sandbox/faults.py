"""Faults made on purpose, so clients can be tested against throttling, failures, slowness and drops.

Set them in-process (``server.state.faults``) or over HTTP (``PUT /_sandbox/faults``, admin credential):

* ``throttle(path, times=1, retry_after=1, http_date=False)``: 429 with ``Retry-After`` (seconds, or an
  HTTP-date that many seconds ahead).
* ``fail(path, status=503, times=1, retry_after=None)``: a transient 5xx whose OperationOutcome has the
  issue code ``transient``.
* ``slow(path, delay, times=None)``: the response waits ``delay`` seconds first.
* ``drop(path, times=1, after_bytes=None)``: sends the headers (with the full Content-Length) and the
  first part of the body, then closes the connection abruptly.
* ``expire_tokens_after(seconds)`` / ``clear_token_lifetime()``: tokens issued from now on live that long;
  ``invalidate_tokens()``: every token issued so far is refused from now on.
* ``bulk``: the Bulk Data export switches (failed export, error file, expired file URLs, token revoked
  after N downloads, one export per client); see
  :class:`~airflow_provider_smart.sandbox.bulk_faults.BulkFaults` (``{"bulk": {...}}`` over HTTP).

``path`` is a shell-style pattern (``fnmatch``) on the URL path, e.g. ``/fhir/Observation*``; ``times``
is how many matching requests the fault applies to (``None``: until cleared). The admin endpoints under
``/_sandbox`` are never faulted. Every request is counted per path (``requests``) and the
``Authorization`` header it carried (or None) is logged per path (``authorization``), so tests can prove
which requests were authorized. ``reset()`` clears everything.
"""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
import json
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from airflow_provider_smart.fhir.retry import format_http_date
from airflow_provider_smart.sandbox.bulk_faults import BulkFaults
from airflow_provider_smart.sandbox.clock import SandboxClock

FaultKind = Literal["status", "delay", "drop"]
_ids = itertools.count(1)


@dataclass
class FaultRule:
    """One fault: what happens to the next ``times`` requests whose path matches ``path``."""

    kind: FaultKind
    path: str = "*"
    method: str | None = None
    times: int | None = 1
    status: int = 503
    retry_after: float | None = None
    http_date: bool = False
    delay: float = 0.0
    after_bytes: int | None = None
    id: int = field(default_factory=lambda: next(_ids))

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return fnmatch.fnmatchcase(path, self.path)

    def retry_after_header(self) -> str | None:
        if self.retry_after is None:
            return None
        if self.http_date:
            return format_http_date(datetime.now(UTC) + timedelta(seconds=self.retry_after))
        seconds = self.retry_after
        return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


class Faults:
    """The fault switches and request log of one sandbox (thread-safe)."""

    def __init__(self, clock: SandboxClock | None = None) -> None:
        self._lock = threading.Lock()
        self.clock = clock or SandboxClock()
        self.rules: list[FaultRule] = []
        self.requests: Counter[str] = Counter()
        self.authorization: dict[str, list[str | None]] = {}
        self.token_lifetime: int | None = None
        self.tokens_not_before: float = 0.0
        self.fired: Counter[int] = Counter()  # rule id -> times applied
        #: Export-only switches (failed export, error file, expired files, ...): see BulkFaults.
        self.bulk = BulkFaults()

    # -- switches ---------------------------------------------------------------------------------
    def add(self, rule: FaultRule) -> FaultRule:
        if rule.kind not in ("status", "delay", "drop"):
            raise ValueError(f"unknown fault kind {rule.kind!r}: use status, delay or drop")
        if rule.times is not None and rule.times < 1:
            raise ValueError("times must be at least 1 (or None for every matching request)")
        with self._lock:
            self.rules.append(rule)
        return rule

    def throttle(
        self, path: str = "*", *, times: int | None = 1, retry_after: float = 1, http_date: bool = False
    ) -> FaultRule:
        return self.add(
            FaultRule("status", path, times=times, status=429, retry_after=retry_after, http_date=http_date)
        )

    def fail(
        self, path: str = "*", *, status: int = 503, times: int | None = 1, retry_after: float | None = None
    ) -> FaultRule:
        return self.add(FaultRule("status", path, times=times, status=status, retry_after=retry_after))

    def slow(self, path: str = "*", *, delay: float, times: int | None = None) -> FaultRule:
        return self.add(FaultRule("delay", path, times=times, delay=delay))

    def drop(self, path: str = "*", *, times: int | None = 1, after_bytes: int | None = None) -> FaultRule:
        return self.add(FaultRule("drop", path, times=times, after_bytes=after_bytes))

    def expire_tokens_after(self, seconds: int) -> None:
        """Tokens issued from now on live ``seconds`` (the response's ``expires_in`` says so too)."""
        self.token_lifetime = seconds

    def clear_token_lifetime(self) -> None:
        self.token_lifetime = None

    def invalidate_tokens(self) -> None:
        """Refuse every access token issued before this moment (as if the server restarted)."""
        self.tokens_not_before = self.clock.time()

    def clear_rules(self) -> None:
        with self._lock:
            self.rules.clear()

    def reset(self) -> None:
        with self._lock:
            self.rules.clear()
            self.requests.clear()
            self.authorization.clear()
            self.fired.clear()
        self.token_lifetime = None
        self.tokens_not_before = 0.0
        self.bulk.reset()

    # -- the request path -------------------------------------------------------------------------
    def record(self, path: str, authorization: str | None) -> None:
        with self._lock:
            self.requests[path] += 1
            self.authorization.setdefault(path, []).append(authorization)

    def take(self, method: str, path: str) -> FaultRule | None:
        """The first rule matching this request, counting it as used."""
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    self.fired[rule.id] += 1
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times <= 0:
                            self.rules.remove(rule)
                    return rule
        return None

    def count(self, pattern: str = "*") -> int:
        """Requests seen on paths matching a pattern."""
        with self._lock:
            return sum(n for path, n in self.requests.items() if fnmatch.fnmatchcase(path, pattern))

    # -- the admin endpoint's JSON ----------------------------------------------------------------
    def apply_json(self, body: dict[str, Any]) -> None:
        """Apply ``{"reset": bool, "rules": [FaultRule fields...], "token_lifetime": int|null,
        "invalidate_tokens": bool}`` (every key optional)."""
        if body.get("reset"):
            self.reset()
        rules = []
        for item in body.get("rules") or []:
            if not isinstance(item, dict):
                raise ValueError("each rule must be a JSON object")
            unknown = set(item) - {f for f in FaultRule.__dataclass_fields__ if f != "id"}
            if unknown:
                raise ValueError(f"unknown rule field(s) {sorted(unknown)}")
            rules.append(FaultRule(**item))
        for rule in rules:
            self.add(rule)
        if "token_lifetime" in body:
            value = body["token_lifetime"]
            self.token_lifetime = None if value is None else int(value)
        if body.get("invalidate_tokens"):
            self.invalidate_tokens()
        if "bulk" in body:
            self.bulk.apply_json(body["bulk"])

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "rules": [asdict(rule) for rule in self.rules],
                "requests": dict(self.requests),
                # Whether a request carried a credential, never the credential itself.
                "authorized": {
                    path: [value is not None for value in values] for path, values in self.authorization.items()
                },
                "token_lifetime": self.token_lifetime,
                "tokens_not_before": self.tokens_not_before,
                "bulk": self.bulk.to_json(),
            }


class DroppedConnection(Exception):
    """Raised on purpose mid-response so the server closes the connection without finishing the body."""


class FaultMiddleware:
    """ASGI middleware applying :class:`Faults` to every request outside ``/_sandbox``."""

    def __init__(self, app: Any, faults: Faults) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith("/_sandbox"):
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope.get("headers") or []:
            if name == b"authorization":
                authorization = value.decode("latin-1")
        self.faults.record(path, authorization)
        rule = self.faults.take(scope["method"], path)
        if rule is None:
            await self.app(scope, receive, send)
        elif rule.kind == "delay":
            await asyncio.sleep(rule.delay)
            await self.app(scope, receive, send)
        elif rule.kind == "status":
            await self._send_status(rule, send)
        else:
            await self._send_dropped(rule, scope, receive, send)

    @staticmethod
    async def _send_status(rule: FaultRule, send: Any) -> None:
        transient = rule.status >= 500 or rule.status == 429
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": "throttled" if rule.status == 429 else ("transient" if transient else "exception"),
                    "diagnostics": f"sandbox fault: status {rule.status} made on purpose",
                }
            ],
        }
        body = json.dumps(outcome).encode()
        headers = [(b"content-type", b"application/fhir+json"), (b"content-length", str(len(body)).encode())]
        retry_after = rule.retry_after_header()
        if retry_after is not None:
            headers.append((b"retry-after", retry_after.encode()))
        await send({"type": "http.response.start", "status": rule.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _send_dropped(self, rule: FaultRule, scope: dict[str, Any], receive: Any, send: Any) -> None:
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        body = b"".join(chunks)
        headers = [
            (k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"transfer-encoding")
        ]
        headers.append((b"content-length", str(len(body)).encode()))
        cut = rule.after_bytes if rule.after_bytes is not None else len(body) // 2
        cut = max(0, min(cut, len(body) - 1))
        await send({"type": "http.response.start", "status": start.get("status", 200), "headers": headers})
        await send({"type": "http.response.body", "body": body[:cut], "more_body": True})
        # The server closes the socket when the application fails after the response started.
        raise DroppedConnection("connection dropped on purpose by a sandbox fault")
