"""Faults made on purpose, so clients can be tested against throttling, failures, slowness and drops.

Set them in-process (``server.state.faults``) or over HTTP (``PUT /_sandbox/faults``, admin credential):

* ``throttle(path, times=1, retry_after=1, http_date=False, form=None, text=None)``: 429 with
  ``Retry-After`` ``retry_after`` seconds ahead, in the ``form`` asked for: ``delta-seconds`` (default),
  ``http-date`` (or ``http_date=True``), ``epoch-seconds`` or ``epoch-milliseconds`` (absolute instants,
  as some gateways send); ``text`` sends that exact value instead (absurd ones: ``-5``, ``soon``, a date
  in the year 9999, an epoch number of that year).
* ``fail(path, status=503, times=1, retry_after=None, form=None, text=None)``: a transient 5xx whose
  OperationOutcome has the issue code ``transient`` (``Retry-After`` as for ``throttle``).
* ``block(path, seconds, after=0, status=429)``: from the first matching request (after letting
  ``after`` through) every matching request for ``seconds`` answers 429 with ``Retry-After`` = the end of
  the block as an absolute instant: epoch milliseconds on the first answer, epoch seconds (rounded up)
  on later ones, as a real server did. Then the rule is gone.
* ``redirect(path, to=None, status=307, times=1)``: answer with a redirect. ``to=None`` sends the client
  to the same URL on the same origin (under ``/hop``, served as the original path without faults);
  ``to="http://host:port"`` sends it to that origin with the same path and query (a test's foreign
  server, which may bounce it back to ``/hop/...``).
* ``echo_authorization(path, status=400, times=1, content_type="application/fhir+json")``: an error whose
  body repeats the request's ``Authorization`` header and bare token (a 5xx one is transient).
* ``revoke_tokens(path, after=0)``: at the matching request every token issued so far is refused, so that
  request itself answers 401 (a token revoked mid-poll).
* ``slow(path, delay, times=None)``: the response waits ``delay`` seconds first.
* ``drop(path, times=1, after_bytes=None)``: sends the headers (with the full Content-Length) and the
  first part of the body, then closes the connection abruptly.
* ``expire_tokens_after(seconds)`` / ``clear_token_lifetime()``: tokens issued from now on live that long;
  ``invalidate_tokens()``: every token issued so far is refused from now on.
* ``bulk``: the Bulk Data export switches (failed export, error file, expired file URLs, token revoked
  after N downloads, one export per client); see
  :class:`~airflow_provider_smart.sandbox.bulk_faults.BulkFaults` (``{"bulk": {...}}`` over HTTP).

Every rule also takes ``after``: that many matching requests pass untouched before it applies (a fault
"mid-export"). Times and instants come from the sandbox clock (``faults.clock``).

``path`` is a shell-style pattern (``fnmatch``) on the URL path, e.g. ``/fhir/Observation*``; ``times``
is how many matching requests the fault applies to (``None``: until cleared). The admin endpoints under
``/_sandbox`` are never faulted. Every request is counted per path (``requests``) and the
``Authorization`` header it carried (or None) is logged per path (``authorization``), so tests can prove
which requests were authorized; ``history`` keeps ``(time, method, path, status)`` of recent requests
(``status`` is the fault's answer, or None when the app answered). ``reset()`` clears everything.
"""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
import threading
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from airflow_provider_smart.sandbox.bulk_faults import BulkFaults
from airflow_provider_smart.sandbox.clock import SandboxClock
from airflow_provider_smart.sandbox.fault_answers import (
    RETRY_AFTER_FORMS,
    retry_after_value,
    send_echo,
    send_redirect,
    send_status,
    token_into_location,
)

