"""A large type's Parquet written by several processes at once, then combined into its one table.

Without this the largest type bounds the finishing step however many processes there are
(ExplanationOfBenefit is 37 % of a Synthea export's bytes). In the finishing pool a type larger than a
fair piece of the work is cut into shards: its files, and byte ranges of a file larger than a piece
(:class:`~airflow_provider_smart.parquet.chunks.LineRange`; gzipped files stay whole). Each shard is
written by its own writer into a directory of its own under ``<parquet root>/_shards/<label>/`` (a
``_`` name: readers skip it), starting from the type's stored schema record, with no ``_SUCCESS``.

When every shard of the type is written, :func:`combine_shards` (in the task's process, the type's one
writer of its table) merges the shards' records into the type's record (so it still only grows, and is
written once per type), moves each shard's parts into ``<parquet root>/<Type>/<label>/`` under names of
their own (``part-<shard>-<n>.parquet``: no writer ever replaces another's part), rewriting the parts of
a shard whose record ended narrower than the merged one (row group by row group, so memory stays one
row group), and removes the shards. The table's ``_SUCCESS`` comes with the export's publication, as for
every type; the type is recorded finished only after the combine, so a killed finish redoes the type.
"""

from __future__ import annotations

import functools
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from airflow_provider_smart.export.per_type import MIXED, TypeJob
from airflow_provider_smart.storage.atomic import (
    TMP_PREFIX,
    atomic_write_json,
    mark_incomplete,
    read_json,
)
from airflow_provider_smart.storage.atomic import replace as replace_file
from airflow_provider_smart.storage.paths import safe_segment

SHARDS_DIR = "_shards"
#: No piece smaller than this: a shard costs a combine and, in a child, about 0.4 CPU-s of imports.
MIN_PIECE_BYTES = 32 << 20
_GZIP_SUFFIXES = (".gz", ".gzip")


