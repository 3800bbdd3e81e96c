"""Fail a task at once, without its retries, when the failure is one no retry can fix."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from airflow_provider_smart.failures import retry_cannot_fix
from airflow_provider_smart.transport.sanitize import safe_text

if TYPE_CHECKING:
    from airflow_provider_smart.storage.export_state import ExportLayout


def fail_fast_error(exc: BaseException) -> BaseException | None:
    """Airflow's fail-now exception for ``exc`` (its message plus why retries are skipped), or None."""
    from airflow.sdk.exceptions import AirflowFailException

    if isinstance(exc, AirflowFailException):
        return None
    reason = retry_cannot_fix(exc)
    if reason is None:
        return None
    return AirflowFailException(f"{safe_text(exc, limit=2000)}. No retry: {reason}")


@contextmanager
def failing_fast(unless: Callable[[], bool] | None = None) -> Iterator[None]:
    """Re-raise a failure no retry can fix as ``AirflowFailException``; let every other one through.

    ``unless`` (asked after the failure) keeps the retries anyway, e.g. once a search's first page was
    accepted: a later page's refusal (an expired paging link) may well pass on a fresh try.
    """
    try:
        yield
    except Exception as exc:
        failed = None if unless is not None and unless() else fail_fast_error(exc)
        if failed is None:
            raise
        raise failed from exc


def export_started(layout: ExportLayout) -> bool:
    """True when ``layout`` records an export this run started on the server (one a retry re-attaches to)."""
    try:
        state = layout.read_state() or {}
    except Exception:
        return False
    return bool(state.get("status_url")) and state.get("phase") in ("pending", "downloading")
