"""Atomic commits on object storage.

A reader must never mistake a partial file for a complete one. Every file is first written under a name
that readers skip (a leading ``_tmp.``: Hive, Spark, DuckDB and Athena all ignore ``_``- and
``.``-prefixed names), then renamed. A single-object rename is atomic locally and, on S3 and GCS, the copy
appears whole or not at all. A directory is complete once its ``_SUCCESS`` marker exists; the marker is
removed before a rerun touches the directory and written again last.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

SUCCESS_MARKER = "_SUCCESS"
TMP_PREFIX = "_tmp."


def temp_sibling(final: ObjectStoragePath) -> ObjectStoragePath:
    return final.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}.{final.name}"


def is_hidden(name: str) -> bool:
    return name.startswith(("_", "."))


def _final_name_of_temp(name: str) -> str | None:
    """The final name a ``_tmp.<uuid hex>.<final>`` file was written for, or None for another name."""
    if not name.startswith(TMP_PREFIX):
        return None
    token, dot, final = name[len(TMP_PREFIX) :].partition(".")
    if not dot or not final or len(token) != 32 or any(c not in "0123456789abcdef" for c in token):
        return None
    return final


class StaleTemps:
    """Removes what killed attempts at writing a file left behind (``_tmp.<uuid>.<name>``).

    Readers skip these names, but they are garbage, and a listing that does not skip them would see
    a resource twice once the file is written again. One final name has one writer at a time, so only
    the leftovers of the names written are touched, never another writer's file in the same directory.
    Each directory is listed once, on the first write there, and the names are looked up after:
    listing it for every file made a batch of N files N listings of up to N names (on S3, N LIST
    requests). A leftover of a name the batch writes was left before the batch began (by a killed
    earlier attempt), so it is in that listing; the batch's own failed writes delete their temporary
    file. A single write uses a fresh instance. Thread-safe: download threads share one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listed: dict[str, dict[str, list[ObjectStoragePath]]] = {}

    @property
    def listings(self) -> int:
        """How many directories were listed (about what the batch costs in LIST requests)."""
        return len(self._listed)

    def remove(self, final: ObjectStoragePath) -> int:
        """Delete the leftovers of earlier attempts at ``final``; returns how many were removed."""
        directory = final.parent
        key = str(directory)
        with self._lock:
            if key not in self._listed:
                self._listed[key] = self._list(directory)
            stale = self._listed[key].pop(final.name, [])
        removed = 0
        for path in stale:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        return removed

    @staticmethod
    def _list(directory: ObjectStoragePath) -> dict[str, list[ObjectStoragePath]]:
        by_name: dict[str, list[ObjectStoragePath]] = {}
        if not directory.exists():
            return by_name
        for path in directory.glob(f"{TMP_PREFIX}*"):
            final = _final_name_of_temp(path.name)
            if final is not None:
                by_name.setdefault(final, []).append(path)
        return by_name


@contextlib.contextmanager
def atomic_open(final: ObjectStoragePath, mode: str = "wb", *, stale: StaleTemps | None = None) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``final`` for writing; rename it to ``final`` only on success.

    Leftovers of earlier attempts at the same file (a worker killed mid-write) are removed first,
    through the batch's ``stale`` when the file is one of many (one listing per directory).
    """
    if "w" not in mode:
        raise ValueError("atomic_open is for writing ('wb' or 'w')")
    final.parent.mkdir(parents=True, exist_ok=True)
    (stale or StaleTemps()).remove(final)
    tmp = temp_sibling(final)
    try:
        with tmp.open(mode) as handle:  # type: ignore[no-untyped-call]
            yield handle
        replace(tmp, final)
    except BaseException:
        with contextlib.suppress(Exception):
            if tmp.exists():
                tmp.unlink()
        raise


def replace(src: ObjectStoragePath, dst: ObjectStoragePath) -> None:
    """Move ``src`` over ``dst`` (which may exist)."""
    if dst.exists():
        dst.unlink()
    src.rename(dst)


def atomic_write_bytes(final: ObjectStoragePath, data: bytes, *, stale: StaleTemps | None = None) -> None:
    with atomic_open(final, "wb", stale=stale) as handle:
        handle.write(data)


def atomic_write_json(final: ObjectStoragePath, value: Any, *, stale: StaleTemps | None = None) -> None:
    data = json.dumps(value, indent=2, sort_keys=True, default=str).encode() + b"\n"
    atomic_write_bytes(final, data, stale=stale)


def read_json(path: ObjectStoragePath) -> Any | None:
    """The JSON at ``path``, or None when the file does not exist."""
    if not path.exists():
        return None
    return json.loads(path.read_bytes())


def is_complete(directory: ObjectStoragePath) -> bool:
    return (directory / SUCCESS_MARKER).exists()


def mark_incomplete(directory: ObjectStoragePath) -> None:
    marker = directory / SUCCESS_MARKER
    if marker.exists():
        marker.unlink()


def mark_complete(directory: ObjectStoragePath, summary: dict[str, Any] | None = None) -> None:
    atomic_write_json(directory / SUCCESS_MARKER, summary or {})


def clear_directory(directory: ObjectStoragePath, keep: set[str] | frozenset[str] = frozenset()) -> None:
    """Remove every file directly inside ``directory`` except the names in ``keep``."""
    if not directory.exists():
        return
    for child in list(directory.iterdir()):
        if child.name in keep:
            continue
        if child.is_dir():
            clear_directory(child)
            with contextlib.suppress(Exception):
                child.rmdir()
        else:
            child.unlink()
