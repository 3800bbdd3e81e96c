"""An authorized HTTP client for one FHIR server (requests based); implements :class:`~.client.FhirClient`.

- The bearer token goes only where :func:`~..transport.urls.may_carry_token` allows it, never when ``authorize=False``.
- Every URL is checked before it is requested (:func:`~..transport.urls.check_url`): a URL that parsers could read
  differently is refused outright; so is an https -> http downgrade unless the connection allows it.
- The connection's own headers (``headers``) follow the token, plus the origins named in ``header_origins``.
- Every connection checks the address it reaches (:mod:`~..transport.addresses`): internal addresses
  only for the FHIR server's origin and what ``allowed_internal_hosts`` lists; refusals are never retried.
- Redirects are followed by hand so the Authorization header is re-decided at every hop.
- Waits and retries follow the one wait policy (:mod:`~..transport.retry`): 429, 502, 503, 504, ``transient``
  OperationOutcomes and failed connections are retried within one :class:`~..transport.retry.RetryBudget` per
  request (or the caller's); a POST only when the caller says it is safe to repeat (``retry_post=True``).
- A 401 causes exactly one re-authentication and one more try.
- Error bodies are read up to a cap; final errors raise :class:`FhirError` with the server's text made
  safe (:func:`~..transport.sanitize.safe_text`), never with a token.
"""

from __future__ import annotations

import json as jsonlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import requests

from airflow_provider_smart.fhir.errors import FhirError, TransientFhirError, describe_error_body
from airflow_provider_smart.transport.addresses import AddressPolicy, BlockedAddressError, guard_session
from airflow_provider_smart.transport.bodies import MAX_ERROR_BODY, no_netrc_auth, read_limited
from airflow_provider_smart.transport.retry import (
    DEFAULT_MAX_RETRY_AFTER,
    DEFAULT_MAX_TOTAL_WAIT,
    RetryBudget,
    WaitPolicy,
    is_retryable,
    is_retryable_status,
    parse_retry_after,
)
from airflow_provider_smart.transport.sanitize import safe_text
from airflow_provider_smart.transport.tokens import BearerToken, TokenSource
from airflow_provider_smart.transport.urls import (
    UnsafeUrlError,
    check_transport,
    check_url,
    fhir_base,
    may_carry_headers,
    may_carry_token,
    redact_url,
    resolve,
    same_origin,
)

log = logging.getLogger(__name__)

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

Params = Mapping[str, Any] | Sequence[tuple[str, Any]] | None


class RefusedRequestError(FhirError):
    """A request the client refuses to send at all (an ambiguous URL, a TLS downgrade, a foreign redirect).

    Never retried: trying again cannot make the URL safe.
    """

    @property
    def retryable(self) -> bool:
        return False


