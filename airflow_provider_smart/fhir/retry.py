"""Retry-After parsing and backoff: shared by the sync client, the async trigger and the sandbox."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

#: Statuses worth trying again: throttling and the server's own transient failures.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})

#: Some servers ask for hours. A cap must exist; deferral makes long waits cheap, so it is generous.
DEFAULT_MAX_RETRY_AFTER = 3600.0


def parse_retry_after(
    value: str | None,
    *,
    now: datetime | None = None,
    maximum: float = DEFAULT_MAX_RETRY_AFTER,
    minimum: float = 0.0,
) -> float | None:
    """Return the wait a ``Retry-After`` header asks for, in seconds, clamped to ``[minimum, maximum]``.

    Accepts delta-seconds (``"120"``, and the non-standard ``"1.5"``) and HTTP-dates
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``). Returns ``None`` for a missing or unreadable value, so the
    caller falls back to its own backoff. A date in the past means "now" (``minimum``).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    seconds: float | None
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN or infinite
            return None
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = now or datetime.now(UTC)
        seconds = (when - current).total_seconds()
    return max(minimum, min(maximum, seconds))


def format_http_date(when: datetime) -> str:
    """Format an aware datetime as an RFC 9110 HTTP-date (what ``Retry-After`` and ``Expires`` use)."""
    return format_datetime(when.astimezone(UTC), usegmt=True)


def backoff_delays(
    attempts: int, *, base: float = 0.5, factor: float = 2.0, maximum: float = 60.0, jitter: float = 0.25
) -> Iterator[float]:
    """Yield ``attempts`` exponential delays with proportional jitter, each at most ``maximum`` seconds."""
    delay = base
    for _ in range(attempts):
        spread = delay * jitter
        yield max(0.0, min(maximum, delay + random.uniform(-spread, spread)))
        delay = min(maximum, delay * factor)


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES
