"""Hash buckets: the layout that lets a merge read and rewrite only the part of a table a run touches.

Every table is partitioned by ``_fhir_bucket = crc32(utf8(id)) mod B``. The bucket of an id never changes,
so a run's ids name the partitions that can hold them: a merge reads the keys of those partitions only,
one bucket at a time, and rewrites only the files in them that hold a changed or deleted row.

``B`` is fixed when a table is created (or re-laid out) and recorded in the table's properties
(``fhir.buckets``), so every writer, and every other engine, computes the same buckets. CRC-32 is chosen
because Spark SQL and Databricks have it built in: ``pmod(crc32(id), B)`` is the same number, so the
same table can be merged there (see the docs' "Beyond one worker").
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

BUCKET = "_fhir_bucket"
BUCKETS_PROPERTY = "fhir.buckets"
#: A bucket holds about this many rows when the table is laid out; a merge holds the keys (id and three
#: version columns) of one bucket at a time. Measured in benchmarks/bench_delta_merge.py (see the docs).
ROWS_PER_BUCKET = 250_000
MAX_BUCKETS = 4096


def bucket_count_for(rows: int) -> int:
    """The bucket count for a table of ``rows`` rows: a power of two, about ``ROWS_PER_BUCKET`` rows each."""
    wanted = max(1, -(-max(0, rows) // ROWS_PER_BUCKET))
    return min(MAX_BUCKETS, 1 << (wanted - 1).bit_length())


def check_bucket_count(buckets: object) -> int:
    """``buckets`` as a valid bucket count, or a clear error."""
    if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= MAX_BUCKETS:
        raise ValueError(f"buckets must be a whole number from 1 to {MAX_BUCKETS}, not {buckets!r}")
    return buckets


def bucket_of_id(resource_id: str, buckets: int) -> int:
    return zlib.crc32(resource_id.encode("utf-8")) % buckets


def buckets_of(ids: pa.Array | pa.ChunkedArray, buckets: int) -> pa.Array:
    """The bucket of each id (int32); a null id falls in bucket 0."""
    import pyarrow as pa

    if buckets == 1:
        return pa.array([0] * len(ids), pa.int32())
    crc = zlib.crc32
    return pa.array(
        [0 if v is None else crc(v.encode("utf-8")) % buckets for v in ids.cast(pa.string()).to_pylist()],
        pa.int32(),
    )


def bucket_sql(buckets: int, column: str = "id") -> str:
    """The bucket as Spark SQL / Databricks SQL computes it."""
    return f"pmod(crc32({column}), {buckets})"


def is_bucketed(table: Any) -> bool:
    """True when ``table`` (a ``DeltaTable``) is partitioned by the bucket column."""
    return list(table.metadata().partition_columns) == [BUCKET]


def bucket_count(table: Any) -> int:
    """The bucket count recorded in a bucketed ``table``'s properties.

    A re-layout records it in two commits (the layout, then the property); when a process died between
    them, the count is taken from the layout commit's metadata and recorded now.
    """
    recorded = table.metadata().configuration.get(BUCKETS_PROPERTY)
    if recorded is None:
        for commit in table.history():
            if commit.get("fhir.operation") == "relayout" and commit.get(BUCKETS_PROPERTY) is not None:
                recorded = str(commit[BUCKETS_PROPERTY])
                table.alter.set_table_properties({BUCKETS_PROPERTY: recorded}, raise_if_not_exists=False)
                break
    try:
        return check_bucket_count(int(str(recorded)))
    except ValueError:
        raise ValueError(
            f"the table at {table.table_uri} is partitioned by {BUCKET} but its property {BUCKETS_PROPERTY} "
            f"is {recorded!r}, not a bucket count; set it to the count the table was laid out with, or run "
            "DeltaTables.relayout to lay it out again"
        ) from None
