"""Finishing an export after every file landed, as named steps run in order:

1. :meth:`Finisher.check`: check every file landed and report the error files; an error file over
   ``fail_on_severity`` cancels the export and publishes nothing;
2. :meth:`Finisher.convert_types`: Parquet and Delta, one job per resource type, in parallel processes
   (or one mapped task per type, before the rest), reading the NDJSON where it landed, still unpublished;
   each finished type is recorded (:func:`record_finished_type`), so a resumed finish redoes only the
   types that did not commit. A Parquet table commits its parts but not its ``_SUCCESS`` marker yet;
3. :meth:`Finisher.publish`: only once every type finished: the NDJSON to its visible place, each
   directory's marker, the Parquet tables' markers, the export's own marker last;
4. :meth:`Finisher.fetch_attachments`: the landed resources' attachments (if asked);
5. :meth:`Finisher.complete`: the watermark, DELETE on the server, the summary in the state file.

So a type that fails leaves the export unpublished (no ``_SUCCESS`` of the run anywhere, no Asset event),
the watermark where it was and the export on the server; a retry finishes the rest. Every step before
the watermark can fail and be retried: the watermark moves only after all of them, so the next export
asks again for whatever a failed finish did not deliver. (A type's Delta table is current state, not a
run: its merge commits when the type finishes, and merging the same run again changes nothing.)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from airflow_provider_smart.export.options import FinishOptions, available_cpus, storage_uri
from airflow_provider_smart.export.per_type import TypeJob, combine_delta, file_sizes, landed_path, plan_type_jobs
from airflow_provider_smart.fhir.bulk.manifest import Manifest, plan_files
from airflow_provider_smart.storage.atomic import atomic_write_json, is_hidden, read_json
from airflow_provider_smart.storage.export_state import ExportLayout, utcnow_iso, write_watermark
from airflow_provider_smart.storage.lease import DEFAULT_LEASE_TIMEOUT, ExportLease
from airflow_provider_smart.storage.paths import safe_segment
from airflow_provider_smart.transport.sanitize import safe_text

log = logging.getLogger(__name__)

#: The state file's copy of the types whose Parquet and Delta tables committed in this export (the
#: records themselves are files, ``_exports/<label>/finished/<Type>.json``: mapped tasks write them).
FINISHED_TYPES = "finished_types"
FINISHED_DIR = "finished"
#: A process is started per this many bytes of NDJSON still to convert, up to ``max_finish_workers``:
#: starting one costs about 0.4 CPU-s (spawn and imports, no Airflow: export/places.py), which converts
#: some 35 MB, plus its share of the pool's bookkeeping, so a small export is finished in the task's own
#: process.
MIN_BYTES_PER_PROCESS = 64 << 20


def record_finished_type(layout: ExportLayout, job: TypeJob, result: dict[str, Any]) -> None:
    """Record that ``job``'s tables committed (written after they did, atomically): a resumed finish
    skips the type. One file per type, so mapped tasks finishing together never share a file."""
    path = layout.export_dir / FINISHED_DIR / f"{safe_segment(job.resource_type)}.json"
    atomic_write_json(path, {"export_id": layout.export_id, "resource_type": job.resource_type, "result": result})


def finished_types(layout: ExportLayout) -> dict[str, dict[str, Any]]:
    """The types of this export whose tables committed, with their results."""
    directory = layout.export_dir / FINISHED_DIR
    found: dict[str, dict[str, Any]] = {}
    if not directory.exists():
        return found
    for child in directory.iterdir():
        if is_hidden(child.name) or not child.name.endswith(".json"):
            continue
        record = read_json(child)
        if isinstance(record, dict) and record.get("export_id") == layout.export_id and "result" in record:
            found[str(record["resource_type"])] = dict(record["result"])
    return found


def lease_of(layout: ExportLayout, state: dict[str, Any]) -> ExportLease | None:
    """The lease of the run that started this export (None for exports started before leases)."""
    owner = state.get("lease_owner")
    if not isinstance(owner, str):
        return None
    timeout = float(state.get("lease_timeout") or DEFAULT_LEASE_TIMEOUT)
    return ExportLease(layout.export_dir, owner, timeout=timeout)


class Finisher:
    """The finishing steps of one export whose files all landed (see the module's docstring)."""

    def __init__(
        self,
        client: Any,
        layout: ExportLayout,
        state: dict[str, Any],
        manifest: Manifest,
        options: FinishOptions,
        *,
        logger: Any = None,
    ) -> None:
        self.client = client
        self.layout = layout
        self.state = state
        self.manifest = manifest
        self.options = options
        self.log = logger or log
        self.lease = lease_of(layout, state)

    def run(self) -> dict[str, Any]:
        """Every step in order; returns the export's summary."""
        summary = self.check()
        summary.update(self.convert_types())
        self.publish(summary)
        if self.options.attachments is not None:
            summary["attachments"] = self.fetch_attachments()
        return self.complete(summary)

    @contextlib.contextmanager
    def _lease_kept(self) -> Iterator[None]:
        with self.lease.kept_alive() if self.lease is not None else contextlib.nullcontext():
            yield

    # -- 1. check ----------------------------------------------------------------------------------
    def check(self) -> dict[str, Any]:
        """Every file landed and the error files allow the export; returns the summary so far."""
        from airflow_provider_smart.fhir.bulk import sync
        from airflow_provider_smart.storage.export_landing import ExportOutcomeError, check_landed

        if self.lease is not None:
            self.lease.check()  # finishing under a label another run has taken would mix two exports
        try:
            return check_landed(
                self.layout, self.manifest, fail_on_severity=self.options.fail_on_severity, logger=self.log
            )
        except ExportOutcomeError as exc:
            # The export is over on the server either way; a retry starts a new one.
            status_url = self.state.get("status_url")
            if status_url and self.options.delete_on_success:
                sync.delete_export(self.client, status_url)
            self.layout.write_state(dict(self.state, phase="failed", message=safe_text(exc, limit=2000)))
            if self.lease is not None:
                self.lease.release()
            raise

    # -- 2. Parquet and Delta, per type ---------------------------------------------------------------
    def type_jobs(self) -> list[TypeJob]:
        """The per-type jobs of this export (all of them, finished or not)."""
        delta = self.options.delta
        return plan_type_jobs(
            self.layout,
            self.manifest,
            output=storage_uri(self.layout.root) or "",
            output_conn_id=(self.options.parquet or delta or {}).get("output_conn_id"),
            parquet=self.options.parquet,
            delta=delta,
            extra_delta_types=self._deletion_types() if delta is not None else (),
        )

    def _deletion_types(self) -> set[str]:
        from airflow_provider_smart.tables.deleted import read_deletions

        files = [landed_path(self.layout, p) for p in plan_files(self.manifest) if p.kind == "deleted"]
        return {d.resource_type for d in read_deletions(files)}

    def convert_types(self) -> dict[str, Any]:
        """Parquet and Delta for every type not finished yet, ``max_finish_workers`` processes at a time;
        returns the summary's ``parquet`` and ``delta`` entries (those asked for)."""
        if self.options.parquet is None and self.options.delta is None:
            return {}
        from airflow_provider_smart.export.shards import finish_jobs

        jobs = self.type_jobs()
        finished = finished_types(self.layout)
        todo = [job for job in jobs if job.resource_type not in finished]
        if finished:
            self.log.info("finishing: %d type(s) committed by an earlier attempt are kept", len(jobs) - len(todo))
        workers = min(self.options.workers, max(1, sum(job.size for job in todo) // MIN_BYTES_PER_PROCESS))
        self.log.info("finishing %d type(s) in up to %d process(es)", len(todo), min(workers, len(todo)))

        def record(job: TypeJob, result: dict[str, Any]) -> None:
            record_finished_type(self.layout, job, result)
            finished[job.resource_type] = result
            self.state = dict(self.state, **{FINISHED_TYPES: sorted(finished)})
            self.layout.write_state(self.state)  # the parent is the state file's only writer

        with self._lease_kept():
            finish_jobs(
                todo,
                workers=workers,
                cpus=available_cpus(),
                file_bytes=file_sizes(self.layout, self.manifest),
                on_done=record,
            )
        return self.summarize_types([finished[job.resource_type] for job in jobs])

    def summarize_types(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        """The summary's ``parquet`` and ``delta`` entries from the per-type results."""
        out: dict[str, Any] = {}
        if self.options.parquet is not None:
            from airflow_provider_smart.parquet.sink import parquet_root

            spec = self.options.parquet
            root = parquet_root(self.layout.root, spec.get("output"), spec.get("output_conn_id"))
            counts: dict[str, int] = {}
            for result in results:
                counts.update(result.get("parquet") or {})
            out["parquet"] = {"output": (storage_uri(root) or "").rstrip("/"), "counts": dict(sorted(counts.items()))}
            from airflow_provider_smart.reporting import rows_table

            self.log.info(
                "export %s as Parquet tables under %s:\n%s",
                self.layout.label,
                out["parquet"]["output"],
                rows_table(out["parquet"]["counts"]),
            )
        if self.options.delta is not None:
            out["delta"] = combine_delta(result.get("delta") for result in results)
        return out

    # -- 3. publish ---------------------------------------------------------------------------------
    def publish(self, summary: dict[str, Any]) -> None:
        """Once every type finished: the NDJSON, its markers, the Parquet tables' markers, the export's
        marker last (readers of the run start from it)."""
        from airflow_provider_smart.storage.export_landing import publish_landed

        if self.lease is not None:
            self.lease.check()  # publishing under a label another run has taken would mix two exports
        publish_landed(self.layout, self.manifest, summary, before_marker=self._mark_parquet_tables)

    def _mark_parquet_tables(self) -> None:
        if self.options.parquet is None:
            return
        from airflow_provider_smart.parquet.sink import parquet_root
        from airflow_provider_smart.parquet.writer import mark_table_complete

        spec = self.options.parquet
        root = parquet_root(self.layout.root, spec.get("output"), spec.get("output_conn_id"))
        for result in finished_types(self.layout).values():
            for name, rows in (result.get("parquet") or {}).items():
                mark_table_complete(root / safe_segment(name) / self.layout.label, name, int(rows))

    # -- 4. attachments ----------------------------------------------------------------------------------
    def fetch_attachments(self) -> dict[str, Any]:
        """The attachments of every landed output file, under ``<root>/attachments/<label>/``, fetched with
        the export's own client (its token decision and wait policy); only what did not land yet."""
        from airflow_provider_smart.storage.attachments import (
            AttachmentSettings,
            attachments_destination,
            land_attachments,
        )

        settings = AttachmentSettings.from_option(self.options.attachments) or AttachmentSettings()
        sources = [self.layout.final_path(p) for p in plan_files(self.manifest) if p.kind == "output"]
        destination = attachments_destination(self.layout.root, self.layout.label)
        with self._lease_kept():
            return land_attachments(self.client, sources, destination, settings, logger=self.log)

    # -- 5. watermark, DELETE, summary --------------------------------------------------------------
    def complete(self, summary: dict[str, Any]) -> dict[str, Any]:
        from airflow_provider_smart.fhir.bulk import sync

        state = self.state
        scope = state["scope"]
        status_url = state.get("status_url")
        wm = write_watermark(
            self.layout.root, state["conn_id"], scope, self.manifest.transaction_time, self.layout.label
        )
        deleted = bool(status_url and self.options.delete_on_success and sync.delete_export(self.client, status_url))
        summary.update(
            level=scope.get("level"),
            group_id=scope.get("group_id"),
            since=state.get("since"),
            watermark=str(wm),
            deleted_on_server=deleted,
        )
        self.state = dict(state, phase="complete", summary=summary, completed_at=utcnow_iso())
        self.layout.write_state(self.state)
        from airflow_provider_smart.export.wait import export_log

        export_log(self.layout, state).export_complete(
            files=sum(len(paths) for paths in summary.get("files", {}).values()),
            resources=sum(summary.get("counts", {}).values()),
            size=int(summary.get("bytes", 0)),
            started_at=state.get("kicked_off_at"),
            attachments=(summary.get("attachments") or {}).get("landed") if self.options.attachments else None,
        )
        if self.lease is not None:
            self.lease.release()
        from airflow_provider_smart.reporting import landed_types_table

        self.log.info(
            "export %s landed at %s (transactionTime %s):\n%s",
            self.layout.label,
            self.layout.root,
            summary["transaction_time"],
            landed_types_table(summary.get("types") or {}),
        )
        return summary
