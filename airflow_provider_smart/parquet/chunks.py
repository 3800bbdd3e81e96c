"""Whole-line NDJSON chunks and the byte-level work the fast path does on them before Arrow parses them.

Every function here scans a chunk with C-level byte searches (``find``, ``count``, one compiled regex)
and touches single lines in Python only where something was found, so clean data costs a few scans.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

# A line holding only whitespace (after a newline; the first line is checked on its own).
_BLANK = re.compile(rb"\n(?=[ \t\r]*\n)")
# A JSON null as a value. Matches inside string values too, which only sends that line the exact way.
_NULL = re.compile(rb"[\[:,]\s*null\b")
_CONTAINED_MEMBER = b'"contained":['
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')


def iter_chunks(handle: IO[bytes], chunk_bytes: int) -> Iterator[bytes]:
    """Whole-line chunks of about ``chunk_bytes`` bytes (a line longer than that is one chunk).

    Each chunk is read into a buffer of its own and completed to its line end with ``readline``: the block
    is not copied again to cut it at a line end. (The chunks are bytearrays; they are only read.)
    """
    while True:
        block = bytearray(chunk_bytes)
        got = handle.readinto(block)  # type: ignore[attr-defined]
        if not got:
            return
        if got < chunk_bytes:
            del block[got:]
        if not block.endswith(b"\n"):
            block += handle.readline()
            if not block.endswith(b"\n"):  # the last line of a file without a final newline
                if not block.strip():
                    return
                block += b"\n"
        yield block  # type: ignore[misc]


class LineRange:
    """The lines of a seekable file that start in bytes ``[start, end)``, read as a file (``readinto`` and
    ``readline``, what :func:`iter_chunks` uses).

    Ranges that tile a file give every line to exactly one of them: a line belongs to the range its first
    byte lies in, so a range skips the tail of a line the previous range started and finishes the line it
    started itself past ``end``. Lets several writers share one large file.
    """

    def __init__(self, raw: IO[bytes], start: int, end: int) -> None:
        self.raw = raw
        self.end = end
        raw.seek(max(0, start - 1))
        if start > 0:
            raw.readline()  # from the byte before ``start`` to the next line end: a line started before
        self.pos = raw.tell()

    def readinto(self, block: bytearray) -> int:
        if self.pos >= self.end:
            return 0
        want = min(len(block), self.end - self.pos)
        got = self.raw.readinto(memoryview(block)[:want])  # type: ignore[attr-defined]
        self.pos += got or 0
        return got or 0

    def readline(self) -> bytes:
        line = self.raw.readline()
        self.pos += len(line)
        return line


def split_ranges(size: int, parts: int) -> list[tuple[int, int]]:
    """``[start, end)`` byte ranges tiling a file of ``size`` bytes in ``parts`` about equal pieces."""
    parts = max(1, min(parts, size or 1))
    bounds = [size * i // parts for i in range(parts + 1)]
    return list(itertools.pairwise(bounds))


def drop_blank_lines(chunk: bytes) -> tuple[bytes, list[int] | None]:
    """The chunk without whitespace-only lines, and the original index of each kept line (None: none dropped).

    Arrow's parser yields no row for such a line, so rows and lines only pair up once they are gone.
    """
    first = chunk.find(b"\n")
    if _BLANK.search(chunk) is None and chunk[:first].strip():
        return chunk, None
    lines = chunk.split(b"\n")[:-1]
    kept = [i for i, line in enumerate(lines) if line.strip()]
    return b"".join(lines[i] + b"\n" for i in kept), kept


def null_lines(chunk: bytes) -> list[tuple[int, int, int]]:
    """``(line index, start, end)`` of each line holding a JSON ``null`` (Arrow would read it as absent)."""
    return lines_holding(chunk, b"null", _NULL)


def lines_holding(chunk: bytes, needle: bytes, pattern: re.Pattern[bytes] | None = None) -> list[tuple[int, int, int]]:
    """``(line index, start, end)`` of each line holding ``needle`` (and a match of ``pattern`` if given)."""
    found: list[tuple[int, int, int]] = []
    pos = chunk.find(needle)
    line = 0
    counted = 0
    while pos >= 0:
        start = chunk.rfind(b"\n", 0, pos) + 1
        end = chunk.find(b"\n", pos) + 1
        if pattern is None or pattern.search(chunk, start, end) is not None:
            line += chunk.count(b"\n", counted, start)
            counted = start
            found.append((line, start, end))
        pos = chunk.find(needle, end)
    return found


def cut_lines(chunk: bytes, spans: list[tuple[int, int, int]]) -> bytes:
    """The chunk without the lines at ``spans`` (as :func:`null_lines` gives them, in order)."""
    if not spans:
        return chunk
    parts = []
    pos = 0
    for _, start, end in spans:
        parts.append(chunk[pos:start])
        pos = end
    parts.append(chunk[pos:])
    return b"".join(parts)


def line_spans(chunk: bytes, indexes: list[int]) -> list[tuple[int, int, int]]:
    """``(line index, start, end)`` of the lines at ``indexes`` (sorted) of a chunk."""
    spans = []
    start = 0
    line = 0
    for index in indexes:
        while line < index:
            start = chunk.index(b"\n", start) + 1
            line += 1
        end = chunk.index(b"\n", start) + 1
        spans.append((index, start, end))
    return spans


def split_contained(chunk: bytes, lines: int) -> tuple[bytes, pa.ListArray] | None:
    """Cut each line's top-level ``contained`` array out, as the JSON text of each contained resource.

    Contained resources are stored as JSON text (any resource type may appear there). Lifting them out
    textually lets the Arrow parser handle the rest of the line. msgspec finds every line's top-level
    items (validating their JSON) in one call; each line is then cut where those exact bytes follow the
    key. Returns the chunk without them and a ``list<string>`` array with, per line, the texts (null when
    the line has no ``contained``); None when a line does not have the expected shape (the caller then
    takes the exact path). ``lines`` is the number of lines (the chunk has no blank line).
    """
    import msgspec
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        found = _contained_decoder().decode_lines(chunk)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    if len(found) != lines:  # two values on one line: not NDJSON
        return None
    out: list[bytes] = []
    items: list[bytes] = []
    offsets = [0]
    valid: list[bool] = []
    pos = 0  # where to look for the next line's member
    copied = 0  # chunk[copied:...] still to be copied to the output
    for item in found:
        if item.contained is None:
            offsets.append(len(items))
            valid.append(False)
            continue
        raws = [bytes(raw) for raw in item.contained]
        if b"null" in raws:
            return None  # a null item: the exact path keeps it as a null
        # The next top-level member is this line's: lines in between have none (msgspec says so), and a
        # nested key found first fails the top-level check below.
        cut = _contained_member(chunk, pos, raws)
        if cut is None:
            return None
        out.append(chunk[copied : cut[0]])
        pos = copied = cut[1]
        items.extend(raws)
        offsets.append(len(items))
        valid.append(True)
    out.append(chunk[copied:])
    texts = pa.array(items, type=pa.binary()).cast(pa.string())  # checks UTF-8
    mask = pa.array(valid, type=pa.bool_())
    array = pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), texts, mask=pc.invert(mask))
    return b"".join(out), array


def _contained_member(chunk: bytes, pos: int, items: list[bytes]) -> tuple[int, int] | None:
    """Where to cut the chunk to drop the next top-level ``"contained":[...]`` member from ``pos`` on (and
    one comma), found as the exact compact text of ``items``; None when the line has another layout."""
    key = chunk.find(_CONTAINED_MEMBER, pos)
    if key < 0:
        return None
    start = chunk.rfind(b"\n", 0, key) + 1
    prefix = chunk[start:key]
    if prefix.count(b"{") != 1 or b"}" in prefix or b"[" in prefix:
        # Braces may sit inside string values: look again with the strings taken out.
        bare = _STRINGS.sub(b"", prefix)
        if bare.count(b"{") - bare.count(b"}") != 1 or bare.count(b"[") != bare.count(b"]"):
            return None  # not the resource's own element
    after = key + len(_CONTAINED_MEMBER)
    for index, raw in enumerate(items):
        if index:
            if not chunk.startswith(b",", after):
                return None
            after += 1
        if not chunk.startswith(raw, after):
            return None  # whitespace inside the member, or another layout: the exact path handles it
        after += len(raw)
    if not chunk.startswith(b"]", after):
        return None
    after += 1
    if chunk.startswith(b",", after):
        return key, after + 1
    if chunk.startswith(b",", key - 1):
        return key - 1, after
    return None


_decoder: Any = None


def _contained_decoder() -> Any:
    """Built once, on first use (msgspec is imported only here)."""
    global _decoder
    if _decoder is None:
        import msgspec

        # Built with defstruct: this module's annotations are strings msgspec could not resolve here.
        contained = msgspec.defstruct("Contained", [("contained", list[msgspec.Raw] | None, None)])
        _decoder = msgspec.json.Decoder(contained)
    return _decoder
