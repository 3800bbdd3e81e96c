"""Deferrable polling of a Bulk Data ``$export`` status URL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_smart.fhir.bulk.status import (
    ExportComplete,
    ExportFailed,
    ExportPending,
    ExportStatus,
    ExportTransientError,
    PollPolicy,
    interpret_status,
)
from airflow_provider_smart.fhir.urls import redact_url, same_origin


class BulkExportStatusTrigger(BaseTrigger):
    """Poll an export's status URL without blocking the triggerer, until it completes, fails or times out.

    The token comes from :class:`~airflow_provider_smart.hooks.smart.SmartFhirHook` in a worker thread
    (the signing and token request are blocking), and is sent only to the FHIR server's origin. A 401
    fetches a fresh token once. ``Retry-After`` is honoured, clamped to ``[min_poll_interval,
    max_poll_interval]``; ``X-Progress`` is logged when it changes.

    Yields one event: ``{"status": "complete", "manifest": {...}}``, ``{"status": "error", "message":
    ..., "http_status": ...}`` or ``{"status": "timeout", "message": ...}``; each also carries
    ``status_url``.

    :param smart_fhir_conn_id: the ``smart_fhir`` connection.
    :param status_url: the Content-Location returned by the kick-off.
    :param poll_interval: seconds between polls when the server gives no Retry-After.
    :param min_poll_interval: lower clamp of Retry-After.
    :param max_poll_interval: upper clamp of Retry-After (some servers ask for hours).
    :param max_transient_errors: failed polls in a row before giving up.
    :param deadline: epoch seconds after which the trigger yields ``timeout``; None for no deadline.
    :param request_timeout: HTTP timeout of one poll, in seconds.
    :param verify: TLS verification (bool or CA bundle path).
    """

    def __init__(
        self,
        *,
        smart_fhir_conn_id: str,
        status_url: str,
        poll_interval: float = 10.0,
        min_poll_interval: float = 1.0,
        max_poll_interval: float = 3600.0,
        max_transient_errors: int = 10,
        deadline: float | None = None,
        request_timeout: float = 60.0,
        verify: bool | str = True,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.smart_fhir_conn_id = smart_fhir_conn_id
        self.status_url = status_url
        self.poll_interval = float(poll_interval)
        self.min_poll_interval = float(min_poll_interval)
        self.max_poll_interval = float(max_poll_interval)
        self.max_transient_errors = int(max_transient_errors)
        self.deadline = float(deadline) if deadline is not None else None
        self.request_timeout = float(request_timeout)
        self.verify = verify
        self._hook: Any = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "smart_fhir_conn_id": self.smart_fhir_conn_id,
                "status_url": self.status_url,
                "poll_interval": self.poll_interval,
                "min_poll_interval": self.min_poll_interval,
                "max_poll_interval": self.max_poll_interval,
                "max_transient_errors": self.max_transient_errors,
                "deadline": self.deadline,
                "request_timeout": self.request_timeout,
                "verify": self.verify,
            },
        )

    @property
    def policy(self) -> PollPolicy:
        return PollPolicy(
            interval=self.poll_interval,
            min_interval=self.min_poll_interval,
            max_interval=self.max_poll_interval,
            max_transient_errors=self.max_transient_errors,
        )

    # Blocking parts, run in a thread -----------------------------------------------------------
    def _get_hook(self) -> Any:
        if self._hook is None:
            from airflow_provider_smart.hooks.smart import SmartFhirHook

            self._hook = SmartFhirHook(smart_fhir_conn_id=self.smart_fhir_conn_id)
        return self._hook

    def _base_url(self) -> str:
        return str(self._get_hook().base_url)

    def _token(self, force_refresh: bool) -> str:
        return str(self._get_hook().get_token(force_refresh=force_refresh).value)

    # The loop ----------------------------------------------------------------------------------
    async def run(self) -> AsyncIterator[TriggerEvent]:
        where = redact_url(self.status_url)
        policy = self.policy
        base_url = await asyncio.to_thread(self._base_url)
        authorize = same_origin(self.status_url, base_url)
        token = await asyncio.to_thread(self._token, False) if authorize else None
        errors = 0
        last_progress: str | None = None
        self.log.info("polling Bulk Data export status at %s", where)
        async with self._http_client() as http:
            while True:
                if self.deadline is not None and time.time() >= self.deadline:
                    yield self._event("timeout", message=f"export at {where} did not complete before its deadline")
                    return
                result, token = await self._poll(http, token, authorize)
                if isinstance(result, ExportComplete):
                    self.log.info("export complete at %s", where)
                    yield self._event("complete", manifest=result.manifest, expires=result.expires)
                    return
                if isinstance(result, ExportFailed):
                    yield self._event("error", message=result.message, http_status=result.status)
                    return
                if isinstance(result, ExportPending):
                    errors = 0
                    if result.progress and result.progress != last_progress:
                        self.log.info("export in progress: %s", result.progress)
                        last_progress = result.progress
                else:
                    errors += 1
                    self.log.warning("status poll %d failed: %s", errors, result.message)
                    if errors > policy.max_transient_errors:
                        yield self._event(
                            "error",
                            message=f"giving up after {errors} failed status polls in a row: {result.message}",
                            http_status=getattr(result, "status", 429),
                        )
                        return
                delay = policy.delay(result, errors)
                if self.deadline is not None:
                    delay = max(0.0, min(delay, self.deadline - time.time()))
                await asyncio.sleep(delay)

    def _http_client(self) -> Any:
        import httpx

        # Redirects are not followed: a status URL that redirects elsewhere must not receive the token.
        return httpx.AsyncClient(timeout=self.request_timeout, verify=self.verify, follow_redirects=False)

    async def _poll(self, http: Any, token: str | None, authorize: bool) -> tuple[ExportStatus, str | None]:
        import httpx

        for attempt in range(2):
            headers = {"Accept": "application/json"}
            if authorize and token:
                headers["Authorization"] = f"Bearer {token}"
            try:
                response = await http.get(self.status_url, headers=headers)
            except httpx.HTTPError as exc:
                return ExportTransientError(f"status request failed: {type(exc).__name__}", 0, None), token
            if response.status_code == 401 and authorize and attempt == 0:
                self.log.info("status poll answered 401; fetching a new access token")
                token = await asyncio.to_thread(self._token, True)
                continue
            result = interpret_status(
                response.status_code,
                response.headers,
                response.content,
                status_url=self.status_url,
                max_retry_after=self.max_poll_interval,
            )
            return result, token
        raise AssertionError("unreachable")  # pragma: no cover

    def _event(self, status: str, **payload: Any) -> TriggerEvent:
        return TriggerEvent({"status": status, "status_url": self.status_url, **payload})  # type: ignore[no-untyped-call]
