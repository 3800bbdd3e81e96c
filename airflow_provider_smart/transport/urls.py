"""URL helpers: origins, the one decision about where the token may go, joining, and redaction for logs.

Who may receive the access token is decided in exactly one place, :func:`may_carry_token`. It judges a
URL's origin the way requests/urllib3 will connect (urllib3's own ``parse_url``), and refuses outright any
URL that two parsers could read differently: a backslash, userinfo (``user@``), whitespace or control
characters, ``%`` or non-ASCII in the host. ``http://127.0.0.1:1\\@127.0.0.1:2/x`` is judged "port 2" by
``urllib.parse`` but connects to port 1; such a URL is never requested at all (:func:`check_url`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import SplitResult, unquote, urljoin, urlsplit, urlunsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from airflow_provider_smart.transport.sanitize import redact_secrets, safe_text

log = logging.getLogger(__name__)

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Anything a parser might treat as a separator or skip: backslash, whitespace and control characters.
_AMBIGUOUS = re.compile(r"[\\\s\x00-\x1f\x7f-\x9f]")
# A host made of plain DNS labels, an IPv4 address or a bracketed IPv6 literal, and nothing else.
_PLAIN_HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?\.?)+|\[[0-9a-f:.]+\]")


class UnsafeUrlError(ValueError):
    """A URL that is ambiguous (parsers disagree on its host) or otherwise not safe to request."""


class InsecureUrlError(UnsafeUrlError):
    """A plain ``http://`` URL where the server is reached over https (a TLS downgrade)."""


def check_url(url: str) -> tuple[str, str, int]:
    """The (scheme, host, port) origin of ``url`` as urllib3 will connect, or :class:`UnsafeUrlError`.

    Refused: non-http(s) schemes, backslashes, whitespace, control characters, userinfo, ``%`` or
    non-ASCII in the host, odd ports, and any URL whose origin ``urllib.parse`` reads differently.
    """
    shown = safe_text(url, limit=200)
    if not isinstance(url, str) or _AMBIGUOUS.search(url):
        raise UnsafeUrlError(f"refusing the URL {shown!r}: it holds a backslash, whitespace or a control character")
    try:
        parsed = parse_url(url)
        split = urlsplit(url)
        split_port = split.port
    except (LocationParseError, ValueError):
        raise UnsafeUrlError(f"refusing the URL {shown!r}: it cannot be parsed") from None
    scheme = (parsed.scheme or "").lower()
    if scheme not in _DEFAULT_PORTS:
        raise UnsafeUrlError(f"refusing the URL {shown!r}: only absolute http:// and https:// URLs are requested")
    if parsed.auth is not None or "@" in split.netloc:
        raise UnsafeUrlError(f"refusing the URL {shown!r}: it carries user information (user@host)")
    raw_host = split.hostname or ""
    host = (parsed.host or "").lower()
    if not host or not raw_host.isascii() or "%" in split.netloc or not _PLAIN_HOST.fullmatch(host):
        raise UnsafeUrlError(f"refusing the URL {shown!r}: its host is empty or unusually encoded")
    port = parsed.port or _DEFAULT_PORTS[scheme]
    # The second opinion: the standard library must see the very same origin.
    split_host = raw_host.lower()
    if host.startswith("["):
        split_host = f"[{split_host}]"
    if (split.scheme.lower(), split_host, split_port or _DEFAULT_PORTS[scheme]) != (scheme, host, port):
        raise UnsafeUrlError(f"refusing the URL {shown!r}: URL parsers disagree about its host or port")
    if not 0 < port < 65536:
        raise UnsafeUrlError(f"refusing the URL {shown!r}: port {port} is out of range")
    return scheme, host, port


def origin(url: str) -> tuple[str, str, int]:
    """The (scheme, host, port) origin of an absolute URL, with default ports made explicit.

    Raises :class:`UnsafeUrlError` (a ``ValueError``) for ambiguous URLs (see :func:`check_url`).
    """
    return check_url(url)


def same_origin(a: str, b: str) -> bool:
    """True when both URLs are unambiguous and share scheme, host and port."""
    try:
        return check_url(a) == check_url(b)
    except ValueError:
        return False


def may_carry_token(url: str, base_url: str) -> bool:
    """THE decision whether a request to ``url`` may carry the FHIR server's access token.

    Only URLs with exactly the origin of ``base_url`` (the connection's FHIR base URL), judged as the
    HTTP library connects, and only when neither URL is ambiguous. Every request path asks this.
    """
    return same_origin(url, base_url)


def may_carry_headers(url: str, base_url: str, header_origins: Iterable[str] = ()) -> bool:
    """Whether the connection's own headers (its ``headers`` extra) may go to ``url``.

    They often carry credentials (an API gateway's key), so they follow the token: only where
    :func:`may_carry_token` allows, plus the origins the user names for them (the ``header_origins`` extra).
    """
    return may_carry_token(url, base_url) or any(same_origin(url, allowed) for allowed in header_origins)


def check_transport(url: str, base_url: str, *, previous: str | None = None, allow_insecure_http: bool = False) -> None:
    """Refuse a TLS downgrade: an ``http://`` URL when the server (or the previous hop) used https.

    :param previous: the URL that redirected here, if any.
    :param allow_insecure_http: the connection's ``allow_insecure_http`` extra; the downgrade is then
        logged instead of refused.
    :raises InsecureUrlError: for a downgrade that is not allowed.
    """
    if urlsplit(url).scheme.lower() != "http":
        return
    secure = [u for u in (base_url, previous) if u and urlsplit(u).scheme.lower() == "https"]
    if not secure:
        return
    if allow_insecure_http:
        log.warning(
            "Requesting %s over plain http although %s uses https (allowed by the connection's allow_insecure_http)",
            redact_url(url),
            redact_url(secure[-1]),
        )
        return
    raise InsecureUrlError(
        f"refusing {redact_url(url)}: plain http:// where {redact_url(secure[-1])} uses https (a TLS downgrade); "
        "fix the server's URLs, or set the connection extra allow_insecure_http to true to accept it"
    )


def resolve(base: str, ref: str) -> str:
    """Resolve a possibly relative link (``next`` links, Content-Location) against the URL it came from."""
    return urljoin(base, ref)


def fhir_base(url: str) -> str:
    """A FHIR base URL without a trailing slash."""
    return url.rstrip("/")


def without_query(url: str) -> str | None:
    """``url`` without its query string, fragment and userinfo (presigned URLs carry credentials in the
    query), whole otherwise: the form output storage keeps. None when it does not parse."""
    try:
        parts = urlsplit(str(url))
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
    if port:
        netloc = f"{netloc}:{port}"
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, "<redacted>" if parts.query else "", ""))


def redact_url(url: str) -> str:
    """A URL fit for a log line or message: no query string (presigned URLs carry credentials there), no
    userinfo, and no secret in the path either (a server may put a token there: our access token, or a
    JWT-shaped capability), judged on the percent-decoded path so an encoded token is caught too."""
    text = without_query(url)
    if text is None:
        return "<unparseable URL>"
    decoded = unquote(text)
    if redact_secrets(decoded) != decoded:
        text = redact_secrets(decoded)
    return _AMBIGUOUS.sub("?", text)[:300]
