"""The stored high-water mark of an incremental search, kept as a small JSON file beside the data.

One file per (connection, resource type, search parameters): changing the search starts a fresh
watermark instead of silently skipping data the new search would have matched. The file is written
atomically, and only after the data of the run has been committed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.storage.atomic import atomic_write_json, read_json
from airflow_provider_smart.storage.paths import safe_segment

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

#: Parameters that change how results are paged, not which resources match: not part of the identity.
_PAGING_PARAMS = frozenset({"_count", "_sort", "_total", "_elements", "_summary"})


def search_fingerprint(conn_id: str, resource_type: str, params: Sequence[tuple[str, str]]) -> str:
    """A short stable hash of what the search selects (parameter order does not matter)."""
    selecting = sorted((k, v) for k, v in params if k not in _PAGING_PARAMS)
    text = json.dumps([conn_id, resource_type, selecting], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class WatermarkStore:
    """Read and advance the watermark of one search under ``<output>/<ResourceType>/_watermark.<hash>.json``."""

    def __init__(self, output: ObjectStoragePath, conn_id: str, resource_type: str, params: Sequence[tuple[str, str]]):
        self.conn_id = conn_id
        self.resource_type = resource_type
        self.params = [(k, v) for k, v in params]
        self.fingerprint = search_fingerprint(conn_id, resource_type, self.params)
        self.path = output / safe_segment(resource_type) / f"_watermark.{self.fingerprint}.json"

    def load(self) -> str | None:
        state = read_json(self.path)
        if state is None:
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"watermark file {self.path} is not one this search wrote; remove it to start from scratch"
            )
        value = state.get("watermark")
        return str(value) if value else None

    def advance(self, watermark: str | None, *, run: str, previous: str | None) -> str | None:
        """Store ``watermark`` (call only after the run's data is committed). Returns the value in force."""
        if not watermark or watermark == previous:
            return previous
        state: dict[str, Any] = {
            "fingerprint": self.fingerprint,
            "conn_id": self.conn_id,
            "resource_type": self.resource_type,
            "params": [list(pair) for pair in self.params],
            "watermark": watermark,
            "run": run,
            "updated_at": datetime.now(UTC).isoformat(),
        }
        atomic_write_json(self.path, state)
        return watermark
