"""Plain-text tables for task logs: what a run landed, one line per resource type or table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A table a person reads in a log: numbers right-aligned (with thousands separators), text left."""
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [all(isinstance(row[i], int | float) for row in rows) if rows else False for i in range(len(headers))]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if numeric[i] else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


def landed_types_table(types: Mapping[str, Mapping[str, Any]]) -> str:
    """Resources, files and MB per resource type (the export summary's ``types``)."""
    rows: list[list[Any]] = []
    totals = [0, 0, 0]
    for name, t in sorted(types.items()):
        counts = [int(t.get("resources", 0)), int(t.get("files", 0)), int(t.get("bytes", 0))]
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
        rows.append([name, counts[0], counts[1], round(counts[2] / 1e6, 1)])
    if len(rows) > 1:
        rows.append(["total", totals[0], totals[1], round(totals[2] / 1e6, 1)])
    return text_table(["type", "resources", "files", "MB"], rows)


def delta_results_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Per table: rows now, what the merge inserted, updated, deleted, the table version, and what it cost
    (buckets touched of the table's buckets, data files rewritten and their bytes)."""
    rows = [
        [
            name,
            int(r.get("rows") or 0),
            int(r.get("inserted", 0)),
            int(r.get("updated", 0)),
            int(r.get("deleted", 0)),
            int(r.get("unchanged", 0)),
            int(r.get("without_id", 0)),
            r.get("version"),
            f"{int(r.get('buckets_touched', 0))}/{int(r.get('buckets') or 0)}",
            int(r.get("files_rewritten", 0)),
            _megabytes(int(r.get("bytes_rewritten", 0))),
        ]
        for name, r in sorted(results.items())
    ]
    header = ["table", "rows", "inserted", "updated", "deleted", "unchanged", "no id", "version", "buckets"]
    return text_table([*header, "files rewritten", "MB rewritten"], rows)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f}"


def rows_table(counts: Mapping[str, int], what: str = "type") -> str:
    """Rows per table or type (Parquet tables, view tables)."""
    return text_table([what, "rows"], [[name, int(n)] for name, n in sorted(counts.items())])
