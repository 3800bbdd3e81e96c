"""Find the token endpoint: ``[base]/.well-known/smart-configuration``, else the CapabilityStatement.

The parsing functions are pure; :func:`discover` does the two GETs with a ``requests`` session.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from airflow_provider_smart.auth.errors import DiscoveryError
from airflow_provider_smart.transport.bodies import read_bounded
from airflow_provider_smart.transport.retry import RetryBudget, WaitPolicy, is_retryable_status
from airflow_provider_smart.transport.sanitize import safe_text
from airflow_provider_smart.transport.urls import fhir_base, may_carry_headers, resolve

log = logging.getLogger(__name__)

OAUTH_URIS_EXTENSION = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SMART_CONFIGURATION_PATH = "/.well-known/smart-configuration"
#: A SMART configuration or CapabilityStatement larger than this is refused (real ones are kilobytes).
MAX_DISCOVERY_BYTES = 4 * 1024 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 10


@dataclass(frozen=True)
class SmartConfiguration:
    """What the server told us. ``signing_algs`` / ``scopes_supported`` are None when it did not say."""

    token_endpoint: str
    source: str  # the URL the token endpoint came from
    signing_algs: tuple[str, ...] | None = None
    capabilities: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] | None = None

    def supports_algorithm(self, algorithm: str) -> bool | None:
        """True/False when the server lists its algorithms, None when it does not say."""
        if self.signing_algs is None:
            return None
        return algorithm.upper() in {a.upper() for a in self.signing_algs}

    def summary(self) -> dict[str, Any]:
        return {
            "token_endpoint": self.token_endpoint,
            "source": self.source,
            "token_endpoint_auth_signing_alg_values_supported": list(self.signing_algs or []),
            "capabilities": list(self.capabilities),
            "scopes_supported": list(self.scopes_supported or []),
        }


def _strings(value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list):
        return None
    return tuple(v for v in value if isinstance(v, str))


def parse_smart_configuration(document: Mapping[str, Any], source: str) -> SmartConfiguration | None:
    """The SMART configuration document's facts, or None when it names no token endpoint."""
    endpoint = document.get("token_endpoint")
    if not isinstance(endpoint, str) or not endpoint.strip():
        return None
    return SmartConfiguration(
        token_endpoint=resolve(source, endpoint.strip()),
        source=source,
        signing_algs=_strings(document.get("token_endpoint_auth_signing_alg_values_supported")),
        capabilities=_strings(document.get("capabilities")) or (),
        scopes_supported=_strings(document.get("scopes_supported")),
    )


def token_url_from_capability_statement(document: Mapping[str, Any], source: str) -> str | None:
    """The ``token`` URI of the oauth-uris extension in ``rest[].security``, or None."""
    rests = document.get("rest")
    if not isinstance(rests, list):
        return None
    for rest in rests:
        security = rest.get("security") if isinstance(rest, dict) else None
        extensions = security.get("extension") if isinstance(security, dict) else None
        for ext in extensions if isinstance(extensions, list) else []:
            if not isinstance(ext, dict) or ext.get("url") != OAUTH_URIS_EXTENSION:
                continue
            for sub in ext.get("extension") or []:
                if isinstance(sub, dict) and sub.get("url") == "token" and isinstance(sub.get("valueUri"), str):
                    return resolve(source, sub["valueUri"])
    return None


