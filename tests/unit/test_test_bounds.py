"""The bounds that tests of bounds run under (tests/bounds.py) trip as they say, and undo themselves."""

from __future__ import annotations

import resource

import pytest

from tests.bounds import MiB, memory_limit


def test_an_allocation_past_the_memory_limit_fails_the_test_with_a_clear_message() -> None:
    before = resource.getrlimit(resource.RLIMIT_AS)
    with (
        pytest.raises(pytest.fail.Exception, match=r"more than 64 MiB of memory beyond .* a bound .* is lost"),
        memory_limit(64 * MiB),
    ):
        bytearray(256 * MiB)
    assert resource.getrlimit(resource.RLIMIT_AS) == before
    assert len(bytearray(256 * MiB)) == 256 * MiB  # the limit is gone after the block


def test_work_within_the_limit_passes() -> None:
    with memory_limit(64 * MiB):
        assert len(bytearray(8 * MiB)) == 8 * MiB
