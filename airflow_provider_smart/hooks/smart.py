"""Airflow hook for FHIR servers protected by SMART Backend Services."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.hook import BaseHook

from airflow_provider_smart.auth.cache import shared_state
from airflow_provider_smart.auth.client import SmartAuthClient
from airflow_provider_smart.auth.discovery import SmartConfiguration
from airflow_provider_smart.auth.settings import ConnectionSettingsError, SmartConnectionSettings
from airflow_provider_smart.auth.tokens import AccessToken, scope_report
from airflow_provider_smart.config import private_key_dir
from airflow_provider_smart.fhir.http import FhirHttpClient

if TYPE_CHECKING:
    import requests

    from airflow_provider_smart.fhir.bulk.kickoff import ExportRequest
    from airflow_provider_smart.fhir.bulk.status import PollPolicy
    from airflow_provider_smart.vendors.preflight import Preflight, Row

#: A CapabilityStatement larger than this is not read (Epic's and Oracle's are a few MB).
MAX_CAPABILITY_BYTES = 32 * 1024 * 1024


def mask(secret: str | None) -> None:
    """Register ``secret`` with Airflow's secret maskers so no log line can show it.

    Both the task SDK's masker (task logs; it also tells the supervisor) and the core one (CLI and
    server processes, e.g. ``airflow connections test``) get it.
    """
    if not secret:
        return
    from airflow.sdk.log import mask_secret as sdk_mask_secret

    sdk_mask_secret(secret)
    try:
        from airflow._shared.secrets_masker import mask_secret as core_mask_secret
    except ImportError:  # pragma: no cover - a worker without airflow-core
        return
    core_mask_secret(secret)


def _check_vendor(settings: SmartConnectionSettings) -> None:
    """The ``vendor`` extra must name a known profile; the error lists the names."""
    from airflow_provider_smart.vendors import UnknownVendorError, get_profile

    if settings.vendor:
        try:
            get_profile(settings.vendor)
        except UnknownVendorError as exc:
            raise ConnectionSettingsError(
                f"connection {settings.conn_id!r}: {exc} (or leave the vendor extra empty)"
            ) from None


class SmartFhirHook(BaseHook):
    """Talk to a FHIR server with SMART Backend Services authorization.

    The connection's host is the FHIR base URL, its login the client_id and its password the private key
    (PEM, JWK or JWKS; several keys for rotation). Extras: ``private_key_file``, ``kid``, ``algorithm``,
    ``scope``, ``token_url``, ``verify``, ``timeout``, ``headers``, ``allow_insecure_http``,
    ``max_retry_after``; the last two reach every client the hook builds (worker and trigger).

    Discovery and the access token are kept process-wide per connection and base URL
    (:mod:`~airflow_provider_smart.auth.cache`), so a trigger and a resumed operator in one process reuse
    a still-valid token instead of fetching a new one; it is still renewed before it expires.

    :param smart_fhir_conn_id: the ``smart_fhir`` connection to use.
    :param scope: overrides the connection's ``scope`` extra.
    :param max_retries: retries after connection errors, 429 and 5xx for each request.
    """

    conn_name_attr = "smart_fhir_conn_id"
    default_conn_name = "smart_fhir_default"
    conn_type = "smart_fhir"
    hook_name = "SMART on FHIR (Backend Services)"

    def __init__(
        self,
        smart_fhir_conn_id: str = default_conn_name,
        *,
        scope: str | None = None,
        max_retries: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.smart_fhir_conn_id = smart_fhir_conn_id
        self.scope_override = scope
        self.max_retries = max_retries
        self._settings: SmartConnectionSettings | None = None
        self._auth: SmartAuthClient | None = None
        self._client: FhirHttpClient | None = None
        self._build_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SmartFhirHook(smart_fhir_conn_id={self.smart_fhir_conn_id!r})"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        from airflow_provider_smart.get_provider_info import get_provider_info

        types = get_provider_info()["connection-types"]
        return dict(next(t for t in types if t["connection-type"] == cls.conn_type)["ui-field-behaviour"])

    # --- connection ------------------------------------------------------------------------------------

    @property
    def settings(self) -> SmartConnectionSettings:
        if self._settings is None:
            conn = self.get_connection(self.smart_fhir_conn_id)
            mask(conn.password)
            settings = SmartConnectionSettings.from_fields(
                self.smart_fhir_conn_id,
                host=conn.host,
                login=conn.login,
                password=conn.password,
                extra=conn.extra,
                private_key_dir=private_key_dir(),
            )
            mask(settings.read_key_file())
            _check_vendor(settings)
            if settings.verify is False:
                # Once per hook, in the task log: urllib3's own warning goes to Python's warnings only.
                self.log.warning(
                    "Connection %r has verify=false: the FHIR server's TLS certificate is NOT checked, so anyone "
                    "on the network path can read the access token and the data. Use it only for test servers; "
                    "point verify at a CA bundle file instead.",
                    self.smart_fhir_conn_id,
                )
            self._settings = settings
        return self._settings

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    def get_auth_client(self) -> SmartAuthClient:
        """The token client of this hook (built once; discovery and tokens are cached in it)."""
        with self._build_lock:
            if self._auth is None:
                s = self.settings
                keys = s.load_keys()
                scope = self.scope_override or s.scope
                self._auth = SmartAuthClient(
                    s.base_url,
                    s.client_id,
                    keys,
                    scope=scope,
                    token_url=s.token_url,
                    verify=s.verify,
                    timeout=s.timeout,
                    headers=s.headers,
                    header_origins=s.header_origins,
                    on_secret=mask,
                    max_retry_after=s.max_retry_after,
                    allow_insecure_http=s.allow_insecure_http,
                    state=shared_state(
                        self.smart_fhir_conn_id,
                        s.base_url,
                        client_id=s.client_id,
                        kid=keys.signing_key.kid,
                        scope=scope,
                        token_url=s.token_url,
                    ),
                )
                # A token already cached for this connection in this process was masked when it was
                # fetched, but this hook's task log may be a new one: mask it again here.
                cached = self._auth.cached_token
                if cached is not None:
                    mask(cached.value)
            return self._auth

    def get_client(self) -> FhirHttpClient:
        """The authorized FHIR HTTP client of this hook (built once)."""
        auth = self.get_auth_client()
        with self._build_lock:
            if self._client is None:
                s = self.settings
                self._client = FhirHttpClient(
                    auth,
                    s.base_url,
                    verify=s.verify,
                    timeout=s.timeout,
                    headers=s.headers,
                    max_retries=self.max_retries,
                    max_retry_after=s.max_retry_after,
                    allow_insecure_http=s.allow_insecure_http,
                    allowed_internal_hosts=s.allowed_internal_hosts,
                    header_origins=s.header_origins,
                )
            return self._client

    def get_conn(self) -> FhirHttpClient:
        return self.get_client()

    def discover(self) -> SmartConfiguration:
        return self.get_auth_client().discover()

    def get_token(self, force_refresh: bool = False) -> AccessToken:
        return self.get_auth_client().get_token(force_refresh=force_refresh)

    def get_access_token(self) -> str:
        """The current access token's value (masked in logs). Prefer :meth:`request`, which sends it for you."""
        return self.get_token().value

    def request(self, method: str, url_or_path: str, **kwargs: Any) -> requests.Response:
        """Send a request through :class:`FhirHttpClient` (see its ``request`` for the keyword arguments)."""
        return self.get_client().request(method, url_or_path, **kwargs)

    def check_export(self, request: ExportRequest) -> None:
        """Check ``request`` against the connection's ``vendor`` profile before it is kicked off.

        Raises ``AirflowFailException`` (from :class:`~airflow_provider_smart.vendors.VendorRuleError`)
        naming each broken rule and the vendor's page. One adaptation is made, and logged: where the
        vendor wants a read scope for every type in ``_type`` and the connection's scope does not name
        them, the token is requested with exactly those scopes (only before this hook fetched a token).
        """
        from airflow_provider_smart.vendors import VendorRuleError, get_profile, raise_for_violations, scopes_for_types
        from airflow_provider_smart.vendors.rules import check_export_request, export_params

        if not self.settings.vendor:
            return
        profile = get_profile(self.settings.vendor)
        params = export_params(request)
        scope = self.scope_override or self.settings.scope
        per_type = scopes_for_types(profile, request.types)
        adapt = (
            per_type is not None
            and self._auth is None
            and check_export_request(profile, request.level, params, scope=scope)
            and not check_export_request(profile, request.level, params, scope=" ".join(per_type))
        )
        if adapt and per_type:
            self.log.info(
                "vendor profile %s wants a system read scope for each exported type: requesting %s instead "
                "of the connection's scope %s",
                profile.name,
                " ".join(per_type),
                scope,
            )
            self.scope_override = scope = " ".join(per_type)
        try:
            raise_for_violations(profile, check_export_request(profile, request.level, params, scope=scope))
        except VendorRuleError as exc:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(str(exc)) from exc  # no retry can change a published rule
        self.log.info(
            "request checked against the published rules of %s (vendor profile %s)", profile.title, profile.name
        )

    def poll_policy(self, policy: PollPolicy) -> PollPolicy:
        """``policy``, doubling the wait between status polls without Retry-After when the vendor asks
        for exponential backoff (logged); unchanged otherwise."""
        import dataclasses

        from airflow_provider_smart.vendors import get_profile

        if not self.settings.vendor or policy.backoff != 1.0:
            return policy
        profile = get_profile(self.settings.vendor)
        fact = profile.fact("polling")
        if fact is None or fact.value != "exponential-backoff":
            return policy
        self.log.info(
            "vendor profile %s asks for exponential backoff (%s): status polls without Retry-After wait "
            "%.0fs, then twice as long each time, up to %.0fs",
            profile.name,
            fact.source,
            policy.interval,
            policy.max_interval,
        )
        return dataclasses.replace(policy, backoff=2.0)

    def capability_statement(self) -> dict[str, Any] | None:
        """The server's CapabilityStatement (``GET [base]/metadata``), or None when it cannot be read."""
        import json

        from airflow_provider_smart.transport.bodies import read_bounded
        from airflow_provider_smart.transport.sanitize import safe_text

        try:
            response = self.request(
                "GET", "metadata", headers={"Accept": "application/fhir+json"}, stream=True, retries=0
            )
            body, too_big = read_bounded(response, MAX_CAPABILITY_BYTES)
            response.close()
            statement = None if too_big else json.loads(body)
        except Exception as exc:
            self.log.warning("could not read the CapabilityStatement: %s", safe_text(exc, limit=300))
            return None
        return statement if isinstance(statement, dict) else None

    def preflight(self) -> Preflight:
        """A fresh token, granted vs requested scopes, what /metadata reports, and the vendor profile's rules."""
        from airflow_provider_smart.vendors import get_profile
        from airflow_provider_smart.vendors.preflight import preflight

        token = self.get_token(force_refresh=True)
        report = scope_report(token.requested_scopes, token.scopes)
        return preflight(
            statement=self.capability_statement(),
            requested_scopes=token.requested_scopes,
            granted_scopes=token.scopes,
            missing_scopes=report.missing,
            token_lifetime=token.lifetime,
            profile=get_profile(self.settings.vendor) if self.settings.vendor else None,
        )

    def _vendor_rows(
        self, requested: Sequence[str], granted: Sequence[str], missing: Sequence[str], lifetime: float
    ) -> list[Row]:
        """The preflight rows the Test button shows: software, detected vendor, profile, mismatches."""
        from airflow_provider_smart.vendors import get_profile
        from airflow_provider_smart.vendors.preflight import preflight

        report = preflight(
            statement=self.capability_statement(),
            requested_scopes=requested,
            granted_scopes=granted,
            missing_scopes=missing,
            token_lifetime=lifetime,
            profile=get_profile(self.settings.vendor) if self.settings.vendor else None,
        )
        shown = ("software", "detected vendor", "vendor profile", "CapabilityStatement")
        return [row for row in report.rows if row.check in shown or row.status == "FAIL"]

    def test_connection(self) -> tuple[bool, str]:
        """Discovery (unless token_url is set), a real token request, requested vs granted scopes, the
        software the server reports, the detected vendor and mismatches with the chosen vendor profile
        (a hard mismatch fails the test, as ``smart-fhir check`` exits non-zero)."""
        try:
            auth = self.get_auth_client()
            key = auth.signing_key
            lines = [f"FHIR base URL {auth.fhir_base_url}, client_id {auth.client_id!r}"]
            if self.settings.token_url:
                lines.append(f"token endpoint {self.settings.token_url} (token_url extra; discovery skipped)")
            else:
                config = auth.discover()
                supported = config.supports_algorithm(key.algorithm)
                support_text = {True: "supported", False: "NOT listed by the server", None: "server lists none"}
                lines.append(f"token endpoint {config.token_endpoint} (from {config.source})")
                lines.append(f"signing algorithm {key.algorithm} ({support_text[supported]}), kid {key.kid}")
            token = auth.get_token(force_refresh=True)
            report = scope_report(token.requested_scopes, token.scopes)
            lines.append(f"requested scopes: {' '.join(token.requested_scopes)}")
            lines.append(f"granted scopes: {' '.join(token.scopes)}")
            if report.expanded:
                lines.append(f"expanded by the server: {' '.join(report.expanded)}")
            if report.missing:
                lines.append(f"NOT granted: {' '.join(report.missing)}")
            lines.append(f"token valid for {token.lifetime:.0f}s")
            vendor_rows = self._vendor_rows(token.requested_scopes, token.scopes, report.missing, token.lifetime)
            lines += [f"{row.check}: {row.value}" + (" (FAIL)" if row.status == "FAIL" else "") for row in vendor_rows]
            return not any(row.status == "FAIL" for row in vendor_rows), "; ".join(lines)
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._auth is not None:
            self._auth.close()
