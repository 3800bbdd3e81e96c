"""The finishing work of one resource type: its Parquet table and its Delta table.

Types are independent: each has its own Parquet directory (``<parquet root>/<Type>/<label>/``), its own
schema record (``<parquet root>/<Type>/_schema.json``, merged once, by the type's one writer) and its own
Delta table, so one job per type runs in a process of its own (:mod:`.pool`) or in a mapped task without
two writers ever sharing a table (a large type's shards have directories of their own until the task's
process combines them: ``export/shards.py``). A job takes only strings (URIs and settings): it travels
to a child process or through an XCom.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from airflow_provider_smart.export.places import Places, resolve_places
from airflow_provider_smart.fhir.bulk.manifest import Manifest, PlannedFile, plan_files
from airflow_provider_smart.storage.export_state import ExportLayout

log = logging.getLogger(__name__)

#: The job of every file whose lines mix types (``organizeOutputBy``): one writer for all of them.
MIXED = "*"


class StrayTypeError(ValueError):
    """A file of one type held resources of another: its rows would race that type's own writer."""


@dataclass(frozen=True)
class TypeJob:
    """One type's finishing work (``resource_type`` is :data:`MIXED` for files of mixed types)."""

    resource_type: str
    files: tuple[str, ...]
    output: str
    output_conn_id: str | None
    label: str
    parquet: dict[str, Any] | None = None
    delta: dict[str, Any] | None = None
    size: int = 0
    delta_types: tuple[str, ...] = field(default_factory=tuple)
    #: The export's deleted-resource Bundles (their deletions of this job's types go into its Delta tables).
    deleted: tuple[str, ...] = field(default_factory=tuple)
    transaction_time: str | None = None
    #: A shard of a large type (``export/shards.py``): the byte range of each file (``(0, -1)``: all of it),
    #: and which of the type's ``shards`` this is. Shards run in the finishing pool only.
    ranges: tuple[tuple[int, int], ...] = field(default_factory=tuple)
    shard: int = 0
    shards: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TypeJob:
        tuples: dict[str, Any] = {name: tuple(data.get(name) or ()) for name in ("files", "delta_types", "deleted")}
        tuples["ranges"] = tuple((int(a), int(b)) for a, b in data.get("ranges") or ())
        return cls(**{**data, **tuples})


def plan_type_jobs(
    layout: ExportLayout,
    manifest: Manifest,
    *,
    output: str,
    output_conn_id: str | None,
    parquet: dict[str, Any] | None,
    delta: dict[str, Any] | None,
    extra_delta_types: Iterable[str] = (),
) -> list[TypeJob]:
    """One job per resource type of the landed output files, largest first (the longest job starts
    first, so the pool's last job is a short one). Files of mixed types (``by-<Type>/``) make a single job
    of everything: their lines may belong to any type, so one writer must hold every table.

    The jobs read the files where they are: still in the export's staging area (the types are finished
    before the export is published, so a failed type leaves nothing published), or at their published
    place when an earlier attempt published them.

    ``extra_delta_types``: types with deletions but no output file; their Delta tables are merged by
    the job of the first type (a Delta table has one writer either way)."""
    files: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    deleted: list[str] = []
    for p in plan_files(manifest):
        if p.kind == "deleted":
            deleted.append(str(landed_path(layout, p)))
        if p.kind != "output":
            continue
        rtype = p.expected_type if p.expected_type and not p.directory.startswith("by-") else MIXED
        files.setdefault(rtype, []).append(str(landed_path(layout, p)))
        record = layout.read_record(p.key) or {}
        sizes[rtype] = sizes.get(rtype, 0) + int(record.get("bytes", 0))
    if MIXED in files and len(files) > 1:
        files = {MIXED: [f for group in files.values() for f in group]}
        sizes = {MIXED: sum(sizes.values())}
    common: dict[str, Any] = {
        "output": output,
        "output_conn_id": output_conn_id,
        "label": layout.label,
        "delta": delta,
        "deleted": tuple(deleted) if delta is not None else (),
        "transaction_time": manifest.transaction_time,
    }
    jobs = [
        TypeJob(resource_type=rtype, files=tuple(paths), parquet=parquet, size=sizes.get(rtype, 0), **common)
        for rtype, paths in files.items()
    ]
    jobs.sort(key=lambda j: (-j.size, j.resource_type))
    extra = sorted(set(extra_delta_types) - set(files))
    if delta is not None and (extra or not jobs):
        if jobs and jobs[0].resource_type != MIXED:
            jobs[0] = replace(jobs[0], delta_types=tuple(extra))
        elif not jobs:
            jobs.append(TypeJob(resource_type=MIXED, files=(), delta_types=tuple(extra), **common))
    return jobs