def split_for_pool(jobs: Sequence[TypeJob], workers: int, file_bytes: dict[str, int]) -> list[TypeJob]:
    """The jobs with each type larger than a fair piece cut into shards, largest first.

    A piece is a ``2 * workers``-th of the Parquet work (at least :data:`MIN_PIECE_BYTES`), so the pool's
    last jobs are short and its processes end together. Only Parquet is sharded: a job of mixed types
    (one writer must hold every table) and a type's Delta merge stay whole. ``file_bytes``: each file's
    size (by URI)."""
    total = sum(job.size for job in jobs if job.parquet is not None)
    if workers <= 1 or total <= 0:
        return list(jobs)
    piece = max(MIN_PIECE_BYTES, total // (2 * workers))
    out: list[TypeJob] = []
    for job in jobs:
        if job.parquet is None or job.resource_type == MIXED or job.size <= piece * 3 // 2:
            out.append(job)
            continue
        out.extend(_shards_of(job, piece, file_bytes))
    out.sort(key=lambda j: (-j.size, j.resource_type, j.shard))
    return out


def _shards_of(job: TypeJob, piece: int, file_bytes: dict[str, int]) -> list[TypeJob]:
    from airflow_provider_smart.parquet.chunks import split_ranges

    count = max(1, math.ceil(job.size / piece))
    segments: list[tuple[str, tuple[int, int] | None, int]] = []
    for uri in job.files:
        size = file_bytes.get(uri, 0)
        if size > piece and not uri.endswith(_GZIP_SUFFIXES):
            segments.extend((uri, r, r[1] - r[0]) for r in split_ranges(size, math.ceil(size / piece)))
        else:
            segments.append((uri, None, size))
    count = min(count, len(segments))
    if count <= 1:
        return [job]
    bins: list[list[tuple[str, tuple[int, int] | None, int]]] = [[] for _ in range(count)]
    loads = [0] * count
    for segment in sorted(segments, key=lambda s: -s[2]):  # largest first into the lightest shard
        i = loads.index(min(loads))
        bins[i].append(segment)
        loads[i] += segment[2]
    return [
        replace(
            job,
            files=tuple(s[0] for s in group),
            ranges=tuple(s[1] or (0, -1) for s in group),
            size=load,
            shard=i,
            shards=count,
            delta=None,  # the type's Delta merge runs once, after the combine
        )
        for i, (group, load) in enumerate(zip(bins, loads, strict=True))
    ]


def shard_root(parquet_root: Any, job: TypeJob) -> Any:
    """Where one shard's writer writes (its destination root)."""
    return parquet_root / SHARDS_DIR / safe_segment(job.label) / f"{safe_segment(job.resource_type)}.{job.shard}"


def seed_shard(parquet_root: Any, job: TypeJob) -> Any:
    """The shard's destination, holding the type's stored record, so every shard starts from it."""
    from airflow_provider_smart.parquet.writer import SCHEMA_FILE

    root = shard_root(parquet_root, job)
    stored = read_json(parquet_root / safe_segment(job.resource_type) / SCHEMA_FILE)
    target = root / safe_segment(job.resource_type) / SCHEMA_FILE
    if stored is not None:
        atomic_write_json(target, stored)
    elif target.exists():
        target.unlink()  # a killed attempt's grown record: start again from nothing, as the type does
    return root


def combine_shards(parquet_root: Any, job: TypeJob, shards: int, options: dict[str, Any]) -> dict[str, int]:
    """The type's shards moved into its table (see the module's docstring); ``{type: rows}``."""
    import pyarrow.parquet as pq

    from airflow_provider_smart.parquet.arrow import conform_table, table_schema
    from airflow_provider_smart.parquet.schema import SchemaRecord
    from airflow_provider_smart.parquet.writer import SCHEMA_FILE

    rtype = safe_segment(job.resource_type)
    roots = [shard_root(parquet_root, replace(job, shard=i)) for i in range(shards)]
    # A shard whose range held no line of the type wrote nothing (and has no record beyond the seed).
    found = [(i, root, read_json(root / rtype / SCHEMA_FILE)) for i, root in enumerate(roots)]
    written = [(i, root, SchemaRecord.from_json(data)) for i, root, data in found if data is not None]
    merged = SchemaRecord(job.resource_type, (options.get("decimal") or "float64"))
    for _, _, record in written:
        merged.merge(record)
    schema = table_schema(merged)
    directory = parquet_root / rtype / safe_segment(job.label)
    directory.mkdir(parents=True, exist_ok=True)
    mark_incomplete(directory)
    for child in list(directory.iterdir()):  # an earlier attempt's parts (or temp parts) of this run
        if child.name.endswith(".parquet"):
            child.unlink()
    rows = 0
    token = uuid.uuid4().hex[:12]
    for i, root, record in written:
        source = root / rtype / safe_segment(job.label)
        if not source.exists():
            continue
        parts = sorted(p for p in source.iterdir() if p.name.startswith("part-") and p.name.endswith(".parquet"))
        same = table_schema(record).equals(schema, check_metadata=False)
        for part in parts:
            final = directory / f"part-{i:03d}-{part.name.removeprefix('part-')}"
            with part.open("rb") as handle:
                rows += pq.ParquetFile(handle).metadata.num_rows
            if same:
                replace_file(part, final)
                continue
            tmp = directory / f"{TMP_PREFIX}{token}.{final.name}"
            with part.open("rb") as src, tmp.open("wb") as dst:
                reader = pq.ParquetFile(src)
                writer = pq.ParquetWriter(
                    dst,
                    schema,
                    compression=options.get("compression", "zstd"),
                    write_statistics=True,
                    store_schema=True,
                )
                for g in range(reader.num_row_groups):
                    writer.write_table(conform_table(reader.read_row_group(g), schema))
                writer.close()
            replace_file(tmp, final)
    # The type's record grows once, here; another run may have grown the stored one meanwhile.
    stored = read_json(parquet_root / rtype / SCHEMA_FILE)
    if stored is not None:
        merged.merge(SchemaRecord.from_json(stored))
    atomic_write_json(parquet_root / rtype / SCHEMA_FILE, merged.to_json())
    atomic_write_json(directory / SCHEMA_FILE, merged.to_json())
    remove_shards(parquet_root, job)
    return {job.resource_type: rows}


def remove_shards(parquet_root: Any, job: TypeJob) -> None:
    """The shards of ``job``'s type, gone (after the combine, or before the type is converted again)."""
    from airflow_provider_smart.storage.atomic import clear_directory

    base = parquet_root / SHARDS_DIR / safe_segment(job.label)
    if not base.exists():
        return
    prefix = f"{safe_segment(job.resource_type)}."
    for child in list(base.iterdir()):
        if child.name.startswith(prefix) and child.name[len(prefix) :].isdigit():
            clear_directory(child)
            child.rmdir()
    if not any(base.iterdir()):
        base.rmdir()
        if not any(base.parent.iterdir()):
            base.parent.rmdir()


def finish_jobs(
    jobs: Sequence[TypeJob],
    *,
    workers: int,
    cpus: int,
    file_bytes: dict[str, int],
    on_done: Callable[[TypeJob, dict[str, Any]], None],
) -> None:
    """Every job's Parquet and Delta in the finishing pool, large types in shards; ``on_done(job, result)``
    once per type, after its tables committed (a sharded type's after its combine and its Delta merge),
    in this process."""
    from airflow_provider_smart.export.per_type import finish_type, merge_delta
    from airflow_provider_smart.export.places import portable_places, resolve_places
    from airflow_provider_smart.export.pool import run_jobs

    if not jobs:
        return
    # Resolved here once: a child handed plain local paths needs no Airflow import (export/places.py).
    places = portable_places(jobs[0])
    whole = {job.resource_type: job for job in jobs}
    written: dict[str, set[int]] = {}

    def done(job: TypeJob, result: dict[str, Any]) -> None:
        if job.shards <= 1:
            on_done(job, result)
            return
        shards = written.setdefault(job.resource_type, set())
        shards.add(job.shard)
        if len(shards) < job.shards:
            return
        original = whole[job.resource_type]
        here = places or resolve_places(original)
        assert original.parquet is not None
        rows = combine_shards(here.parquet, job, job.shards, original.parquet.get("options") or {})
        delta = merge_delta(original, here) if original.delta is not None else None
        on_done(original, {"resource_type": original.resource_type, "parquet": rows, "delta": delta})

    pieces = split_for_pool(jobs, workers, file_bytes)
    run_jobs(functools.partial(finish_type, places=places), pieces, workers=workers, cpus=cpus, on_done=done)
