"""NDJSON line checks, applied to every line while it streams.

:class:`NdjsonStream` cuts received chunks into runs of whole lines and checks each run in one call
(msgspec, with a type that holds only ``resourceType``: every line is still fully syntax-checked,
must be an object and must name the expected type). Any run that does not pass that
fast check exactly (a malformed line, a blank line, a line holding two values) is checked again line by
line, which finds the offending line and words the error. Memory stays bounded: a partial line is kept
as a list of pieces (no quadratic concatenation) and fails once it outgrows ``max_line_bytes``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from typing import Any

import orjson

from airflow_provider_smart.transport.sanitize import safe_text

#: A generous default for one NDJSON line: FHIR resources with inline attachments run to megabytes.
DEFAULT_MAX_LINE_BYTES = 64 << 20


Buffer = bytes | memoryview


class NdjsonCheckError(ValueError):
    """A bulk file failed a line check; the message names the file, the line and the problem."""


class LineChecker:
    """Checks each line: valid JSON object, ``resourceType`` as expected, and the line count.

    ``expected_type=None`` accepts any resource type (files organised by Patient mix types). A file
    with more lines than ``expected_count`` fails as soon as the extra line arrives.
    """

    __slots__ = ("count", "expected_count", "expected_type", "source")

    def __init__(self, source: str, expected_type: str | None, expected_count: int | None) -> None:
        self.source = source
        self.expected_type = expected_type
        self.expected_count = expected_count
        self.count = 0

    def check(self, line: bytes) -> dict[str, Any]:
        self.count += 1
        self.check_not_over()
        try:
            obj = _loads(line)
        except ValueError as exc:
            raise NdjsonCheckError(f"{self.source} line {self.count}: not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise NdjsonCheckError(f"{self.source} line {self.count}: a JSON {type(obj).__name__}, not a resource")
        rtype = obj.get("resourceType")
        if not isinstance(rtype, str) or not rtype:
            raise NdjsonCheckError(f"{self.source} line {self.count}: no resourceType")
        if self.expected_type is not None and rtype != self.expected_type:
            raise NdjsonCheckError(
                f"{self.source} line {self.count}: resourceType {safe_text(rtype, limit=80)!r} but the manifest "
                f"lists this file as {self.expected_type!r}"
            )
        return obj

    def check_not_over(self) -> None:
        if self.expected_count is not None and self.count > self.expected_count:
            raise NdjsonCheckError(
                f"{self.source}: more than the {self.expected_count} lines the manifest's count promises; "
                "the file was stopped at the first extra line"
            )

    def finish(self) -> int:
        if self.expected_count is not None and self.count != self.expected_count:
            raise NdjsonCheckError(
                f"{self.source}: {self.count} lines but the manifest says count={self.expected_count}"
            )
        return self.count


class NdjsonStream:
    """Turns received chunks into checked runs of whole lines, ready to be written as they are.

    :param checker: counts and checks the lines.
    :param max_line_bytes: the longest line accepted; a longer one fails the file while it arrives.
    :param on_object: when given, every line is parsed whole and passed to it (error files, whose
        OperationOutcomes are summarised); such files take the line-by-line path.
    """

    def __init__(
        self,
        checker: LineChecker,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        on_object: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        self.checker = checker
        self.max_line_bytes = max_line_bytes
        self.on_object = on_object
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._decoder = None if on_object is not None else _block_decoder(checker.expected_type)

    def feed(self, chunk: bytes) -> Iterator[Buffer]:
        """Yield the checked whole lines ``chunk`` completes (each run ends with a newline)."""
        start = 0
        if self._pending:
            first = chunk.find(b"\n")
            if first < 0:
                self._keep(chunk)
                return
            self._grow(first + 1)
            head = b"".join([*self._pending, chunk[: first + 1]])
            self._pending = []
            self._pending_len = 0
            yield self._checked(head, 0, len(head))
            start = first + 1
        last = chunk.rfind(b"\n", start)
        if last >= 0:
            if len(chunk) > self.max_line_bytes:
                self._check_line_lengths(chunk, start, last + 1)
            yield self._checked(chunk, start, last + 1)
            start = last + 1
        if start < len(chunk):
            self._keep(chunk[start:] if start else chunk)

    def finish(self) -> Iterator[Buffer]:
        """Yield the last line when the body did not end with a newline, then check the final count."""
        if self._pending:
            tail = b"".join([*self._pending, b"\n"])
            self._pending = []
            self._pending_len = 0
            if tail.strip():
                yield self._checked(tail, 0, len(tail))
        self.checker.finish()

    # -- internals ------------------------------------------------------------------------------
    def _keep(self, piece: bytes) -> None:
        self._grow(len(piece))
        self._pending.append(piece)

    def _grow(self, extra: int) -> None:
        self._pending_len += extra
        if self._pending_len > self.max_line_bytes:
            raise self._too_long()

    def _too_long(self) -> NdjsonCheckError:
        return NdjsonCheckError(
            f"{self.checker.source} line {self.checker.count + 1}: longer than max_line_bytes="
            f"{self.max_line_bytes}; raise that limit in the download settings if such lines are expected"
        )

    def _check_line_lengths(self, buf: bytes, start: int, end: int) -> None:
        # Only reached when chunks are bigger than the line limit (a small limit or a big inflation step).
        pos = start
        while pos < end:
            nl = buf.find(b"\n", pos, end)
            if nl - pos > self.max_line_bytes:
                raise self._too_long()
            pos = nl + 1

    def _checked(self, buf: bytes, start: int, end: int) -> Buffer:
        view = memoryview(buf)[start:end]
        if self._decoder is not None and self._fast_check(buf, view, start, end):
            return view
        return self._check_by_line(bytes(view))

    def _fast_check(self, buf: bytes, view: memoryview, start: int, end: int) -> bool:
        """Check a run of lines in one call; False sends the run to the line-by-line path.

        The run's newlines become commas inside one JSON array whose items must each be an object of
        the expected type: a blank line (``,,``) or a line holding two values (``} {``) is not a
        valid array, so a run that decodes has exactly one resource per line. Cheaper than
        ``decode_lines`` plus counting and searching the newlines.
        """
        assert self._decoder is not None
        # Two copies of the run: the replace (of the whole chunk, sliced after) and the join.
        commas = memoryview(buf.replace(b"\n", b","))[start : end - 1]
        try:
            values = self._decoder.decode(b"".join((b"[", commas, b"]")))
            # msgspec skips unknown fields without validating their UTF-8. An ASCII chunk needs no
            # decoding (isascii does not allocate; decoding costs as much as the JSON check here).
            if not buf.isascii():
                str(view, "utf-8")
        except ValueError:  # msgspec's DecodeError and ValidationError are ValueErrors
            return False
        if not values:
            return False  # a lone blank line: the line-by-line path drops it
        self.checker.count += len(values)
        self.checker.check_not_over()
        return True

    def _check_by_line(self, run: bytes) -> bytes:
        lines = [line.strip() for line in run.split(b"\n")]
        kept = [line for line in lines if line]
        for line in kept:
            obj = self.checker.check(line)
            if self.on_object is not None:
                self.on_object(obj)
        return b"".join(line + b"\n" for line in kept)


def prepare_checks(expected_types: Iterable[str | None]) -> None:
    """Build the block decoders for these types now, before download threads start.

    The first build imports msgspec and makes a type; done inside one download thread, it holds the
    interpreter lock while the other threads wait with data in their sockets.
    """
    for expected_type in set(expected_types):
        _block_decoder(expected_type)


@lru_cache(maxsize=256)
def _block_decoder(expected_type: str | None) -> Any:
    """A msgspec decoder whose only field is ``resourceType`` (fixed to ``expected_type`` when given).

    Imported here, not at module level: DAG files import the operators, and parsing them stays cheap.
    """
    from typing import Annotated, Literal

    import msgspec

    field_type: Any = Annotated[str, msgspec.Meta(min_length=1)] if expected_type is None else Literal[expected_type]
    # gc=False: the values only hold a str, and Airflow's heap makes each collection costly.
    line_type = msgspec.defstruct("NdjsonLine", [("resourceType", field_type)], gc=False)
    return msgspec.json.Decoder(list[line_type])  # type: ignore[valid-type]


def _loads(line: bytes) -> Any:
    """Parse one line. orjson is about 2.4x faster than the standard library on FHIR NDJSON; it only
    stops at integers wider than 64 bits, which are valid JSON (and FHIR decimals), so those lines are
    parsed again by the standard library."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line)
