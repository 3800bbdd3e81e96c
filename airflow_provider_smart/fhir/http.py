"""An authorized HTTP client for one FHIR server (requests based).

- The bearer token goes only to URLs with the FHIR base URL's origin, never when ``authorize=False``.
- Redirects are followed by hand so the Authorization header is re-decided at every hop.
- Connection errors, 429 and 5xx are retried with backoff, honouring ``Retry-After``; a POST only when
  the caller says it is safe to repeat (``retry_post=True``).
- A 401 causes exactly one re-authentication and one more try.
- Final errors raise :class:`FhirError` with the OperationOutcome's text, never with a token.
"""

from __future__ import annotations

import json as jsonlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import requests

from airflow_provider_smart.fhir.errors import FhirError, TransientFhirError, describe_error_body
from airflow_provider_smart.fhir.retry import (
    DEFAULT_MAX_RETRY_AFTER,
    backoff_delays,
    is_retryable_status,
    parse_retry_after,
)
from airflow_provider_smart.fhir.urls import fhir_base, redact_url, resolve, same_origin

if TYPE_CHECKING:
    from airflow_provider_smart.auth.client import SmartAuthClient
    from airflow_provider_smart.auth.tokens import AccessToken

log = logging.getLogger(__name__)

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_ERROR_BODY = 64 * 1024
#: Shorter strings are not real tokens; replacing them would mangle messages (test doubles).
_MIN_SCRUB = 8

Params = Mapping[str, Any] | Sequence[tuple[str, Any]] | None


