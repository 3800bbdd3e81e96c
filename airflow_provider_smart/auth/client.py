"""SMART Backend Services client: discovery, client assertion, token request and a shared token cache."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import requests

from airflow_provider_smart.auth.assertion import (
    CLIENT_ASSERTION_TYPE,
    DEFAULT_ASSERTION_LIFETIME,
    build_client_assertion,
)
from airflow_provider_smart.auth.cache import AuthState
from airflow_provider_smart.auth.discovery import SmartConfiguration, discover, warn_if_algorithm_unsupported
from airflow_provider_smart.auth.errors import DiscoveryError, TokenRequestError
from airflow_provider_smart.auth.keys import KeySet, SigningKey
from airflow_provider_smart.auth.tokens import (
    AccessToken,
    TokenContext,
    parse_token_response,
    split_scopes,
    unreachable_message,
)
from airflow_provider_smart.transport.bodies import no_netrc_auth, read_bounded, read_limited
from airflow_provider_smart.transport.retry import DEFAULT_MAX_RETRY_AFTER, WaitPolicy, is_retryable_status
from airflow_provider_smart.transport.sanitize import remember_secret, safe_text
from airflow_provider_smart.transport.urls import (
    UnsafeUrlError,
    check_transport,
    check_url,
    fhir_base,
    may_carry_headers,
    redact_url,
)

log = logging.getLogger(__name__)

DEFAULT_SCOPE = "system/*.read"
#: Refresh when less than max(30 s, 10 % of the lifetime) is left (but never more than half the lifetime).
MIN_REFRESH_MARGIN = 30.0
REFRESH_FRACTION = 0.1
#: Token requests are cheap to repeat (each has a fresh jti); retry transient failures a few times.
TOKEN_RETRIES = 2
#: The largest token endpoint answer read; a real one is a few kilobytes.
MAX_TOKEN_BODY = 1024 * 1024
#: Total seconds one token request may spend waiting between its tries.
TOKEN_MAX_TOTAL_WAIT = 600.0


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
        Airflow's secret masker here); both are also remembered for :func:`~..transport.sanitize.safe_text`.
    :param token_retries: retries of one token request after 429, 502-504 or a failed connection.
    :param max_retry_after: cap in seconds of one ``Retry-After`` wait of the token endpoint.
    :param allow_insecure_http: accept an ``http://`` token endpoint for an https FHIR server (logged);
        refused otherwise, since the signed assertion would travel in clear.
    :param state: where discovery and the token are kept; pass a shared one
        (:func:`~.cache.shared_state`) so clients of one connection in a process reuse them.
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
        header_origins: Sequence[str] = (),
        session: requests.Session | None = None,
        *,
        on_secret: Callable[[str], None] | None = None,
        assertion_lifetime: float = DEFAULT_ASSERTION_LIFETIME,
        token_retries: int = TOKEN_RETRIES,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        allow_insecure_http: bool = False,
        state: AuthState | None = None,
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
        self.header_origins = tuple(header_origins)
        self.session = session or requests.Session()
        self.session.auth = no_netrc_auth  # ~/.netrc credentials never join the token request
        self._on_secret = on_secret
        self._assertion_lifetime = assertion_lifetime
        # One request's tries and waits, under the one wait policy every FHIR request uses.
        self.wait_policy = WaitPolicy(
            max_retry_after=max_retry_after,
            max_attempts=max(1, token_retries + 1),
            max_total_wait=TOKEN_MAX_TOTAL_WAIT,
            backoff_base=0.5,
            backoff_max=10.0,
        )
        self.allow_insecure_http = allow_insecure_http
        self._clock = clock
        self._sleep = sleep
        self._state = state if state is not None else AuthState()
        self._checked_token_url: str | None = None
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
        state = self._state
        with state.discovery_lock:
            if state.configuration is None or force:
                config = discover(
                    self.session,
                    self.fhir_base_url,
                    verify=self.verify,
                    timeout=self.timeout,
                    headers=self.headers,
                    header_origins=self.header_origins,
                    wait_policy=self.wait_policy,
                    sleep=self._sleep,
                )
                self._check_token_endpoint(config.token_endpoint, f"the SMART configuration at {config.source}")
                warn_if_algorithm_unsupported(config, self.signing_key.algorithm)
                state.configuration = config
            return state.configuration

    @property
    def token_url(self) -> str:
        """The token endpoint: the explicit one, else the discovered one."""
        if self._token_url:
            if self._checked_token_url != self._token_url:
                self._check_token_endpoint(self._token_url, "the token_url extra")
                self._checked_token_url = self._token_url
            return self._token_url
        return self.discover().token_endpoint

    def _check_token_endpoint(self, url: str, source: str) -> None:
        """The signed assertion goes only to an unambiguous URL, and never in clear for an https server."""
        try:
            check_url(url)
            check_transport(url, self.fhir_base_url, allow_insecure_http=self.allow_insecure_http)
        except UnsafeUrlError as exc:
            raise DiscoveryError(
                f"refusing the token endpoint {redact_url(url)} named by {source} for the FHIR server "
                f"{redact_url(self.fhir_base_url)}: {exc}"
            ) from None

    # --- tokens ----------------------------------------------------------------------------------------

    @property
    def cached_token(self) -> AccessToken | None:
        """The cached token, fresh or not (shared with the other clients of this connection when the
        state is shared); None when there is none."""
        return self._state.token

    _token = cached_token

    def _is_fresh(self, token: AccessToken | None) -> bool:
        if token is None:
            return False
        return token.expires_at - self._clock() > refresh_margin(token.lifetime)

    def get_token(self, force_refresh: bool = False) -> AccessToken:
        """A valid access token, from the cache or a new token request (renewed before it expires)."""
        state = self._state
        token = state.token
        if not force_refresh and self._is_fresh(token):
            assert token is not None
            return token
        with state.token_lock:
            # Another thread (or client of this connection) may have refreshed while this one waited.
            current = state.token
            if self._is_fresh(current) and (not force_refresh or current is not token):
                assert current is not None
                return current
            state.token = self._request_token()
            return state.token

    def invalidate(self, token: AccessToken | str | None = None) -> None:
        """Forget the cached token (after a 401). With ``token``, only when it is still the cached one."""
        state = self._state
        with state.token_lock:
            if token is None or state.token is None:
                state.token = None
                return
            value = token.value if isinstance(token, AccessToken) else token
            if state.token.value == value:
                state.token = None

    def _headers_for(self, url: str) -> dict[str, str]:
        """The connection's headers where they may go (:func:`~..transport.urls.may_carry_headers`), else none."""
        return self.headers if may_carry_headers(url, self.fhir_base_url, self.header_origins) else {}

    def _secret(self, value: str) -> None:
        """A new assertion or token: redacted by safe_text from now on, and masked by the caller's hook."""
        remember_secret(value)
        if self._on_secret:
            self._on_secret(value)

    def _request_token(self) -> AccessToken:
        token_url = self.token_url
        key = self.signing_key
        context = TokenContext(self.client_id, token_url, key.kid, key.algorithm, self.scope)
        where = f"token endpoint {redact_url(token_url)}"
        budget = self.wait_policy.budget(where, sleep=self._sleep, clock=self._clock, logger=log)
        while True:
            assertion = build_client_assertion(
                self.client_id, token_url, key, lifetime=self._assertion_lifetime, now=self._clock()
            )
            self._secret(assertion)
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
                    headers={**self._headers_for(token_url), "Accept": "application/json"},
                    verify=self.verify,
                    timeout=self.timeout,
                    allow_redirects=False,  # the assertion goes to the URL it names as aud, nowhere else
                    stream=True,  # the body is read up to MAX_TOKEN_BODY below, never whole
                )
            except requests.RequestException as exc:
                if budget.wait(f"cannot reach it ({type(exc).__name__})"):
                    continue
                raise TokenRequestError(unreachable_message(token_url, exc)) from None
            with response:
                status = response.status_code
                if is_retryable_status(status):
                    excerpt = safe_text(read_limited(response, 2048), limit=200, secrets=(assertion,))
                    if budget.wait(f"HTTP {status}: {excerpt}", retry_after=response.headers.get("Retry-After")):
                        continue
                if 300 <= status < 400:
                    raise TokenRequestError(
                        f"the token endpoint {token_url} redirected (HTTP {status}) to "
                        f"{redact_url(response.headers.get('Location', 'nowhere'))!r}: set the token_url extra to "
                        "the final URL",
                        status=status,
                    )
                body, too_big = read_bounded(response, MAX_TOKEN_BODY)
                if too_big:
                    raise TokenRequestError(
                        f"the token endpoint {redact_url(token_url)} answered HTTP {status} with a body over "
                        f"{MAX_TOKEN_BODY:,} bytes; a token response is a small JSON object: check the token_url",
                        status=status,
                    )
                token = parse_token_response(
                    status,
                    body,
                    response.headers.get("Content-Type"),
                    context,
                    now=self._clock(),
                    scrub=(assertion,),
                )
            self._secret(token.value)
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
