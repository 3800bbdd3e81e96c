"""Retry-After in every form, over loopback against the sandbox: honoured, capped, logged once.

The sandbox answers 429 with ``Retry-After`` as delta-seconds, an HTTP-date, epoch seconds, epoch
milliseconds or an absurd value, and can block the client for a few seconds with an absolute instant
(epoch milliseconds first, epoch seconds later, as a real server did). The sandbox's request history
shows when the client came back; the client's log shows the wait it planned.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import logging
import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smart.fhir.bulk import parse_manifest
from airflow_provider_smart.fhir.http import FhirHttpClient
from airflow_provider_smart.hooks.smart import SmartFhirHook
from airflow_provider_smart.sandbox.bulk_runtime import FHIR_FILE_PATHS, STATUS_PATHS
from airflow_provider_smart.sandbox.faults import FaultRule
from airflow_provider_smart.sandbox.server import SandboxServer
from airflow_provider_smart.storage.export_landing import DownloadSettings, land_files
from airflow_provider_smart.storage.export_state import ExportLayout
from airflow_provider_smart.storage.paths import resolve_output
from tests.integration.bulk_helpers import context, kickoffs, landed, run_deferred, store_view
from tests.integration.test_bulk_export_operator import export_op
from tests.sandbox_fixtures import SmartClient

pytestmark = pytest.mark.integration
TYPES = ["Patient", "Condition"]
_WAKE = re.compile(r"waiting (\d+\.\d)s until (\d\d):(\d\d):(\d\d) UTC")


@pytest.fixture
def bulk_server(
    bulk_server: Callable[..., tuple[SandboxServer, SmartClient]],
) -> Callable[..., tuple[SandboxServer, SmartClient]]:
    """The shared fixture (tests/sandbox_fixtures.py) on a small data set."""
    return functools.partial(bulk_server, patients=4, seed=7)


def _gaps_after_faults(server: SandboxServer, pattern: str, status: int = 429) -> list[tuple[float, float]]:
    """(when, when the next request came) for each faulted answer on ``pattern`` (sandbox clock)."""
    history = [entry for entry in server.state.faults.history if fnmatch.fnmatchcase(entry[2], pattern)]
    return [(entry[0], later[0]) for entry, later in itertools.pairwise(history) if entry[3] == status]


def _asked_instant(spec: dict[str, Any], answered: float) -> float:
    """The earliest instant the answer sent at ``answered`` told the client to come back at."""
    asked = float(spec["retry_after"])
    if spec["form"] in ("http-date", "epoch-seconds"):
        return math.ceil(answered + asked)  # whole seconds, rounded up by the sandbox
    if spec["form"] == "epoch-milliseconds":
        return math.ceil((answered + asked) * 1000) / 1000
    return answered + asked  # delta-seconds count from when the client read the answer: later still


def _log_lines(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Every log line of the run: stdlib records, and the structured task/trigger log printed to stdout."""
    return [record.getMessage() for record in caplog.records] + capsys.readouterr().out.splitlines()


def _waits(lines: list[str], what: str) -> list[tuple[float, str]]:
    """(planned seconds, whole line) of every logged wait whose line mentions ``what``."""
    found = []
    for line in lines:
        match = _WAKE.search(line)
        if match and what in line:
            found.append((float(match.group(1)), line))
    return found


