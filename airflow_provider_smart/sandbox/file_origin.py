"""The second loopback origin: export files behind presigned URLs, as object stores serve them.

A presigned URL carries its own credential (an HMAC signature and an expiry in the query string), so
the manifest says ``requiresAccessToken: false``. Like S3, this origin refuses any request that also
carries an ``Authorization`` header (400, "only one auth mechanism allowed"): a client that leaks its
FHIR token here fails loudly, and ``OriginLog`` records whether any request carried one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode


@dataclass
class OriginLog:
    """Per origin: how many requests came in, and how many carried an Authorization header."""

    requests: dict[str, int] = field(default_factory=dict)
    with_authorization: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, origin: str, *, authorization: bool) -> None:
        with self._lock:
            self.requests[origin] = self.requests.get(origin, 0) + 1
            if authorization:
                self.with_authorization[origin] = self.with_authorization.get(origin, 0) + 1

    def authorization_seen(self, origin: str) -> bool:
        with self._lock:
            return self.with_authorization.get(origin, 0) > 0

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.with_authorization.clear()


class UrlSigner:
    """Signs and checks presigned file URLs (HMAC-SHA256 over job, file, generation and expiry)."""

    def __init__(self, key: bytes | None = None, clock: Callable[[], float] | None = None):
        self._key = key or secrets.token_bytes(32)
        #: "Now" for signing and checking expiry: the sandbox's clock, so tests can let URLs expire.
        self._clock = clock or time.time

    def _signature(self, job_id: str, name: str, generation: int, expires: int) -> str:
        message = f"{job_id}\n{name}\n{generation}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(self, base_url: str, job_id: str, name: str, generation: int, ttl: int) -> str:
        expires = int(self._clock()) + ttl
        query = urlencode(
            {
                "generation": generation,
                "expires": expires,
                "signature": self._signature(job_id, name, generation, expires),
            }
        )
        return f"{base_url}/bulk-files/{job_id}/{name}.ndjson?{query}"

    def check(self, job_id: str, name: str, generation: str, expires: str, signature: str) -> str | None:
        """None when the URL is genuine and current, else the reason it is refused."""
        try:
            gen, exp = int(generation), int(expires)
        except ValueError:
            return "the URL's generation and expires must be integers"
        if not hmac.compare_digest(self._signature(job_id, name, gen, exp), signature):
            return "the request signature does not match"
        if exp < self._clock():
            return "the request has expired"
        return None
