"""Merge a landed run into current-state Delta tables: upsert by id, newer versions only, deletes applied.

For each run the NDJSON files are first converted to typed Parquet in a local staging directory by the
same writer as the Parquet output (same R4 schema record, same fast and exact paths), so a table's
columns are exactly the Parquet output's. Then, per resource type:

1. the type's schema record grows by what the run brought, and is stored (``_schemas/<Type>.json``);
   a table missing those fields gets them first (a schema-only Delta commit: the schema only grows);
2. the plan is made on keys only (ids and versions of the run and of the table, never whole rows): the
   newest copy of each id within the run, kept only where it is newer than the table's row (see
   ``versions.py``), and the deletions that apply;
3. nothing to do means no commit at all (merging the same run again leaves the table's version as it
   is); otherwise one Delta MERGE streams the kept rows and the deletions in a single atomic commit.
   A process killed before that commit leaves the table at its previous version.

Two merges into one table at once: Delta's optimistic commit lets one win; the other sees a commit
conflict, plans again against the new version (the rules make that safe) and after ``max_attempts``
fails with :class:`TableBusyError`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from airflow_provider_smart.parquet.arrow import conform_table, table_schema
from airflow_provider_smart.parquet.schema import SchemaRecord
from airflow_provider_smart.storage.atomic import atomic_write_json, read_json
from airflow_provider_smart.tables.deleted import Deletion, read_deletions
from airflow_provider_smart.tables.location import SCHEMAS_DIR, delta_uri, schema_path
from airflow_provider_smart.tables.read import read_table
from airflow_provider_smart.tables.runs import LandedRun
from airflow_provider_smart.tables.versions import (
    LAST_UPDATED,
    OPERATION,
    SOURCE,
    TRANSACTION_TIME,
    VERSION_ID,
    bookkeeping_fields,
    deletes_mask,
    deletes_sql,
    instants,
    newer_mask,
    newer_sql,
    parse_instant,
    version_ids,
)

log = logging.getLogger(__name__)

_STAGE_RUN = "stage"
_KEY_COLUMNS = ["id", TRANSACTION_TIME, VERSION_ID, LAST_UPDATED]
_TS = pa.timestamp("us", tz="UTC")


class TableBusyError(RuntimeError):
    """Other merges kept committing to the same table; this one gave up without changing it."""


class TablesError(ValueError):
    """The input cannot be merged; the message says what is wrong and how to fix it."""


@dataclass
class MergeResult:
    resource_type: str
    table: str
    version_before: int | None
    version: int | None
    committed: bool
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    #: Rows of the run that were not newer than the table's copy (or lost to a newer copy in the run).
    unchanged: int = 0
    rows: int | None = None
    #: Resources of the run without an ``id`` (absent or empty): a table keyed by id cannot hold them, so
    #: they are refused and counted here (they stay in the landed NDJSON/Parquet).
    without_id: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _names(typ: pa.DataType) -> dict[str, pa.DataType]:
    if pa.types.is_struct(typ):
        return {typ.field(i).name: typ.field(i).type for i in range(typ.num_fields)}
    return {}


def _lacks(target: pa.DataType, wanted: pa.DataType) -> bool:
    """True when ``target`` misses a (nested) field that ``wanted`` has."""
    if pa.types.is_list(wanted) or pa.types.is_large_list(wanted):
        if not hasattr(target, "value_type"):
            return False
        return _lacks(target.value_type, wanted.value_type)
    if not pa.types.is_struct(wanted):
        return False
    have = _names(target)
    return any(name not in have or _lacks(have[name], typ) for name, typ in _names(wanted).items())


def _plain(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, f.type) for f in schema])


class DeltaTables:
    """The current-state tables under ``root`` (an ObjectStoragePath: local, S3, GCS, Azure).

    :param root: the tables root; one Delta table per resource type under it.
    :param storage_options: delta-rs storage options (credentials, endpoint) for ``root``.
    :param decimal: ``"float64"`` or ``"string"``, as for the Parquet writer; fixed per tables root.
    :param max_attempts: plans and commits tried per table when other merges commit in between.
    :param staging_dir: local directory for the staged Parquet (default: the system temp directory).
    """

    def __init__(
        self,
        root: Any,
        *,
        storage_options: Mapping[str, str] | None = None,
        decimal: str = "float64",
        max_attempts: int = 5,
        staging_dir: str | None = None,
    ) -> None:
        self.root = root
        self.storage_options = dict(storage_options or {})
        self.decimal = decimal
        self.max_attempts = max(1, max_attempts)
        self.staging_dir = staging_dir

    # -- tables ----------------------------------------------------------------------------------
    def table_uri(self, resource_type: str) -> str:
        return delta_uri(self.root, resource_type)

    def open(self, resource_type: str) -> Any:
        """The type's ``DeltaTable``, or None when its first merge has not happened yet."""
        from deltalake import DeltaTable

        uri = self.table_uri(resource_type)
        if not DeltaTable.is_deltatable(uri, storage_options=self.storage_options):
            return None
        return DeltaTable(uri, storage_options=self.storage_options)

    def resource_types(self) -> list[str]:
        """Types that have a table (their schema record exists)."""
        directory = self.root / SCHEMAS_DIR
        if not directory.exists():
            return []
        return sorted(c.name[: -len(".json")] for c in directory.iterdir() if c.name.endswith(".json"))

    # -- merging ---------------------------------------------------------------------------------
    def merge_run(self, run: LandedRun, *, resource_types: Iterable[str] | None = None) -> dict[str, MergeResult]:
        """Merge every type of a landed run (or only ``resource_types``)."""
        wanted = set(resource_types) if resource_types is not None else None
        files = [f for rtype, group in run.files.items() for f in group if wanted is None or rtype in wanted]
        deletions = read_deletions(run.deleted)
        declared = [t for t in run.resource_types if wanted is None or t in wanted]
        return self.merge(
            files,
            deletions,
            source=f"{run.kind}:{run.label}",
            transaction_time=run.transaction_time,
            declare=declared,
            only=wanted,
        )

    def merge(
        self,
        ndjson_files: Iterable[Any],
        deletions: Iterable[Deletion] = (),
        *,
        source: str,
        transaction_time: str,
        declare: Iterable[str] = (),
        only: set[str] | None = None,
    ) -> dict[str, MergeResult]:
        """Merge NDJSON files (any types) and deletions, as one run named ``source`` at ``transaction_time``.

        :param declare: types whose table is created even if the run has none of them.
        :param only: merge only these types (lines and deletions of others are left out).
        """
        when = parse_instant(transaction_time)
        if when is None:
            raise TablesError(
                f"transaction time {transaction_time!r} is not an instant with a time zone "
                "(e.g. 2024-05-01T00:00:00Z); the merge orders runs by it"
            )
        by_type: dict[str, list[Deletion]] = {}
        for d in deletions:
            if only is None or d.resource_type in only:
                by_type.setdefault(d.resource_type, []).append(d)
        stage = Path(tempfile.mkdtemp(prefix="fhir-delta-", dir=self.staging_dir))
        try:
            staged = self._stage(stage, list(ndjson_files), declare)
            results: dict[str, MergeResult] = {}
            for rtype in sorted(set(staged) | set(by_type)):
                if only is not None and rtype not in only:
                    continue
                record, parts = staged.get(rtype, (None, []))
                results[rtype] = self._merge_type(rtype, record, parts, by_type.get(rtype, []), source, when)
            return results
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def _stage(
        self, stage: Path, files: list[Any], declare: Iterable[str]
    ) -> dict[str, tuple[SchemaRecord, list[str]]]:
        """NDJSON -> typed Parquet on local disk, seeded with each type's stored schema record."""
        from airflow_provider_smart.parquet.writer import SCHEMA_FILE, FhirParquetWriter

        for rtype in self.resource_types():
            stored = read_json(schema_path(self.root, rtype))
            if stored is not None:
                (stage / rtype).mkdir(parents=True, exist_ok=True)
                atomic_write_json(_local(stage / rtype / SCHEMA_FILE), stored)
        writer = FhirParquetWriter(str(stage), _STAGE_RUN, decimal=self.decimal)
        with writer:
            for rtype in declare:
                writer.declare(rtype)
            for path in files:
                writer.write_ndjson(path)
        staged: dict[str, tuple[SchemaRecord, list[str]]] = {}
        for rtype, info in writer.result.items():
            stored = read_json(_local(stage / rtype / SCHEMA_FILE))
            if not isinstance(stored, dict):
                raise TablesError(f"the staged {rtype} table has no schema record; this is a bug, please report it")
            record = SchemaRecord.from_json(stored)
            staged[rtype] = (record, [str(f).removeprefix("file://") for f in info["files"]])
        return staged

    def _store_record(self, rtype: str, record: SchemaRecord) -> SchemaRecord:
        """Grow the stored record by ``record`` (never shrink), before any table commit uses it."""
        path = schema_path(self.root, rtype)
        stored = read_json(path)
        merged = SchemaRecord.from_json(record.to_json())
        if stored is not None:
            previous = SchemaRecord.from_json(stored)
            if previous.decimal != merged.decimal:
                raise TablesError(
                    f"the {rtype} table keeps decimals as {previous.decimal!r}; merge with decimal="
                    f"{previous.decimal!r} (a table cannot change how it stores decimals)"
                )
            merged.merge(previous)
        if stored != merged.to_json():
            atomic_write_json(path, merged.to_json())
        return merged

    def _merge_type(
        self,
        rtype: str,
        record: SchemaRecord | None,
        parts: list[str],
        deletions: list[Deletion],
        source: str,
        when: Any,
    ) -> MergeResult:
        from deltalake.exceptions import CommitFailedError

        if record is not None:
            record = self._store_record(rtype, record)
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self._attempt(rtype, record, parts, deletions, source, when)
            except CommitFailedError as exc:
                log.warning(
                    "%s: another merge committed first (attempt %d of %d), planning again: %s",
                    rtype,
                    attempt,
                    self.max_attempts,
                    str(exc)[:300],
                )
        raise TableBusyError(
            f"the {rtype} table at {self.table_uri(rtype)} kept changing under this merge ({self.max_attempts} "
            "attempts); it holds the other merges' commits and none of this one. Run one merge per table at a "
            "time (e.g. an Airflow pool of size 1) and retry this task"
        )

    def _desired(self, record: SchemaRecord | None, table: Any) -> pa.Schema:
        if record is not None:
            return pa.schema(list(_plain(table_schema(record))) + bookkeeping_fields())
        return _plain(pa.schema(table.schema().to_arrow()))

    def _attempt(
        self,
        rtype: str,
        record: SchemaRecord | None,
        parts: list[str],
        deletions: list[Deletion],
        source: str,
        when: Any,
    ) -> MergeResult:
        from deltalake import CommitProperties, DeltaTable, write_deltalake

        uri = self.table_uri(rtype)
        table = self.open(rtype)
        if table is None and record is None:
            # Deletions for a type never merged: nothing to delete.
            return MergeResult(rtype, uri, None, None, committed=False)
        desired = self._desired(record, table)
        if table is None:
            table = DeltaTable.create(uri, desired, mode="ignore", name=rtype, storage_options=self.storage_options)
            table = DeltaTable(uri, storage_options=self.storage_options)
        elif _lacks(pa.struct(list(pa.schema(table.schema().to_arrow()))), pa.struct(list(desired))):
            write_deltalake(
                uri,
                desired.empty_table(),
                mode="append",
                schema_mode="merge",
                storage_options=self.storage_options,
                commit_properties=CommitProperties(custom_metadata={"fhir.operation": "grow schema"}),
            )
            table = DeltaTable(uri, storage_options=self.storage_options)
        before = table.version()
        plan = _Plan.make(table, parts, deletions, when)
        if plan.without_id:
            log.warning(
                "%s: %d resource(s) of %s have no id and are left out of the table (a table row is keyed by "
                "id); they stay in the landed files",
                rtype,
                plan.without_id,
                source,
            )
        if not plan.keep_count and not plan.delete_count:
            log.info("%s: nothing newer in %s; table stays at version %d", rtype, source, before)
            return MergeResult(
                rtype,
                uri,
                before,
                before,
                committed=False,
                unchanged=plan.unchanged,
                rows=plan.target_rows,
                without_id=plan.without_id,
            )
        reader = plan.reader(parts, desired, source, when)
        metrics = (
            table.merge(
                reader,
                predicate="t.id = s.id",
                source_alias="s",
                target_alias="t",
                streamed_exec=True,
                commit_properties=CommitProperties(
                    custom_metadata={"fhir.source": source, "fhir.transactionTime": when.isoformat()}
                ),
            )
            .when_matched_update_all(predicate=f"s.{OPERATION} = 'upsert' AND {newer_sql()}", except_cols=[OPERATION])
            .when_matched_delete(predicate=f"s.{OPERATION} = 'delete' AND {deletes_sql()}")
            .when_not_matched_insert_all(predicate=f"s.{OPERATION} = 'upsert'", except_cols=[OPERATION])
            .execute()
        )
        table.update_incremental()
        result = MergeResult(
            rtype,
            uri,
            before,
            table.version(),
            committed=True,
            inserted=int(metrics.get("num_target_rows_inserted", 0)),
            updated=int(metrics.get("num_target_rows_updated", 0)),
            deleted=int(metrics.get("num_target_rows_deleted", 0)),
            unchanged=plan.unchanged,
            rows=plan.target_rows
            + int(metrics.get("num_target_rows_inserted", 0))
            - int(metrics.get("num_target_rows_deleted", 0)),
            without_id=plan.without_id,
        )
        log.info(
            "%s: merged %s into version %d (%d inserted, %d updated, %d deleted, %d unchanged)",
            rtype,
            source,
            result.version,
            result.inserted,
            result.updated,
            result.deleted,
            result.unchanged,
        )
        return result

    # -- maintenance -----------------------------------------------------------------------------
    def compact(self, resource_type: str, *, target_size: int | None = None) -> dict[str, Any]:
        """Rewrite small files into larger ones (no row changes); returns delta-rs's metrics."""
        table = self.open(resource_type)
        if table is None:
            return {}
        return dict(table.optimize.compact(target_size=target_size))

    def vacuum(self, resource_type: str, *, retention_hours: int) -> list[str]:
        """Delete files no version newer than ``retention_hours`` ago needs; returns what was removed.

        Older versions (time travel) and readers still on them lose their files: keep the retention longer
        than the longest query or replication lag.
        """
        if retention_hours < 0:
            raise TablesError(f"vacuum retention_hours must be >= 0, not {retention_hours}")
        table = self.open(resource_type)
        if table is None:
            return []
        removed = table.vacuum(retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False)
        return list(removed)


def _local(path: Path) -> Any:
    """A local path as an ObjectStoragePath (the storage helpers expect one)."""
    from airflow_provider_smart.storage.paths import resolve_output

    return resolve_output(str(path))


@dataclass
class _Plan:
    """Which rows of the staged run to send, by global row position, and which deletions apply."""

    keep: bytearray  # 1 per staged row to send
    keep_count: int
    unchanged: int
    deletes: pa.Table  # id, LAST_UPDATED (when deleted)
    delete_count: int
    target_rows: int
    without_id: int = 0

    @staticmethod
    def make(table: Any, parts: list[str], deletions: list[Deletion], when: Any) -> _Plan:
        target = read_table(table, _KEY_COLUMNS)  # not to_pyarrow_table: see tables/read.py
        target = pa.table(
            {
                "id": target.column("id").cast(pa.string()),
                "t_tt": target.column(TRANSACTION_TIME).cast(_TS),
                "t_v": target.column(VERSION_ID).cast(pa.int64()),
                "t_lu": target.column(LAST_UPDATED).cast(_TS),
            }
        )
        keys = _source_keys(parts)
        total = len(keys)
        keep = bytearray(total)
        unchanged = 0
        winner_ids = pa.array([], pa.string())
        without_id = 0
        if total:
            has_id = pc.fill_null(pc.greater(pc.utf8_length(keys.column("id")), 0), False)
            with_id = keys.filter(has_id)
            without_id = total - len(with_id)
            order = pc.sort_indices(
                with_id,
                sort_keys=[
                    ("id", "ascending", "at_end"),
                    ("v", "descending", "at_end"),
                    ("lu", "descending", "at_end"),
                    ("pos", "descending", "at_end"),
                ],
            )
            ranked = with_id.take(order)
            ids = ranked.column("id").combine_chunks()
            first = pa.concat_arrays([pa.array([True] * min(1, len(ids))), pc.not_equal(ids[1:], ids[:-1])])
            winners = ranked.filter(first)
            winner_ids = winners.column("id").combine_chunks()
            joined = winners.join(target, "id", join_type="left outer")
            now = pa.repeat(pa.scalar(when, _TS), len(joined))
            newer = newer_mask(
                joined.column("v"),
                joined.column("lu"),
                now,
                joined.column("t_v"),
                joined.column("t_lu"),
                joined.column("t_tt"),
            )
            chosen = joined.filter(newer).column("pos").to_pylist()
            for position in chosen:
                keep[position] = 1
            unchanged = len(with_id) - len(chosen)
        deletes = _deletion_table(deletions, winner_ids)
        delete_count = 0
        if len(deletes):
            joined = deletes.join(target, "id", join_type="inner")
            if len(joined):
                now = pa.repeat(pa.scalar(when, _TS), len(joined))
                applies = deletes_mask(now, joined.column(LAST_UPDATED), joined.column("t_tt"), joined.column("t_lu"))
                deletes = joined.filter(applies).select(["id", LAST_UPDATED])
                delete_count = len(deletes)
            else:
                deletes = deletes.slice(0, 0)
        keep_count = total - unchanged - without_id
        return _Plan(keep, keep_count, unchanged, deletes, delete_count, len(target), without_id)

    def reader(self, parts: list[str], desired: pa.Schema, source: str, when: Any) -> pa.RecordBatchReader:
        schema = desired.append(pa.field(OPERATION, pa.string()))
        return pa.RecordBatchReader.from_batches(schema, self._batches(parts, desired, schema, source, when))

    def _batches(
        self, parts: list[str], desired: pa.Schema, schema: pa.Schema, source: str, when: Any
    ) -> Iterator[pa.RecordBatch]:
        data_fields = [f for f in desired if f.name not in (SOURCE, TRANSACTION_TIME, VERSION_ID, LAST_UPDATED)]
        data_schema = pa.schema(data_fields)
        offset = 0
        for part in parts:
            for batch in pq.ParquetFile(part).iter_batches(batch_size=8192):
                n = batch.num_rows
                flags = self.keep[offset : offset + n]
                offset += n
                if not any(flags):
                    continue
                mask = pc.equal(pa.Array.from_buffers(pa.uint8(), n, [None, pa.py_buffer(bytes(flags))]), 1)
                rows = pa.Table.from_batches([batch]).filter(mask)
                version, updated = _versions(rows)
                rows = conform_table(rows, data_schema)
                count = len(rows)
                out = rows.append_column(SOURCE, pa.array([source] * count, pa.string()))
                out = out.append_column(TRANSACTION_TIME, pa.array([when] * count, _TS))
                out = out.append_column(VERSION_ID, version).append_column(LAST_UPDATED, updated)
                out = out.append_column(OPERATION, pa.array(["upsert"] * count, pa.string()))
                yield from out.cast(schema).to_batches()
        if self.delete_count:
            n = self.delete_count
            columns = []
            for f in schema:
                if f.name == "id":
                    columns.append(self.deletes.column("id").cast(f.type))
                elif f.name == TRANSACTION_TIME:
                    columns.append(pa.chunked_array([pa.array([when] * n, _TS)]))
                elif f.name == LAST_UPDATED:
                    columns.append(self.deletes.column(LAST_UPDATED).cast(_TS))
                elif f.name == OPERATION:
                    columns.append(pa.chunked_array([pa.array(["delete"] * n, pa.string())]))
                elif f.name == SOURCE:
                    columns.append(pa.chunked_array([pa.array([source] * n, pa.string())]))
                else:
                    columns.append(pa.chunked_array([pa.nulls(n, f.type)]))
            yield from pa.Table.from_arrays(columns, schema=schema).to_batches()


