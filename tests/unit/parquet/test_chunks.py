"""The byte-level helpers of the fast path: chunking, blank lines, null lines, contained resources."""

from __future__ import annotations

import io
import json
import random

import pytest

from airflow_provider_smart.parquet.chunks import (
    LineRange,
    drop_blank_lines,
    iter_chunks,
    null_lines,
    split_contained,
    split_ranges,
)


def test_chunks_end_at_line_ends_and_a_missing_final_newline_is_added() -> None:
    data = b'{"a":1}\n{"b":"' + b"x" * 100 + b'"}\n{"c":3}'
    chunks = list(iter_chunks(io.BufferedReader(io.BytesIO(data)), 10))  # type: ignore[arg-type]
    assert all(c.endswith(b"\n") for c in chunks)
    assert b"".join(chunks) == data + b"\n"
    # A block is completed to its line end: the long line joins the first chunk, the rest is the last one.
    assert chunks[1] == b'{"c":3}\n' and len(chunks) == 2


def test_blank_lines_are_dropped_with_the_index_of_each_kept_line() -> None:
    assert drop_blank_lines(b"a\nb\n") == (b"a\nb\n", None)
    assert drop_blank_lines(b" \na\n\n\t\nb\n") == (b"a\nb\n", [1, 4])


def test_null_lines_are_found_with_their_spans() -> None:
    chunk = b'{"a":1}\n{"a":null}\n{"s":"nullable"}\n{"l":[1, null]}\n'
    found = null_lines(chunk)
    assert [line for line, _, _ in found] == [1, 3]
    assert [chunk[start:end] for _, start, end in found] == [b'{"a":null}\n', b'{"l":[1, null]}\n']


def test_contained_members_are_cut_wherever_they_sit() -> None:
    lines = [
        {"resourceType": "P", "id": "1", "contained": [{"resourceType": "O", "id": "o"}, {"x": [1, {"y": "]"}]}]},
        {"resourceType": "P", "id": "2"},
        {"resourceType": "P", "meta": {"tag": ["{"]}, "contained": [{"a": 1}]},  # braces inside strings
        {"contained": [{"b": 2}], "resourceType": "P"},
        {"resourceType": "P", "id": "5", "contained": []},
    ]
    chunk = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in lines)
    split = split_contained(chunk, len(lines))
    assert split is not None
    text, contained = split
    assert [json.loads(line) for line in text.splitlines()] == [
        {k: v for k, v in r.items() if k != "contained"} for r in lines
    ]
    back = [None if c is None else [json.loads(t) for t in c] for c in contained.to_pylist()]
    assert back == [r.get("contained") for r in lines]


def test_contained_in_another_layout_is_left_to_the_exact_path() -> None:
    spaced = b'{"resourceType":"P","contained": [ {"a":1} ]}\n'
    nested = b'{"resourceType":"P","x":{"contained":[{"a":1}]},"contained":[{"a":1}]}\n'
    with_null = b'{"resourceType":"P","contained":[null]}\n'
    two_values = b'{"resourceType":"P"} {"resourceType":"P","contained":[{"a":1}]}\n'
    for chunk in (spaced, nested, with_null):
        assert split_contained(chunk, 1) is None
    assert split_contained(two_values, 1) is None
    assert split_contained(b'{"resourceType":"P","contained":[{"a":}]}\n', 1) is None  # not JSON


@pytest.mark.parametrize("seed", range(40))
def test_line_ranges_tiling_a_file_give_every_line_to_exactly_one_writer(seed: int) -> None:
    """Ranges cut anywhere (mid-line, at a newline, on blank lines) give each line once, in order."""

    rng = random.Random(seed)
    data = b"".join(b"x" * rng.randint(0, 30) + b"\n" for _ in range(rng.randint(0, 40)))
    got = b""
    for start, end in split_ranges(len(data), rng.randint(1, 7)):
        ranged = LineRange(io.BufferedReader(io.BytesIO(data)), start, end)  # type: ignore[arg-type]
        got += b"".join(bytes(c) for c in iter_chunks(ranged, rng.randint(1, 50)))  # type: ignore[arg-type]
    assert got == data


def test_split_ranges_tile_the_file() -> None:

    assert split_ranges(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert split_ranges(2, 5) == [(0, 1), (1, 2)]  # never more pieces than bytes
    assert split_ranges(0, 4) == [(0, 0)]
