from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from airflow_provider_smart.fhir.retry import (
    backoff_delays,
    format_http_date,
    is_retryable_status,
    parse_retry_after,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), (" 7 ", 7.0), ("1.5", 1.5), ("0", 0.0), ("-5", 0.0), ("999999", 3600.0)],
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


@pytest.mark.parametrize("value", [None, "", "soon", "nan", "inf", "Mon, 99 Foo 2020"])
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
