"""Merge a landed run into current-state Delta tables: upsert by id, newer versions only, deletes applied.

For each run the NDJSON files are first converted to typed Parquet in a local staging directory by the
same writer as the Parquet output (same R4 schema record, same fast and exact paths), so a table's
columns are exactly the Parquet output's. Then, per resource type:

1. the type's schema record grows by what the run brought, and is stored (``_schemas/<Type>.json``);
   a table missing those fields gets them first (a schema-only Delta commit: the schema only grows);
2. the table is partitioned by a hash bucket of the id (``buckets.py``); a table laid out before that
   is re-laid out once, in one commit (``relayout``);
3. the plan is made on keys only, one bucket at a time: the newest copy of each id within the run, kept
   only where it is newer than the table's row (see ``versions.py``), and the deletions that apply. Only
   the buckets the run's ids fall in are read, and of them only the key columns;
4. nothing to do means no commit at all (merging the same run again leaves the table's version as it
   is); otherwise the kept rows are written as new files (an insert is an append), the files holding a
   replaced or deleted row are rewritten without it, and one Delta commit adds the new files and removes
   the rewritten ones. A process killed before that commit leaves the table at its previous version.

Memory follows the run and one bucket's keys, never the table: rows stream from the staged run and from
the rewritten files straight into new files.

Two merges into one table at once: every merge commit carries the same Delta application transaction
(``txn``), so of two merges planned against one version only the first commits; the other sees a commit
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
from airflow_provider_smart.tables.buckets import (
    BUCKET,
    BUCKETS_PROPERTY,
    bucket_count,
    bucket_count_for,
    buckets_of,
    check_bucket_count,
    is_bucketed,
)
from airflow_provider_smart.tables.deleted import Deletion, read_deletions
from airflow_provider_smart.tables.files import DataFile, TableFiles, Written, remove_actions
from airflow_provider_smart.tables.location import SCHEMAS_DIR, delta_uri, schema_path
from airflow_provider_smart.tables.runs import LandedRun
from airflow_provider_smart.tables.versions import (
    LAST_UPDATED,
    SOURCE,
    TRANSACTION_TIME,
    VERSION_ID,
    bookkeeping_fields,
    deletes_mask,
    instants,
    newer_mask,
    parse_instant,
    version_ids,
)

log = logging.getLogger(__name__)

_STAGE_RUN = "stage"
_KEY_COLUMNS = ["id", TRANSACTION_TIME, VERSION_ID, LAST_UPDATED]
_TS = pa.timestamp("us", tz="UTC")
#: The Delta application transaction every merge commit carries (see the module docstring).
MERGE_APP_ID = "airflow-provider-smart.merge"
#: A re-layout writes this many buckets per pass over the table (open files and their buffers).
_RELAYOUT_BUCKETS_PER_PASS = 64


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
    #: The table's bucket count, and how many buckets the run's ids and deletions fall in.
    buckets: int | None = None
    buckets_touched: int = 0
    #: New data files (the run's rows and the rewritten files' survivors) and their bytes.
    files_added: int = 0
    bytes_added: int = 0
    #: Existing data files replaced because they held a replaced or deleted row, and their bytes.
    files_rewritten: int = 0
    bytes_rewritten: int = 0
    #: True when this merge first laid an older, unbucketed table out in buckets.
    relaid_out: bool = False
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
    :param buckets: hash buckets of a table this merge creates (default: from the first run's size, see
        ``buckets.py``); an existing table keeps its count (``relayout`` changes it).
    """

    def __init__(
        self,
        root: Any,
        *,
        storage_options: Mapping[str, str] | None = None,
        decimal: str = "float64",
        max_attempts: int = 5,
        staging_dir: str | None = None,
        buckets: int | None = None,
    ) -> None:
        self.root = root
        self.storage_options = dict(storage_options or {})
        self.decimal = decimal
        self.max_attempts = max(1, max_attempts)
        self.staging_dir = staging_dir
        self.buckets = check_bucket_count(buckets) if buckets is not None else None

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
        writer = FhirParquetWriter(_local(stage), _STAGE_RUN, decimal=self.decimal)
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
        """The table's data and bookkeeping columns (without the bucket column)."""
        if record is not None:
            return pa.schema(list(_plain(table_schema(record))) + bookkeeping_fields())
        current = _plain(pa.schema(table.schema().to_arrow()))
        return pa.schema([f for f in current if f.name != BUCKET])

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
        from deltalake.transaction import Transaction

        uri = self.table_uri(rtype)
        table = self.open(rtype)
        if table is None and record is None:
            # Deletions for a type never merged: nothing to delete.
            return MergeResult(rtype, uri, None, None, committed=False)
        desired = self._desired(record, table)
        relaid_out = False
        if table is None:
            buckets = self.buckets or bucket_count_for(_staged_rows(parts))
            DeltaTable.create(
                uri,
                _with_bucket(desired),
                mode="ignore",
                name=rtype,
                partition_by=[BUCKET],
                configuration={BUCKETS_PROPERTY: str(buckets)},
                storage_options=self.storage_options,
                raise_if_key_not_exists=False,
            )
            table = DeltaTable(uri, storage_options=self.storage_options)
        elif not is_bucketed(table):
            self.relayout(rtype, buckets=self.buckets)
            relaid_out = True
            table = DeltaTable(uri, storage_options=self.storage_options)
        if _lacks(pa.struct(list(pa.schema(table.schema().to_arrow()))), pa.struct(list(desired))):
            write_deltalake(
                uri,
                _with_bucket(desired).empty_table(),
                mode="append",
                schema_mode="merge",
                partition_by=[BUCKET],
                storage_options=self.storage_options,
                commit_properties=CommitProperties(custom_metadata={"fhir.operation": "grow schema"}),
            )
            table = DeltaTable(uri, storage_options=self.storage_options)
        before = table.version()
        buckets = bucket_count(table)
        files = TableFiles(uri, self.storage_options)
        listing = TableFiles.listing(table)
        plan = _Plan.make(files, listing, buckets, parts, deletions, when)
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
                buckets=buckets,
                relaid_out=relaid_out,
                without_id=plan.without_id,
            )
        removed = [listing_file for listing_file in listing if listing_file.path in plan.rewrite]
        # Each file holding a replaced or deleted row is copied without it, one file and one row group at
        # a time; then the run's rows are written.
        survived = Written(adds=[])
        for old in removed:
            files.rewrite(old, plan.survivors(old.path, desired), desired, survived)
        written = files.write(plan.reader(parts, desired, source, when))
        written.adds.extend(survived.adds)
        written.files += survived.files
        written.bytes += survived.bytes
        claim = (table.transaction_version(MERGE_APP_ID) or 0) + 1
        table.create_write_transaction(
            [*written.adds, *remove_actions(removed)],
            "append",
            table.schema(),
            partition_by=[BUCKET],
            commit_properties=CommitProperties(
                custom_metadata={"fhir.source": source, "fhir.transactionTime": when.isoformat()},
                # Two merges planned against one version carry the same transaction: only one commits.
                app_transactions=[Transaction(MERGE_APP_ID, claim)],
            ),
        )
        table.update_incremental()
        result = MergeResult(
            rtype,
            uri,
            before,
            table.version(),
            committed=True,
            inserted=plan.inserted,
            updated=plan.updated,
            deleted=plan.delete_count,
            unchanged=plan.unchanged,
            rows=plan.target_rows + plan.inserted - plan.delete_count,
            buckets=buckets,
            buckets_touched=plan.buckets_touched,
            files_added=written.files,
            bytes_added=written.bytes,
            files_rewritten=len(removed),
            bytes_rewritten=sum(f.size for f in removed),
            relaid_out=relaid_out,
            without_id=plan.without_id,
        )
        log.info(
            "%s: merged %s into version %d (%d inserted, %d updated, %d deleted, %d unchanged; %d of %d buckets "
            "touched, %d files / %d bytes rewritten, %d files / %d bytes added)",
            rtype,
            source,
            result.version,
            result.inserted,
            result.updated,
            result.deleted,
            result.unchanged,
            result.buckets_touched,
            buckets,
            result.files_rewritten,
            result.bytes_rewritten,
            result.files_added,
            result.bytes_added,
        )
        return result

    # -- layout ----------------------------------------------------------------------------------
    def relayout(self, resource_type: str, *, buckets: int | None = None) -> dict[str, Any]:
        """Lay the type's table out in hash buckets (or change its bucket count), in one commit.

        Tables written before the bucketed layout are re-laid out by their next merge automatically; call
        this to do it ahead (e.g. in a maintenance window) or to change ``buckets`` of a grown table.
        Run it while no merge writes to the table: a merge committing meanwhile is overwritten.
        Memory stays bounded (rows stream file by file); the table is read once per 64 buckets.
        """
        from deltalake import CommitProperties, DeltaTable, Schema
        from deltalake.transaction import create_table_with_add_actions

        table = self.open(resource_type)
        if table is None:
            return {}
        listing = TableFiles.listing(table)
        count = check_bucket_count(buckets) if buckets is not None else bucket_count_for(sum(f.rows for f in listing))
        uri = self.table_uri(resource_type)
        files = TableFiles(uri, self.storage_options)
        data = self._desired(None, table)
        schema = _with_bucket(data)
        adds: list[Any] = []
        written_bytes = 0
        for first in range(0, count, _RELAYOUT_BUCKETS_PER_PASS):
            wanted = pa.array(range(first, min(count, first + _RELAYOUT_BUCKETS_PER_PASS)), pa.int32())
            batches = _relayout_batches(files, listing, data, schema, count, wanted)
            written = files.write(pa.RecordBatchReader.from_batches(schema, batches))
            adds.extend(written.adds)
            written_bytes += written.bytes
        create_table_with_add_actions(
            uri,
            Schema.from_arrow(schema),
            adds,
            mode="overwrite",
            partition_by=[BUCKET],
            name=resource_type,
            storage_options=self.storage_options,
            commit_properties=CommitProperties(
                custom_metadata={"fhir.operation": "relayout", BUCKETS_PROPERTY: str(count)}
            ),
        )
        # The property cannot ride on that commit (delta-rs refuses unknown keys there); a process killed
        # in between is recovered from the commit's metadata by ``bucket_count``.
        relaid = DeltaTable(uri, storage_options=self.storage_options)
        relaid.alter.set_table_properties({BUCKETS_PROPERTY: str(count)}, raise_if_not_exists=False)
        log.info(
            "%s: laid out in %d buckets (%d files / %d bytes rewritten into %d files / %d bytes)",
            resource_type,
            count,
            len(listing),
            sum(f.size for f in listing),
            len(adds),
            written_bytes,
        )
        return {
            "buckets": count,
            "files_removed": len(listing),
            "bytes_removed": sum(f.size for f in listing),
            "files_added": len(adds),
            "bytes_added": written_bytes,
        }

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
    """A local path as a plain ``UPath`` (what the storage helpers take): no Airflow import for a merge
    run by a finishing process (an ObjectStoragePath here cost a child ~3.5 CPU-s of imports)."""
    from upath import UPath

    return UPath(str(path))


