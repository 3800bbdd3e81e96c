"""Run a piece of work in many fresh processes and collect how each one exited.

An abort at interpreter shutdown (a native thread outliving the interpreter) happens after the work
succeeded and only some of the time, so one run proves nothing: these helpers run the same work in many
processes and return every exit status.

:func:`exit_codes` starts each process from scratch (``python -c``). :func:`forked_exit_codes` imports
the heavy modules once (Airflow alone takes seconds of CPU) in a launcher that has started no thread,
then forks one child per run: each child starts its thread pools from nothing, does the work, and ends
through the interpreter's normal shutdown (``SystemExit`` at top level, not ``os._exit``), the moment
the abort happens in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: A clean exit, or SIGABRT (-6 from a signal, 134 when a shell reports it): the outcomes being counted.
_ABORT_OR_CLEAN = {0, -6, 134}

_LAUNCHER = """
import json, os, sys
{preload}
tasks = os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["1"]
if len(tasks) != 1:
    sys.exit("the launcher started threads before forking: " + str(len(tasks)))
codes = []
for run in range({runs}):
    pid = os.fork()
    if pid == 0:
        os.environ["RUN_INDEX"] = str(run)
        exec(compile({work!r}, "<work>", "exec"))
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    codes.append(os.waitstatus_to_exitcode(status))
print("EXIT-CODES " + json.dumps(codes))
"""


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def exit_codes(work: str, runs: int, *, timeout: float) -> Counter[int]:
    """Exit status -> how many of ``runs`` fresh ``python -c work`` processes ended with it."""
    codes: Counter[int] = Counter()
    for run in range(runs):
        env = {**_environment(), "RUN_INDEX": str(run)}
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(work)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode not in _ABORT_OR_CLEAN:
            raise AssertionError(f"the work itself failed (exit {result.returncode}): {result.stderr[-3000:]}")
        codes[result.returncode] += 1
    return codes


def forked_exit_codes(preload: str, work: str, runs: int, *, timeout: float) -> Counter[int]:
    """Exit status -> count, for ``runs`` children forked from a launcher that ran only ``preload``."""
    script = _LAUNCHER.format(preload=textwrap.dedent(preload), runs=runs, work=textwrap.dedent(work))
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("EXIT-CODES ")]
    if result.returncode != 0 or not lines:
        raise AssertionError(f"the launcher failed (exit {result.returncode}): {result.stderr[-3000:]}")
    codes = Counter(int(code) for code in json.loads(lines[-1].removeprefix("EXIT-CODES ")))
    if set(codes) - _ABORT_OR_CLEAN:
        raise AssertionError(f"the work itself failed in some runs ({dict(codes)}): {result.stderr[-3000:]}")
    return codes
