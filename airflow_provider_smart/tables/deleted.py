"""The ``deleted`` files of a Bulk Data export: transaction Bundles, one per line, of DELETE entries.

Bulk Data 2.0 lists, for an export with ``_since``, the resources deleted since then as Bundles whose
entries say ``request: {method: DELETE, url: "<Type>/<id>"}``. Every value comes from the server, so each
URL is checked against the FHIR type and id grammar before it may select rows of a table; a line that
does not fit is an error naming the file and line (a silent skip would leave a deleted resource in the
table).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from airflow_provider_smart.transport.sanitize import safe_text

_TYPE = re.compile(r"^[A-Z][A-Za-z0-9]{0,63}$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
# A deleted-file line is one small Bundle; anything far larger is not what the spec describes.
MAX_LINE_BYTES = 64 << 20


class DeletedFileError(ValueError):
    """A ``deleted`` file line that cannot be read as a Bundle of DELETE entries."""


@dataclass(frozen=True)
class Deletion:
    resource_type: str
    resource_id: str
    #: When the server says the resource was deleted (the entry's ``response.lastModified`` or the
    #: Bundle's ``meta.lastUpdated``), as the server wrote it; None when it does not say.
    deleted_at: str | None


def _entry_deletion(entry: Any, bundle_time: str | None, where: str) -> Deletion:
    request = entry.get("request") if isinstance(entry, dict) else None
    if not isinstance(request, dict) or str(request.get("method", "")).upper() != "DELETE":
        raise DeletedFileError(f"{where}: an entry without request.method DELETE")
    url = request.get("url")
    parts = url.split("?", 1)[0].strip("/").split("/") if isinstance(url, str) else []
    if len(parts) < 2 or not _TYPE.match(parts[-2]) or not _ID.match(parts[-1]):
        raise DeletedFileError(
            f"{where}: request.url {safe_text(url, limit=120)!r} is not '<ResourceType>/<id>'; the export's "
            "deleted file does not follow Bulk Data 2.0"
        )
    response = entry.get("response")
    when = response.get("lastModified") if isinstance(response, dict) else None
    if not isinstance(when, str):
        when = bundle_time
    return Deletion(parts[-2], parts[-1], when)


def parse_deleted_line(line: bytes | str, where: str) -> list[Deletion]:
    """The deletions of one line (one Bundle)."""
    try:
        bundle = json.loads(line)
    except ValueError:
        raise DeletedFileError(f"{where}: not valid JSON; a deleted file holds one Bundle per line") from None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise DeletedFileError(f"{where}: not a Bundle; a deleted file holds one Bundle per line")
    meta = bundle.get("meta")
    bundle_time = meta.get("lastUpdated") if isinstance(meta, dict) else None
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise DeletedFileError(f"{where}: Bundle.entry is not an array")
    return [_entry_deletion(e, bundle_time if isinstance(bundle_time, str) else None, where) for e in entries]


def iter_deletions(handle: IO[bytes], source: str) -> Iterator[Deletion]:
    """The deletions of an open NDJSON file; a line is read with a cap, so memory stays bounded."""
    number = 0
    while True:
        line = handle.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_BYTES:
            raise DeletedFileError(f"{source} line {number}: over {MAX_LINE_BYTES} bytes; not a deleted Bundle")
        if line.strip():
            yield from parse_deleted_line(line, f"{source} line {number}")


def read_deletions(files: Iterable[Any]) -> list[Deletion]:
    """Every deletion listed in the given ``deleted`` files (paths, plain or gzipped NDJSON)."""
    from airflow_provider_smart.parquet.writer import open_ndjson

    found: list[Deletion] = []
    for path in files:
        with open_ndjson(path) as handle:
            found.extend(iter_deletions(handle, str(path)))
    return found
