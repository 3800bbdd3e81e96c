"""Run independent jobs in parallel processes, at most ``workers`` at a time, failing on the first error.

Processes start with ``spawn``: forking a process that already runs Airflow's threads (heartbeats, log
shipping) can copy a lock held mid-operation. ``spawn`` rather than ``forkserver``: the children are this
process's own, so they end with the pool (no server process outlives it) and their CPU time and memory
are counted as this task's. Each child gets a fair
share of the CPUs for pyarrow's own thread pool, so N workers do not each start one thread per CPU.
Results come back in the parent as each job ends (``on_done``), so the parent stays the only writer of
the export's state file. On the first failure the jobs not yet started are cancelled, the running ones
are awaited (each commits whole or not at all), and the error is raised; the pool is always shut down,
so no child outlives the call.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from typing import TypeVar

J = TypeVar("J")
R = TypeVar("R")


def _share_cpus(threads: int) -> None:
    """In a child: pyarrow's CPU pool sized to this worker's share of the CPUs."""
    import pyarrow as pa

    pa.set_cpu_count(max(1, threads))


def run_jobs(
    fn: Callable[[J], R],
    jobs: Sequence[J],
    *,
    workers: int,
    cpus: int,
    on_done: Callable[[J, R], None] | None = None,
) -> list[R]:
    """``fn(job)`` for every job, in ``min(workers, len(jobs))`` processes (in this process when that is
    one); results in the order of ``jobs``. ``fn`` must be a module-level function and jobs picklable."""
    results: dict[int, R] = {}
    count = min(max(1, workers), len(jobs))
    if count <= 1:
        for i, job in enumerate(jobs):
            results[i] = fn(job)
            if on_done is not None:
                on_done(job, results[i])
        return [results[i] for i in range(len(jobs))]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=count, mp_context=context, initializer=_share_cpus, initargs=(max(1, cpus // count),)
    ) as pool:
        pending: dict[Future[R], int] = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
        failure: BaseException | None = None
        while pending and failure is None:
            done, _ = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                i = pending.pop(future)
                error = future.exception()
                if error is not None:
                    failure = failure or error
                    continue
                results[i] = future.result()
                if on_done is not None:
                    on_done(jobs[i], results[i])
        if failure is not None:
            for future in pending:
                future.cancel()
            # The running ones finish (each commits whole or not at all); what they committed is recorded.
            for future, i in pending.items():
                if not future.cancelled() and future.exception() is None:
                    results[i] = future.result()
                    if on_done is not None:
                        on_done(jobs[i], results[i])
            raise failure
    return [results[i] for i in range(len(jobs))]
