from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from airflow_provider_smart.transport.retry import (
    backoff_delays,
    format_http_date,
    is_retryable_status,
    parse_retry_after,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), (" 7 ", 7.0), ("1.5", 1.5), ("0", 0.0), ("999999", 300.0)],
)
def test_delta_seconds_are_clamped(value: str, expected: float) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_http_date_in_the_future() -> None:
    header = format_http_date(NOW + timedelta(seconds=90))
    assert header.endswith("GMT")
    assert parse_retry_after(header, now=NOW) == 90.0


def test_http_date_in_the_past_means_now() -> None:
    assert parse_retry_after(format_http_date(NOW - timedelta(hours=1)), now=NOW) == 0.0


def test_http_date_hours_ahead_is_capped() -> None:
    header = format_http_date(NOW + timedelta(hours=10))
    assert parse_retry_after(header, now=NOW, maximum=600) == 600


@pytest.mark.parametrize("value", [None, "", "soon", "nan", "inf", "-5", "Mon, 99 Foo 2020", "1e30", "5e10"])
def test_nonsense_gives_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


def test_minimum_applies() -> None:
    assert parse_retry_after("0", now=NOW, minimum=1) == 1


def test_backoff_grows_and_is_capped() -> None:
    delays = list(backoff_delays(8, base=1, factor=2, maximum=10, jitter=0))
    assert delays == [1, 2, 4, 8, 10, 10, 10, 10]
    jittered = list(backoff_delays(50, base=4, factor=1, jitter=0.25))
    assert all(3 <= d <= 5 for d in jittered)
    assert len(set(jittered)) > 1


def test_retryable_statuses() -> None:
    assert is_retryable_status(429) and is_retryable_status(503)
    assert not is_retryable_status(400) and not is_retryable_status(401) and not is_retryable_status(404)


# --- the wait policy: every Retry-After form means "wait until that instant" ---------------------------
from airflow_provider_smart.transport.retry import (  # noqa: E402
    RetryBudget,
    WaitPolicy,
    is_retryable,
    read_retry_after,
)


@pytest.mark.parametrize(
    ("value", "form"),
    [
        ("45", "delta-seconds"),
        (format_http_date(NOW + timedelta(seconds=45)), "HTTP-date"),
        (str(int(NOW.timestamp()) + 45), "epoch seconds"),
        (str(int(NOW.timestamp() * 1000) + 45_000), "epoch milliseconds"),
        (f"{NOW.timestamp() + 45:.3f}", "epoch seconds"),
    ],
)
def test_every_form_means_the_same_instant(value: str, form: str) -> None:
    parsed = read_retry_after(value, now=NOW)
    assert parsed is not None and parsed.form == form
    assert parsed.seconds == pytest.approx(45.0, abs=0.01)
    assert parsed.until == NOW + timedelta(seconds=45) or abs((parsed.until - NOW).total_seconds() - 45) < 0.01


def test_epoch_in_the_past_means_now_and_is_not_an_hour() -> None:
    # The failure that cost an hour: an epoch time read as a delay of 1.7e9 s, clamped to 3600.
    assert parse_retry_after(str(int(NOW.timestamp()) - 10), now=NOW) == 0.0
    assert parse_retry_after(str(int(NOW.timestamp() * 1000) + 5000), now=NOW) == pytest.approx(5.0)


@pytest.mark.parametrize("value", ["99999999999999999999", "1e11", "-1", "12abc", "3" * 80])
def test_absurd_values_fall_back_to_backoff(value: str) -> None:
    assert read_retry_after(value, now=NOW) is None
    budget = WaitPolicy(backoff_base=1.0, backoff_max=1.0).budget("x", sleep=lambda _s: None)
    assert budget.plan("503", retry_after=value) == pytest.approx(1.0, abs=0.25)


def test_server_wait_is_capped_and_jittered_a_little() -> None:
    policy = WaitPolicy(max_retry_after=30)
    seconds, note = policy.server_wait("86400") or (0.0, "")
    assert 30 <= seconds <= 32 and "capped" in note
    waits = {policy.server_wait("10")[0] for _ in range(20)}  # type: ignore[index]
    assert all(10 <= w <= 10.75 for w in waits) and len(waits) > 1


def test_only_throttling_gateway_errors_and_transient_outcomes_are_retried() -> None:
    transient = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "transient"}]}
    other = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]}
    assert [s for s in range(400, 600) if is_retryable(s)] == [429, 502, 503, 504]
    assert is_retryable(500, transient) and is_retryable(400, transient)
    assert not is_retryable(500, other) and not is_retryable(500)


def test_one_budget_bounds_attempts_and_total_wait_across_loops() -> None:
    sleeps: list[float] = []
    policy = WaitPolicy(max_attempts=4, max_total_wait=1000, backoff_base=1, backoff_max=1)
    budget = RetryBudget(policy, "f", sleeps.append)
    # An inner loop (the HTTP client) and an outer loop (the downloader) draw from the same budget.
    assert budget.wait("inner 503") and budget.wait("inner 429", retry_after="2")
    assert budget.wait("outer: body cut short")
    assert not budget.wait("inner again")  # 4 tries made: the budget is spent for every loop
    assert budget.attempts == 4 and len(sleeps) == 3
    assert "max_attempts=4" in budget.give_up_text()


def test_total_wait_budget_refuses_a_wait_that_does_not_fit() -> None:
    budget = WaitPolicy(max_attempts=10, max_total_wait=60, max_retry_after=300).budget("f", sleep=lambda _s: None)
    assert budget.wait("429", retry_after="50")
    assert not budget.wait("429", retry_after="50")
    assert "max_total_wait=60" in budget.give_up_text()


def test_each_wait_is_logged_once_with_reason_and_wake_up_time(caplog: pytest.LogCaptureFixture) -> None:
    budget = WaitPolicy().budget("GET http://h/x", sleep=lambda _s: None, clock=lambda: NOW.timestamp())
    with caplog.at_level("WARNING", logger="airflow_provider_smart.transport.retry"):
        budget.wait("answered 429: \x1b[31mslow down Bearer abc.def.ghi", retry_after=str(int(NOW.timestamp()) + 60))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "until 03:05:0" in lines[0] and "epoch seconds" in lines[0]
    assert "\x1b" not in lines[0] and "abc.def.ghi" not in lines[0]
