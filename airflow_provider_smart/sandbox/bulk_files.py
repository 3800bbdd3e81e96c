"""Writing an export's NDJSON files: split by resource count and bytes, with exact counts.

Files are written once, at kick-off, into the job's directory, so what a client downloads never
changes after the manifest lists it (Bulk Data: files SHALL NOT be altered once in a manifest).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class ExportFile:
    """One file of an export, as the manifest lists it."""

    name: str  # unique within the job, used in URLs
    kind: str  # "output", "error" or "deleted"
    resource_type: str | None  # None for organizeOutputBy files, which mix types
    path: Path
    count: int = 0
    size: int = 0
    continues_in: str | None = None  # name of the file a resource block continues in


def dump_line(resource: dict[str, Any]) -> bytes:
    """One NDJSON line: compact JSON, UTF-8, newline-terminated."""
    return json.dumps(resource, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


class FileSplitter:
    """Writes lines into ``<prefix>.<n>.ndjson`` files, starting a new file when a limit is reached."""

    def __init__(
        self,
        directory: Path,
        *,
        kind: str,
        resource_type: str | None,
        prefix: str,
        max_resources: int,
        max_bytes: int | None,
    ):
        if max_resources < 1:
            raise ValueError("max_resources must be at least 1")
        self.directory = directory
        self.kind = kind
        self.resource_type = resource_type
        self.prefix = prefix
        self.max_resources = max_resources
        self.max_bytes = max_bytes
        self.files: list[ExportFile] = []
        self._handle: Any = None

    @property
    def current(self) -> ExportFile | None:
        return self.files[-1] if self._handle is not None else None

    def would_overflow(self, size: int) -> bool:
        current = self.current
        if current is None or current.count == 0:
            return False
        if current.count >= self.max_resources:
            return True
        return self.max_bytes is not None and current.size + size > self.max_bytes

    def new_file(self) -> ExportFile:
        self.close()
        name = f"{self.prefix}.{len(self.files) + 1:04d}"
        entry = ExportFile(
            name=name, kind=self.kind, resource_type=self.resource_type, path=self.directory / f"{name}.ndjson"
        )
        self.files.append(entry)
        self._handle = entry.path.open("wb")
        return entry

    def write(self, line: bytes) -> ExportFile:
        """Write one line, in a new file when the current one is full."""
        if self.current is None or self.would_overflow(len(line)):
            self.new_file()
        current = self.current
        assert current is not None
        self._handle.write(line)
        current.count += 1
        current.size += len(line)
        return current

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def write_by_type(
    directory: Path,
    resources: Iterable[dict[str, Any]],
    *,
    kind: str,
    resource_type: str,
    prefix: str,
    max_resources: int,
    max_bytes: int | None,
) -> list[ExportFile]:
    """Write resources of one type, split across as many files as the limits need."""
    splitter = FileSplitter(
        directory,
        kind=kind,
        resource_type=resource_type,
        prefix=prefix,
        max_resources=max_resources,
        max_bytes=max_bytes,
    )
    try:
        for resource in resources:
            splitter.write(dump_line(resource))
    finally:
        splitter.close()
    return splitter.files


def block_header(resource_type: str, resource_id: str) -> dict[str, Any]:
    """The STU3 ``organizeOutputBy`` block header: a Parameters resource naming the organizing resource."""
    return {
        "resourceType": "Parameters",
        "parameter": [{"name": "header", "valueReference": {"reference": f"{resource_type}/{resource_id}"}}],
    }


def write_blocks(
    directory: Path,
    blocks: Iterable[tuple[str, str, Iterable[dict[str, Any]]]],
    *,
    prefix: str,
    max_resources: int,
    max_bytes: int | None,
) -> list[ExportFile]:
    """Write resource blocks (organizing type, id, resources); a block that does not fit continues in
    the next file with its header repeated, and the file it left records ``continues_in``."""
    splitter = FileSplitter(
        directory, kind="output", resource_type=None, prefix=prefix, max_resources=max_resources, max_bytes=max_bytes
    )
    try:
        for resource_type, resource_id, members in blocks:
            header = dump_line(block_header(resource_type, resource_id))
            lines = [dump_line(m) for m in members]
            if not lines:
                continue
            block_size = len(header) + sum(len(x) for x in lines)
            # Keep a block whole when it fits in an empty file; start a new file for it then.
            current = splitter.current
            if (
                current is not None
                and current.count
                and (
                    current.count + 1 + len(lines) > splitter.max_resources
                    or (splitter.max_bytes is not None and current.size + block_size > splitter.max_bytes)
                )
            ):
                splitter.new_file()
            splitter.write(header)
            for line in lines:
                before = splitter.current
                if splitter.would_overflow(len(line)):
                    splitter.new_file()
                    if before is not None:
                        before.continues_in = splitter.files[-1].name
                    splitter.write(header)
                splitter.write(line)
    finally:
        splitter.close()
    return splitter.files
