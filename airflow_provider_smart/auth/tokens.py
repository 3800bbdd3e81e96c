"""Token responses: the access token, its lifetime and granted scopes, and readable OAuth errors.

Sans-I/O: :func:`parse_token_response` takes the status, headers and body the HTTP layer received.
No message built here ever holds the assertion or the token; server-provided text is scrubbed of both.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from airflow_provider_smart.auth.errors import TokenRequestError

log = logging.getLogger(__name__)

#: Used when the server omits ``expires_in``: short, so an unknown lifetime never outlives the token.
DEFAULT_EXPIRES_IN = 300.0
_MAX_EXCERPT = 300


@dataclass(frozen=True)
class AccessToken:
    """An access token. ``value`` is left out of ``repr``/``str``; pass it only in the Authorization header."""

    value: str = field(repr=False)
    token_type: str
    expires_at: float  # seconds since the epoch
    issued_at: float
    scopes: tuple[str, ...] = ()
    requested_scopes: tuple[str, ...] = ()

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.issued_at

    def expires_in(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)

    @property
    def expires_at_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.expires_at, UTC)

    @property
    def authorization_header(self) -> str:
        return f"Bearer {self.value}"

    def summary(self) -> dict[str, Any]:
        """JSON-safe facts about the token for logs, XCom and reports (never the token)."""
        report = scope_report(self.requested_scopes, self.scopes)
        return {
            "token_type": self.token_type,
            "expires_at": self.expires_at_datetime.isoformat(),
            "expires_in": round(self.expires_in(), 1),
            "requested_scopes": list(self.requested_scopes),
            "granted_scopes": list(self.scopes),
            "not_granted": report.missing,
        }

    def __reduce__(self) -> Any:
        raise TypeError("AccessToken holds a bearer token and cannot be pickled")


@dataclass(frozen=True)
class TokenContext:
    """Facts about the request used to explain an error: all public, nothing secret."""

    client_id: str
    token_url: str
    kid: str
    algorithm: str
    scope: str


def parse_token_response(
    status: int,
    body: bytes | str,
    content_type: str | None,
    context: TokenContext,
    *,
    now: float | None = None,
    scrub: Iterable[str] = (),
) -> AccessToken:
    """Turn a token endpoint's answer into an :class:`AccessToken` or raise :class:`TokenRequestError`.

    :param scrub: secrets (the assertion) to remove from any server text quoted in an error message.
    """
    issued = time.time() if now is None else now
    secrets_ = [s for s in scrub if s]
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise TokenRequestError(_non_json_message(status, text, content_type, context, secrets_), status=status)
    if status >= 400 or "error" in data:
        raise _oauth_error(status, data, context, secrets_)
    if not 200 <= status < 300:
        raise TokenRequestError(
            f"the token endpoint {context.token_url} answered HTTP {status} instead of 200: "
            "check the token_url extra (it may point at a redirect or a login page)",
            status=status,
        )
    value = data.get("access_token")
    if not isinstance(value, str) or not value:
        raise TokenRequestError(
            f"the token endpoint {context.token_url} answered HTTP {status} without an access_token: "
            "check that token_url is the server's OAuth token endpoint",
            status=status,
        )
    # The token may end up in a message below only through server text; scrub it too from now on.
    secrets_.append(value)
    token_type = data.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenRequestError(
            f"the token endpoint {context.token_url} issued a token of type {_scrubbed(str(token_type), secrets_)!r}; "
            "only Bearer tokens are supported (SMART Backend Services requires token_type bearer)",
            status=status,
        )
    expires_in = _parse_expires_in(data.get("expires_in"), context)
    requested = tuple(split_scopes(context.scope))
    granted_raw = data.get("scope")
    if isinstance(granted_raw, str) and granted_raw.strip():
        granted = tuple(split_scopes(granted_raw))
    else:
        # RFC 6749 5.1: an omitted scope means the requested scope was granted as asked.
        log.info("The token response names no scope; assuming the requested scopes were granted.")
        granted = requested
    token = AccessToken(
        value=value,
        token_type="Bearer",  # noqa: S106 - a type name, not a secret
        expires_at=issued + expires_in,
        issued_at=issued,
        scopes=granted,
        requested_scopes=requested,
    )
    log_granted_scopes(requested, granted, context.client_id)
    return token


def _parse_expires_in(raw: Any, context: TokenContext) -> float:
    value: float | None
    if isinstance(raw, bool):
        value = None
    elif isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            value = None
    else:
        value = None
    if raw is None:
        log.warning(
            "The token response from %s has no expires_in; assuming %.0f seconds.",
            context.token_url,
            DEFAULT_EXPIRES_IN,
        )
        return DEFAULT_EXPIRES_IN
    if value is None or not math.isfinite(value) or value <= 0:
        log.warning(
            "The token response from %s has an unusable expires_in (%r); assuming %.0f seconds.",
            context.token_url,
            raw if isinstance(raw, int | float) else type(raw).__name__,
            DEFAULT_EXPIRES_IN,
        )
        return DEFAULT_EXPIRES_IN
    return value


# --- scopes ------------------------------------------------------------------------------------------

_V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}


def split_scopes(scope: str | Sequence[str] | None) -> list[str]:
    """Scopes as a list, in order, without duplicates (accepts a space-separated string or a list)."""
    if scope is None:
        return []
    items = scope.split() if isinstance(scope, str) else [s for part in scope for s in str(part).split()]
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def _parse_resource_scope(scope: str) -> tuple[str, str, frozenset[str]] | None:
    """``system/Patient.read`` -> ("system", "Patient", {"r","s"}); None when not a resource scope."""
    head, sep, perms = scope.partition(".")
    context, slash, resource = head.partition("/")
    if not sep or not slash or context not in ("system", "user", "patient") or not resource:
        return None
    perms = perms.split("?", 1)[0]
    if perms in _V1_PERMISSIONS:
        return context, resource, frozenset(_V1_PERMISSIONS[perms])
    if perms and set(perms) <= set("cruds"):
        return context, resource, frozenset(perms)
    return None


@dataclass(frozen=True)
class ScopeReport:
    """How the granted scopes answer the requested ones (each requested scope lands in one list)."""

    granted: list[str]
    expanded: list[str]  # wildcard requests answered with per-type scopes
    missing: list[str]


def scope_report(requested: Sequence[str], granted: Sequence[str]) -> ScopeReport:
    """Compare requested and granted scopes, understanding SMART v1 (read/write/*) and v2 (cruds) forms."""
    granted_set = set(granted)
    parsed = [p for p in (_parse_resource_scope(g) for g in granted) if p]
    ok: list[str] = []
    expanded: list[str] = []
    missing: list[str] = []
    for scope in requested:
        if scope in granted_set:
            ok.append(scope)
            continue
        want = _parse_resource_scope(scope)
        if want is None:
            missing.append(scope)
            continue
        context, resource, perms = want
        covering: set[str] = set()
        for g_context, g_resource, g_perms in parsed:
            if g_context == context and g_resource in (resource, "*"):
                covering |= g_perms
        if perms <= covering:
            ok.append(scope)
        elif resource == "*" and any(
            g_context == context and g_resource != "*" and g_perms & perms for g_context, g_resource, g_perms in parsed
        ):
            expanded.append(scope)
        else:
            missing.append(scope)
    return ScopeReport(granted=ok, expanded=expanded, missing=missing)


def log_granted_scopes(requested: Sequence[str], granted: Sequence[str], client_id: str) -> ScopeReport:
    report = scope_report(requested, granted)
    log.info("Access token for client_id %s grants %d scope(s): %s", client_id, len(granted), " ".join(granted))
    if report.expanded:
        log.info("The server expanded %s into the per-type scopes above.", " ".join(report.expanded))
    if report.missing:
        log.warning(
            "Requested scope(s) not granted for client_id %s: %s. Requests needing them will fail with 401/403; "
            "ask the server's admin to allow them for this client or remove them from the scope extra.",
            client_id,
            " ".join(report.missing),
        )
    return report


# --- errors ------------------------------------------------------------------------------------------


def _scrubbed(text: str, secrets_: Sequence[str]) -> str:
    for secret in secrets_:
        if len(secret) >= 8:  # shorter strings are no real secrets and replacing them mangles text
            text = text.replace(secret, "<redacted>")
    return text


def _excerpt(text: str, secrets_: Sequence[str]) -> str:
    return _scrubbed(" ".join(text.split()), secrets_)[:_MAX_EXCERPT]


def _non_json_message(
    status: int, text: str, content_type: str | None, context: TokenContext, secrets_: Sequence[str]
) -> str:
    kind = f" ({content_type.split(';')[0]})" if content_type else ""
    excerpt = _excerpt(text, secrets_)
    quoted = f": {excerpt!r}" if excerpt else " with an empty body"
    return (
        f"the token endpoint {context.token_url} answered HTTP {status} with a non-JSON body{kind}{quoted}. "
        "Check that the token_url extra (or the discovered token_endpoint) is the server's OAuth token endpoint, "
        "not a web page or a proxy error"
    )


def _oauth_error(
    status: int, data: dict[str, Any], context: TokenContext, secrets_: Sequence[str]
) -> TokenRequestError:
    error = data.get("error")
    code = error if isinstance(error, str) and error else f"HTTP {status}"
    description = data.get("error_description")
    detail = f" ({_excerpt(str(description), secrets_)})" if isinstance(description, str) and description else ""
    c = context
    fixes = {
        "invalid_client": (
            f"the server rejected the client assertion: check that the public key (kid={c.kid}, alg={c.algorithm}) "
            f"is registered for client_id {c.client_id!r} (jwks_uri or jwks), that the client is active, and that "
            f"the token URL {c.token_url} is the assertion's aud (set the token_url extra if the server expects "
            "another)"
        ),
        "invalid_scope": (
            f"the server refused the requested scope {c.scope!r}: request only scopes registered for client_id "
            f"{c.client_id!r} (the scope extra), e.g. system/Patient.read or system/*.rs"
        ),
        "invalid_grant": (
            f"the server refused the assertion for client_id {c.client_id!r}: check the workers' clock (exp/iat), "
            "that the key and kid are current, and that the client is allowed the client_credentials grant"
        ),
        "unauthorized_client": (
            f"client_id {c.client_id!r} may not use the client_credentials grant: enable it for the client on the "
            "server (grant_types / auth.client_credentials)"
        ),
        "unsupported_grant_type": (
            f"the token endpoint {c.token_url} does not support client_credentials: check the token_url extra and "
            "that the server offers SMART Backend Services"
        ),
        "invalid_request": (
            f"the token endpoint {c.token_url} found the token request malformed: check the token_url extra and the "
            "client_id; the server's text above names the field"
        ),
    }
    fix = fixes.get(
        code,
        f"the token endpoint {c.token_url} refused the token request (HTTP {status}) for client_id {c.client_id!r}",
    )
    return TokenRequestError(f"{code}{detail}: {fix}", error=code if isinstance(error, str) else None, status=status)


def unreachable_message(token_url: str, exc: BaseException) -> str:
    """Error text for a token endpoint that could not be reached (connection refused, DNS, TLS, timeout)."""
    reason = type(exc).__name__
    hint = "check the FHIR base URL / token_url extra, the network, proxies and TLS settings (verify extra)"
    return f"cannot reach the token endpoint {token_url} ({reason}): {hint}"
