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
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
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
    module-level function and the jobs picklable.

    This process's share runs in a thread of its own, so the calling thread stays free to hand a child
    its next job the moment it finishes one (with the job run in the calling thread, a child that
    finished early waited idle until this process's job was done) and to run ``on_done``."""
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
    mine: set[Future[R]] = set()  # the job this process runs, in its thread
    failure: BaseException | None = None
    context = multiprocessing.get_context("spawn")
    share = max(1, cpus // count)
    with (
        _own_cpu_share(share),
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="finish") as local,
        ProcessPoolExecutor(
            max_workers=count - 1, mp_context=context, initializer=_share_cpus, initargs=(share,)
        ) as pool,
    ):

        def fill() -> None:
            if todo and not mine:  # this process takes the next job first: it has no start-up to pay
                future = local.submit(fn, jobs[todo[0]])
                running[future] = todo.popleft()
                mine.add(future)
            with _children_skip_main():  # the first submit starts the children
                while todo and len(running) - len(mine) < count - 1:
                    i = todo.popleft()
                    running[pool.submit(fn, jobs[i])] = i

        fill()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                i = running.pop(future)
                mine.discard(future)
                error = future.exception()
                if error is not None:
                    failure = failure or error
                elif failure is None:
                    try:
                        finished(i, future.result())
                    except BaseException as exc:  # on_done failed (e.g. a combine): stop as for a job
                        failure = exc
                else:
                    finished_after_failure(i, future, finished)
            if failure is None:
                fill()
            else:
                for future in list(running):
                    if future.cancel():
                        running.pop(future)
    if failure is not None:
        raise failure
    return [results[i] for i in range(len(jobs))]


def finished_after_failure(i: int, future: Future[R], finished: Callable[[int, R], None]) -> None:
    """A job that ended after another failed: it committed whole, so it is still recorded."""
    with contextlib.suppress(BaseException):
        finished(i, future.result())


@contextlib.contextmanager
def _own_cpu_share(threads: int) -> Iterator[None]:
    """This process's pyarrow thread pool sized to its share while the children run (put back after)."""
    import pyarrow as pa

    before = pa.cpu_count()
    pa.set_cpu_count(max(1, threads))
    try:
        yield
    finally:
        pa.set_cpu_count(before)
