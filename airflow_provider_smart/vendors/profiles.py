"""Load the vendor profile table (``profiles.json``) into frozen dataclasses.

Each fact carries the public page it was read from. A fact nobody found a page for is absent (None):
the checks then leave that rule alone rather than guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

#: The facts a profile may hold, and the type of each value.
FACT_TYPES: dict[str, type] = {
    "export_levels": list,
    "supported_parameters": list,
    "refused_parameters": list,
    "scope_rule": str,
    "associated_data_needs_provenance_type": bool,
    "max_concurrent_exports": int,
    "lenient_handling": bool,
    "polling": str,
    "file_lifetime_days": int,
    "max_group_size": int,
    "key_algorithms": list,
    "jwks_uri": str,
}


class UnknownVendorError(ValueError):
    """A ``vendor`` names no profile; the message lists the names there are."""


@dataclass(frozen=True)
class Fact:
    """One published fact: its value, what the page says, and the page."""

    value: Any
    detail: str
    source: str


@dataclass(frozen=True)
class VendorProfile:
    name: str
    title: str
    notes: str
    #: Lower-case words that, found in a server's reported software name or publisher, suggest this vendor.
    software_names: tuple[str, ...] = ()
    facts: dict[str, Fact] = field(default_factory=dict)

    def fact(self, name: str) -> Fact | None:
        return self.facts.get(name)

    def value(self, name: str) -> Any:
        fact = self.facts.get(name)
        return None if fact is None else fact.value


@dataclass(frozen=True)
class ProfileTable:
    version: int
    checked: str
    profiles: dict[str, VendorProfile]


def _fact(vendor: str, name: str, raw: Any) -> Fact:
    if name not in FACT_TYPES:
        raise ValueError(f"profiles.json: {vendor}: unknown fact {name!r} (known: {', '.join(sorted(FACT_TYPES))})")
    if not isinstance(raw, dict) or not {"value", "detail", "source"} <= raw.keys():
        raise ValueError(f"profiles.json: {vendor}.{name} needs value, detail and source")
    value = raw["value"]
    expected = FACT_TYPES[name]
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ValueError(f"profiles.json: {vendor}.{name} must be a {expected.__name__}, got {value!r}")
    source = str(raw["source"])
    if not source.startswith("https://"):
        raise ValueError(f"profiles.json: {vendor}.{name}: source must be an https:// page, got {source!r}")
    return Fact(value=tuple(value) if isinstance(value, list) else value, detail=str(raw["detail"]), source=source)


def parse_table(data: dict[str, Any]) -> ProfileTable:
    profiles = {}
    for name, raw in data["profiles"].items():
        facts = {key: _fact(name, key, value) for key, value in raw.get("facts", {}).items()}
        profiles[name] = VendorProfile(
            name=name,
            title=str(raw["title"]),
            notes=str(raw.get("notes", "")),
            software_names=tuple(str(s).lower() for s in raw.get("software_names", ())),
            facts=facts,
        )
    return ProfileTable(version=int(data["version"]), checked=str(data["checked"]), profiles=profiles)


@cache
def load_profiles() -> ProfileTable:
    """The shipped table (read once per process)."""
    text = resources.files("airflow_provider_smart.vendors").joinpath("profiles.json").read_text("utf-8")
    return parse_table(json.loads(text))


def profile_names() -> tuple[str, ...]:
    return tuple(load_profiles().profiles)


def get_profile(name: str) -> VendorProfile:
    """The profile called ``name`` (case and surrounding spaces ignored)."""
    key = (name or "").strip().lower()
    table = load_profiles().profiles
    if key not in table:
        raise UnknownVendorError(f"vendor {name!r} has no profile; choose one of: {', '.join(table)}")
    return table[key]