def _versions(rows: pa.Table) -> tuple[pa.Array, pa.Array]:
    """(``meta.versionId`` as int64, ``meta.lastUpdated`` as timestamp) of each row."""
    n = len(rows)
    if "meta" not in rows.column_names:
        return pa.nulls(n, pa.int64()), pa.nulls(n, _TS)
    meta = rows.column("meta").combine_chunks()
    names = _names(meta.type)
    version = version_ids(meta.field("versionId")) if "versionId" in names else pa.nulls(n, pa.int64())
    updated = instants(meta.field("lastUpdated")) if "lastUpdated" in names else pa.nulls(n, _TS)
    # A null meta struct hides its children's values.
    if meta.null_count:
        valid = pc.is_valid(meta)
        version = pc.if_else(valid, version, pa.scalar(None, pa.int64()))
        updated = pc.if_else(valid, updated, pa.scalar(None, _TS))
    return version, updated


def _source_keys(parts: list[str]) -> pa.Table:
    """id, versions and global row position of every staged row (keys only: small next to the rows)."""
    tables = []
    offset = 0
    for part in parts:
        handle = pq.ParquetFile(part)
        names = set(handle.schema_arrow.names)
        columns = [c for c in ("id", "meta") if c in names]
        for batch in handle.iter_batches(batch_size=65536, columns=columns):
            rows = pa.Table.from_batches([batch])
            n = len(rows)
            version, updated = _versions(rows)
            ids = rows.column("id").cast(pa.string()) if "id" in names else pa.nulls(n, pa.string())
            tables.append(
                pa.table(
                    {"id": ids, "v": version, "lu": updated, "pos": pa.array(range(offset, offset + n), pa.int64())}
                )
            )
            offset += n
    if not tables:
        return pa.table(
            {
                "id": pa.array([], pa.string()),
                "v": pa.array([], pa.int64()),
                "lu": pa.array([], _TS),
                "pos": pa.array([], pa.int64()),
            }
        )
    return pa.concat_tables(tables)


def _deletion_table(deletions: list[Deletion], output_ids: pa.Array) -> pa.Table:
    """One row per deleted id (its latest deletion time); ids the run also holds are left out: the run's
    copy is what the server had at its transactionTime."""
    latest: dict[str, Any] = {}
    for d in deletions:
        at = parse_instant(d.deleted_at)
        previous = latest.get(d.resource_id, False)
        if previous is False or (at is not None and (previous is None or at > previous)):
            latest[d.resource_id] = at
    table = pa.table({"id": pa.array(list(latest), pa.string()), LAST_UPDATED: pa.array(list(latest.values()), _TS)})
    if len(table) and len(output_ids):
        table = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=output_ids)))
    return table
