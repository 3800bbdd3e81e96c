"""The one check for server instants that become watermarks (``transactionTime``, search high-water marks).

A watermark is the ``_since`` (or ``_lastUpdated=gt``) of every later run. A value that does not parse
makes every later run fail; a value in the future makes every later run ask for nothing and skip data.
So a server's instant must parse as a FHIR instant with a time zone and be no later than now plus a
clock-skew allowance before it is stored.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow_provider_smart.transport.sanitize import safe_text

#: How far a server's clock may run ahead of ours.
DEFAULT_CLOCK_SKEW = timedelta(minutes=5)


class WatermarkError(ValueError):
    """A server instant cannot be used as a watermark; the previous watermark is kept."""


def check_watermark_instant(
    value: object,
    what: str,
    *,
    now: datetime | None = None,
    skew: timedelta = DEFAULT_CLOCK_SKEW,
) -> str:
    """``value`` unchanged when it is an instant with a time zone, no later than ``now + skew``.

    :param what: where the value came from, for the message (``"the manifest's transactionTime"``).
    :raises WatermarkError: saying what is wrong and that the old watermark stays.
    """
    shown = safe_text(value, limit=80)
    parsed: datetime | None = None
    if isinstance(value, str) and "T" in value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise WatermarkError(
            f"{what} {shown!r} is not a FHIR instant (e.g. 2024-01-31T12:00:00Z); "
            "the previous watermark is kept and nothing later depends on this value"
        )
    limit = (now or datetime.now(UTC)) + skew
    if parsed > limit:
        raise WatermarkError(
            f"{what} {shown!r} is later than now plus the allowed clock skew ({int(skew.total_seconds())} s); "
            "storing it would make every later incremental run skip data, so the previous watermark is kept. "
            "Check the server's clock"
        )
    return str(value)
