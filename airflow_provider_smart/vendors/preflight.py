"""Preflight: compare what a server reports about itself with the vendor profile a connection chose.

Plain data in, rows out (no HTTP, no Airflow): the ``smart-fhir check`` command and the connection's Test
button gather the CapabilityStatement and the token, then call :func:`preflight`. Detection reads only
what the server reports (``software.name``, ``publisher``); when nothing matches, or several profiles do,
it says so rather than pick one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_smart.transport.sanitize import safe_text
from airflow_provider_smart.vendors.profiles import VendorProfile, load_profiles

_LEVEL_OF_DEFINITION = {"export": "system", "patient-export": "patient", "group-export": "group"}


@dataclass(frozen=True)
class Row:
    check: str
    value: str
    #: ``ok``, ``info``, ``warn`` (worth a look) or ``FAIL`` (a hard mismatch: the command exits non-zero).
    status: str = "info"


@dataclass
class Preflight:
    rows: list[Row] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(row.status == "FAIL" for row in self.rows)

    def table(self) -> str:
        width = max((len(row.check) for row in self.rows), default=0)
        return "\n".join(f"{row.status:<4}  {row.check:<{width}}  {row.value}" for row in self.rows)


def _text(value: Any) -> str:
    return safe_text(str(value), limit=200) if value is not None else ""


def software(statement: Mapping[str, Any]) -> tuple[str, str, str]:
    """(name, version, publisher) the CapabilityStatement reports, cleaned; empty strings when absent."""
    sw = statement.get("software") if isinstance(statement.get("software"), Mapping) else {}
    assert isinstance(sw, Mapping)
    return _text(sw.get("name")), _text(sw.get("version")), _text(statement.get("publisher"))


def _export_level(operation: Any, where: str) -> str | None:
    if not isinstance(operation, Mapping):
        return None
    definition = str(operation.get("definition") or "")
    tail = definition.rstrip("/").rsplit("/", 1)[-1]
    if tail in _LEVEL_OF_DEFINITION:
        return _LEVEL_OF_DEFINITION[tail]
    if str(operation.get("name") or "").lstrip("$") == "export":
        return where
    return None


def declared_export_levels(statement: Mapping[str, Any]) -> tuple[str, ...]:
    """The Bulk Data export levels the CapabilityStatement declares (system, patient, group)."""
    levels: set[str] = set()
    for rest in statement.get("rest") or []:
        if not isinstance(rest, Mapping):
            continue
        for operation in rest.get("operation") or []:
            level = _export_level(operation, "system")
            if level:
                levels.add(level)
        for resource in rest.get("resource") or []:
            if not isinstance(resource, Mapping) or resource.get("type") not in ("Patient", "Group"):
                continue
            for operation in resource.get("operation") or []:
                level = _export_level(operation, str(resource["type"]).lower())
                if level:
                    levels.add(level)
    return tuple(lvl for lvl in ("system", "patient", "group") if lvl in levels)


def detect_vendors(name: str, publisher: str) -> tuple[str, ...]:
    """Profiles whose software words appear in the reported software name or publisher.

    The profiles matching the most words win (``Cerner Millennium`` is Millennium, not just any Oracle
    Health server); a tie returns them all, for the caller to report as ambiguous.
    """
    text = f"{name} {publisher}".lower()
    hits = {
        profile.name: sum(word in text for word in profile.software_names)
        for profile in load_profiles().profiles.values()
    }
    best = max(hits.values(), default=0)
    return tuple(vendor for vendor, count in hits.items() if best and count == best)


def preflight(
    *,
    statement: Mapping[str, Any] | None,
    requested_scopes: Sequence[str],
    granted_scopes: Sequence[str],
    missing_scopes: Sequence[str],
    token_lifetime: float,
    profile: VendorProfile | None,
) -> Preflight:
    """The rows of the preflight table; ``statement`` None when /metadata could not be read."""
    result = Preflight()
    rows = result.rows
    rows.append(Row("token", f"obtained, valid {token_lifetime:.0f}s (not shown)", "ok"))
    rows.append(Row("scopes requested", " ".join(requested_scopes) or "(none)"))
    rows.append(Row("scopes granted", " ".join(granted_scopes) or "(none)"))
    if missing_scopes:
        rows.append(Row("scopes NOT granted", " ".join(missing_scopes), "warn"))
    detected: tuple[str, ...] = ()
    declared: tuple[str, ...] = ()
    if statement is None:
        rows.append(Row("CapabilityStatement", "could not be read from /metadata", "warn"))
    else:
        name, version, publisher = software(statement)
        rows.append(Row("software", f"{name or '(not reported)'} {version}".strip()))
        if publisher:
            rows.append(Row("publisher", publisher))
        declared = declared_export_levels(statement)
        rows.append(Row("export levels declared", ", ".join(declared) or "(no $export operation declared)"))
        detected = detect_vendors(name, publisher)
        if len(detected) == 1:
            rows.append(Row("detected vendor", detected[0]))
        elif detected:
            rows.append(Row("detected vendor", f"ambiguous: {', '.join(detected)} (none chosen)", "warn"))
        else:
            rows.append(Row("detected vendor", "none (the reported software matches no profile)"))
    if profile is None:
        hint = f"; set the connection's vendor extra to {detected[0]!r}" if len(detected) == 1 else ""
        rows.append(Row("vendor profile", f"none chosen{hint}", "warn" if hint else "info"))
        return result
    rows.append(Row("vendor profile", f"{profile.name} ({profile.title})"))
    if detected and profile.name not in detected:
        rows.append(Row("profile vs server", f"the server reports {', '.join(detected)}, not {profile.name}", "FAIL"))
    levels = profile.fact("export_levels")
    if levels is None:
        rows.append(Row("profile export levels", "unknown (no published page found)"))
    else:
        rows.append(Row("profile export levels", f"{', '.join(levels.value)} ({levels.source})"))
        missing = [lvl for lvl in levels.value if lvl not in declared]
        if statement is not None and declared and missing:
            rows.append(
                Row("levels vs server", f"the profile expects {', '.join(missing)}; the server declares none", "FAIL")
            )
    rule = profile.fact("scope_rule")
    if rule is not None and rule.value == "system-read-per-type" and any("/*." in s for s in requested_scopes):
        rows.append(
            Row(
                "scope vs profile",
                "a wildcard scope is requested; exports will request system/<Type>.read for each type in _type",
                "warn",
            )
        )
    for fact_name, label in (
        ("refused_parameters", "profile refuses"),
        ("scope_rule", "profile scope rule"),
        ("max_group_size", "profile group limit"),
        ("max_concurrent_exports", "profile concurrent exports"),
        ("file_lifetime_days", "profile file lifetime (days)"),
        ("polling", "profile polling"),
        ("jwks_uri", "profile jwks_uri"),
    ):
        fact = profile.fact(fact_name)
        if fact is not None:
            value = ", ".join(fact.value) if isinstance(fact.value, tuple) else str(fact.value)
            rows.append(Row(label, f"{value} ({fact.source})"))
    return result
