"""Run independent jobs in this process and up to ``workers - 1`` child processes, failing on the first
error.

This process takes jobs too, the largest first. Children start with ``spawn``: forking a process that
already runs Airflow's threads (heartbeats, log shipping) can copy a lock held mid-operation. ``spawn``
rather than ``forkserver``: the children are this process's own, so they end with the pool (no server
process outlives it) and their CPU time and memory count as the task's. Each child gets a fair share of
the CPUs for pyarrow's own thread pool, so N processes do not each start one thread per CPU.

A spawned child pays for what it imports before its first job, so it imports as little as it can: the
jobs take places the parent resolved (``export/places.py``, no Airflow import), and the child does not
re-run this process's ``__main__`` (in a task that is the ``airflow`` command, which imports all of
Airflow: 4-5 CPU-seconds): see :func:`_children_skip_main`.

Results come back here as each job ends (``on_done``), so this process stays the only writer of the
export's state file. On the first failure the jobs not yet started are cancelled, the running ones are
awaited (each commits whole or not at all) and reported, and the error is raised; the pool is always
shut down, so no child outlives the call.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, TypeVar

J = TypeVar("J")
R = TypeVar("R")


def _share_cpus(threads: int) -> None:
    """In a child: pyarrow's CPU pool sized to this worker's share of the CPUs."""
    import pyarrow as pa

    pa.set_cpu_count(max(1, threads))


@contextlib.contextmanager
def _children_skip_main() -> Iterator[None]:
    """While children start: a ``spawn`` child re-runs the parent's ``__main__`` script (named by its
    ``__file__``, or its ``__spec__`` for ``python -m``) before its first job. The jobs are module-level
    functions and never need it, so the child is told there is none; the parent's module is put back
    as it was right after."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved: dict[str, Any] = {name: main.__dict__[name] for name in ("__file__", "__spec__") if name in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def run_jobs(
    fn: Callable[[J], R],
    jobs: Sequence[J],
    *,
    workers: int,
    cpus: int,
    on_done: Callable[[J, R], None] | None = None,
) -> list[R]:
    """``fn(job)`` for every job, in this process and ``min(workers, len(jobs)) - 1`` children, taking the
    jobs in order (put the largest first); results in the order of ``jobs``. ``fn`` must be a
    module-level function and the jobs picklable."""
    results: dict[int, R] = {}

    def finished(i: int, result: R) -> None:
        results[i] = result
        if on_done is not None:
            on_done(jobs[i], result)

    count = min(max(1, workers), len(jobs))
    if count <= 1:
        for i, job in enumerate(jobs):
            finished(i, fn(job))
        return [results[i] for i in range(len(jobs))]
    todo = deque(range(len(jobs)))
    running: dict[Future[R], int] = {}
    failure: BaseException | None = None
    context = multiprocessing.get_context("spawn")
    share = max(1, cpus // count)
    with ProcessPoolExecutor(
        max_workers=count - 1, mp_context=context, initializer=_share_cpus, initargs=(share,)
    ) as pool:

        def fill() -> None:
            with _children_skip_main():  # the first submit starts the children
                while todo and len(running) < count - 1:
                    i = todo.popleft()
                    running[pool.submit(fn, jobs[i])] = i

        def collect(timeout: float | None) -> None:
            nonlocal failure
            done, _ = wait(running, timeout=timeout, return_when=FIRST_COMPLETED)
            for future in done:
                i = running.pop(future)
                error = future.exception()
                if error is not None:
                    failure = failure or error
                else:
                    finished(i, future.result())

        while failure is None and (todo or running):
            if todo:
                mine = todo.popleft()  # this process takes the next job; the children the ones after it
                fill()
                try:
                    result = fn(jobs[mine])
                except BaseException as exc:
                    failure = exc
                    break
                finished(mine, result)
                collect(0)
            else:
                collect(None)
            if failure is None:
                fill()
        if failure is not None:
            for future in running:
                future.cancel()
            # The running ones finish (each commits whole or not at all); what they committed is recorded.
            for future, i in running.items():
                if not future.cancelled() and future.exception() is None:
                    finished(i, future.result())
            raise failure
    return [results[i] for i in range(len(jobs))]