@dataclass
class _Plan:
    """Which rows of the staged run to write (by global row position), and which table rows to drop.

    ``rewrite`` maps each file holding a replaced or deleted row to the ids to drop from it.
    """

    keep: bytearray  # 1 per staged row to write
    keep_count: int
    unchanged: int
    inserted: int
    updated: int
    delete_count: int
    rewrite: dict[str, pa.Array]
    buckets: int
    buckets_touched: int
    target_rows: int
    files: TableFiles
    without_id: int = 0

    @staticmethod
    def make(
        files: TableFiles, listing: list[DataFile], buckets: int, parts: list[str], deletions: list[Deletion], when: Any
    ) -> _Plan:
        keys = _source_keys(parts)
        total = len(keys)
        winners = _newest_per_id(keys)
        without_id = total - int(pc.sum(_has_id(keys.column("id"))).as_py() or 0) if total else 0
        winners = winners.append_column("b", buckets_of(winners.column("id"), buckets))
        deletes = _deletion_table(deletions, winners.column("id").combine_chunks())
        deletes = deletes.append_column("b", buckets_of(deletes.column("id"), buckets))
        touched = sorted(set(winners.column("b").to_pylist()) | set(deletes.column("b").to_pylist()))
        by_bucket: dict[int, list[DataFile]] = {}
        for data_file in listing:
            by_bucket.setdefault(data_file.bucket or 0, []).append(data_file)
        keep = bytearray(total)
        chosen_count = inserted = updated = delete_count = 0
        drops: dict[str, list[pa.Array]] = {}
        for bucket in touched:
            mine = winners.filter(pc.equal(winners.column("b"), bucket))
            gone = deletes.filter(pc.equal(deletes.column("b"), bucket))
            # Only the bucket's files are read, one file's keys at a time, and only the rows whose id the
            # run names are kept: memory follows the run, never the table.
            wanted = pa.concat_arrays([mine.column("id").combine_chunks(), gone.column("id").combine_chunks()])
            target = _target_keys(files, by_bucket.get(bucket, []), wanted)
            if len(mine):
                joined = mine.join(target, "id", join_type="left outer")
                now = pa.repeat(pa.scalar(when, _TS), len(joined))
                newer = newer_mask(
                    joined.column("v"),
                    joined.column("lu"),
                    now,
                    joined.column("t_v"),
                    joined.column("t_lu"),
                    joined.column("t_tt"),
                )
                chosen = joined.filter(newer)
                for position in chosen.column("pos").to_pylist():
                    keep[position] = 1
                chosen_count += len(chosen)
                replaced = chosen.filter(pc.is_valid(chosen.column("t_file")))
                updated += len(replaced)
                inserted += len(chosen) - len(replaced)
                _collect(drops, replaced)
            if len(gone) and len(target):
                joined = gone.join(target, "id", join_type="inner")
                if len(joined):
                    now = pa.repeat(pa.scalar(when, _TS), len(joined))
                    applies = deletes_mask(
                        now, joined.column(LAST_UPDATED), joined.column("t_tt"), joined.column("t_lu")
                    )
                    applied = joined.filter(applies)
                    delete_count += len(applied)
                    _collect(drops, applied)
        rewrite = {path: pa.concat_arrays(ids) for path, ids in drops.items()}
        return _Plan(
            keep,
            chosen_count,
            total - chosen_count - without_id,
            inserted,
            updated,
            delete_count,
            rewrite,
            buckets,
            len(touched),
            sum(f.rows for f in listing),
            files,
            without_id,
        )

    def reader(self, parts: list[str], desired: pa.Schema, source: str, when: Any) -> pa.RecordBatchReader:
        """The run's rows to write (new ids and newer versions), with their buckets."""
        schema = _with_bucket(desired)
        return pa.RecordBatchReader.from_batches(schema, self._batches(parts, desired, schema, source, when))

    def survivors(self, path: str, desired: pa.Schema) -> Iterator[pa.Table]:
        """The rows of the file at ``path`` that stay (all but the replaced and deleted ids), as ``desired``."""
        drop = self.rewrite[path]
        for batch in self.files.batches(path):
            rows = pa.Table.from_batches([batch])
            rows = rows.filter(pc.invert(pc.is_in(rows.column("id"), value_set=drop)))
            if len(rows):
                yield conform_table(rows, desired)

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
                out = out.append_column(BUCKET, buckets_of(rows.column("id"), self.buckets))
                yield from out.cast(schema).to_batches()


