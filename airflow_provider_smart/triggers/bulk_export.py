"""Deferrable polling of a Bulk Data ``$export`` status URL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
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
from airflow_provider_smart.fhir.bulk.sync import MAX_MANIFEST_BODY, poll_needs_attention, poll_reason
from airflow_provider_smart.transport.addresses import AddressPolicy, BlockedAddressError, guard_async_client
from airflow_provider_smart.transport.bodies import MAX_ERROR_BODY
from airflow_provider_smart.transport.retry import log_wait
from airflow_provider_smart.transport.sanitize import safe_text
from airflow_provider_smart.transport.urls import (
    UnsafeUrlError,
    check_transport,
    check_url,
    may_carry_token,
    redact_url,
    resolve,
)

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 10


@dataclass(frozen=True)
class _TriggerSettings:
    """What the poll loop takes from the connection, read once when it starts."""

    policy: PollPolicy
    base_url: str
    allow_insecure_http: bool
    max_retry_after: float
    allowed_internal_hosts: tuple[str, ...]


async def _read_capped(response: Any, limit: int) -> bytes:
    """At most ``limit`` bytes of a streamed httpx body: an endless 202 body costs no more memory."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


class BulkExportStatusTrigger(BaseTrigger):
    """Poll an export's status URL without blocking the triggerer, until it completes, fails or times out.

    The token comes from :class:`~airflow_provider_smart.hooks.smart.SmartFhirHook` in a worker thread
    (the signing and token request are blocking). Discovery and the token live in a process-wide cache
    per connection and base URL (:mod:`~airflow_provider_smart.auth.cache`): the triggers of one
    connection share one token, and a task that defers and resumes in the same process reuses it instead
    of fetching discovery and a token again. A token is renewed before it expires, not after a 401. The
    token goes only where :func:`~..transport.urls.may_carry_token` allows; redirects are
    followed by hand and re-decided at every hop, as the worker does. A 401 fetches a fresh token once.
    ``Retry-After`` (any form the wait policy reads) is honoured, clamped to ``[min_poll_interval,
    max_poll_interval]``; a throttled or failed poll waits at most the connection's ``max_retry_after``.
    The connection's ``allow_insecure_http`` extra applies here as in the worker. Each wait and each new
    ``X-Progress`` is logged once, made safe.

    Yields one event: ``{"status": "complete", "expires": ...}`` (a reference: the worker reads the
    manifest from the status URL), ``{"status": "error", "message": ..., "http_status": ...}`` or
    ``{"status": "timeout", "message": ...}``; each also carries ``status_url``.

    :param smart_fhir_conn_id: the ``smart_fhir`` connection.
    :param status_url: the Content-Location returned by the kick-off.
    :param poll_interval: seconds between polls when the server gives no Retry-After.
    :param min_poll_interval: lower clamp of Retry-After.
    :param max_poll_interval: upper clamp of Retry-After (some servers ask for hours).
    :param max_transient_errors: failed polls in a row before giving up.
    :param deadline: epoch seconds after which the trigger yields ``timeout``; None for no deadline.
    :param request_timeout: HTTP timeout of one poll, in seconds.
    :param verify: TLS verification (bool or CA bundle path).
    :param allow_insecure_http: accept an https -> http redirect of the status URL (logged); the
        connection's ``allow_insecure_http`` extra also allows it.
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
        allow_insecure_http: bool = False,
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
        self.allow_insecure_http = bool(allow_insecure_http)
        self._hook: Any = None
        self._allow_insecure = self.allow_insecure_http
        #: Where URLs from the server may connect (set in run() from the connection's extras).
        self._address_policy: AddressPolicy | None = None

    @classmethod
    def for_export(
        cls, smart_fhir_conn_id: str, status_url: str, policy: PollPolicy, *, deadline: float | None, client: Any
    ) -> BulkExportStatusTrigger:
        """The trigger of an export task: its wait policy, deadline, and the worker client's HTTP settings."""
        return cls(
            smart_fhir_conn_id=smart_fhir_conn_id,
            status_url=status_url,
            poll_interval=policy.interval,
            min_poll_interval=policy.min_interval,
            max_poll_interval=policy.max_interval,
            max_transient_errors=policy.max_transient_errors,
            deadline=deadline,
            request_timeout=float(getattr(client, "timeout", 60.0) or 60.0),
            verify=getattr(client, "verify", True),
        )

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
                "allow_insecure_http": self.allow_insecure_http,
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

    def _connection_settings(self) -> _TriggerSettings:
        """What the loop needs from the connection, read once (one connection lookup, one thread hop): the
        poll policy as the vendor profile adapts it, the FHIR base URL, and the ``allow_insecure_http``,
        ``max_retry_after`` and ``allowed_internal_hosts`` extras."""
        hook = self._get_hook()
        settings = hook.settings
        return _TriggerSettings(
            policy=hook.poll_policy(self.policy),
            base_url=str(settings.base_url),
            allow_insecure_http=bool(settings.allow_insecure_http),
            max_retry_after=float(settings.max_retry_after),
            allowed_internal_hosts=tuple(settings.allowed_internal_hosts),
        )

    def _token(self, force_refresh: bool) -> str:
        return str(self._get_hook().get_token(force_refresh=force_refresh).value)

    # The loop ----------------------------------------------------------------------------------
    async def run(self) -> AsyncIterator[TriggerEvent]:
        where = redact_url(self.status_url)
        connection = await asyncio.to_thread(self._connection_settings)
        policy, base_url, max_retry_after = connection.policy, connection.base_url, connection.max_retry_after
        self._allow_insecure = self.allow_insecure_http or connection.allow_insecure_http
        self._address_policy = AddressPolicy.for_server(base_url, connection.allowed_internal_hosts)
        errors = 0
        pending = 0
        last_progress: str | None = None
        self.log.info("polling Bulk Data export status at %s", where)
        async with self._http_client() as http:
            while True:
                if self.deadline is not None and time.time() >= self.deadline:
                    yield self._event("timeout", message=f"export at {where} did not complete before its deadline")
                    return
                result = await self._poll(http, base_url)
                if isinstance(result, ExportComplete):
                    self.log.info("export complete at %s", where)
                    # A reference, not the manifest: the worker reads it from the status URL, so no
                    # presigned URL or 30 MB manifest travels through the triggerer's event table.
                    yield self._event("complete", expires=result.expires)
                    return
                if isinstance(result, ExportFailed):
                    yield self._event("error", message=safe_text(result.message), http_status=result.status)
                    return
                if isinstance(result, ExportPending):
                    errors = 0
                    pending += 1
                    if result.progress and result.progress != last_progress:
                        self.log.info("export in progress: %s", safe_text(result.progress, limit=200))
                        last_progress = result.progress
                else:
                    errors += 1
                    if errors > policy.max_transient_errors:
                        yield self._event(
                            "error",
                            message=safe_text(
                                f"giving up after {errors} failed status polls in a row: {result.message}"
                            ),
                            http_status=getattr(result, "status", 429),
                        )
                        return
                delay = policy.delay(result, errors, pending)
                if not isinstance(result, ExportPending):
                    # Throttling and failures wait at most max_retry_after (a 202's Retry-After is the
                    # server's polling pace and keeps max_poll_interval as its cap).
                    delay = min(delay, max(max_retry_after, policy.min_interval))
                if self.deadline is not None:
                    delay = max(0.0, min(delay, self.deadline - time.time()))
                if not isinstance(result, ExportPending) or result.retry_after is not None:
                    log_wait(
                        self.log, f"status {where}", poll_reason(result), delay, attention=poll_needs_attention(result)
                    )
                await asyncio.sleep(delay)

    def _http_client(self) -> Any:
        import httpx

        # Redirects are followed by hand (see _poll), deciding the token at every hop like the worker;
        # every connection checks the address it reaches, like the worker's (transport.addresses).
        policy = self._address_policy or AddressPolicy.for_server(self._base_url())
        return guard_async_client(
            httpx.AsyncClient(timeout=self.request_timeout, verify=self.verify, follow_redirects=False), policy
        )

    async def _poll(self, http: Any, base_url: str) -> ExportStatus:
        """One status poll, as the worker's client does it: URL checks, the token only where
        :func:`may_carry_token` allows, redirects re-decided at every hop, one re-auth on 401, the
        body read up to a cap. The token comes from the hook's cache (renewed before it expires)."""
        import httpx
        from requests.utils import get_environ_proxies as getenv_proxies

        url, previous = self.status_url, None
        reauthenticated = False
        hops = 0
        while True:
            try:
                check_url(url)
                check_transport(url, base_url, previous=previous, allow_insecure_http=self._allow_insecure)
            except UnsafeUrlError as exc:
                return ExportFailed(str(exc), 0)
            headers = {"Accept": "application/json"}
            token: str | None = None
            if may_carry_token(url, base_url):
                token = await asyncio.to_thread(self._token, reauthenticated)
                headers["Authorization"] = f"Bearer {token}"
            try:
                if getenv_proxies(url):
                    # Through a proxy the socket goes to the proxy: judge the target's addresses first.
                    policy = self._address_policy or AddressPolicy.for_server(base_url)
                    await asyncio.to_thread(policy.check_url, url)
                async with http.stream("GET", url, headers=headers) as response:
                    limit = MAX_MANIFEST_BODY if response.status_code == 200 else MAX_ERROR_BODY
                    body = await _read_capped(response, limit + 1)
            except BlockedAddressError as exc:
                return ExportFailed(f"status {redact_url(url)}: {exc}", 0)
            except (httpx.HTTPError, OSError) as exc:
                return ExportTransientError(f"status request failed: {type(exc).__name__}", 0, None)
            status = response.status_code
            if status in _REDIRECTS and response.headers.get("Location"):
                hops += 1
                if hops > _MAX_REDIRECTS:
                    return ExportFailed(
                        f"status {redact_url(self.status_url)}: more than {_MAX_REDIRECTS} redirects", 0
                    )
                previous, url = url, resolve(url, response.headers["Location"].strip())
                continue
            if status == 401 and token is not None and not reauthenticated:
                self.log.info("status poll answered 401; fetching a new access token")
                reauthenticated = True
                continue
            if len(body) > limit:
                if status == 200:
                    # Done, with a big manifest: the worker reads it under its own download_limits
                    # (max_manifest_bytes); the trigger reads no more than the default cap.
                    return ExportComplete({}, response.headers.get("Expires"))
                body = body[:limit]
            return interpret_status(
                status,
                response.headers,
                body,
                status_url=url,
                max_retry_after=self.max_poll_interval,
            )

    def _event(self, status: str, **payload: Any) -> TriggerEvent:
        return TriggerEvent({"status": status, "status_url": self.status_url, **payload})  # type: ignore[no-untyped-call]
