"""Configuration and the in-process state of one sandbox server (store, faults, registered clients, keys)."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_provider_smart.sandbox.binary_store import BinaryStore
from airflow_provider_smart.sandbox.bulk_jobs import BulkSettings
from airflow_provider_smart.sandbox.bulk_runtime import BulkRuntime
from airflow_provider_smart.sandbox.clock import SandboxClock
from airflow_provider_smart.sandbox.faults import Faults
from airflow_provider_smart.sandbox.store import ResourceStore

#: Resource types a wildcard scope (``system/*.read``) is expanded to, as servers list them in the
#: granted scope. Types present in the store are added to these.
DEFAULT_RESOURCE_TYPES = (
    "AllergyIntolerance",
    "Binary",
    "CarePlan",
    "CareTeam",
    "Claim",
    "Condition",
    "Device",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "ExplanationOfBenefit",
    "Group",
    "ImagingStudy",
    "Immunization",
    "Location",
    "Medication",
    "MedicationRequest",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
)


@dataclass
class SandboxConfig:
    """Settings of a sandbox server. Every field has a default good for tests.

    :param patients: synthetic patients to generate (0 for none).
    :param seed: random seed of the generator (same seed, same data).
    :param ndjson_dirs: directories of (gzipped) NDJSON files to load at start.
    :param access_token_lifetime: seconds an issued access token lives, unless the client's registration
        (``auth.client_credentials.access_token_expiration``) asks for less.
    :param admin_user: user name of the admin credential (HTTP Basic) for registration and fault endpoints.
    :param admin_secret: its password; a random one when not given.
    :param next_links: how paging links are written: ``absolute`` URLs, ``relative`` to the FHIR base
        (``Observation?_page_token=...``) or absolute ``path`` (``/fhir/Observation?...``).
    :param default_count: page size when a search gives no ``_count``.
    :param max_count: the largest page size served (larger ``_count`` values are reduced to it).
    :param max_assertion_lifetime: how far ahead (seconds) an assertion's ``exp`` may be.
    :param clock_skew: seconds of clock difference tolerated on ``exp``.
    :param jwks_cache_seconds: how long a fetched ``jwks_uri`` document is reused.
    :param resource_types: types a wildcard scope expands to (the store's own types are added).
    :param base_url: the server's public root URL (``http://host:port``, no trailing slash) when clients
        reach it through another address (a proxy, a port forward); by default the address it listens
        on. Issuer, token URL, FHIR base and the expected audiences come from it, never from ``Host``.
    :param vendor: a vendor profile name the server plays (None: plain Bulk Data).
    :param bulk: how Bulk Data exports behave (:class:`~airflow_provider_smart.sandbox.bulk_jobs.BulkSettings`:
        polls before completion, file sizes, presigned files, ...).
    """

    patients: int = 10
    seed: int = 42
    ndjson_dirs: list[Path] = field(default_factory=list)
    access_token_lifetime: int = 300
    admin_user: str = "admin"
    admin_secret: str | None = None
    next_links: str = "absolute"
    default_count: int = 50
    max_count: int = 1000
    max_assertion_lifetime: int = 300
    clock_skew: int = 60
    jwks_cache_seconds: float = 300.0
    resource_types: tuple[str, ...] = DEFAULT_RESOURCE_TYPES
    base_url: str | None = None
    bulk: BulkSettings = field(default_factory=BulkSettings)
    #: A vendor profile to play (:mod:`airflow_provider_smart.vendors`): its export levels and refused
    #: parameters are enforced at kick-off and its name is reported in the CapabilityStatement.
    vendor: str | None = None


class SandboxState:
    """Everything one running sandbox knows. Tests reach it as ``server.state``.

    ``store`` (:class:`~airflow_provider_smart.sandbox.store.ResourceStore`), ``faults``
    (:class:`~airflow_provider_smart.sandbox.faults.Faults`), ``clients`` and ``access_policies``
    (registered JSON documents by id), ``admin_auth`` (user, password) and the server's token-signing key.
    """

    def __init__(self, config: SandboxConfig | None = None, store: ResourceStore | None = None) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.config = config or SandboxConfig()
        if self.config.vendor:
            from airflow_provider_smart.vendors import get_profile

            get_profile(self.config.vendor)  # an unknown name fails here, listing the known ones
        #: The server's public root URL; set from the config, or by the server once it listens.
        self.base_url: str | None = self.config.base_url.rstrip("/") if self.config.base_url else None
        self.store = store or ResourceStore()
        #: "Now" for tokens, revocation and exports: tests freeze or advance it instead of sleeping.
        self.clock = SandboxClock()
        self.faults = Faults(self.clock)
        self.bulk = BulkRuntime(self.config.bulk, self.faults.bulk, self.clock)
        self.binaries = BinaryStore()
        self.clients: dict[str, dict[str, Any]] = {}
        self.access_policies: dict[str, dict[str, Any]] = {}
        self.lock = threading.RLock()
        self.admin_auth: tuple[str, str] = (
            self.config.admin_user,
            self.config.admin_secret or secrets.token_urlsafe(18),
        )
        # The server signs its access tokens with its own key; clients never see it.
        self.signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.signing_kid = secrets.token_hex(8)
        self.used_jti: dict[tuple[str, str], float] = {}  # (client_id, jti) -> exp, forgotten after exp
        self.jwks_cache: dict[str, tuple[float, dict[str, Any]]] = {}  # jwks_uri -> (fetched at, JWKS)
        self.jwks_fetches: dict[str, int] = {}  # jwks_uri -> times fetched (tests check the cache)
        self.tokens_issued = 0

    def remember_jti(self, client_id: str, jti: str, exp: float) -> bool:
        """Record an assertion's jti; False when it was seen before (a replay)."""
        now = time.time()
        with self.lock:
            for stale in [key for key, until in self.used_jti.items() if until < now]:
                del self.used_jti[stale]
            if (client_id, jti) in self.used_jti:
                return False
            self.used_jti[(client_id, jti)] = exp
            return True

    def linked_policies(self, client_id: str) -> list[str]:
        """Ids of the AccessPolicies that link the client."""
        with self.lock:
            return [
                policy_id
                for policy_id, policy in self.access_policies.items()
                if any(
                    isinstance(link, dict) and link.get("id") == client_id and link.get("resourceType") == "Client"
                    for link in policy.get("link") or []
                )
            ]

    def resource_types(self) -> list[str]:
        return sorted(set(self.config.resource_types) | set(self.store.types()))