def file_sizes(layout: ExportLayout, manifest: Manifest) -> dict[str, int]:
    """Each landed output file's bytes (from its record), by the URI the jobs name it with."""
    sizes: dict[str, int] = {}
    for p in plan_files(manifest):
        if p.kind == "output":
            sizes[str(landed_path(layout, p))] = int((layout.read_record(p.key) or {}).get("bytes", 0))
    return sizes


def landed_path(layout: ExportLayout, planned: PlannedFile) -> Any:
    """Where a landed file is now: in the staging area until the export is published, then in its place."""
    staged = layout.staged_path(planned)
    return staged if staged.exists() else layout.final_path(planned)


def finish_type(job: TypeJob, places: Places | None = None) -> dict[str, Any]:
    """Parquet, then Delta, for one job; returns ``{"resource_type", "parquet": {type: rows}, "delta":
    merge summary}`` (JSON-safe). ``places``: the job's roots as the parent resolved them (a child process
    of the pool gets them so it needs no Airflow import); None resolves them here."""
    if places is None:
        places = resolve_places(job)
    result: dict[str, Any] = {"resource_type": job.resource_type, "parquet": None, "delta": None}
    if job.parquet is not None and job.files:
        result["parquet"] = write_parquet(job, places)
    if job.delta is not None:
        result["delta"] = merge_delta(job, places)
    return result


def write_parquet(job: TypeJob, places: Places) -> dict[str, int]:
    """The job's files into the Parquet tables; the type's directory commits whole (parts under temp
    names, renamed, ``_SUCCESS`` last) or not at all."""
    from airflow_provider_smart.parquet.writer import FhirParquetWriter

    assert job.parquet is not None and places.parquet is not None
    expected = None if job.resource_type == MIXED else job.resource_type
    destination = places.parquet
    if job.shards > 1:
        from airflow_provider_smart.export.shards import seed_shard

        destination = seed_shard(places.parquet, job)
    writer = FhirParquetWriter(destination, job.label, **(job.parquet.get("options") or {}))
    # The tables commit whole now; their _SUCCESS markers come when the export is published (finish.py).
    try:
        for i, uri in enumerate(job.files):
            span = job.ranges[i] if job.ranges and job.ranges[i][1] >= 0 else None
            writer.write_ndjson(places.source(uri, job.output_conn_id), expected, span)
        strays = sorted(set(writer.writers) - {expected}) if expected is not None else []
        if strays:
            raise StrayTypeError(
                f"the {expected} files of export {job.label} also hold {', '.join(strays[:5])} resources; each type's "
                "table has one writer, so these cannot be converted with the type's own files. Land the export "
                "with organizeOutputBy or fix the server's files"
            )
        tables = writer.commit(mark=False)
    except BaseException:
        if not writer.closed:  # a failed commit has cleaned up already
            writer.abort()
        raise
    return {name: int(info["rows"]) for name, info in sorted(tables.items())}


def merge_delta(job: TypeJob, places: Places) -> dict[str, Any]:
    """The job's types merged into their current-state Delta tables (idempotent: a rerun changes nothing)."""
    from airflow_provider_smart.tables.landed import merge_landed
    from airflow_provider_smart.tables.runs import LandedRun

    assert job.delta is not None and places.tables is not None
    types: list[str] | None
    if job.resource_type != MIXED:
        types = [job.resource_type, *job.delta_types]
    elif job.files:
        types = None  # files of mixed types: every type of the run, in this one job
    else:
        types = list(job.delta_types)  # types with deletions only (or none at all)
    # The run as the manifest lists it (the export is not published yet, so it cannot be looked up).
    run = LandedRun(
        "export",
        job.label,
        job.transaction_time or "",
        files={
            (None if job.resource_type == MIXED else job.resource_type): [
                places.source(u, job.output_conn_id) for u in job.files
            ]
        },
        deleted=[places.source(u, job.output_conn_id) for u in job.deleted],
    )
    for rtype in types or ():
        run.files.setdefault(rtype, [])
    return merge_landed(
        places.output,
        job.label,
        root=places.tables,
        storage_options=places.tables_options,
        options=job.delta.get("options"),
        resource_types=types,
        logger=log,
        run=run,
    )


def combine_delta(summaries: Iterable[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The per-type Delta summaries as the one summary a single merge of every type gives."""
    combined: dict[str, Any] | None = None
    for summary in summaries:
        if summary is None:
            continue
        if combined is None:
            combined = {**summary, "tables": {}, "results": {}, "maintenance": {}}
        for key in ("tables", "results", "maintenance"):
            combined[key].update(summary.get(key) or {})
    if combined is not None:
        for key in ("tables", "results", "maintenance"):
            combined[key] = dict(sorted(combined[key].items()))
        # Totals over every type are derived from the per-type results, never taken from one type's summary.
        combined["without_id"] = sum(int(r.get("without_id", 0)) for r in combined["results"].values())
    return combined
