"""Find the token endpoint: ``[base]/.well-known/smart-configuration``, else the CapabilityStatement.

The parsing functions are pure; :func:`discover` does the two GETs with a ``requests`` session.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from airflow_provider_smart.auth.errors import DiscoveryError
from airflow_provider_smart.fhir.urls import fhir_base, resolve

log = logging.getLogger(__name__)

OAUTH_URIS_EXTENSION = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SMART_CONFIGURATION_PATH = "/.well-known/smart-configuration"


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
    session: requests.Session, url: str, *, verify: bool | str, timeout: float, headers: Mapping[str, str]
) -> tuple[Any, str]:
    """GET a JSON document; returns (data or None, why-not). Never raises for HTTP or parse problems."""
    try:
        response = session.get(
            url,
            headers={**headers, "Accept": "application/json, application/fhir+json"},
            verify=verify,
            timeout=timeout,
        )
    except requests.RequestException as exc:
        return None, f"{url}: unreachable ({type(exc).__name__})"
    with response:
        if response.status_code != 200:
            return None, f"{url}: HTTP {response.status_code}"
        try:
            return json.loads(response.content), ""
        except ValueError:
            kind = response.headers.get("Content-Type", "unknown type")
            return None, f"{url}: not JSON ({kind})"


def discover(
    session: requests.Session,
    base_url: str,
    *,
    verify: bool | str = True,
    timeout: float = 60.0,
    headers: Mapping[str, str] | None = None,
) -> SmartConfiguration:
    """Find the token endpoint of the FHIR server at ``base_url`` or raise :class:`DiscoveryError`."""
    base = fhir_base(base_url)
    extra = dict(headers or {})
    problems: list[str] = []
    well_known = base + SMART_CONFIGURATION_PATH
    data, why = _get_json(session, well_known, verify=verify, timeout=timeout, headers=extra)
    if isinstance(data, dict):
        config = parse_smart_configuration(data, well_known)
        if config is not None:
            log.info("SMART configuration from %s: token endpoint %s", well_known, config.token_endpoint)
            return config
        why = f"{well_known}: no token_endpoint"
    problems.append(why or f"{well_known}: not a JSON object")
    metadata = base + "/metadata"
    data, why = _get_json(session, metadata, verify=verify, timeout=timeout, headers=extra)
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
