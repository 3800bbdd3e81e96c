"""The one place server text is made safe to log, raise, store or send in an event.

Every string a server sends is untrusted: it may carry terminal escape codes, run to megabytes, or echo
our own ``Authorization`` header back. :func:`safe_text` is what every path calls before such text
reaches a log line, an exception message, ``state.json``, a TriggerEvent or an XCom:

- secrets are replaced by ``<redacted>``: ``Bearer``/``Basic`` credentials, JWT-shaped strings (signed
  assertions, access tokens), query strings of URLs (presigned signatures) and every value registered
  with :func:`remember_secret` (the current access token and client assertion);
- control characters (ANSI escapes, NUL, carriage returns) are removed and whitespace collapsed;
- the result is capped at ``limit`` characters, saying how much was cut.

No Airflow import: the hook, the trigger, the operators and the sandbox all share it.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from urllib.parse import unquote

#: A generous cap for one server string in a log line or message.
DEFAULT_TEXT_LIMIT = 500

REDACTED = "<redacted>"

#: Shorter values are no real secrets, and replacing them would mangle ordinary text.
_MIN_SECRET_LENGTH = 8
#: The registry forgets the oldest values beyond this many (tokens rotate; memory stays bounded).
_MAX_REMEMBERED = 256

# CSI/OSC escape sequences first (so their parameters go too), then any other C0/C1 control or DEL.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_WHITESPACE = re.compile(r"\s+")
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)(\s+|%20|\+)[A-Za-z0-9\-._~+/=%]+")
# Three base64url segments, the first two starting like a JSON object ('eyJ' is base64 of '{"').
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
# The query string of an absolute URL inside free text (presigned URLs carry signatures there).
_URL_QUERY = re.compile(r"(?i)\b(https?://[^\s?#\"'<>]*)\?[^\s#\"'<>]+")
# Key/value pairs whose value is a credential, in JSON, form or header style.
_SECRET_FIELD = re.compile(
    r"(?i)(\"?\b(?:access_token|refresh_token|id_token|client_assertion|client_secret|password|authorization)\"?"
    r"\s*[:=]\s*\"?)([^\s\",&}]+)"
)

_lock = threading.Lock()
_remembered: OrderedDict[str, None] = OrderedDict()


def remember_secret(value: str | None) -> None:
    """Register a secret (an access token, a client assertion) so :func:`safe_text` redacts it anywhere."""
    if not value or len(value) < _MIN_SECRET_LENGTH:
        return
    with _lock:
        _remembered[value] = None
        _remembered.move_to_end(value)
        while len(_remembered) > _MAX_REMEMBERED:
            _remembered.popitem(last=False)


def forget_secrets() -> None:
    """Drop every remembered secret (tests call this between cases)."""
    with _lock:
        _remembered.clear()


def redact_secrets(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """Replace credentials in ``text``: remembered and given secrets, auth headers, JWTs, URL queries."""
    with _lock:
        known = list(_remembered)
    for secret in (*secrets, *known):
        if secret and len(secret) >= _MIN_SECRET_LENGTH and secret in text:
            text = text.replace(secret, REDACTED)
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _JWT.sub(REDACTED, text)
    text = _SECRET_FIELD.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return _URL_QUERY.sub(lambda m: f"{m.group(1)}?{REDACTED}", text)


def carries_secret(text: str, secrets: tuple[str, ...] | list[str] = ()) -> bool:
    """Whether ``text`` (or its percent-decoded form) holds a remembered or given secret verbatim.

    For URLs a server hands back: one that carries our own access token or assertion is a leak, never a
    link to follow or store.
    """
    with _lock:
        known = list(_remembered)
    forms = {text, unquote(text)}
    return any(
        secret and len(secret) >= _MIN_SECRET_LENGTH and secret in form
        for secret in (*secrets, *known)
        for form in forms
    )


def strip_control(text: str) -> str:
    """Remove terminal escape sequences and control characters; collapse runs of whitespace."""
    text = _ANSI.sub("", text)
    text = _CONTROL.sub(" ", text)
    return _WHITESPACE.sub(" ", text).strip()


def cap(text: str, limit: int = DEFAULT_TEXT_LIMIT) -> str:
    """At most ``limit`` characters, saying how many were cut."""
    if limit <= 0 or len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def safe_text(
    value: object,
    *,
    limit: int = DEFAULT_TEXT_LIMIT,
    secrets: tuple[str, ...] | list[str] = (),
) -> str:
    """Server-provided text made safe to log, raise or store: secrets redacted, controls gone, capped.

    Bytes are decoded as UTF-8 with replacement. Redaction runs before the cap so a secret cut in half
    by the cap cannot survive as a prefix, and the input is pre-cut to a bounded size first so a
    megabyte of text costs no more than a few kilobytes of work.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value[: max(limit, 0) * 8 + 4096]).decode("utf-8", "replace")
    else:
        text = str(value)
    original = len(text)
    if limit > 0:
        text = text[: limit * 8 + 4096]
    text = strip_control(redact_secrets(text, secrets))
    if limit > 0 and len(text) > limit:
        return f"{text[:limit]}... ({max(len(text), original) - limit} more characters)"
    return text
