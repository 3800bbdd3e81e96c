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


def remove_stale_temps(final: ObjectStoragePath) -> int:
    """Delete what killed attempts at writing ``final`` left behind (``_tmp.<uuid>.<name>``).

    Readers skip these names, but they are garbage, and a listing that does not skip them would see
    a resource twice once the file is written again. One final name has one writer at a time, so
    only this name's leftovers are touched, never another writer's file in the same directory.
    """
    removed = 0
    if not final.parent.exists():
        return removed
    for stale in final.parent.glob(f"{TMP_PREFIX}*.{final.name}"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            removed += 1
    return removed


@contextlib.contextmanager
def atomic_open(final: ObjectStoragePath, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``final`` for writing; rename it to ``final`` only on success.

    Leftovers of earlier attempts at the same file (a worker killed mid-write) are removed first.
    """
    if "w" not in mode:
        raise ValueError("atomic_open is for writing ('wb' or 'w')")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final)
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


def atomic_write_bytes(final: ObjectStoragePath, data: bytes) -> None:
    with atomic_open(final, "wb") as handle:
        handle.write(data)


def atomic_write_json(final: ObjectStoragePath, value: Any) -> None:
    atomic_write_bytes(final, json.dumps(value, indent=2, sort_keys=True, default=str).encode() + b"\n")


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
