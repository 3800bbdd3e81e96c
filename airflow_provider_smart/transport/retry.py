"""The one wait policy: Retry-After, backoff, which answers are retried, and a retry budget.

Every request path (kick-off, status, manifest pages, files, search pages, the token endpoint) asks
this module three things:

- **Is it worth trying again?** Only 429, 502, 503, 504, an OperationOutcome whose error issues are all
  ``transient``, and a connection that failed. Anything else fails at once with the server's text.
- **How long to wait?** ``Retry-After`` when the server sends one: delta-seconds, an HTTP-date, or an
  absolute epoch time in seconds or milliseconds (told apart by magnitude; some gateways send those),
  each meaning "wait until that instant", plus a little jitter so clients do not return in lockstep.
  Waits are capped by ``max_retry_after`` (default 5 minutes). Unreadable values fall back to
  exponential backoff.
- **Is there budget left?** A :class:`RetryBudget` counts the tries and the total wait of one request
  or one file. Every loop that retries that request (the HTTP client's, the downloader's, the search's)
  draws from the same object, so nested loops never multiply.

Every wait is logged once, with its reason and its wake-up time. No Airflow import.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

from airflow_provider_smart.transport.sanitize import safe_text

log = logging.getLogger(__name__)

#: Statuses worth trying again: throttling and a gateway's or overloaded server's transient failures.
#: A plain 500 is not among them: it fails at once unless its OperationOutcome says ``transient``.
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})

#: The longest single wait a server can ask for. A block of minutes is common; an hour is not a wait,
#: it is an outage, and deferral or the task's own retries handle that better.
DEFAULT_MAX_RETRY_AFTER = 300.0
#: Tries of one request or one file, the first included.
DEFAULT_MAX_ATTEMPTS = 6
#: Total seconds one request or one file may spend waiting between its tries.
DEFAULT_MAX_TOTAL_WAIT = 900.0

# Delta-seconds never reach these: 1e9 s is 31 years, so a number this large is an instant.
_EPOCH_SECONDS_FLOOR = 1e9
_EPOCH_MILLIS_FLOOR = 1e12
# Far-future instants are nonsense, not waits (year 2286 in seconds; milliseconds beyond that too).
_EPOCH_SECONDS_CEILING = 1e10
_EPOCH_MILLIS_CEILING = 1e13


def operation_outcome_issues(outcome: dict[str, Any]) -> list[dict[str, Any]]:
    """The issues of an OperationOutcome that are objects (anything else a server sends is ignored)."""
    issues = outcome.get("issue") if isinstance(outcome, dict) else None
    return [i for i in issues if isinstance(i, dict)] if isinstance(issues, list) else []


def is_transient_outcome(outcome: dict[str, Any]) -> bool:
    """True when every error issue is marked ``transient`` (Bulk Data: the client may retry)."""
    issues = [i for i in operation_outcome_issues(outcome) if i.get("severity") in ("error", "fatal")]
    return bool(issues) and all(i.get("code") == "transient" for i in issues)


@dataclass(frozen=True)
class RetryAfter:
    """A readable ``Retry-After``: the instant to wait for and the form the server used."""

    until: datetime
    seconds: float  # from ``now`` (0 when the instant has passed)
    form: str  # "delta-seconds", "HTTP-date", "epoch seconds" or "epoch milliseconds"


def read_retry_after(value: object, *, now: datetime | None = None) -> RetryAfter | None:
    """Parse a ``Retry-After`` value, or None when it is missing or nonsense (negative, NaN, garbage).

    Numbers below 1e9 are delta-seconds; 1e9..1e10 epoch seconds; 1e12..1e13 epoch milliseconds.
    Anything else numeric is nonsense. An instant in the past means "now".
    """
    if value is None:
        return None
    text = str(value).strip()
    if not text or len(text) > 64:
        return None
    current = now or datetime.now(UTC)
    number: float | None
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number) or number < 0:
            return None
        if number < _EPOCH_SECONDS_FLOOR:
            return RetryAfter(_after(current, number), number, "delta-seconds")
        if number < _EPOCH_SECONDS_CEILING:
            epoch, form = number, "epoch seconds"
        elif _EPOCH_MILLIS_FLOOR <= number < _EPOCH_MILLIS_CEILING:
            epoch, form = number / 1000.0, "epoch milliseconds"
        else:
            return None
        until = datetime.fromtimestamp(epoch, UTC)
        return RetryAfter(until, max(0.0, (until - current).total_seconds()), form)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return RetryAfter(when, max(0.0, (when - current).total_seconds()), "HTTP-date")


def _after(now: datetime, seconds: float) -> datetime:
    try:
        return datetime.fromtimestamp(now.timestamp() + seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return now


def parse_retry_after(
    value: str | None,
    *,
    now: datetime | None = None,
    maximum: float = DEFAULT_MAX_RETRY_AFTER,
    minimum: float = 0.0,
) -> float | None:
    """The wait a ``Retry-After`` header asks for, in seconds, clamped to ``[minimum, maximum]``.

    See :func:`read_retry_after` for the accepted forms. None for a missing or unreadable value, so the
    caller falls back to its own backoff.
    """
    parsed = read_retry_after(value, now=now)
    if parsed is None:
        return None
    return max(minimum, min(maximum, parsed.seconds))


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
    """429, 502, 503 and 504: the statuses retried without looking at the body."""
    return status in RETRYABLE_STATUSES


def is_retryable(status: int, outcome: Mapping[str, Any] | None = None) -> bool:
    """Whether an error answer is worth trying again: a retryable status or a ``transient`` outcome."""
    if is_retryable_status(status):
        return True
    return status >= 400 and outcome is not None and is_transient_outcome(dict(outcome))


def retry_jitter(seconds: float) -> float:
    """A little extra on a server-given wait (at most 5 % plus a quarter second, never above 2 s)."""
    return random.uniform(0.0, min(2.0, 0.05 * seconds + 0.25))


def _clock_text(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S UTC")


def log_wait(
    logger: Any,
    what: str,
    reason: str,
    delay: float,
    *,
    now: float | None = None,
    note: str = "",
    attention: bool = True,
) -> None:
    """Log one wait, once: what waits, why (server text made safe), for how long and until when.

    ``logger`` is anything with ``warning`` and ``info`` (a stdlib logger, or Airflow's structured task
    logger). ``attention=False`` logs at INFO: a wait that is the normal pace of things (a running export's
    ``202`` with ``Retry-After``), not something a person needs to look at.
    """
    wake = (time.time() if now is None else now) + delay
    (logger.warning if attention else logger.info)(
        "%s: %s; waiting %.1fs until %s%s",
        safe_text(what, limit=300),
        safe_text(reason, limit=500),
        delay,
        _clock_text(wake),
        f" ({note})" if note else "",
    )


@dataclass(frozen=True)
class WaitPolicy:
    """How long to wait and how often to try again; one per connection (see :meth:`budget`).

    :param max_retry_after: cap of one wait in seconds, whatever the server asks for.
    :param max_attempts: tries of one request or file, the first included.
    :param max_total_wait: seconds one request or file may spend waiting in total.
    :param backoff_base: the first backoff when the server gives no ``Retry-After``.
    :param backoff_max: the longest backoff step.
    """

    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_total_wait: float = DEFAULT_MAX_TOTAL_WAIT
    backoff_base: float = 1.0
    backoff_max: float = 60.0

    def __post_init__(self) -> None:
        if not self.max_retry_after >= 0:
            raise ValueError(f"max_retry_after must be a number of seconds >= 0, got {self.max_retry_after!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts!r}")
        if not self.max_total_wait >= 0:
            raise ValueError(f"max_total_wait must be a number of seconds >= 0, got {self.max_total_wait!r}")

    def backoff(self, retry: int) -> float:
        """The backoff before retry number ``retry`` (1-based), with jitter."""
        delay = min(self.backoff_max, self.backoff_base * float(2.0 ** min(max(retry - 1, 0), 30)))
        return max(0.0, delay + random.uniform(-delay / 4, delay / 4))

    def server_wait(self, retry_after: object, *, now: datetime | None = None) -> tuple[float, str] | None:
        """(seconds, explanation) for a ``Retry-After`` value (header text or seconds), or None."""
        if isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool):
            if not math.isfinite(retry_after) or retry_after < 0:
                return None
            seconds, note = float(retry_after), f"Retry-After {float(retry_after):.1f}s"
        else:
            parsed = read_retry_after(retry_after, now=now)
            if parsed is None:
                return None
            seconds = parsed.seconds
            note = f"Retry-After {safe_text(retry_after, limit=64)!r} ({parsed.form})"
        if seconds > self.max_retry_after:
            note += f", capped at max_retry_after={self.max_retry_after:.0f}s"
            seconds = self.max_retry_after
        return seconds + retry_jitter(seconds), note

    def budget(
        self,
        what: str,
        *,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
    ) -> RetryBudget:
        """A fresh budget for one request or one file; pass it to every loop that retries it."""
        return RetryBudget(self, what, sleep=sleep or time.sleep, clock=clock, logger=logger or log)


@dataclass
class RetryBudget:
    """The tries and total wait left for one request or one file, shared by every loop retrying it.

    Call :meth:`wait` after a failed try: it decides whether one more try fits the budget, logs the wait
    once (reason and wake-up time) and sleeps; False means give up now. Async callers use :meth:`plan`
    and sleep themselves.
    """

    policy: WaitPolicy
    what: str
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time
    logger: logging.Logger = log
    retries: int = 0
    waited: float = 0.0
    waits: list[float] = field(default_factory=list)
    last_refusal: str = ""

    @property
    def attempts(self) -> int:
        """Tries made or under way (the first plus every granted retry)."""
        return self.retries + 1

    @property
    def exhausted(self) -> bool:
        return self.retries + 1 >= self.policy.max_attempts

    def plan(self, reason: str, *, retry_after: object = None) -> float | None:
        """Account for one more try: its delay in seconds (logged once), or None when none is left."""
        if self.exhausted:
            self.last_refusal = f"{self.attempts} tries made (max_attempts={self.policy.max_attempts})"
            return None
        now = self.clock()
        server = None
        if retry_after is not None:
            server = self.policy.server_wait(retry_after, now=datetime.fromtimestamp(now, UTC))
        if server is not None:
            delay, note = server
        else:
            delay, note = self.policy.backoff(self.retries + 1), "backoff"
        if self.waited + delay > self.policy.max_total_wait + 1e-9:
            self.last_refusal = (
                f"a wait of {delay:.1f}s would exceed the total wait budget "
                f"({self.waited:.1f}s of max_total_wait={self.policy.max_total_wait:.0f}s used)"
            )
            return None
        self.retries += 1
        self.waited += delay
        self.waits.append(delay)
        log_wait(
            self.logger,
            self.what,
            reason,
            delay,
            now=now,
            note=f"{note}; try {self.retries + 1} of {self.policy.max_attempts}",
        )
        return delay

    def wait(self, reason: str, *, retry_after: object = None) -> bool:
        """Plan one more try and sleep until it; False when the budget is spent (then give up)."""
        delay = self.plan(reason, retry_after=retry_after)
        if delay is None:
            return False
        if delay > 0:
            self.sleep(delay)
        return True

    def give_up_text(self) -> str:
        """Why the budget refused another try, for the final error message."""
        return self.last_refusal or f"{self.attempts} tries made"
