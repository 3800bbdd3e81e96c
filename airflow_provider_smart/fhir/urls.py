"""URL helpers: origins (the token never leaves the FHIR server's), joining, and redaction for logs."""

from __future__ import annotations

from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int]:
    """The (scheme, host, port) origin of an absolute URL, with default ports made explicit."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if not scheme or not parts.hostname:
        raise ValueError(f"not an absolute URL: {redact_url(url)!r}")
    port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    return scheme, parts.hostname.lower(), port


def same_origin(a: str, b: str) -> bool:
    try:
        return origin(a) == origin(b)
    except ValueError:
        return False


def resolve(base: str, ref: str) -> str:
    """Resolve a possibly relative link (``next`` links, Content-Location) against the URL it came from."""
    return urljoin(base, ref)


def fhir_base(url: str) -> str:
    """A FHIR base URL without a trailing slash."""
    return url.rstrip("/")


def redact_url(url: str) -> str:
    """Drop the query string (presigned URLs carry credentials there) and any userinfo, for logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    query = "<redacted>" if parts.query else ""
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, ""))
