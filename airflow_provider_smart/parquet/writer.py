"""Streaming NDJSON -> Parquet writer: one table per resource type, one pass, flat memory.

Input is cut into chunks of whole lines (``chunk_bytes``). Each chunk goes through the fast path when it
can: Arrow's C++ JSON parser told the exact schema (types from FHIR R4), which refuses anything that
does not fit (a non-R4 field, a wrong JSON type, an integer out of range) instead of guessing. When the
parser finds fields not seen before, its view of their shape grows the schema record (types still from
R4) and the chunk is parsed again. Single lines the fast path cannot give exactly (a JSON ``null``, which
Arrow reads as absent; a field R4 does not define; an object with no typed field) are taken out of the
chunk and go through the exact path (``normalize.py``), which routes every value that does not fit to
the unmapped-JSON column; their rows are put back in their place. A chunk with many such lines, or
one the parser refuses, takes the exact path whole. Both paths give the same rows.

Rows are buffered up to ``row_group_bytes`` and written as one row group. A part file has one schema, so
when the record grows the current part is closed and the next one starts with the wider schema; at
commit, parts written before the last growth are rewritten (row group by row group) so every part of a
type in a run has the identical schema. Parts are written under ``_tmp.`` names and renamed at commit,
then the schema record and the ``_SUCCESS`` marker are written.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import IO, TYPE_CHECKING, Any, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from airflow_provider_smart.parquet.arrow import (
    conform_table,
    data_schema,
    grow_from_arrow,
    rows_with_value,
    table_schema,
    unexpected_paths,
)
from airflow_provider_smart.parquet.chunks import (
    LineRange,
    cut_lines,
    drop_blank_lines,
    iter_chunks,
    line_spans,
    lines_holding,
    null_lines,
    split_contained,
)
from airflow_provider_smart.parquet.normalize import Normalizer
from airflow_provider_smart.parquet.schema import UNMAPPED_COLUMN, SchemaError, SchemaRecord
from airflow_provider_smart.storage.atomic import (
    TMP_PREFIX,
    atomic_write_json,
    is_hidden,
    mark_complete,
    mark_incomplete,
    read_json,
    replace,
)
from airflow_provider_smart.storage.paths import safe_segment

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

SCHEMA_FILE = "_schema.json"
DEFAULT_CHUNK_BYTES = 8 << 20
DEFAULT_ROW_GROUP_BYTES = 64 << 20
DEFAULT_PART_BYTES = 1 << 30
# The first lines of a type's first chunk teach its record before the whole chunk is parsed.
SAMPLE_BYTES = 256 << 10
# "Column(/a/[]/b) changed from number to string": the parser met two JSON types in a field it infers.
_CONFLICT = re.compile(r"Column\(/(?:[^)]*/)?([A-Za-z0-9_]+)(?:/\[\])*\) changed from")
_CONFLICT_RETRIES = 4
_RESOURCE_TYPE = re.compile(rb'"resourceType"\s*:\s*"([A-Za-z0-9]+)"')


@dataclass
class _Part:
    tmp: ObjectStoragePath
    name: str
    version: int
    rows: int = 0


@dataclass
class TypeSummary:
    rows: int = 0
    files: list[str] = field(default_factory=list)
    fast_chunks: int = 0
    exact_chunks: int = 0
    exact_lines: int = 0


@dataclass
class _Fast:
    """What the fast path made of a chunk (line indexes count the chunk's lines from 0)."""

    table: pa.Table  # one row per line except those in ``removed``
    removed: set[int]  # lines cut out of the text before the parse that gave ``table``
    offending: list[int]  # lines (sorted) the exact path gives instead; includes ``removed``
    lines: list[bytes]  # their text, in the same order
    nbytes: int


class _TypeWriter:
    """Writes the parts of one resource type in one run."""

    def __init__(self, owner: FhirParquetWriter, record: SchemaRecord) -> None:
        self.owner = owner
        self.record = record
        self.directory = owner.destination / record.resource_type / owner.run
        if self.directory.exists():
            foreign = [
                c.name for c in self.directory.iterdir() if not is_hidden(c.name) and not c.name.endswith(".parquet")
            ]
            if foreign:
                raise ValueError(
                    f"{self.directory} holds other files ({', '.join(sorted(foreign)[:3])}); a rerun would replace "
                    "them: give the Parquet tables their own root (e.g. <output>/parquet)"
                )
        # A previous attempt of this run stays whole (marker included) until this one commits.
        self.token = uuid.uuid4().hex[:12]
        self.directory.mkdir(parents=True, exist_ok=True)
        self.normalizer = Normalizer(record.root, grow=not record.pinned, exact_decimal=record.decimal == "string")
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.parts: list[_Part] = []
        self.part: _Part | None = None
        self.handle: IO[bytes] | None = None
        self.pq_writer: pq.ParquetWriter | None = None
        self.part_bytes = 0
        self._schemas: tuple[int, pa.Schema, pa.Schema] | None = None
        self.sampled = False
        self.summary = TypeSummary()

    # -- schemas ---------------------------------------------------------------------------------
    def schemas(self) -> tuple[pa.Schema, pa.Schema]:
        """(schema told to the JSON parser, stored table schema) for the record's current version."""
        if self._schemas is None or self._schemas[0] != self.record.version:
            self._schemas = (self.record.version, data_schema(self.record), table_schema(self.record))
        return self._schemas[1], self._schemas[2]

    def grew(self) -> None:
        self.record.version += 1

    # -- fast path -------------------------------------------------------------------------------
    def _parse(self, chunk: bytes, schema: pa.Schema, behaviour: str) -> pa.Table:
        return pajson.read_json(
            pa.py_buffer(chunk),
            read_options=pajson.ReadOptions(block_size=1 << 20),
            parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior=behaviour),
        )

    def try_fast(self, chunk: bytes, lines: int) -> _Fast | None:
        """The chunk (no blank lines; ``lines`` of them) through the Arrow parser, or None for the exact path."""
        limit = max(8, lines // 8)  # beyond this many exact lines, the whole chunk the exact way is cheaper
        # Lines cut out of the text before parsing: those with a null, and those with a field whose values
        # the parser cannot infer one type for (a non-R4 field holding numbers and strings).
        cut = {span[0]: span for span in null_lines(chunk)} if b"null" in chunk else {}
        for _ in range(_CONFLICT_RETRIES):
            if len(cut) > limit or len(cut) == lines:
                return None
            parsed = self._parse_cut(chunk, lines, cut)
            if parsed is None:
                return None
            if isinstance(parsed, bytes):
                more = [span for span in lines_holding(chunk, b'"' + parsed + b'"') if span[0] not in cut]
                if not more:
                    return None
                cut.update((span[0], span) for span in more)
                continue
            text, rows, contained, table = parsed
            break
        else:
            return None
        parse_schema = self.parse_schema(contained is not None)
        nulls = sorted(cut.values())
        bad: set[int] = set()  # rows of ``table`` holding a value the parser cannot type
        removed_rows: set[int] = set()  # rows cut out of the text before the final parse
        if not table.schema.equals(parse_schema, check_metadata=False):
            found, told = pa.struct(list(table.schema)), pa.struct(list(parse_schema))
            grown = False
            if self.record.pinned:
                rejected = unexpected_paths(found, told)
            else:
                before = self.record.root.count()
                rejected = grow_from_arrow(self.record.root, found, told)
                grown = self.record.root.count() != before
                if grown:
                    self.grew()
            for path in rejected:
                bad |= rows_with_value(table, path)
            if len(nulls) + len(bad) > limit or len(bad) == rows:
                return None
            if grown:
                # New fields: their values must be read with their FHIR types, not inferred ones. Parse
                # again, without the rows the exact path takes.
                if bad:
                    text = cut_lines(text, line_spans(text, sorted(bad)))
                    if contained is not None:
                        keep = pa.array([i not in bad for i in range(rows)], type=pa.bool_())
                        contained = contained.filter(keep)
                parse_schema = self.parse_schema(contained is not None)
                try:
                    table = self._parse(text, parse_schema, "error")
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    return None
                if len(table) != rows - len(bad):
                    return None
                removed_rows = bad
        if contained is not None:
            table = table.append_column("contained", contained)
        table = table.append_column(pa.field(UNMAPPED_COLUMN, pa.string()), pa.nulls(len(table), pa.string()))
        # Rows of the parsed text are the chunk's lines without the cut ones.
        null_index = [line for line, _, _ in nulls]
        to_line = _without(lines, null_index) if null_index and bad else None
        bad_lines = sorted(to_line[r] for r in bad) if to_line is not None else sorted(bad)
        removed = set(null_index)
        removed.update(to_line[r] if to_line is not None else r for r in removed_rows)
        offending = sorted(null_index + bad_lines)
        texts = [chunk[start:end] for _, start, end in line_spans(chunk, offending)] if offending else []
        return _Fast(table, removed, offending, texts, table.nbytes)

    def _parse_cut(
        self, chunk: bytes, lines: int, cut: dict[int, tuple[int, int, int]]
    ) -> tuple[bytes, int, pa.ListArray | None, pa.Table] | bytes | None:
        """Parse the chunk without the ``cut`` lines: (text, rows, contained texts, table); the name of a
        field the parser could not infer one type for; or None (the exact path takes the chunk)."""
        text = cut_lines(chunk, sorted(cut.values()))
        rows = lines - len(cut)
        contained: pa.ListArray | None = None
        if b'"contained"' in text:
            node = self.record.root.children.get("contained") or (
                None if self.record.pinned else self.record.root.child_for("contained")
            )
            if node is None or node.kind != "json" or not node.is_list:
                return None
            split = split_contained(text, rows)
            if split is None:
                return None
            text, contained = split
            if "contained" not in self.record.root.children:
                self.record.root.add("contained")
                self.grew()
        if not self.sampled:
            self.sampled = True
            self._learn(text, contained is not None)
        parse_schema = self.parse_schema(contained is not None)
        # Fields of the record are converted strictly (a wrong JSON type raises); fields the record does not
        # have yet are inferred and appended, which tells what to add without a second failing parse.
        try:
            table = self._parse(text, parse_schema, "infer")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            conflict = _CONFLICT.search(str(err))
            return conflict.group(1).encode() if conflict else None
        if len(table) != rows:  # two values on one line, or one value over two: not NDJSON
            return None
        # Every row must be of this type before its fields may teach this type's record anything.
        types = table.column("resourceType")
        if types.null_count or not pc.all(pc.equal(types, self.record.resource_type)).as_py():
            return None
        return text, rows, contained, table

    def _learn(self, text: bytes, without_contained: bool) -> None:
        """Grow the record from the first lines of a type's first chunk before parsing all of it.

        New fields force a second parse of the chunk (their values must be read with their FHIR types);
        learning them from a sample first keeps that second parse to the sample's size.
        """
        if self.record.pinned or len(text) <= 2 * SAMPLE_BYTES:
            return
        sample = text[: text.find(b"\n", SAMPLE_BYTES) + 1]
        if not sample:
            return
        parse_schema = self.parse_schema(without_contained)
        try:
            table = self._parse(sample, parse_schema, "infer")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return  # the whole chunk will tell
        types = table.column("resourceType")
        if types.null_count or not pc.all(pc.equal(types, self.record.resource_type)).as_py():
            return
        if not table.schema.equals(parse_schema, check_metadata=False):
            before = self.record.root.count()
            grow_from_arrow(self.record.root, pa.struct(list(table.schema)), pa.struct(list(parse_schema)))
            if self.record.root.count() != before:
                self.grew()

    def parse_schema(self, without_contained: bool) -> pa.Schema:
        schema, _ = self.schemas()
        if without_contained and "contained" in schema.names:
            schema = schema.remove(schema.get_field_index("contained"))
        return schema

    # -- exact path ------------------------------------------------------------------------------
    def table_from_resources(self, resources: list[dict[str, Any]]) -> pa.Table:
        self.normalizer.grew = False
        rows = [self.normalizer.row(r) for r in resources]
        if self.normalizer.grew:
            self.grew()
        _, schema = self.schemas()
        return pa.Table.from_struct_array(pa.array(rows, type=pa.struct(list(schema)))).cast(schema)

    # -- writing ---------------------------------------------------------------------------------
    def add(self, table: pa.Table, nbytes: int | None = None) -> None:
        """Buffer rows; ``nbytes`` for a table of slices (whose own count would repeat shared buffers)."""
        if not len(table):
            return
        self.buffer.append(table)
        self.buffered += table.nbytes if nbytes is None else nbytes
        self.summary.rows += len(table)
        if self.buffered >= self.owner.row_group_bytes:
            self.flush()
        else:
            self.owner.keep_buffers_bounded()

    def flush(self) -> None:
        if not self.buffer:
            return
        _, schema = self.schemas()
        tables = [conform_table(t, schema) for t in self.buffer]
        self.buffer, self.buffered = [], 0
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        if self.part is not None and self.part.version != self.record.version:
            self.close_part()
        if self.part is None:
            self.open_part(schema)
        assert self.pq_writer is not None and self.part is not None
        self.pq_writer.write_table(table, row_group_size=len(table))
        self.part.rows += len(table)
        self.part_bytes += table.nbytes
        del tables, table
        pa.default_memory_pool().release_unused()  # hand the row group's memory back: RSS stays flat
        if self.part_bytes >= self.owner.part_bytes:
            self.close_part()

    def _writer(self, handle: IO[bytes], schema: pa.Schema) -> pq.ParquetWriter:
        return pq.ParquetWriter(
            handle,
            schema,
            compression=self.owner.compression,
            write_statistics=True,
            store_schema=True,
        )

    def open_part(self, schema: pa.Schema) -> None:
        name = f"part-{len(self.parts):05d}.parquet"
        tmp = self.directory / f"{TMP_PREFIX}{self.token}.{name}"
        self.part = _Part(tmp, name, self.record.version)
        self.handle = tmp.open("wb")  # type: ignore[no-untyped-call]
        self.pq_writer = self._writer(self.handle, schema)
        self.part_bytes = 0

    def close_part(self) -> None:
        if self.part is None:
            return
        assert self.pq_writer is not None and self.handle is not None
        self.pq_writer.close()
        self.handle.close()
        self.parts.append(self.part)
        self.part, self.pq_writer, self.handle = None, None, None

    def finish(self) -> None:
        """Flush, close, bring every part to the final schema, and swap the parts into place.

        Up to here a previous attempt of the same run is untouched; now its marker goes first, then its
        parts (and stale temp files of dead attempts), then the new parts are renamed in.
        """
        self.flush()
        self.close_part()
        _, schema = self.schemas()
        for part in self.parts:
            if part.version != self.record.version:
                self._rewrite(part, schema)
        mark_incomplete(self.directory)
        mine = {part.tmp.name for part in self.parts}
        for child in list(self.directory.iterdir()):
            if child.name not in mine and child.name.endswith(".parquet"):  # parts and temp parts only
                child.unlink()
        for part in self.parts:
            final = self.directory / part.name
            replace(part.tmp, final)
            self.summary.files.append(str(final))

    def _rewrite(self, part: _Part, schema: pa.Schema) -> None:
        new_tmp = self.directory / f"{TMP_PREFIX}{self.token}.rewrite.{part.name}"
        with part.tmp.open("rb") as src, new_tmp.open("wb") as dst:  # type: ignore[no-untyped-call]
            reader = pq.ParquetFile(src)
            writer = self._writer(dst, schema)
            for i in range(reader.num_row_groups):
                writer.write_table(conform_table(reader.read_row_group(i), schema))
            writer.close()
        part.tmp.unlink()
        part.tmp = new_tmp
        part.version = self.record.version

    def abort(self) -> None:
        for closer in (self.pq_writer, self.handle):
            try:
                if closer is not None:
                    closer.close()
            except Exception:  # noqa: S110 - best effort on the way out; the original error matters
                pass
        # Only this attempt's temp files: a committed earlier attempt of the run stays as it was.
        if self.directory.exists():
            for child in list(self.directory.iterdir()):
                if child.name.startswith(f"{TMP_PREFIX}{self.token}."):
                    child.unlink()
        with contextlib.suppress(OSError):
            if not any(self.directory.iterdir()):
                self.directory.rmdir()


@contextlib.contextmanager
def open_ndjson(source: Any) -> Iterator[IO[bytes]]:
    """Open a path / ObjectStoragePath / file object for reading bytes, gunzipping when gzipped."""
    with contextlib.ExitStack() as stack:
        if hasattr(source, "read"):
            raw: Any = source
        elif hasattr(source, "open"):
            raw = stack.enter_context(source.open("rb"))
        else:
            raw = stack.enter_context(open(source, "rb"))
        buffered: Any = raw if hasattr(raw, "peek") else io.BufferedReader(raw)
        if buffered.peek(2)[:2] == b"\x1f\x8b":
            yield cast("IO[bytes]", stack.enter_context(gzip.GzipFile(fileobj=buffered)))
        else:
            yield cast("IO[bytes]", buffered)


class FhirParquetWriter:
    """Write FHIR resources to Parquet tables ``<destination>/<ResourceType>/<run>/part-NNNNN.parquet``.

    Use as a context manager (commits on success, removes partial output on error) or call
    :meth:`commit` / :meth:`abort`. Feed it NDJSON files (:meth:`write_ndjson`), NDJSON lines
    (:meth:`write_lines`) or parsed resources (:meth:`write_resources`); several sources of the same
    type end up in the same table with one schema.

    :param destination: root directory (``ObjectStoragePath``, URI or local path).
    :param run: run label, one path segment per run (e.g. the Airflow run id).
    :param decimal: ``"float64"`` (default) or ``"string"`` to keep each decimal's exact text.
    :param schemas: pinned schema records by resource type (dicts as written in ``_schema.json`` or
        paths to such files). A pinned type never grows; fields outside the record go to ``unmapped_json``.
    :param compression: Parquet codec (default zstd).
    :param row_group_bytes: uncompressed bytes buffered per row group.
    :param chunk_bytes: bytes of NDJSON parsed at a time.
    :param part_bytes: a part is closed after about this many uncompressed bytes.
    :param fast: use the Arrow JSON parser wherever it gives the same rows (default); False forces the
        exact Python path everywhere (slower; the output is the same).
    """

    def __init__(
        self,
        destination: Any,
        run: str,
        *,
        decimal: str = "float64",
        schemas: Mapping[str, Any] | None = None,
        compression: str = "zstd",
        row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        part_bytes: int = DEFAULT_PART_BYTES,
        fast: bool = True,
        conn_id: str | None = None,
    ) -> None:
        from airflow_provider_smart.storage.paths import resolve_output

        self.destination = resolve_output(destination, conn_id)
        self.run = safe_segment(run)
        if decimal not in ("float64", "string"):
            raise SchemaError(f"decimal must be 'float64' or 'string' (exact text), not {decimal!r}")
        self.decimal = decimal
        self.pinned = {k: _load_pinned(k, v) for k, v in (schemas or {}).items()}
        self.compression = compression
        self.row_group_bytes = row_group_bytes
        self.chunk_bytes = chunk_bytes
        self.part_bytes = part_bytes
        self.fast = fast
        self.writers: dict[str, _TypeWriter] = {}
        self.closed = False
        self.result: dict[str, dict[str, Any]] = {}  # what commit() returned

    def __enter__(self) -> FhirParquetWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def _writer_for(self, resource_type: str) -> _TypeWriter:
        tw = self.writers.get(resource_type)
        if tw is None:
            pinned = self.pinned.get(resource_type)
            if pinned is not None:
                if pinned.decimal != self.decimal:
                    raise SchemaError(
                        f"the pinned {resource_type} record keeps decimals as {pinned.decimal!r} but the writer "
                        f"was asked for {self.decimal!r}"
                    )
                record = pinned
            else:
                record = SchemaRecord(resource_type, self.decimal)
                stored = read_json(self.destination / resource_type / SCHEMA_FILE)
                if stored is not None:
                    record.merge(SchemaRecord.from_json(stored))
                record.version = 0
            tw = _TypeWriter(self, record)
            self.writers[resource_type] = tw
        return tw

    def keep_buffers_bounded(self) -> None:
        """Buffers of all types together stay under ``row_group_bytes``: flush the largest when over.

        Without this, every type's partly filled row group would wait for the commit, and memory would grow
        with the number of types times the row-group size.
        """
        total = sum(tw.buffered for tw in self.writers.values())
        if total >= self.row_group_bytes:
            max(self.writers.values(), key=lambda tw: tw.buffered).flush()

    def declare(self, resource_type: str) -> None:
        """Commit a table for ``resource_type`` even if no resource of it arrives (an empty run of it)."""
        self._check_open()
        self._writer_for(resource_type)

    # -- inputs ----------------------------------------------------------------------------------
    def write_ndjson(
        self, source: Any, resource_type: str | None = None, byte_range: tuple[int, int] | None = None
    ) -> int:
        """Convert one NDJSON file (plain or gzipped). Returns the number of resources read.

        :param resource_type: the type the file should hold (Bulk Data files hold one type); lines of
            other types still land in their own tables.
        :param byte_range: only the lines starting in these bytes ``[start, end)`` of a plain file (see
            :class:`~airflow_provider_smart.parquet.chunks.LineRange`): writers sharing a large file.
        """
        if byte_range is None:
            with open_ndjson(source) as handle:
                return self._write_chunks(iter_chunks(handle, self.chunk_bytes), str(source), resource_type)
        with source.open("rb") if hasattr(source, "open") else open(source, "rb") as raw:
            if raw.read(2) == b"\x1f\x8b":
                raise ValueError(
                    f"{source} is gzipped: a byte range of it cannot be read on its own; convert the file whole"
                )
            ranged = LineRange(raw, *byte_range)
            where = f"{source} bytes {byte_range[0]}-{byte_range[1]}"
            return self._write_chunks(iter_chunks(ranged, self.chunk_bytes), where, resource_type)  # type: ignore[arg-type]

    def write_lines(self, lines: Iterable[bytes | str], resource_type: str | None = None) -> int:
        """Convert NDJSON lines (each one resource) arriving from a stream."""

        def chunks() -> Iterator[bytes]:
            buf: list[bytes] = []
            size = 0
            for line in lines:
                data = line.encode() if isinstance(line, str) else line
                if not data.endswith(b"\n"):
                    data += b"\n"
                buf.append(data)
                size += len(data)
                if size >= self.chunk_bytes:
                    yield b"".join(buf)
                    buf, size = [], 0
            if buf:
                yield b"".join(buf)

        return self._write_chunks(chunks(), "<lines>", resource_type)

    def write_resources(self, resources: Iterable[Mapping[str, Any]]) -> int:
        """Convert parsed resources (dicts)."""
        batch: list[dict[str, Any]] = []
        count = 0
        for resource in resources:
            batch.append(dict(resource))
            if len(batch) >= 2048:
                count += self._write_parsed(batch)
                batch = []
        if batch:
            count += self._write_parsed(batch)
        return count

    def _write_chunks(self, chunks: Iterable[bytes], source: str, resource_type: str | None) -> int:
        self._check_open()
        count = 0
        line_no = 1
        if resource_type is not None and not resource_type.isalnum():
            resource_type = None
        for chunk in chunks:
            lines = chunk.count(b"\n")
            rtype = resource_type
            if rtype is None:
                match = _RESOURCE_TYPE.search(chunk, 0, chunk.find(b"\n"))
                rtype = match.group(1).decode() if match else None
            done = False
            if rtype is not None and self.fast and self.decimal == "float64":
                body, kept = drop_blank_lines(chunk)
                tw = self._writer_for(rtype)
                fast = tw.try_fast(body, lines if kept is None else len(kept))
                if fast is not None:
                    count += self._place(
                        tw,
                        fast,
                        [f"{source} line {line_no + (i if kept is None else kept[i])}" for i in fast.offending],
                    )
                    tw.summary.fast_chunks += 1
                    done = True
            if not done:
                count += self._write_exact(chunk, source, line_no)
            line_no += lines
        return count

    def _place(self, tw: _TypeWriter, fast: _Fast, where: list[str]) -> int:
        """Add the fast rows with the offending lines' exact rows in their places (input order is kept)."""
        values = [self._load_line(line, place) for line, place in zip(fast.lines, where, strict=True)]
        groups = self._group(values, where)
        mine = groups.pop(tw.record.resource_type, [])
        exact = tw.table_from_resources(mine) if mine else None  # may grow the record: conform after it
        table = fast.table
        if fast.offending:
            _, schema = tw.schemas()
            table = conform_table(table, schema)
            if exact is not None:
                exact = conform_table(exact, schema)
            mine_ids = {id(v) for v in mine}
            pieces: list[pa.Table] = []
            row = taken = previous = 0
            for line, value in zip(fast.offending, values, strict=True):
                if line > previous:
                    pieces.append(table.slice(row, line - previous))
                    row += line - previous
                if exact is not None and id(value) in mine_ids:
                    pieces.append(exact.slice(taken, 1))
                    taken += 1
                if line not in fast.removed:
                    row += 1  # the parsed row of this line is replaced by its exact row
                previous = line + 1
            pieces.append(table.slice(row))
            table = pa.concat_tables(pieces)
        tw.add(table, fast.nbytes + (exact.nbytes if exact is not None else 0))
        tw.summary.exact_lines += len(fast.offending)
        for rtype, group in groups.items():  # lines of other types: their own tables
            other = self._writer_for(rtype)
            other.add(other.table_from_resources(group))
        return len(table) + sum(len(g) for g in groups.values())

    def _load_line(self, line: bytes, where: str) -> Any:
        try:
            return json.loads(line, parse_float=Decimal if self.decimal == "string" else float)
        except ValueError as err:
            raise ValueError(
                f"{where}: not valid JSON ({err}); each line of an NDJSON file must be one complete JSON resource"
            ) from None

    def _write_exact(self, chunk: bytes, source: str, first_line: int) -> int:
        resources = []
        where = []
        for offset, line in enumerate(chunk.split(b"\n")):
            if not line.strip():
                continue
            place = f"{source} line {first_line + offset}"
            resources.append(self._load_line(line, place))
            where.append(place)
        return self._write_parsed(resources, where)

    @staticmethod
    def _group(resources: list[Any], where: list[str] | None) -> dict[str, list[dict[str, Any]]]:
        groups: dict[str, list[dict[str, Any]]] = {}
        for i, value in enumerate(resources):
            rtype = value.get("resourceType") if isinstance(value, dict) else None
            if not isinstance(rtype, str) or not rtype.isalnum():
                raise ValueError(
                    f"{where[i] if where else f'resource {i}'}: not a FHIR resource (a JSON object with a "
                    "resourceType string); check that the input is FHIR NDJSON"
                )
            groups.setdefault(rtype, []).append(value)
        return groups

    def _write_parsed(self, resources: list[dict[str, Any]], where: list[str] | None = None) -> int:
        self._check_open()
        for rtype, group in self._group(resources, where).items():
            tw = self._writer_for(rtype)
            tw.add(tw.table_from_resources(group))
            tw.summary.exact_chunks += 1
        return len(resources)

    # -- commit ----------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this FhirParquetWriter was already committed or aborted; make a new one")

    def commit(self, *, mark: bool = True) -> dict[str, dict[str, Any]]:
        """Finish every table; returns ``{resourceType: {"rows", "files", "schema"}}``.

        ``mark=False`` leaves out each table's ``_SUCCESS`` marker: the caller publishes the run later with
        :func:`mark_table_complete` (an export's finishing step marks its tables together with the export).
        """
        self._check_open()
        try:
            result: dict[str, dict[str, Any]] = {}
            for rtype, tw in self.writers.items():
                tw.finish()
                record_json = tw.record.to_json()
                schema_path = self.destination / rtype / SCHEMA_FILE
                if not tw.record.pinned:
                    # Another run may have grown the stored record meanwhile: keep its fields too.
                    stored = read_json(schema_path)
                    if stored is not None:
                        merged = SchemaRecord.from_json(record_json)
                        merged.merge(SchemaRecord.from_json(stored))
                        record_json = merged.to_json()
                    atomic_write_json(schema_path, record_json)
                atomic_write_json(tw.directory / SCHEMA_FILE, tw.record.to_json())
                summary = {
                    "rows": tw.summary.rows,
                    "files": tw.summary.files,
                    "schema": str(schema_path),
                    "columns": len(tw.record.root.children) + 1,
                }
                if mark:
                    mark_table_complete(tw.directory, rtype, tw.summary.rows)
                # DEBUG: the operators log one table of every type's rows; how the rows were converted
                # (fast chunks, exact lines) is for whoever tunes the converter.
                log.debug(
                    "Parquet table %s: %d rows in %d file(s) at %s; %d chunk(s) fast (%d single line(s) exact), "
                    "%d exact",
                    rtype,
                    tw.summary.rows,
                    len(tw.summary.files),
                    tw.directory,
                    tw.summary.fast_chunks,
                    tw.summary.exact_lines,
                    tw.summary.exact_chunks,
                )
                result[rtype] = summary
            self.result = result
            return result
        except BaseException:
            self.abort()
            raise
        finally:
            self.closed = True

    def abort(self) -> None:
        """Remove everything this run wrote (no ``_SUCCESS`` marker is left behind)."""
        for tw in self.writers.values():
            try:
                tw.abort()
            except Exception:
                log.warning("could not clean %s", tw.directory, exc_info=True)
        self.closed = True


def mark_table_complete(directory: Any, resource_type: str, rows: int) -> None:
    """The ``_SUCCESS`` marker of one type's Parquet directory of a run (readers take the run from here)."""
    mark_complete(directory, {"resourceType": resource_type, "rows": rows})


def _without(count: int, dropped: list[int]) -> list[int]:
    """``range(count)`` without the sorted indexes ``dropped``."""
    skip = set(dropped)
    return [i for i in range(count) if i not in skip]


def _load_pinned(resource_type: str, value: Any) -> SchemaRecord:
    if not isinstance(value, Mapping):
        path = value
        from airflow_provider_smart.storage.paths import resolve_output

        target = resolve_output(path)
        if not target.exists():
            raise SchemaError(f"pinned schema for {resource_type}: {path} does not exist")
        value = json.loads(target.read_bytes())
    record = SchemaRecord.from_json(value, pinned=True)
    if record.resource_type != resource_type:
        raise SchemaError(
            f"the schema pinned for {resource_type} is a record of {record.resource_type}; pass it under its own type"
        )
    return record
