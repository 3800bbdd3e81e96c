"""The sandbox's Binary contents: generated visit notes made from their id, added ones, presigned URLs.

Kept apart from the routes (``sandbox/binaries.py``) so the sandbox state can hold a store without
importing the web layer.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlencode

_GENERATED = re.compile(r"^note-(\d{1,9})-(\d{1,4})$")


@dataclass(frozen=True)
class BinaryContent:
    content_type: str
    data: bytes
    wrapped: bool = False


def generated_note(binary_id: str) -> BinaryContent | None:
    """The full text of a generated visit note, made from its id (``note-<patient>-<k>``)."""
    match = _GENERATED.match(binary_id)
    if match is None:
        return None
    patient, k = match.groups()
    text = (
        f"VISIT NOTE {patient}-{k}\n"
        f"Patient index {patient}, document {k}.\n"
        "Subjective: routine follow-up, no new complaints.\n"
        "Assessment and plan: continue current care; return in three months.\n"
    )
    return BinaryContent("text/plain", text.encode())


class BinaryStore:
    """Binaries added by tests and demos, and the signer of their presigned URLs (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, BinaryContent] = {}
        self._key = secrets.token_bytes(32)

    def put(self, binary_id: str, content: BinaryContent) -> None:
        with self._lock:
            self._items[binary_id] = content

    def get(self, binary_id: str) -> BinaryContent | None:
        with self._lock:
            found = self._items.get(binary_id)
        return found if found is not None else generated_note(binary_id)

    def _signature(self, binary_id: str, expires: int) -> str:
        return hmac.new(self._key, f"{binary_id}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def presign(self, files_base_url: str, binary_id: str, ttl: int) -> str:
        expires = int(time.time()) + ttl
        query = urlencode({"expires": expires, "signature": self._signature(binary_id, expires)})
        return f"{files_base_url}/attachment-files/{binary_id}?{query}"

    def check(self, binary_id: str, expires: str, signature: str) -> str | None:
        """None when the presigned URL is genuine and current, else why it is refused."""
        try:
            when = int(expires)
        except ValueError:
            return "expires must be an integer"
        if not hmac.compare_digest(self._signature(binary_id, when), signature):
            return "the request signature does not match"
        if when < time.time():
            return "the request has expired"
        return None