class FhirHttpClient:
    """Requests to one FHIR server with its SMART token, retries and safe redirects.

    :param auth: gives tokens; None for open servers.
    :param base_url: the FHIR base URL; relative paths resolve against it and its origin gets the token.
    :param headers: sent with every request (e.g. a vendor's client-id header).
    :param max_retries: retries after connection errors, 429 and 5xx (per request).
    :param max_retry_after: cap for a server's ``Retry-After`` in seconds.
    """

    def __init__(
        self,
        auth: SmartAuthClient | None,
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
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.auth = auth
        self.base_url = fhir_base(base_url)
        self.verify = verify
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.max_retries = max_retries
        self.max_retry_after = max_retry_after
        self.max_redirects = max_redirects
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.session = session or requests.Session()
        # An explicit (no-op) auth keeps requests from adding ~/.netrc credentials over our header,
        # while proxies and CA bundles from the environment still apply.
        self.session.auth = no_netrc_auth
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"FhirHttpClient(base_url={self.base_url!r})"

    def url(self, url_or_path: str) -> str:
        """An absolute URL: relative paths are taken relative to the FHIR base URL."""
        if "://" in url_or_path:
            return url_or_path
        return resolve(self.base_url + "/", url_or_path.lstrip("/"))

    def may_authorize(self, url: str, authorize: bool | None = None) -> bool:
        """Whether a request to ``url`` may carry the token: same origin as the base URL, not opted out."""
        return self.auth is not None and authorize is not False and same_origin(url, self.base_url)

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
        timeout: float | None = None,
    ) -> requests.Response:
        """Send a request and return the final response (after redirects, retries and one re-auth).

        :param authorize: False never sends the token (e.g. presigned download URLs); otherwise the token
            goes only to the base URL's origin.
        :param raise_for_status: raise :class:`FhirError` for a final status >= 400 (else return it).
        :param retry_post: the caller knows this POST is safe to repeat.
        :param retries: overrides ``max_retries`` for this request (0 = answer 429/5xx at once).
        """
        method = method.upper()
        url = self.url(url_or_path)
        repeatable = method in _IDEMPOTENT or retry_post
        budget = self.max_retries if retries is None else retries
        delays = backoff_delays(budget, base=self.backoff_base, maximum=self.backoff_max)
        reauthenticated = False
        while True:
            try:
                response, token = self._send(
                    method, url, params, json, data, headers, stream, authorize, timeout or self.timeout
                )
            except requests.RequestException as exc:
                delay = next(delays, None) if repeatable else None
                if delay is None:
                    raise FhirError(
                        f"{method} {redact_url(url)} failed: cannot reach the FHIR server ({type(exc).__name__}); "
                        "check the connection host, network and TLS settings"
                    ) from None
                log.warning("%s %s: %s; retrying in %.1fs", method, redact_url(url), type(exc).__name__, delay)
                self._sleep(delay)
                continue
            status = response.status_code
            if status == 401 and token is not None and self.auth is not None and not reauthenticated:
                log.info("%s %s answered 401; getting a new access token and trying once more", method, redact_url(url))
                response.close()
                self.auth.invalidate(token)
                reauthenticated = True
                continue
            if is_retryable_status(status) and repeatable:
                waited = parse_retry_after(response.headers.get("Retry-After"), maximum=self.max_retry_after)
                delay = next(delays, None)
                if delay is not None:
                    delay = waited if waited is not None else delay
                    log.warning("%s %s answered %d; retrying in %.1fs", method, redact_url(url), status, delay)
                    response.close()
                    self._sleep(delay)
                    continue
            if status >= 400 and raise_for_status:
                raise self._error(method, url, response, token, reauthenticated)
            return response

    def get(self, url_or_path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", url_or_path, **kwargs)

    def post(self, url_or_path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", url_or_path, **kwargs)

    def delete(self, url_or_path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", url_or_path, **kwargs)

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
    ) -> tuple[requests.Response, AccessToken | None]:
        """One request plus its redirects, deciding the Authorization header at every hop."""
        token: AccessToken | None = None
        for _ in range(self.max_redirects + 1):
            hop_headers = {"Accept": "application/fhir+json", **self.headers, **(headers or {})}
            # A caller's own Authorization header is never forwarded either; only ours, only to our origin.
            hop_headers = {k: v for k, v in hop_headers.items() if k.lower() != "authorization"}
            used: AccessToken | None = None
            if self.may_authorize(url, authorize):
                assert self.auth is not None
                used = self.auth.get_token()
                hop_headers["Authorization"] = used.authorization_header
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
            token = used
            if response.status_code not in _REDIRECTS or "Location" not in response.headers:
                return response, token
            target = resolve(response.url or url, response.headers["Location"])
            response.close()
            log.debug("%s %s redirected to %s", method, redact_url(url), redact_url(target))
            if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
                method, json, data = "GET", None, None
            params = None  # the Location already carries its query
            url = target
        raise FhirError(f"{redact_url(url)}: more than {self.max_redirects} redirects")

    def _error(
        self,
        method: str,
        url: str,
        response: requests.Response,
        token: AccessToken | None,
        reauthenticated: bool,
    ) -> FhirError:
        status = response.status_code
        try:
            body = _read_limited(response)
        except requests.RequestException:  # the body only feeds the message
            body = b""
        finally:
            response.close()
        text = describe_error_body(body, response.headers.get("Content-Type"))
        if token is not None and len(token.value) >= _MIN_SCRUB:
            text = text.replace(token.value, "<redacted>")
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
        if is_retryable_status(status):
            retry_after = parse_retry_after(response.headers.get("Retry-After"), maximum=self.max_retry_after)
            return TransientFhirError(
                f"{where} answered HTTP {status} (gave up after retries): {text}",
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


def no_netrc_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """A requests auth hook that adds nothing (its presence disables the ~/.netrc lookup)."""
    return request


def _read_limited(response: requests.Response) -> bytes:
    """At most ``_MAX_ERROR_BODY`` bytes of a (possibly streamed) error body: enough for a message."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(8192):
        chunks.append(chunk)
        size += len(chunk)
        if size >= _MAX_ERROR_BODY:
            break
    return b"".join(chunks)[:_MAX_ERROR_BODY]


def _outcome(body: bytes) -> dict[str, Any] | None:
    try:
        data = jsonlib.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome" else None
