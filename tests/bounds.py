"""Bounds for tests of bounds: a regression in a size cap must fail its test quickly, not exhaust the machine.

* :func:`memory_limit` lowers this process's address-space limit (``RLIMIT_AS``) for a block: an allocation
  past it raises ``MemoryError`` at once, reported as a lost bound, instead of growing until the kernel kills
  the test run (an unbounded read of an endless body once took a test process to ~18 GB).
* :data:`SERVER_BYTE_BUDGET` is what a hostile loopback server may send in one test: past it the server
  hangs up (see :class:`tests.loopback.ByteBudgetSpent`), so an endless answer is never truly endless.

The limit is a soft one restored afterwards, so one test's bound never outlives it. It counts virtual memory,
so it is set as a margin above what the process has mapped when the block starts.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

MiB = 1 << 20
#: How many bytes a hostile test server sends at most (a budget far above every cap it tests).
SERVER_BYTE_BUDGET = 128 * MiB
#: The default margin of address space the code under test may add while a bound is tested.
MEMORY_MARGIN = 768 * MiB


def mapped_bytes() -> int:
    """This process's virtual memory size now (``VmSize`` in /proc/self/status)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


@contextmanager
def memory_limit(margin: int = MEMORY_MARGIN) -> Iterator[None]:
    """Fail the test with a clear message when the block maps more than ``margin`` bytes beyond what the
    process holds now; the previous limit is restored on exit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    start = mapped_bytes()
    limit = start + margin
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    except MemoryError:
        pytest.fail(
            f"the code under test needed more than {margin // MiB} MiB of memory beyond the {start // MiB} MiB "
            "mapped before it ran: a bound on what it reads or holds is lost",
            pytrace=False,
        )
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