def _collect(drops: dict[str, list[pa.Array]], rows: pa.Table) -> None:
    """Group the ids of ``rows`` by the table file (``t_file``) that holds them."""
    if not len(rows):
        return
    paths = rows.column("t_file").combine_chunks()
    ids = rows.column("id").combine_chunks()
    for path in pc.unique(paths).to_pylist():
        drops.setdefault(path, []).append(ids.filter(pc.equal(paths, path)))


def _newest_per_id(keys: pa.Table) -> pa.Table:
    """The newest copy of each id within the run (rows without an id, absent or empty, are left out)."""
    with_id = keys.filter(_has_id(keys.column("id")))
    if not len(with_id):
        return with_id
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
    return ranked.filter(first)


def _has_id(ids: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where a row has an id: neither absent nor empty."""
    return pc.fill_null(pc.greater(pc.utf8_length(ids), 0), False)


def _target_keys(files: TableFiles, bucket_files: list[DataFile], wanted: pa.Array) -> pa.Table:
    """id, versions and file of the rows of ``bucket_files`` whose id is in ``wanted`` (key columns only)."""
    tables = [
        pa.table(
            {
                "id": pa.array([], pa.string()),
                "t_tt": pa.array([], _TS),
                "t_v": pa.array([], pa.int64()),
                "t_lu": pa.array([], _TS),
                "t_file": pa.array([], pa.string()),
            }
        )
    ]
    for data_file in bucket_files:
        keys = files.read_columns(data_file.path, _KEY_COLUMNS)
        keys = keys.filter(pc.is_in(keys.column("id"), value_set=wanted))
        n = len(keys)
        tables.append(
            pa.table(
                {
                    "id": keys.column("id").cast(pa.string()),
                    "t_tt": keys.column(TRANSACTION_TIME).cast(_TS),
                    "t_v": keys.column(VERSION_ID).cast(pa.int64()),
                    "t_lu": keys.column(LAST_UPDATED).cast(_TS),
                    "t_file": pa.repeat(pa.scalar(data_file.path, pa.string()), n),
                }
            )
        )
    return pa.concat_tables(tables).combine_chunks()


def _with_bucket(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field(BUCKET, pa.int32()))


def _staged_rows(parts: list[str]) -> int:
    return sum(pq.ParquetFile(part).metadata.num_rows for part in parts)


def _relayout_batches(
    files: TableFiles, listing: list[DataFile], data: pa.Schema, schema: pa.Schema, count: int, wanted: pa.Array
) -> Iterator[pa.RecordBatch]:
    """Every row of the table whose new bucket is in ``wanted``, with that bucket."""
    for data_file in listing:
        for batch in files.batches(data_file.path):
            rows = conform_table(pa.Table.from_batches([batch]), data)
            rows = rows.append_column(BUCKET, buckets_of(rows.column("id"), count))
            rows = rows.filter(pc.is_in(rows.column(BUCKET), value_set=wanted))
            if len(rows):
                yield from rows.cast(schema).to_batches()


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
