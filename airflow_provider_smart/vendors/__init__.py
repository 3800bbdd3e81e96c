"""Vendor profiles: what each EHR or FHIR service publishes about its Bulk Data and SMART limits.

Plain data (``profiles.json``) read by :mod:`.profiles`, checked by :mod:`.rules`; no Airflow import.
"""

from airflow_provider_smart.vendors.profiles import (
    Fact,
    UnknownVendorError,
    VendorProfile,
    get_profile,
    load_profiles,
    profile_names,
)
from airflow_provider_smart.vendors.rules import (
    VendorRuleError,
    Violation,
    check_export_request,
    raise_for_violations,
    scopes_for_types,
)

__all__ = [
    "Fact",
    "UnknownVendorError",
    "VendorProfile",
    "VendorRuleError",
    "Violation",
    "check_export_request",
    "get_profile",
    "load_profiles",
    "profile_names",
    "raise_for_violations",
    "scopes_for_types",
]
