"""Streaming NDJSON writers with part rotation, optional gzip and an atomic commit per run.

Layout of one run::

    <output>/<ResourceType>/<run>/part-00000.ndjson[.gz]
    <output>/<ResourceType>/<run>/part-00001.ndjson[.gz]
    <output>/<ResourceType>/<run>/_SUCCESS

Parts are first written into a hidden staging directory (``<output>/<ResourceType>/_tmp.<run>.<uuid>``)
that readers skip. Commit, per resource type: remove the run's ``_SUCCESS`` marker, remove the run's old
parts, rename each staged part into place, and write ``_SUCCESS`` last. So a reader either sees a marker
(the set is complete) or knows the directory is not ready; a rerun of the same run replaces that run's
files and nothing else. Memory stays flat: lines go through a small buffer straight to the store.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from airflow_provider_smart.fhir.names import checked_resource_type
from airflow_provider_smart.storage.atomic import (
    SUCCESS_MARKER,
    TMP_PREFIX,
    is_hidden,
    mark_complete,
    mark_incomplete,
    read_json,
    replace,
)
from airflow_provider_smart.storage.paths import safe_segment

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

COMPRESSIONS = (None, "gzip")
DEFAULT_MAX_PART_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_PART_LINES = 1_000_000
_BUFFER_BYTES = 1024 * 1024


def check_compression(compression: str | None) -> str | None:
    if compression in ("", "none"):
        return None
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be None or 'gzip'; got {compression!r}")
    return compression


def part_name(index: int, compression: str | None) -> str:
    return f"part-{index:05d}.ndjson" + (".gz" if compression == "gzip" else "")


def encode_resource(resource: Mapping[str, Any]) -> bytes:
    """One NDJSON line: compact JSON, UTF-8, no embedded newline (JSON escapes them), newline-terminated."""
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


@dataclass
class PartInfo:
    name: str
    lines: int
    bytes: int  # uncompressed NDJSON bytes


class NdjsonPartWriter:
    """Write NDJSON lines into ``directory/part-NNNNN.ndjson[.gz]``, starting a new part when one is full.

    :param directory: where the parts go (a staging directory: names here are final names).
    :param compression: None or ``"gzip"``.
    :param max_part_bytes: start a new part before this many uncompressed bytes would be exceeded.
    :param max_part_lines: start a new part after this many lines.
    """

    def __init__(
        self,
        directory: ObjectStoragePath,
        *,
        compression: str | None = None,
        max_part_bytes: int = DEFAULT_MAX_PART_BYTES,
        max_part_lines: int = DEFAULT_MAX_PART_LINES,
    ):
        if max_part_bytes < 1 or max_part_lines < 1:
            raise ValueError("max_part_bytes and max_part_lines must be positive")
        self.directory = directory
        self.compression = check_compression(compression)
        self.max_part_bytes = max_part_bytes
        self.max_part_lines = max_part_lines
        self.parts: list[PartInfo] = []
        self._raw: IO[bytes] | None = None
        self._out: IO[bytes] | gzip.GzipFile | None = None
        self._buffer = bytearray()
        self._current: PartInfo | None = None
        self.lines = 0

    def write_line(self, line: bytes) -> None:
        current = self._current
        if current is not None and (
            current.lines >= self.max_part_lines or (current.lines and current.bytes + len(line) > self.max_part_bytes)
        ):
            self._close_part()
            current = None
        if current is None:
            current = self._open_part()
        self._buffer += line
        current.lines += 1
        current.bytes += len(line)
        self.lines += 1
        if len(self._buffer) >= _BUFFER_BYTES:
            self._flush()

    def write(self, resource: Mapping[str, Any]) -> None:
        self.write_line(encode_resource(resource))

    def close(self) -> list[PartInfo]:
        self._close_part()
        return self.parts

    def abort(self) -> None:
        """Close without caring about errors (the staging directory is removed by the caller)."""
        self._buffer.clear()
        for handle in (self._out, self._raw):
            if handle is not None:
                with contextlib.suppress(Exception):
                    handle.close()
        self._out = self._raw = None
        self._current = None

    def _open_part(self) -> PartInfo:
        info = PartInfo(part_name(len(self.parts), self.compression), 0, 0)
        self.directory.mkdir(parents=True, exist_ok=True)
        raw: IO[bytes] = (self.directory / info.name).open("wb")  # type: ignore[no-untyped-call]
        self._raw = raw
        # mtime=0 keeps gzip output byte-for-byte reproducible for the same resources.
        self._out = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) if self.compression else raw
        self._current = info
        return info

    def _flush(self) -> None:
        if self._buffer and self._out is not None:
            self._out.write(bytes(self._buffer))
            self._buffer.clear()

    def _close_part(self) -> None:
        if self._current is None:
            return
        self._flush()
        assert self._out is not None and self._raw is not None
        if self._out is not self._raw:
            self._out.close()
        self._raw.close()
        self.parts.append(self._current)
        self._out = self._raw = None
        self._current = None


@dataclass
class TypeResult:
    """What a run committed for one resource type."""

    resource_type: str
    directory: str
    count: int
    parts: list[str] = field(default_factory=list)


class NdjsonRunWriter:
    """Route resources by ``resourceType`` into per-type part writers, then commit the whole run.

    Use as a context manager: leaving the block with an exception removes the staging directories and
    leaves every committed directory as it was. Call :meth:`commit` inside the block.

    :param output: the output root.
    :param run: the run label (made safe as one path segment).
    :param primary_type: the searched type: always committed, even with no resources, so "no data in this
        window" is told apart from "not run".
    """

    def __init__(
        self,
        output: ObjectStoragePath,
        run: str,
        *,
        primary_type: str | None = None,
        compression: str | None = None,
        max_part_bytes: int = DEFAULT_MAX_PART_BYTES,
        max_part_lines: int = DEFAULT_MAX_PART_LINES,
    ):
        self.output = output
        self.run = safe_segment(run)
        self.primary_type = primary_type
        self.compression = check_compression(compression)
        self.max_part_bytes = max_part_bytes
        self.max_part_lines = max_part_lines
        self._token = uuid.uuid4().hex[:12]
        self._writers: dict[str, NdjsonPartWriter] = {}
        self._seen: set[str] = set()
        self.duplicates = 0
        self.committed: dict[str, TypeResult] | None = None

    def __enter__(self) -> NdjsonRunWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None or self.committed is None:
            self.abort()

    def type_directory(self, resource_type: str) -> ObjectStoragePath:
        return self.output / safe_segment(resource_type) / self.run

    def staging_directory(self, resource_type: str) -> ObjectStoragePath:
        return self.output / safe_segment(resource_type) / f"{TMP_PREFIX}{self.run}.{self._token}"

    def write(self, resource: Mapping[str, Any], *, deduplicate: bool = False) -> bool:
        """Write one resource; returns False when ``deduplicate`` dropped it as already written.

        With ``deduplicate``, a second resource with the same ``Type/id`` is dropped: ``_include`` entries
        repeat on every page that refers to them. The ids seen are kept in memory (a few dozen bytes each).
        """
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str) or not resource_type:
            raise ValueError("cannot write a resource without a resourceType")
        if deduplicate:
            rid = resource.get("id")
            if rid:
                key = f"{resource_type}/{rid}"
                if key in self._seen:
                    self.duplicates += 1
                    return False
                self._seen.add(key)
        self._writer(resource_type).write(resource)
        return True

    def _writer(self, resource_type: str) -> NdjsonPartWriter:
        writer = self._writers.get(resource_type)
        if writer is None:
            # A server's resourceType becomes a directory name: only FHIR type names may.
            checked_resource_type(resource_type, "resourceType of a search result")
            writer = NdjsonPartWriter(
                self.staging_directory(resource_type),
                compression=self.compression,
                max_part_bytes=self.max_part_bytes,
                max_part_lines=self.max_part_lines,
            )
            self._writers[resource_type] = writer
        return writer

    @property
    def counts(self) -> dict[str, int]:
        return {name: writer.lines for name, writer in sorted(self._writers.items())}

    def commit(self, summary: Mapping[str, Any] | None = None) -> dict[str, TypeResult]:
        """Swap every staged type into place; the primary type's marker is written last of all."""
        if self.committed is not None:
            raise RuntimeError("this run is already committed")
        if self.primary_type is not None:
            self._writer(self.primary_type)
        parts = {name: writer.close() for name, writer in self._writers.items()}
        order = sorted(parts, key=lambda name: (name == self.primary_type, name))
        previous_related = self._previous_related_types()
        # Every directory this commit replaces or removes is checked before any is touched.
        for resource_type in sorted(set(parts) | previous_related):
            self._refuse_foreign(resource_type, (summary or {}).get("search_fingerprint"))
        results: dict[str, TypeResult] = {}
        # A type this run wrote last time but not now (an _include that found nothing this time) belongs
        # to this run's output too: remove it so the run's output is exactly what this attempt found.
        for stale in sorted(previous_related - set(parts)):
            self._remove_run_directory(stale)
        for resource_type in order:
            results[resource_type] = self._swap(resource_type, parts[resource_type], summary or {}, order)
        self.committed = results
        return results

    def _refuse_foreign(self, resource_type: str, fingerprint: Any) -> None:
        """Refuse to replace a committed directory another search wrote (an ``_include`` type that another
        search writes as its primary or as its own include, into the same output root and run)."""
        if fingerprint is None:
            return
        final = self.type_directory(resource_type)
        marker = read_json(final / SUCCESS_MARKER)
        theirs = marker.get("search_fingerprint") if isinstance(marker, dict) else None
        if theirs is not None and theirs != fingerprint:
            search = marker.get("search") if isinstance(marker, dict) else None
            raise ValueError(
                f"{final} holds the committed output of another search ({json.dumps(search)[:200]}), which this "
                f"run's {resource_type} resources would replace; nothing was changed. Give each search its own "
                "output root (or drop the _include/_revinclude that writes this type)"
            )

    def _previous_related_types(self) -> set[str]:
        if self.primary_type is None:
            return set()
        marker = read_json(self.type_directory(self.primary_type) / SUCCESS_MARKER)
        related = marker.get("related_types") if isinstance(marker, dict) else None
        return {str(name) for name in related} if isinstance(related, list) else set()

    def _remove_run_directory(self, resource_type: str) -> None:
        final = self.type_directory(resource_type)
        if not final.exists():
            return
        mark_incomplete(final)
        _remove_tree(final)
        log.info("Removed %s: an earlier attempt of this run wrote it, this one found no %s", final, resource_type)

    def _swap(
        self, resource_type: str, parts: list[PartInfo], summary: Mapping[str, Any], order: list[str]
    ) -> TypeResult:
        final = self.type_directory(resource_type)
        staging = self.staging_directory(resource_type)
        final.mkdir(parents=True, exist_ok=True)
        mark_incomplete(final)
        keep = {part.name for part in parts}
        # On object stores a "directory" exists only while it holds objects: nothing to list then.
        for child in list(final.iterdir()) if final.exists() else []:
            # Old parts this attempt does not overwrite (an earlier attempt wrote more parts) must go too.
            if child.name not in keep and child.name != SUCCESS_MARKER and child.is_file():
                child.unlink()
        for part in parts:
            replace(staging / part.name, final / part.name)
        _remove_tree(staging)
        count = sum(part.lines for part in parts)
        marker: dict[str, Any] = {
            **summary,
            "run": self.run,
            "resource_type": resource_type,
            "count": count,
            "parts": [{"name": p.name, "lines": p.lines, "bytes": p.bytes} for p in parts],
            "compression": self.compression,
        }
        if resource_type == self.primary_type:
            marker["related_types"] = [name for name in order if name != resource_type]
        mark_complete(final, marker)
        return TypeResult(resource_type, str(final), count, [str(final / p.name) for p in parts])

    def abort(self) -> None:
        """Drop everything staged; committed directories are not touched."""
        for resource_type, writer in self._writers.items():
            writer.abort()
            with contextlib.suppress(Exception):
                _remove_tree(self.staging_directory(resource_type))
        self._writers.clear()


def _remove_tree(directory: ObjectStoragePath) -> None:
    if not directory.exists():
        return
    for child in list(directory.iterdir()):
        if child.is_dir():
            _remove_tree(child)
        else:
            child.unlink()
    with contextlib.suppress(Exception):
        directory.rmdir()


def committed_runs(output: ObjectStoragePath, resource_type: str) -> list[str]:
    """Run labels under ``<output>/<ResourceType>`` that have a ``_SUCCESS`` marker."""
    base = output / safe_segment(resource_type)
    if not base.exists():
        return []
    return sorted(
        child.name for child in base.iterdir() if not is_hidden(child.name) and (child / SUCCESS_MARKER).exists()
    )