FaultKind = Literal["status", "delay", "drop", "block", "redirect", "echo", "revoke", "token_in_location"]
FAULT_KINDS = ("status", "delay", "drop", "block", "redirect", "echo", "revoke", "token_in_location")
#: Same-origin redirects point here: ``/hop/fhir/x`` is served as ``/fhir/x``, never faulted again.
HOP_PREFIX = "/hop"
_HISTORY = 10_000
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
    after: int = 0
    retry_after_form: str | None = None
    retry_after_text: str | None = None
    block_seconds: float = 0.0
    redirect_to: str | None = None
    content_type: str = "application/fhir+json"
    #: Set when a block starts: its end (sandbox clock, epoch seconds).
    until: float | None = None
    #: Answers this rule gave so far.
    answered: int = 0
    id: int = field(default_factory=lambda: next(_ids))

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return fnmatch.fnmatchcase(path, self.path)

    def retry_after_header(self, now: float) -> str | None:
        """The ``Retry-After`` of this answer (``answered`` counts the earlier ones), or None."""
        if self.retry_after_text is not None:
            return self.retry_after_text
        if self.kind == "block" and self.until is not None:
            form = "epoch-milliseconds" if self.answered == 0 else (self.retry_after_form or "epoch-seconds")
            return retry_after_value(self.until, now, form)
        if self.retry_after is None:
            return None
        form = self.retry_after_form or ("http-date" if self.http_date else "delta-seconds")
        if form == "delta-seconds":
            seconds = self.retry_after
            return str(int(seconds)) if float(seconds).is_integer() else str(seconds)
        return retry_after_value(now + self.retry_after, now, form)


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
        self.history: deque[tuple[float, str, str, int | None]] = deque(maxlen=_HISTORY)
        #: Export-only switches (failed export, error file, expired files, ...): see BulkFaults.
        self.bulk = BulkFaults()

    # -- switches ---------------------------------------------------------------------------------
    def add(self, rule: FaultRule) -> FaultRule:
        if rule.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {rule.kind!r}: use one of {', '.join(FAULT_KINDS)}")
        if rule.times is not None and rule.times < 1:
            raise ValueError("times must be at least 1 (or None for every matching request)")
        if rule.after < 0:
            raise ValueError("after must be 0 or more (matching requests let through first)")
        if rule.retry_after_form is not None and rule.retry_after_form not in RETRY_AFTER_FORMS:
            raise ValueError(
                f"unknown retry_after_form {rule.retry_after_form!r}: use one of {', '.join(RETRY_AFTER_FORMS)}"
            )
        if rule.kind == "block" and not rule.block_seconds > 0:
            raise ValueError("a block needs block_seconds > 0")
        if rule.redirect_to is not None and not rule.redirect_to.startswith(("http://", "https://")):
            raise ValueError(f"redirect_to must be an origin such as http://127.0.0.1:8081, got {rule.redirect_to!r}")
        with self._lock:
            self.rules.append(rule)
        return rule

    def throttle(
        self,
        path: str = "*",
        *,
        times: int | None = 1,
        retry_after: float = 1,
        http_date: bool = False,
        form: str | None = None,
        text: str | None = None,
        after: int = 0,
    ) -> FaultRule:
        return self.add(
            FaultRule(
                "status",
                path,
                times=times,
                status=429,
                retry_after=retry_after,
                http_date=http_date,
                retry_after_form=form,
                retry_after_text=text,
                after=after,
            )
        )

    def fail(
        self,
        path: str = "*",
        *,
        status: int = 503,
        times: int | None = 1,
        retry_after: float | None = None,
        form: str | None = None,
        text: str | None = None,
        after: int = 0,
    ) -> FaultRule:
        return self.add(
            FaultRule(
                "status",
                path,
                times=times,
                status=status,
                retry_after=retry_after,
                retry_after_form=form,
                retry_after_text=text,
                after=after,
            )
        )

    def block(self, path: str = "*", *, seconds: float, after: int = 0, status: int = 429) -> FaultRule:
        return self.add(FaultRule("block", path, times=None, status=status, block_seconds=seconds, after=after))

    def redirect(
        self, path: str = "*", *, to: str | None = None, status: int = 307, times: int | None = 1, after: int = 0
    ) -> FaultRule:
        return self.add(FaultRule("redirect", path, times=times, status=status, redirect_to=to, after=after))

    def echo_authorization(
        self,
        path: str = "*",
        *,
        status: int = 400,
        times: int | None = 1,
        after: int = 0,
        content_type: str = "application/fhir+json",
    ) -> FaultRule:
        return self.add(FaultRule("echo", path, times=times, status=status, after=after, content_type=content_type))

    def token_in_location(self, path: str = "*", *, times: int | None = 1, after: int = 0) -> FaultRule:
        """The answer's ``Content-Location`` (a kick-off's status URL) gets the request's bearer token
        appended to its path, as a careless server puts a credential into a URL it hands out."""
        return self.add(FaultRule("token_in_location", path, times=times, after=after))

    def revoke_tokens(self, path: str = "*", *, after: int = 0) -> FaultRule:
        return self.add(FaultRule("revoke", path, times=1, after=after))

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
            self.history.clear()
        self.token_lifetime = None
        self.tokens_not_before = 0.0
        self.bulk.reset()

    # -- the request path -------------------------------------------------------------------------
    def record(self, path: str, authorization: str | None, method: str = "GET", status: int | None = None) -> None:
        with self._lock:
            self.requests[path] += 1
            self.authorization.setdefault(path, []).append(authorization)
            self.history.append((self.clock.time(), method, path, status))

    def take(self, method: str, path: str) -> FaultRule | None:
        """The first rule matching this request, counting it as used."""
        now = self.clock.time()
        with self._lock:
            for rule in list(self.rules):
                if not rule.matches(method, path):
                    continue
                if rule.until is not None and now >= rule.until:
                    self.rules.remove(rule)  # the block is over
                    continue
                if rule.after > 0:
                    rule.after -= 1  # let this one through untouched
                    continue
                if rule.kind == "block" and rule.until is None:
                    rule.until = now + rule.block_seconds
                self.fired[rule.id] += 1
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        self.rules.remove(rule)
                return rule
        return None

    def retry_after_for(self, rule: FaultRule) -> str | None:
        """The ``Retry-After`` of the rule's next answer (counts the answer)."""
        with self._lock:
            value = rule.retry_after_header(self.clock.time())
            rule.answered += 1
        return value

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
            unknown = set(item) - {f for f in FaultRule.__dataclass_fields__ if f not in ("id", "until", "answered")}
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
        method: str = scope["method"]
        if path.startswith(HOP_PREFIX + "/"):
            # The second leg of a fault's redirect: served as the original path, never faulted again.
            self.faults.record(path, authorization, method)
            inner = path[len(HOP_PREFIX) :]
            raw = scope.get("raw_path") or path.encode()
            await self.app(dict(scope, path=inner, raw_path=raw[len(HOP_PREFIX) :]), receive, send)
            return
        rule = self.faults.take(method, path)
        answered = rule.status if rule is not None and rule.kind in ("status", "block", "redirect", "echo") else None
        self.faults.record(path, authorization, method, answered)
        if rule is None:
            await self.app(scope, receive, send)
        elif rule.kind == "delay":
            await asyncio.sleep(rule.delay)
            await self.app(scope, receive, send)
        elif rule.kind in ("status", "block"):
            await send_status(rule, self.faults.retry_after_for(rule), send)
        elif rule.kind == "redirect":
            await send_redirect(rule.status, self._location(rule, scope), send)
        elif rule.kind == "echo":
            await send_echo(rule, authorization, send)
        elif rule.kind == "revoke":
            self.faults.invalidate_tokens()
            await self.app(scope, receive, send)
        elif rule.kind == "token_in_location":
            await self.app(scope, receive, token_into_location(authorization, send))
        else:
            await self._send_dropped(rule, scope, receive, send)

    @staticmethod
    def _location(rule: FaultRule, scope: dict[str, Any]) -> str:
        """Where a redirect fault sends the client: the same path and query, on the rule's origin or under
        ``/hop`` on this one (the address this server listens on, never the request's ``Host``)."""
        query: bytes = scope.get("query_string") or b""
        raw: bytes = scope.get("raw_path") or str(scope["path"]).encode()
        tail = raw.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        if rule.redirect_to is not None:
            return rule.redirect_to.rstrip("/") + tail
        host, port = scope["server"]
        return f"http://{host}:{port}{HOP_PREFIX}{tail}"

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
