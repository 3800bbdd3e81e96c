"""What a person reads in the log of a healthy export against the sandbox: INFO only, plain words.

A healthy export's status polls (202 with Retry-After) are its normal pace, not something to look at: no
WARNING. The landed summary is a table per type, Delta results name their columns, and the Parquet writer's
tuning counters stay out of INFO.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.bulk_helpers import context, export_operator, run_deferred

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferred", "polling-in-worker"])
def test_a_healthy_export_logs_no_warning_and_a_readable_summary(
    bulk_server: Callable[..., Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    deferrable: bool,
) -> None:
    bulk_server(polls_to_complete=3, max_file_resources=20, retry_after=1)
    op = export_operator(
        tmp_path / "out",
        deferrable=deferrable,
        min_poll_interval=0.5,
        formats=("ndjson", "parquet", "delta"),
    )
    with caplog.at_level(logging.INFO):
        summary, _ = run_deferred(op, context())

    # Module loggers reach caplog; the operator's and the trigger's own loggers print through Airflow's
    # structured logging (captured output), one "[level ...]" per line.
    printed = capsys.readouterr().out
    loud = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]
    loud += [line for line in printed.splitlines() if re.search(r"\[(warning|error|critical)\s*\]", line)]
    assert loud == []
    text = caplog.text + printed
    assert "export still running (202 with Retry-After); waiting" in text  # the waits are logged, at INFO
    # The landed summary: one row per type under named columns, and the same numbers in the XCom.
    assert re.search(r"type\s+resources\s+files\s+MB", text)
    patients = summary["types"]["Patient"]
    assert patients["resources"] == summary["counts"]["Patient"] and patients["files"] >= 1 and patients["bytes"] > 0
    assert re.search(rf"\nPatient\s+{patients['resources']:,}\s+{patients['files']}\s", text)
    # Delta results and Parquet tables in words, not tuples or tuning counters.
    assert re.search(
        r"table\s+rows\s+inserted\s+updated\s+deleted\s+unchanged\s+no id\s+version\s+buckets\s+files rewritten", text
    )
    assert not re.search(r"\(\d+, \d+, \d+\)", text)
    assert "chunk(s) fast" not in text
    assert "as Parquet tables under" in text and re.search(r"type\s+rows\n", text)
    assert "Parquet table Patient" not in text  # one table per run, not a line per type per layer


def test_throttling_still_warns(
    bulk_server: Callable[..., Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What needs attention keeps its WARNING: a status poll answered 429."""
    server, _ = bulk_server(polls_to_complete=2, retry_after=1)
    server.state.faults.throttle("*$bulk-status/*", times=1, retry_after=1)
    with caplog.at_level(logging.INFO):
        run_deferred(export_operator(tmp_path / "out", deferrable=False), context())
    assert any(r.levelno == logging.WARNING and "HTTP 429" in r.getMessage() for r in caplog.records)
