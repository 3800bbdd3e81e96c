"""The data files of one bucketed Delta table: list them by bucket, read their keys, write new ones.

A merge works on files, not on the whole table: it reads the key columns of the files in the buckets a
run touches, streams the surviving rows of the few files that hold a changed or deleted row into new
files, and commits the new files' ``add`` and the old files' ``remove`` actions in one Delta commit
(``merge.py``). Remote tables are read and written through delta-rs' own object store
(``DeltaStorageHandler``), so S3, GCS and Azure work with the same ``storage_options`` as the commit;
local tables through Arrow's local file system.

Remote reads go through Arrow's ``PyFileSystem`` (Python-backed I/O), the kind that aborted processes at
exit when a dataset scan read ahead (``read.py``). Here every read is a plain ``ParquetFile`` read with
no read-ahead (``pre_buffer`` off) and every write is awaited, so no native request is left in flight
when a call returns; ``tests/integration/test_delta_clean_exit.py`` merges into a table on S3 in many
fresh processes and requires every one to exit 0.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from airflow_provider_smart.tables.buckets import BUCKET

#: Rows per written file and per row group: a rewrite streams one row group at a time, and a file that
#: holds one changed row is rewritten whole, so files stay moderate.
MAX_ROWS_PER_FILE = 262_144
MAX_ROWS_PER_GROUP = 65_536
#: Rows gathered per bucket before a row group is written (bounds memory with many buckets open).
MIN_ROWS_PER_GROUP = 16_384
READ_BATCH_ROWS = 8_192


@dataclass(frozen=True)
class DataFile:
    path: str  # relative to the table root, as in the Delta log
    size: int
    rows: int
    bucket: int | None  # None in a table not (yet) partitioned by bucket


@dataclass
class Written:
    """What a write added (and, once committed, what it removed)."""

    adds: list[Any]
    files: int = 0
    bytes: int = 0


class TableFiles:
    """Files of the Delta table at ``uri`` (read through delta-rs' object store)."""

    def __init__(self, uri: str, storage_options: Mapping[str, str]) -> None:
        import pyarrow.fs as pafs
        from deltalake.fs import DeltaStorageHandler

        self.uri = uri
        local = uri.removeprefix("file://")
        if "://" not in local:
            # Arrow's own local file system: reads land in Arrow's memory pool, not in Python bytes.
            self.fs: pafs.FileSystem = pafs.SubTreeFileSystem(local, pafs.LocalFileSystem())
        else:
            self.fs = pafs.PyFileSystem(DeltaStorageHandler(uri, dict(storage_options)))

    @staticmethod
    def listing(table: Any) -> list[DataFile]:
        """The live data files of ``table`` (a ``DeltaTable``), from its log (no listing of the store)."""
        actions = pa.table(table.get_add_actions(flatten=True))
        paths = actions.column("path").to_pylist()
        sizes = actions.column("size_bytes").to_pylist()
        counts = actions.column("num_records").to_pylist()
        name = f"partition.{BUCKET}"
        buckets = actions.column(name).to_pylist() if name in actions.column_names else [None] * len(paths)
        return [
            DataFile(p, int(s), int(n or 0), None if b is None else int(b))
            for p, s, n, b in zip(paths, sizes, counts, buckets, strict=True)
        ]

    def open(self, path: str) -> pq.ParquetFile:
        # No read-ahead: nothing of a read may still be running on Arrow's I/O threads after it returns.
        return pq.ParquetFile(self.fs.open_input_file(path), pre_buffer=False)

    def read_columns(self, path: str, columns: list[str]) -> pa.Table:
        handle = self.open(path)
        present = [c for c in columns if c in handle.schema_arrow.names]
        return handle.read(columns=present)

    def batches(self, path: str) -> Iterator[pa.RecordBatch]:
        yield from self.open(path).iter_batches(batch_size=READ_BATCH_ROWS)

    def rewrite(self, old: DataFile, rows: Iterator[pa.Table], schema: pa.Schema, into: Written) -> None:
        """Copy ``rows`` (what stays of the file ``old``) into one new file in the same bucket.

        One row group is held at a time, so memory does not follow the file's or the table's size.
        """
        from deltalake.transaction import AddAction

        directory = f"{BUCKET}={old.bucket}"
        path = f"{directory}/part-{uuid.uuid4().hex}-rewrite.parquet"
        self.fs.create_dir(directory)
        count = 0
        pending: list[pa.Table] = []
        pending_rows = 0
        with self.fs.open_output_stream(path) as sink, pq.ParquetWriter(sink, schema, compression="snappy") as writer:
            for table in rows:
                pending.append(table)
                pending_rows += len(table)
                if pending_rows >= MAX_ROWS_PER_GROUP:
                    writer.write_table(pa.concat_tables(pending), row_group_size=MAX_ROWS_PER_GROUP)
                    count += pending_rows
                    pending, pending_rows = [], 0
            if pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=MAX_ROWS_PER_GROUP)
                count += pending_rows
        if not count:
            self.fs.delete_file(path)  # every row of the file was replaced or deleted
            return
        size = self.fs.get_file_info(path).size or 0
        stats = json.dumps({"numRecords": count})
        into.adds.append(AddAction(path, size, {BUCKET: str(old.bucket)}, int(time.time() * 1000), True, stats))
        into.files += 1
        into.bytes += size

    def write(self, reader: pa.RecordBatchReader) -> Written:
        """Write ``reader``'s rows (with a ``_fhir_bucket`` column) as new files, one directory per bucket.

        Nothing refers to the files until their ``add`` actions are committed: a process killed before
        that leaves files no version reads (``vacuum`` removes them).
        """
        from deltalake.transaction import AddAction

        written: list[tuple[str, int]] = []

        def visit(done: Any) -> None:
            written.append((done.path, done.metadata.num_rows))

        ds.write_dataset(
            reader,
            base_dir="",
            format="parquet",
            filesystem=self.fs,
            partitioning=ds.partitioning(pa.schema([(BUCKET, pa.int32())]), flavor="hive"),
            basename_template=f"part-{uuid.uuid4().hex}-{{i}}.parquet",
            existing_data_behavior="overwrite_or_ignore",
            max_rows_per_file=MAX_ROWS_PER_FILE,
            max_rows_per_group=MAX_ROWS_PER_GROUP,
            min_rows_per_group=MIN_ROWS_PER_GROUP,
            file_options=ds.ParquetFileFormat().make_write_options(compression="snappy"),
            file_visitor=visit,
            use_threads=False,
        )
        now = int(time.time() * 1000)
        result = Written(adds=[])
        for path, rows in written:
            path = path.lstrip("/")
            size = self.fs.get_file_info(path).size or 0
            bucket = path.split(f"{BUCKET}=", 1)[1].split("/", 1)[0]
            result.adds.append(AddAction(path, size, {BUCKET: bucket}, now, True, json.dumps({"numRecords": rows})))
            result.files += 1
            result.bytes += size
        return result


def remove_actions(files: list[DataFile]) -> list[Any]:
    from deltalake.transaction import RemoveAction

    now = int(time.time() * 1000)
    return [
        RemoveAction(f.path, True, now, f.size, None if f.bucket is None else {BUCKET: str(f.bucket)}) for f in files
    ]
