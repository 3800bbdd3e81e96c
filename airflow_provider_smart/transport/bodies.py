"""Bounded body reads: every answer a server sends is read up to a cap, never whole on trust.

Shared by the token client (``auth/``) and the FHIR client (``fhir/``): error bodies, discovery
documents, token answers and manifests are all read through :func:`read_limited` / :func:`read_bounded`.
No Airflow import.
"""

from __future__ import annotations

import requests

#: Error bodies only feed a message: this much is plenty, and an endless body costs no more.
MAX_ERROR_BODY = 64 * 1024


def read_limited(response: requests.Response, limit: int = MAX_ERROR_BODY) -> bytes:
    """At most ``limit`` bytes of a (possibly streamed) body; the rest is never read."""
    if getattr(response, "_content_consumed", False) and isinstance(response._content, bytes):
        return response._content[:limit]
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(8192):
            chunks.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    except requests.RequestException:  # a body cut short still gives what arrived
        pass
    return b"".join(chunks)[:limit]


def read_bounded(response: requests.Response, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of the body, and whether the server sent more (which is never read)."""
    body = read_limited(response, limit + 1)
    return body[:limit], len(body) > limit


def no_netrc_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """A requests auth hook that adds nothing (its presence disables the ~/.netrc lookup)."""
    return request