class FhirHttpClient:
    """Requests to one FHIR server with its SMART token, the wait policy and safe redirects.

    :param auth: gives tokens; None for open servers.
    :param base_url: the FHIR base URL; relative paths resolve against it and its origin gets the token.
    :param headers: sent with every request (e.g. a vendor's client-id header).
    :param max_retries: retries after connection errors, 429, 502-504 and transient outcomes (per
        request); ignored when ``wait_policy`` is given.
    :param max_retry_after: cap of one wait in seconds; ignored when ``wait_policy`` is given.
    :param wait_policy: the whole wait policy (see :class:`~..transport.retry.WaitPolicy`).
    :param allow_insecure_http: accept https -> http downgrades (logged); off by default.
    :param allowed_internal_hosts: origins and networks (CIDR) on internal addresses that URLs from data
        may reach (see :mod:`~..transport.addresses`); the FHIR server's own origin always may.
    :param header_origins: origins besides the FHIR server's that receive ``headers``.
    """

    def __init__(
        self,
        auth: TokenSource | None,
        base_url: str,
        *,
        verify: bool | str = True,
        timeout: float = 60.0,
        headers: Mapping[str, str] | None = None,
        max_retries: int = 5,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        max_redirects: int = 10,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        wait_policy: WaitPolicy | None = None,
        allow_insecure_http: bool = False,
        allowed_internal_hosts: Sequence[str] = (),
        header_origins: Sequence[str] = (),
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.auth = auth
        self.base_url = fhir_base(base_url)
        self.verify = verify
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.wait_policy = wait_policy or WaitPolicy(
            max_retry_after=max_retry_after,
            max_attempts=max(1, max_retries + 1),
            max_total_wait=DEFAULT_MAX_TOTAL_WAIT,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
        )
        self.max_redirects = max_redirects
        self.allow_insecure_http = allow_insecure_http
        self.header_origins = tuple(header_origins)
        self.address_policy = AddressPolicy.for_server(self.base_url, allowed_internal_hosts)
        self.session = session or requests.Session()
        # Every connection checks the address it reaches, redirect hops included (no DNS rebinding).
        guard_session(self.session, self.address_policy)
        # An explicit (no-op) auth keeps requests from adding ~/.netrc credentials over our header,
        # while proxies and CA bundles from the environment still apply.
        self.session.auth = no_netrc_auth
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"FhirHttpClient(base_url={self.base_url!r})"

    @property
    def max_retries(self) -> int:
        return self.wait_policy.max_attempts - 1

    @max_retries.setter
    def max_retries(self, value: int) -> None:
        self.wait_policy = replace(self.wait_policy, max_attempts=max(1, int(value) + 1))

    @property
    def max_retry_after(self) -> float:
        return self.wait_policy.max_retry_after

    @max_retry_after.setter
    def max_retry_after(self, value: float) -> None:
        self.wait_policy = replace(self.wait_policy, max_retry_after=float(value))

    @property
    def backoff_base(self) -> float:
        return self.wait_policy.backoff_base

    @backoff_base.setter
    def backoff_base(self, value: float) -> None:
        self.wait_policy = replace(self.wait_policy, backoff_base=float(value))

    def url(self, url_or_path: str) -> str:
        """An absolute URL: relative paths are taken relative to the FHIR base URL."""
        if "://" in url_or_path:
            return url_or_path
        return resolve(self.base_url + "/", url_or_path.lstrip("/"))

    def may_authorize(self, url: str, authorize: bool | None = None) -> bool:
        """Whether a request to ``url`` may carry the token (:func:`~..transport.urls.may_carry_token`), not
        opted out."""
        return self.auth is not None and authorize is not False and may_carry_token(url, self.base_url)

    def budget(self, what: str) -> RetryBudget:
        """A fresh retry budget under this client's wait policy (for callers that retry on their own too)."""
        return self.wait_policy.budget(what, sleep=self._sleep)

    def request(
        self,
        method: str,
        url_or_path: str,
        *,
        params: Params = None,
        json: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        authorize: bool | None = None,
        raise_for_status: bool = True,
        retry_post: bool = False,
        retries: int | None = None,
        budget: RetryBudget | None = None,
        timeout: float | None = None,
        same_origin_redirects: bool = False,
    ) -> requests.Response:
        """Send a request and return the final response (after redirects, retries and one re-auth).

        :param authorize: False never sends the token (e.g. presigned download URLs); otherwise the token
            goes only to the base URL's origin.
        :param raise_for_status: raise :class:`FhirError` for a final status >= 400 (else return it).
        :param retry_post: the caller knows this POST is safe to repeat.
        :param retries: 0 answers 429/5xx at once (the caller polls on its own); otherwise ignored.
        :param budget: the retry budget to draw from (shared with the caller's own retry loop).
        :param same_origin_redirects: refuse a redirect to another origin instead of following it.
        """
        method = method.upper()
        url = self.url(url_or_path)
        where = f"{method} {redact_url(url)}"
        repeatable = method in _IDEMPOTENT or retry_post
        if budget is None:
            policy = self.wait_policy
            if retries is not None:
                policy = WaitPolicy(
                    max_retry_after=policy.max_retry_after,
                    max_attempts=max(1, retries + 1),
                    max_total_wait=policy.max_total_wait,
                    backoff_base=policy.backoff_base,
                    backoff_max=policy.backoff_max,
                )
            budget = policy.budget(where, sleep=self._sleep)
        reauthenticated = False
        while True:
            try:
                response, token, final_url = self._send(
                    method,
                    url,
                    params,
                    json,
                    data,
                    headers,
                    stream,
                    authorize,
                    timeout or self.timeout,
                    same_origin_redirects,
                )
            except requests.RequestException as exc:
                reason = f"cannot reach the server ({type(exc).__name__})"
                if repeatable and budget.wait(f"{where}: {reason}"):
                    continue
                raise FhirError(
                    f"{where} failed: cannot reach the FHIR server ({type(exc).__name__}, {budget.give_up_text()}); "
                    "check the connection host, network and TLS settings"
                ) from None
            status = response.status_code
            if status == 401 and token is not None and self.auth is not None and not reauthenticated:
                log.info("%s answered 401; getting a new access token and trying once more", where)
                response.close()
                self.auth.invalidate(token.value)
                reauthenticated = True
                continue
            if status >= 400:
                body = _buffer_error_body(response)
                if repeatable and is_retryable(status, _outcome(body)):
                    text = _error_text(body, response, token)
                    if budget.wait(
                        f"{where} answered HTTP {status}: {text}", retry_after=response.headers.get("Retry-After")
                    ):
                        response.close()
                        continue
                if raise_for_status:
                    raise self._error(method, final_url, response, body, token, reauthenticated, budget)
            return response

    def get(self, url_or_path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", url_or_path, **kwargs)

    def post(self, url_or_path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", url_or_path, **kwargs)

    def delete(self, url_or_path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", url_or_path, **kwargs)

    def check(self, url: str, *, previous: str | None = None) -> None:
        """Refuse an ambiguous URL or a TLS downgrade before anything is sent to it."""
        try:
            check_url(url)
            check_transport(url, self.base_url, previous=previous, allow_insecure_http=self.allow_insecure_http)
        except UnsafeUrlError as exc:
            raise RefusedRequestError(str(exc)) from None

    def _send(
        self,
        method: str,
        url: str,
        params: Params,
        json: Any,
        data: Any,
        headers: Mapping[str, str] | None,
        stream: bool,
        authorize: bool | None,
        timeout: float,
        same_origin_redirects: bool,
    ) -> tuple[requests.Response, BearerToken | None, str]:
        """One request plus its redirects, deciding the Authorization header at every hop."""
        token: BearerToken | None = None
        previous: str | None = None
        first = url
        for _ in range(self.max_redirects + 1):
            self.check(url, previous=previous)
            # The connection's headers may be credentials (an API gateway's key): they follow the token.
            own = self.headers if may_carry_headers(url, self.base_url, self.header_origins) else {}
            hop_headers = {"Accept": "application/fhir+json", **own, **(headers or {})}
            # A caller's own Authorization header is never forwarded either; only ours, only to our origin.
            hop_headers = {k: v for k, v in hop_headers.items() if k.lower() != "authorization"}
            used: BearerToken | None = None
            if self.may_authorize(url, authorize):
                assert self.auth is not None
                used = self.auth.get_token()
                hop_headers["Authorization"] = used.authorization_header
            try:
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    json=json,
                    data=data,
                    headers=hop_headers,
                    stream=stream,
                    verify=self.verify,
                    timeout=timeout,
                    allow_redirects=False,
                )
            except BlockedAddressError as exc:
                came = f" (redirected from {redact_url(first)})" if url != first else ""
                raise RefusedRequestError(f"{method} {redact_url(url)} {exc}{came}") from None
            token = used
            if response.status_code not in _REDIRECTS or "Location" not in response.headers:
                return response, token, url
            # Resolve against the URL we asked for (with params), never against anything else.
            target = resolve(response.url or url, response.headers["Location"].strip())
            response.close()
            if same_origin_redirects and not same_origin(target, first):
                raise RefusedRequestError(
                    f"{method} {redact_url(first)} was redirected to another origin ({redact_url(target)}); "
                    "refusing to follow it. Fix the server's base URL setting or the connection's host."
                )
            log.debug("%s %s redirected to %s", method, redact_url(url), redact_url(target))
            if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
                method, json, data = "GET", None, None
            params = None  # the Location already carries its query
            previous, url = url, target
        raise RefusedRequestError(f"{redact_url(url)}: more than {self.max_redirects} redirects")

    def _error(
        self,
        method: str,
        url: str,
        response: requests.Response,
        body: bytes,
        token: BearerToken | None,
        reauthenticated: bool,
        budget: RetryBudget,
    ) -> FhirError:
        status = response.status_code
        response.close()
        text = _error_text(body, response, token)
        outcome = _outcome(body)
        where = f"{method} {redact_url(url)}"
        if status == 401:
            tried = " even after getting a new access token" if reauthenticated else ""
            hint = (
                ": check that the client's access policy allows this request and that the connection's token is "
                "meant for this server (audience)"
                if token is not None
                else ": no token was sent (the URL is not on the FHIR server's origin or authorize=False)"
            )
            return FhirError(f"{where} answered 401 Unauthorized{tried}{hint}. Server said: {text}", status=status)
        if status == 403:
            return FhirError(
                f"{where} answered 403 Forbidden: the token's scopes do not allow this (check the scope extra and "
                f"the scopes granted to the client). Server said: {text}",
                status=status,
                outcome=outcome,
            )
        if is_retryable(status, outcome):
            retry_after = parse_retry_after(response.headers.get("Retry-After"), maximum=self.max_retry_after)
            return TransientFhirError(
                f"{where} answered HTTP {status} (gave up: {budget.give_up_text()}): {text}",
                status=status,
                outcome=outcome,
                retry_after=retry_after,
            )
        return FhirError(f"{where} answered HTTP {status}: {text}", status=status, outcome=outcome)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> FhirHttpClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _buffer_error_body(response: requests.Response) -> bytes:
    """Read an error body up to the cap and keep it on the response, so callers can still read it."""
    body = read_limited(response, MAX_ERROR_BODY)
    response._content = body
    setattr(response, "_content_consumed", True)  # noqa: B010 - requests' own flag for a read body
    return body


def _error_text(body: bytes, response: requests.Response, token: BearerToken | None) -> str:
    """The server's error text, made safe: the token and any other secret redacted, controls gone, capped."""
    text = describe_error_body(body, response.headers.get("Content-Type"))
    return safe_text(text, secrets=(token.value,) if token is not None else ())


def _outcome(body: bytes) -> dict[str, Any] | None:
    try:
        data = jsonlib.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome" else None


__all__ = [
    "FhirHttpClient",
    "RefusedRequestError",
    "is_retryable_status",
]
