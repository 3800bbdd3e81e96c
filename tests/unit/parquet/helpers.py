"""Helpers for the Parquet tests: comparing resources the way the round-trip promise is worded."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from airflow_provider_smart.parquet.reader import iter_resources


def canon(value: Any, exact: bool = False) -> Any:
    """Key order ignored (dicts compare unordered); numbers by value; exact decimals by their text."""
    if isinstance(value, dict):
        return {k: canon(v, exact) for k, v in value.items()}
    if isinstance(value, list):
        return [canon(v, exact) for v in value]
    if isinstance(value, Decimal):
        return ("decimal", str(value)) if exact else float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return ("decimal", str(value)) if exact and isinstance(value, int) else float(value)
    return value


def read_table(directory: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for part in sorted(directory.glob("part-*.parquet")):
        out.extend(iter_resources(str(part)))
    return out


def read_ndjson(path: Path, exact: bool = False) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        return [json.loads(line, parse_float=Decimal if exact else float) for line in handle if line.strip()]


def write_ndjson(path: Path, resources: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in resources), encoding="utf-8")
    return path
