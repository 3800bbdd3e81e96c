"""Paths that had only fake-HTTP tests, now over loopback against the sandbox through the operator:
the trigger's re-auth after a token revoked mid-poll, its ``X-Progress`` logging (made safe), and file
bodies that are gzip without ``Content-Encoding`` (one member, concatenated members, a truncated stream)."""

from __future__ import annotations

import fnmatch
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from airflow_provider_smart.fhir.download import DownloadError
from airflow_provider_smart.sandbox.bulk_runtime import STATUS_PATHS
from airflow_provider_smart.sandbox.server import SandboxServer
from airflow_provider_smart.storage.atomic import TMP_PREFIX
from tests.integration.bulk_helpers import context, landed, run_deferred, store_view
from tests.integration.test_bulk_export_operator import export_op
from tests.sandbox_fixtures import SmartClient

pytestmark = pytest.mark.integration
TYPES = ["Patient", "Observation"]


@pytest.fixture
def bulk_server(
    bulk_server: Callable[..., tuple[SandboxServer, SmartClient]],
) -> Callable[..., tuple[SandboxServer, SmartClient]]:
    """The shared fixture (tests/sandbox_fixtures.py) on a small data set."""
    return functools.partial(bulk_server, patients=4, seed=5)


def _issued_ms(server: SandboxServer, pattern: str) -> list[int]:
    """When each token sent to a path matching ``pattern`` was issued (ms), in request order."""
    return [
        int(jwt.decode(value.split()[1], options={"verify_signature": False})["iat_ms"])
        for path, values in server.state.faults.authorization.items()
        if fnmatch.fnmatchcase(path, pattern)
        for value in values
        if value
    ]


def test_trigger_gets_a_new_token_when_its_token_is_revoked_mid_poll(
    bulk_server: Callable[..., Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = bulk_server(polls_to_complete=3)
    rule = server.state.faults.revoke_tokens(STATUS_PATHS, after=1)  # the trigger's second poll
    _, triggers = run_deferred(export_op(tmp_path, types=TYPES), context())
    assert len(triggers) == 1
    assert server.state.faults.fired[rule.id] == 1
    assert landed(tmp_path / "out", "manual__run1") == store_view(server, TYPES)
    revoked_ms = server.state.faults.tokens_not_before * 1000
    issued = _issued_ms(server, STATUS_PATHS)
    # Polls before and at the revocation used the old token; the trigger then polled with a new one.
    assert issued[0] < revoked_ms <= issued[-1], (issued, revoked_ms)
    assert "answered 401; fetching a new access token" in capsys.readouterr().out


def test_trigger_logs_x_progress_cleaned_and_capped(
    bulk_server: Callable[..., Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, _ = bulk_server(polls_to_complete=2)
    # C1 control characters (CSI, 8-bit) pass an HTTP server's header checks; a terminal would obey them.
    server.state.faults.bulk.progress_text = "half done \x9b31mRED\x9b0m \x85" + "x" * 5000
    caplog.set_level(logging.INFO)
    run_deferred(export_op(tmp_path, types=TYPES), context())
    lines = [r.getMessage() for r in caplog.records] + capsys.readouterr().out.splitlines()
    progress = [line for line in lines if "export in progress" in line]
    assert len(progress) == 1, progress  # logged once, although every poll sent it
    line = progress[0]
    assert "half done" in line and "RED" in line
    assert not any(char in line for char in "\x9b\x85\x1b")
    assert line.count("x") < 400  # capped, not 5,000 characters


@pytest.mark.parametrize("mode", ["body", "members"])
def test_gzip_files_without_content_encoding_land_whole(
    bulk_server: Callable[..., Any], tmp_path: Path, mode: str
) -> None:
    server, _ = bulk_server(max_file_resources=15)
    server.state.faults.bulk.file_gzip = mode
    summary, _ = run_deferred(export_op(tmp_path, types=TYPES, deferrable=False), context())
    assert landed(tmp_path / "out", "manual__run1") == store_view(server, TYPES)
    assert summary["counts"] == {t: len(v) for t, v in store_view(server, TYPES).items()}


def test_truncated_gzip_file_fails_clearly_and_leaves_nothing_readable(
    bulk_server: Callable[..., Any], tmp_path: Path
) -> None:
    server, _ = bulk_server(max_file_resources=15)
    server.state.faults.bulk.file_gzip = "truncated"
    with pytest.raises(DownloadError, match="compressed body ended before") as info:
        run_deferred(export_op(tmp_path, types=TYPES, deferrable=False, max_download_attempts=2), context())
    assert "attempts" in str(info.value)
    out = tmp_path / "out"
    assert landed(out, "manual__run1") == {}  # nothing where readers look
    assert not [p for p in out.rglob("*.ndjson") if "_exports" not in p.parts]
    assert not list(out.rglob(f"{TMP_PREFIX}*"))  # no half-written file left behind
    # Once the server is mended, a retry lands everything exactly once.
    server.state.faults.bulk.file_gzip = None
    run_deferred(export_op(tmp_path, types=TYPES, deferrable=False), context())
    assert landed(out, "manual__run1") == store_view(server, TYPES)
