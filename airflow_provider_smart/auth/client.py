"""SMART Backend Services client: discovery, client assertion, token request and a shared token cache."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import requests

from airflow_provider_smart.auth.assertion import (
    CLIENT_ASSERTION_TYPE,
    DEFAULT_ASSERTION_LIFETIME,
    build_client_assertion,
)
from airflow_provider_smart.auth.discovery import SmartConfiguration, discover, warn_if_algorithm_unsupported
from airflow_provider_smart.auth.errors import TokenRequestError
from airflow_provider_smart.auth.keys import KeySet, SigningKey
from airflow_provider_smart.auth.tokens import (
    AccessToken,
    TokenContext,
    parse_token_response,
    split_scopes,
    unreachable_message,
)
from airflow_provider_smart.fhir.http import no_netrc_auth
from airflow_provider_smart.fhir.retry import backoff_delays, is_retryable_status, parse_retry_after
from airflow_provider_smart.fhir.urls import fhir_base

log = logging.getLogger(__name__)

DEFAULT_SCOPE = "system/*.read"
#: Refresh when less than max(30 s, 10 % of the lifetime) is left (but never more than half the lifetime).
MIN_REFRESH_MARGIN = 30.0
REFRESH_FRACTION = 0.1
#: Token requests are cheap to repeat (each has a fresh jti); retry transient failures a few times.
TOKEN_RETRIES = 2
MAX_TOKEN_RETRY_AFTER = 60.0


def refresh_margin(lifetime: float) -> float:
    return min(max(MIN_REFRESH_MARGIN, REFRESH_FRACTION * lifetime), lifetime / 2)


class SmartAuthClient:
    """Gets and caches access tokens for one client of one FHIR server.

    Thread-safe: concurrent callers share one token and at most one token request is in flight.

    :param fhir_base_url: the FHIR base URL (discovery looks under it).
    :param client_id: the registered client_id (``iss`` and ``sub`` of the assertion).
    :param keys: the private keys (:class:`KeySet`, one :class:`SigningKey` or a list; the first signs).
    :param scope: space-separated scopes to request.
    :param token_url: the token endpoint; skips discovery when given.
    :param on_secret: called with every assertion and token the moment it exists (the hook passes
        Airflow's secret masker here).
    """

    def __init__(
        self,
        fhir_base_url: str,
        client_id: str,
        keys: KeySet | SigningKey | Sequence[SigningKey],
        scope: str | Sequence[str] = DEFAULT_SCOPE,
        token_url: str | None = None,
        verify: bool | str = True,
        timeout: float = 60.0,
        headers: Mapping[str, str] | None = None,
        session: requests.Session | None = None,
        *,
        on_secret: Callable[[str], None] | None = None,
        assertion_lifetime: float = DEFAULT_ASSERTION_LIFETIME,
        token_retries: int = TOKEN_RETRIES,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not client_id:
            raise ValueError("client_id is empty: set the connection's login to the registered client_id")
        self.fhir_base_url = fhir_base(fhir_base_url)
        self.client_id = client_id
        if isinstance(keys, KeySet):
            self.keys = keys
        elif isinstance(keys, SigningKey):
            self.keys = KeySet([keys])
        else:
            self.keys = KeySet(list(keys))
        self.scope = " ".join(split_scopes(scope)) or DEFAULT_SCOPE
        self._token_url = token_url or None
        self.verify = verify
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.session = session or requests.Session()
        self.session.auth = no_netrc_auth  # ~/.netrc credentials never join the token request
        self._on_secret = on_secret
        self._assertion_lifetime = assertion_lifetime
        self._token_retries = token_retries
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._discovery_lock = threading.Lock()
        self._configuration: SmartConfiguration | None = None
        self._token: AccessToken | None = None
        self.token_requests = 0  # how many token requests this client made (for reports and tests)

    def __repr__(self) -> str:
        return (
            f"SmartAuthClient(fhir_base_url={self.fhir_base_url!r}, client_id={self.client_id!r}, "
            f"kid={self.signing_key.kid!r}, scope={self.scope!r})"
        )

    @property
    def signing_key(self) -> SigningKey:
        return self.keys.signing_key

    # --- discovery -------------------------------------------------------------------------------------

    def discover(self, *, force: bool = False) -> SmartConfiguration:
        """The server's SMART configuration, fetched once per client and cached."""
        with self._discovery_lock:
            if self._configuration is None or force:
                self._configuration = discover(
                    self.session, self.fhir_base_url, verify=self.verify, timeout=self.timeout, headers=self.headers
                )
                warn_if_algorithm_unsupported(self._configuration, self.signing_key.algorithm)
            return self._configuration

    @property
    def token_url(self) -> str:
        """The token endpoint: the explicit one, else the discovered one."""
        if self._token_url:
            return self._token_url
        return self.discover().token_endpoint

    # --- tokens ----------------------------------------------------------------------------------------

    def _is_fresh(self, token: AccessToken | None) -> bool:
        if token is None:
            return False
        return token.expires_at - self._clock() > refresh_margin(token.lifetime)

    def get_token(self, force_refresh: bool = False) -> AccessToken:
        """A valid access token, from the cache or a new token request."""
        token = self._token
        if not force_refresh and self._is_fresh(token):
            assert token is not None
            return token
        with self._lock:
            # Another thread may have refreshed while this one waited for the lock.
            current = self._token
            if self._is_fresh(current) and (not force_refresh or current is not token):
                assert current is not None
                return current
            self._token = self._request_token()
            return self._token

    def invalidate(self, token: AccessToken | str | None = None) -> None:
        """Forget the cached token (after a 401). With ``token``, only when it is still the cached one."""
        with self._lock:
            if token is None or self._token is None:
                self._token = None
                return
            value = token.value if isinstance(token, AccessToken) else token
            if self._token.value == value:
                self._token = None

    def _request_token(self) -> AccessToken:
        token_url = self.token_url
        key = self.signing_key
        context = TokenContext(self.client_id, token_url, key.kid, key.algorithm, self.scope)
        delays = backoff_delays(self._token_retries, base=0.5, maximum=10.0)
        attempt = 0
        while True:
            attempt += 1
            assertion = build_client_assertion(
                self.client_id, token_url, key, lifetime=self._assertion_lifetime, now=self._clock()
            )
            if self._on_secret:
                self._on_secret(assertion)
            form = {
                "grant_type": "client_credentials",
                "scope": self.scope,
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": assertion,
            }
            log.debug("Requesting an access token from %s for client_id %s", token_url, self.client_id)
            self.token_requests += 1
            try:
                response = self.session.post(
                    token_url,
                    data=form,
                    headers={**self.headers, "Accept": "application/json"},
                    verify=self.verify,
                    timeout=self.timeout,
                    allow_redirects=False,  # the assertion goes to the URL it names as aud, nowhere else
                )
            except requests.RequestException as exc:
                delay = next(delays, None)
                if delay is None:
                    raise TokenRequestError(unreachable_message(token_url, exc)) from None
                log.warning(
                    "Token endpoint %s unreachable (%s); retrying in %.1fs", token_url, type(exc).__name__, delay
                )
                self._sleep(delay)
                continue
            with response:
                status = response.status_code
                if is_retryable_status(status):
                    waited = parse_retry_after(response.headers.get("Retry-After"), maximum=MAX_TOKEN_RETRY_AFTER)
                    delay = next(delays, None)
                    if delay is not None:
                        delay = waited if waited is not None else delay
                        log.warning("Token endpoint %s answered HTTP %d; retrying in %.1fs", token_url, status, delay)
                        self._sleep(delay)
                        continue
                if 300 <= status < 400:
                    raise TokenRequestError(
                        f"the token endpoint {token_url} redirected (HTTP {status}) to "
                        f"{response.headers.get('Location', 'nowhere')!r}: set the token_url extra to the final URL",
                        status=status,
                    )
                token = parse_token_response(
                    status,
                    response.content,
                    response.headers.get("Content-Type"),
                    context,
                    now=self._clock(),
                    scrub=(assertion,),
                )
            if self._on_secret:
                self._on_secret(token.value)
            log.info(
                "Got an access token for client_id %s, valid %.0fs (kid=%s, alg=%s)",
                self.client_id,
                token.lifetime,
                key.kid,
                key.algorithm,
            )
            return token

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> SmartAuthClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