def test_block_with_an_absolute_retry_after_mid_export_is_waited_out(
    bulk_server: Callable[..., Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 9: the server blocks the client for a few seconds mid-export with an absolute Retry-After
    (epoch milliseconds first, then epoch seconds). The deferrable export waits until the block ends,
    comes back once, and lands every resource exactly once."""
    server, _ = bulk_server(polls_to_complete=3)
    block_seconds, poll = 3.0, 1.0  # the sandbox's 202s ask for Retry-After: 1
    # The first status poll passes; the next request on the export's routes (status, manifest, files)
    # starts the block.
    rule = server.state.faults.block("/fhir/$bulk-*", seconds=block_seconds, after=1)
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    summary, triggers = run_deferred(export_op(tmp_path, types=TYPES, max_poll_interval=30.0), context())
    elapsed = time.monotonic() - started
    assert len(triggers) == 1  # the wait happened in the trigger
    assert landed(tmp_path / "out", "manual__run1") == store_view(server, TYPES)
    assert summary["counts"] == {t: len(v) for t, v in store_view(server, TYPES).items()}
    assert kickoffs(server) == 1

    assert rule.until is not None, "the block never started"
    blocked = [entry for entry in server.state.faults.history if entry[3] == 429]
    # The first 429 said "until <epoch ms>": the client came back at the end, not every poll interval
    # (a second answer at most, when it woke within the block's last rounding of a second).
    assert 1 <= len(blocked) <= 2, blocked
    during = [entry for entry in server.state.faults.history if blocked[0][0] <= entry[0] < rule.until]
    assert len(during) == len(blocked)
    after = [entry for entry in server.state.faults.history if entry[0] >= rule.until]
    assert after and after[0][3] is None  # the first request after the block was served
    assert after[0][0] - rule.until < poll + 0.5  # it came at the block's end, not an hour later

    lines = _log_lines(caplog, capsys)
    # Logged once per answer (the raw duplicates of stdlib and stdout are one wait).
    planned = sorted({(seconds, m[m.index("status ") :]) for seconds, m in _waits(lines, "status") if "HTTP 429" in m})
    assert 1 <= len(planned) <= len(blocked), lines
    seconds, message = planned[0]
    assert block_seconds - 1.0 <= seconds <= block_seconds + 0.5, message
    wake = _WAKE.search(message)
    assert wake is not None
    end = datetime.fromtimestamp(rule.until, UTC)
    assert (int(wake.group(2)), int(wake.group(3)), int(wake.group(4))) >= (end.hour, end.minute, end.second - 1)
    # Block, plus two poll intervals, plus a generous margin for a busy machine: never an hour.
    assert elapsed < block_seconds + 2 * poll + 30


#: (form or exact text, what the client must plan: ("honour", seconds) or ("cap", None) or ("fallback", None))
FORMS: list[tuple[str, dict[str, Any], str]] = [
    ("delta-seconds", {"form": "delta-seconds", "retry_after": 1.2}, "honour"),
    ("http-date", {"form": "http-date", "retry_after": 1}, "honour"),
    ("epoch-seconds", {"form": "epoch-seconds", "retry_after": 1}, "honour"),
    ("epoch-milliseconds", {"form": "epoch-milliseconds", "retry_after": 1.2}, "honour"),
    ("year-9999-date", {"text": "Fri, 31 Dec 9999 23:59:59 GMT"}, "cap"),
    ("long-delta", {"text": "86400"}, "cap"),
    ("year-9999-epoch-ms", {"text": "253402300799000"}, "fallback"),
    ("negative", {"text": "-5"}, "fallback"),
    ("garbage", {"text": "soon, maybe"}, "fallback"),
]
#: Above every honoured wait (whole-second instants are rounded up: at most 2 s), far below the absurd ones.
CAP = 2.5


def _check_gap(kind: str, spec: dict[str, Any], gaps: list[tuple[float, float]], planned: float) -> None:
    assert gaps, "the fault never answered"
    answered, came_back = gaps[0]
    if kind == "honour":
        # Never back before the instant asked for (a few ms of rounding between the sandbox's two clock
        # reads); the planned wait is what was asked (less the answer's time in flight), not the cap.
        assert came_back >= _asked_instant(spec, answered) - 0.02, (gaps, spec)
        assert float(spec["retry_after"]) - 0.5 <= planned < CAP, planned
    elif kind == "cap":
        assert came_back - answered >= CAP - 0.05, gaps
        assert CAP - 0.01 <= planned <= CAP + 0.4, planned  # the cap, plus at most its jitter (0.375 s)
    else:
        assert planned < CAP, planned  # the client's own backoff, not a wait read from nonsense


@pytest.mark.parametrize(("name", "spec", "kind"), FORMS, ids=[f[0] for f in FORMS])
@pytest.mark.parametrize("deferrable", [True, False], ids=["trigger", "worker"])
def test_status_poll_retry_after_forms_are_honoured_and_capped(
    bulk_server: Callable[..., Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    name: str,
    spec: dict[str, Any],
    kind: str,
    deferrable: bool,
) -> None:
    server, _ = bulk_server(polls_to_complete=2)
    server.state.faults.throttle(STATUS_PATHS, times=1, **spec)
    caplog.set_level(logging.INFO)
    # The cap is max_poll_interval; export_timeout turns a missing cap into a failure, not a stuck test.
    op = export_op(tmp_path, types=["Patient"], max_poll_interval=CAP, export_timeout=40, deferrable=deferrable)
    run_deferred(op, context())
    assert landed(tmp_path / "out", "manual__run1") == store_view(server, ["Patient"])
    lines = _log_lines(caplog, capsys)
    waits = [(s, m) for s, m in _waits(lines, "status") if "HTTP 429" in m]
    assert len(waits) == 1, lines  # logged once
    _check_gap(kind, spec, _gaps_after_faults(server, STATUS_PATHS), waits[0][0])


def _manifest(client: SmartClient) -> dict[str, Any]:
    session = client.session()
    kick = session.get(
        f"{client.server.fhir_base}/Patient/$export",
        headers={"Accept": "application/fhir+json", "Prefer": "respond-async"},
        params={"_type": "Patient"},
        timeout=30,
    )
    assert kick.status_code == 202, kick.text
    status_url = kick.headers["Content-Location"]
    deadline = time.monotonic() + 30
    while True:
        answer = session.get(status_url, timeout=30)
        if answer.status_code == 200:
            return dict(answer.json())
        assert answer.status_code == 202 and time.monotonic() < deadline, answer.text
        time.sleep(0.2)


@pytest.mark.parametrize(("name", "spec", "kind"), FORMS, ids=[f[0] for f in FORMS])
def test_file_download_retry_after_forms_are_honoured_and_capped(
    bulk_server: Callable[..., Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    name: str,
    spec: dict[str, Any],
    kind: str,
) -> None:
    server, client = bulk_server(polls_to_complete=0, seconds_to_complete=0)
    manifest = parse_manifest(_manifest(client))
    hook = SmartFhirHook(smart_fhir_conn_id=client.conn_id)
    # The cap of one wait is the client's max_retry_after (a connection setting).
    http = FhirHttpClient(hook.get_auth_client(), server.fhir_base, max_retry_after=CAP, max_retries=3)
    rule: FaultRule = server.state.faults.throttle(FHIR_FILE_PATHS, times=1, **spec)
    caplog.set_level(logging.INFO)
    layout = ExportLayout(resolve_output(str(tmp_path / "out")), "run1")
    land_files(http, layout, manifest, settings=DownloadSettings(max_workers=1, max_attempts=2))
    assert server.state.faults.fired[rule.id] == 1
    lines = sum(len(p.read_text().splitlines()) for p in (tmp_path / "out").rglob("*.ndjson"))
    assert lines == len(store_view(server, ["Patient"])["Patient"])
    lines = _log_lines(caplog, capsys)
    waits = [(s, m) for s, m in _waits(lines, "$bulk-file") if "HTTP 429" in m]
    assert len(waits) == 1, lines  # one wait, logged once
    _check_gap(kind, spec, _gaps_after_faults(server, FHIR_FILE_PATHS), waits[0][0])


def test_a_block_that_covers_discovery_is_waited_out(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    """A server blocking the whole client also throttles SMART discovery: the hook waits the block out
    under the same policy instead of failing with "could not find the token endpoint"."""
    server, _ = bulk_server(polls_to_complete=1)
    rule = server.state.faults.block("*/.well-known/smart-configuration", seconds=1.5)
    summary, _ = run_deferred(export_op(tmp_path, types=TYPES), context())
    assert summary["counts"] == {t: len(v) for t, v in store_view(server, TYPES).items()}
    discovery = [e for e in server.state.faults.history if e[2].endswith("/.well-known/smart-configuration")]
    assert rule.until is not None and [e[3] for e in discovery][:1] == [429], discovery
    served = [e for e in discovery if e[3] is None]
    assert served and served[0][0] >= rule.until  # came back after the block, and was served