def _get_json(
    session: requests.Session,
    url: str,
    *,
    verify: bool | str,
    timeout: float,
    headers: Mapping[str, str],
    budget: RetryBudget | None,
    base_url: str = "",
    header_origins: Sequence[str] = (),
) -> tuple[Any, str]:
    """GET a JSON document; returns (data or None, why-not). Never raises for HTTP or parse problems.

    A throttled or briefly unavailable answer (429, 502, 503, 504, or no connection) is tried again as
    ``budget`` allows: a server that blocks the whole client for a while must not make discovery fail."""
    hops = 0
    while True:
        # The connection's headers may be credentials: they go only where the token may (redirects too).
        own = headers if may_carry_headers(url, base_url or url, header_origins) else {}
        try:
            response = session.get(
                url,
                headers={**own, "Accept": "application/json, application/fhir+json"},
                verify=verify,
                timeout=timeout,
                stream=True,  # read up to MAX_DISCOVERY_BYTES, never a whole endless body
                allow_redirects=False,  # followed below, deciding the headers at every hop
            )
        except requests.RequestException as exc:
            why = f"{url}: unreachable ({type(exc).__name__})"
            if budget is not None and budget.wait(why):
                continue
            return None, why
        with response:
            status = response.status_code
            location = response.headers.get("Location")
            if status in _REDIRECTS and location and hops < _MAX_REDIRECTS:
                hops += 1
                url = resolve(url, location.strip())
                continue
            retry_after = response.headers.get("Retry-After")
            if (
                is_retryable_status(status)
                and budget is not None
                and budget.wait(f"{url}: HTTP {status}", retry_after=retry_after)
            ):
                continue
            if status != 200:
                return None, f"{url}: HTTP {status}"
            body, too_big = read_bounded(response, MAX_DISCOVERY_BYTES)
            if too_big:
                return None, f"{url}: larger than {MAX_DISCOVERY_BYTES:,} bytes, not a SMART configuration"
            try:
                return json.loads(body), ""
            except ValueError:
                kind = safe_text(response.headers.get("Content-Type", "unknown type"), limit=80)
                return None, f"{url}: not JSON ({kind})"


def discover(
    session: requests.Session,
    base_url: str,
    *,
    verify: bool | str = True,
    timeout: float = 60.0,
    headers: Mapping[str, str] | None = None,
    header_origins: Sequence[str] = (),
    wait_policy: WaitPolicy | None = None,
    sleep: Callable[[float], None] | None = None,
) -> SmartConfiguration:
    """Find the token endpoint of the FHIR server at ``base_url`` or raise :class:`DiscoveryError`.

    :param wait_policy: retries of each discovery GET (429/5xx/no connection); None tries each once.
    """
    base = fhir_base(base_url)
    extra = dict(headers or {})
    problems: list[str] = []

    def fetch(url: str) -> tuple[Any, str]:
        budget = wait_policy.budget(f"SMART discovery {url}", sleep=sleep, logger=log) if wait_policy else None
        return _get_json(
            session,
            url,
            verify=verify,
            timeout=timeout,
            headers=extra,
            budget=budget,
            base_url=base,
            header_origins=header_origins,
        )

    well_known = base + SMART_CONFIGURATION_PATH
    data, why = fetch(well_known)
    if isinstance(data, dict):
        config = parse_smart_configuration(data, well_known)
        if config is not None:
            log.info("SMART configuration from %s: token endpoint %s", well_known, config.token_endpoint)
            return config
        why = f"{well_known}: no token_endpoint"
    problems.append(why or f"{well_known}: not a JSON object")
    metadata = base + "/metadata"
    data, why = fetch(metadata)
    if isinstance(data, dict):
        token_url = token_url_from_capability_statement(data, metadata)
        if token_url:
            log.info("Token endpoint %s from the CapabilityStatement's oauth-uris extension", token_url)
            return SmartConfiguration(token_endpoint=token_url, source=metadata)
        why = f"{metadata}: no oauth-uris token extension"
    problems.append(why or f"{metadata}: not a JSON object")
    raise DiscoveryError(
        f"could not find the token endpoint of {base} ({'; '.join(problems)}): "
        "check the FHIR base URL (connection host), or set the token_url extra"
    )


def warn_if_algorithm_unsupported(config: SmartConfiguration, algorithm: str) -> bool:
    """Log a warning when the server lists its signing algorithms and ``algorithm`` is not one of them."""
    if config.supports_algorithm(algorithm) is False:
        log.warning(
            "The server lists signing algorithms %s for client assertions but this connection signs with %s; "
            "expect invalid_client. Set the algorithm extra (and a matching key) to one the server supports.",
            ", ".join(config.signing_algs or ()),
            algorithm,
        )
        return True
    return False
