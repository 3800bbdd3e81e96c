"""Read a Delta table's rows into Arrow without leaving native work running after the call returns.

``DeltaTable.to_pyarrow_table()`` scans through a ``pyarrow.dataset`` over deltalake's filesystem
handler, which is Python code (``pyarrow.fs.PyFileSystem``), with read-ahead (``pre_buffer``) on.
The scan can return while read-ahead requests are still completing on Arrow's I/O threads, and their
buffers are Python objects. When the process then exits, the interpreter starts shutting down; a
request finishing after that point must take the GIL to free its buffer, Python ends that thread with
``pthread_exit`` in the middle of a C++ destructor, and the C++ runtime calls ``std::terminate``:
``terminate called without an active exception`` and exit status 134 (SIGABRT), after work that had
finished correctly (seen in about one process in ten on two cores; apache/arrow#34314 and
delta-io/delta-rs#2184 report the same abort).

This module reads through deltalake's own engine instead (``QueryBuilder``: DataFusion, in Rust). The
batches arrive over the Arrow C stream interface with Rust-owned buffers, nothing of the read is
Python-backed, and the scan is complete when the call returns, so nothing is left to race the
interpreter's shutdown. DataFusion hands strings over as ``string_view``; the result is cast back to
the table's own schema so callers see the types the table declares.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

#: The name the table is registered under for the one query.
_ALIAS = "delta_table"


def quote_identifier(name: str) -> str:
    """``name`` as a SQL identifier DataFusion takes verbatim (case kept, quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def read_table(table: Any, columns: Sequence[str] | None = None) -> pa.Table:
    """The rows of ``table`` (a ``deltalake.DeltaTable``), only ``columns`` when given, typed as the table."""
    import pyarrow as pa
    from deltalake import QueryBuilder

    schema = pa.schema(table.schema().to_arrow())
    wanted = list(columns) if columns is not None else schema.names
    missing = [name for name in wanted if name not in schema.names]
    if missing:
        raise KeyError(f"the Delta table has no column(s) {missing}; it has {schema.names}")
    select = ", ".join(quote_identifier(name) for name in wanted)
    query = QueryBuilder().register(_ALIAS, table)
    stream = query.execute(f"SELECT {select} FROM {quote_identifier(_ALIAS)}")  # noqa: S608 - quoted names
    rows = pa.RecordBatchReader.from_stream(stream).read_all()
    return rows.cast(pa.schema([schema.field(name) for name in wanted]))
