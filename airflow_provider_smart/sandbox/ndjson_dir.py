"""Loading a directory of NDJSON files (plain or gzipped), such as a Bulk Data export, as resources."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from airflow_provider_smart.sandbox.store import Resource


def load_ndjson_dir(path: str | Path) -> Iterator[Resource]:
    """Resources from every ``*.ndjson`` / ``*.ndjson.gz`` (also ``.jsonl``) file of a directory, streamed.

    A line that is not a JSON object with ``resourceType`` and ``id`` raises ``ValueError`` naming the file
    and line. Blank lines are skipped.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory of NDJSON files")
    files = sorted(p for p in directory.iterdir() if p.name.endswith((".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")))
    if not files:
        raise ValueError(f"{directory} holds no .ndjson or .ndjson.gz files")
    for file in files:
        opener = gzip.open if file.name.endswith(".gz") else open
        with opener(file, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    resource = json.loads(line)
                except ValueError as exc:
                    raise ValueError(f"{file.name} line {number} is not JSON: {exc}") from None
                if not isinstance(resource, dict) or not resource.get("resourceType") or not resource.get("id"):
                    raise ValueError(f"{file.name} line {number} is not a FHIR resource with resourceType and id")
                yield resource
