"""NdjsonStream: runs of whole lines checked in one call, with exact line-by-line fallbacks."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest

from airflow_provider_smart.fhir.bulk.lines import LineChecker, NdjsonCheckError, NdjsonStream


def line(rtype: str = "Patient", i: int = 0, **extra: object) -> bytes:
    return json.dumps({"resourceType": rtype, "id": str(i), **extra}).encode() + b"\n"


def run(
    chunks: Iterable[bytes],
    expected_type: str | None = "Patient",
    count: int | None = None,
    max_line_bytes: int = 1 << 20,
) -> tuple[bytes, int]:
    checker = LineChecker("f.ndjson", expected_type, count)
    stream = NdjsonStream(checker, max_line_bytes=max_line_bytes)
    out = bytearray()
    for chunk in chunks:
        for piece in stream.feed(chunk):
            out += piece
    for piece in stream.finish():
        out += piece
    return bytes(out), checker.count


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 7, 64, 1 << 20])
def test_lines_split_anywhere_come_out_whole_and_counted(size: int) -> None:
    body = b"".join(line(i=i) for i in range(50))
    out, count = run(split_every(body, size), count=50)
    assert (out, count) == (body, 50)


def test_last_line_without_newline_gets_one() -> None:
    body = line(i=0) + line(i=1).rstrip(b"\n")
    assert run([body], count=2) == (line(i=0) + line(i=1), 2)


def test_blank_lines_and_crlf_are_dropped_not_counted() -> None:
    body = line(i=0) + b"\n  \r\n" + line(i=1).replace(b"\n", b"\r\n") + b"\n"
    out, count = run([body], count=2)
    assert count == 2
    assert [json.loads(x) for x in out.splitlines()] == [
        {"resourceType": "Patient", "id": "0"},
        {"resourceType": "Patient", "id": "1"},
    ]


def test_two_objects_on_one_line_fail_even_beside_a_blank_line() -> None:
    # A blank line elsewhere in the run must not hide the line that holds two values.
    body = line(i=0) + b"\n" + line(i=1).rstrip(b"\n") + b" " + line(i=2)
    with pytest.raises(NdjsonCheckError, match="line 2: not valid JSON"):
        run([body])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (b'{"resourceType":"Patient","x":[1,}\n', "line 3: not valid JSON"),
        (b"[1,2]\n", "line 3: a JSON list, not a resource"),
        (b'{"id":"x"}\n', "line 3: no resourceType"),
        (b'{"resourceType":""}\n', "line 3: no resourceType"),
        (b'{"resourceType":"Observation"}\n', "line 3: resourceType 'Observation' but the manifest lists"),
        (b'{"resourceType":"Patient","note":"\xff"}\n', "line 3: not valid JSON"),
    ],
)
def test_a_bad_line_is_named_in_a_run_that_fails_the_fast_check(bad: bytes, message: str) -> None:
    body = line(i=0) + line(i=1) + bad + line(i=3)
    with pytest.raises(NdjsonCheckError, match=message):
        run([body])


def test_wide_integers_are_valid_json() -> None:
    body = line(i=0, value=123456789012345678901234567890) + line(i=1)
    assert run([body], count=2)[1] == 2


def test_any_type_when_none_is_expected() -> None:
    body = line("Patient") + line("Observation")
    assert run([body], expected_type=None, count=2)[1] == 2


def test_over_count_fails_at_the_run_that_passes_it() -> None:
    checker = LineChecker("f.ndjson", "Patient", 3)
    stream = NdjsonStream(checker)
    list(stream.feed(line(i=0) + line(i=1)))
    with pytest.raises(NdjsonCheckError, match="more than the 3 lines the manifest's count promises"):
        list(stream.feed(line(i=2) + line(i=3)))


def test_under_count_fails_at_the_end() -> None:
    with pytest.raises(NdjsonCheckError, match="2 lines but the manifest says count=3"):
        run([line(i=0) + line(i=1)], count=3)


def test_a_line_longer_than_the_limit_fails_while_it_arrives() -> None:
    long_line = line(i=0, text="x" * 5000)
    checker = LineChecker("f.ndjson", "Patient", None)
    stream = NdjsonStream(checker, max_line_bytes=1000)
    list(stream.feed(line(i=1)))
    with pytest.raises(NdjsonCheckError, match="line 2: longer than max_line_bytes=1000"):
        for piece in split_every(long_line[:-1], 100):  # no newline yet: the line is still arriving
            list(stream.feed(piece))


def test_a_long_line_inside_one_big_chunk_fails_too() -> None:
    body = line(i=0) + line(i=1, text="x" * 5000) + line(i=2)
    with pytest.raises(NdjsonCheckError, match="longer than max_line_bytes=1000"):
        run([body], max_line_bytes=1000)


def test_lines_at_the_limit_pass() -> None:
    body = line(i=0, text="x" * 900)
    assert run(split_every(body, 10), max_line_bytes=len(body))[1] == 1


def test_error_files_hand_each_object_over() -> None:
    seen: list[dict[str, object]] = []
    checker = LineChecker("e.ndjson", "OperationOutcome", 2)
    stream = NdjsonStream(checker, on_object=seen.append)
    body = line("OperationOutcome", 0) + line("OperationOutcome", 1)
    assert b"".join(bytes(p) for p in stream.feed(body)) == body
    list(stream.finish())
    assert [o["id"] for o in seen] == ["0", "1"]


def test_a_wrong_type_from_the_server_is_cleaned_and_capped_in_the_message() -> None:
    hostile_type = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln\x1b[31m" + "A" * 5000
    body = line(i=0) + line(hostile_type, 1)
    with pytest.raises(NdjsonCheckError) as caught:
        run([body])
    message = str(caught.value)
    assert "line 2: resourceType" in message
    assert "eyJ" not in message and "\x1b" not in message and len(message) < 300


@pytest.mark.parametrize(
    "body",
    [
        # Two values on one line, every newline between `}` and `{`.
        b'{"resourceType":"Patient"} {"resourceType":"Patient"}\n',
        # One resource spread over two lines: as many values as `}\n{` boundaries plus one.
        b'{"resourceType":"Patient","id":"0",\n"active":true}\n',
        # A line holding two values beside a resource spread over two lines: the counts match.
        b'{"resourceType":"Patient","id":"0","a":\n{"x":1}}\n{"resourceType":"Patient"}{"resourceType":"Patient"}\n',
    ],
)
def test_only_one_whole_value_per_line_passes(body: bytes) -> None:
    with pytest.raises(NdjsonCheckError, match="line 1: not valid JSON"):
        run([body])


def test_clean_runs_take_the_one_call_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # The line-by-line path is the slow one; clean data, split anywhere, must never need it.
    def not_expected(self: NdjsonStream, run: bytes) -> bytes:
        raise AssertionError("a clean run fell back to the line-by-line check")

    monkeypatch.setattr(NdjsonStream, "_check_by_line", not_expected)
    body = b"".join(line(i=i) for i in range(200))
    for size in (97, 4096, len(body)):
        assert run(split_every(body, size), count=200) == (body, 200)
