"""The sandbox playing a vendor profile: refuse at kick-off what the vendor publishes it refuses.

The rules are :func:`airflow_provider_smart.vendors.check_export_request`, the same function the operators
call before kick-off, so a DAG rehearsed against ``--vendor oracle-health`` meets the rules it will meet on
the real server. Refusals are 400 OperationOutcomes whose diagnostics name the rule and the vendor's page;
with ``Prefer: handling=lenient`` a vendor that documents lenient handling ignores a refused parameter
with a warning instead.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_smart.sandbox.bulk_params import KickoffError, issue
from airflow_provider_smart.vendors import VendorProfile, Violation, check_export_request


def _params(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for name, value in pairs:
        params.setdefault(name, []).append(value)
    return params


def _issue(profile: VendorProfile, violation: Violation, severity: str) -> dict[str, Any]:
    code = "not-supported" if violation.parameter else "business-rule"
    text = f"{profile.title}: {violation.rule}: {violation.message} (see {violation.source})"
    if severity == "warning":
        text = f"ignored (Prefer: handling=lenient): {text}"
    return issue(severity, code, text, violation.parameter)


def apply_vendor_rules(
    profile: VendorProfile,
    level: str,
    pairs: list[tuple[str, str]],
    *,
    scopes: tuple[str, ...],
    lenient: bool,
    group_size: int | None,
    exports_in_progress: int,
) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """The kick-off parameters to go on with and the warnings for the export's error file.

    :raises KickoffError: 400 for a broken rule, 429 when the vendor's concurrency limit is reached.
    """
    limit = profile.fact("max_concurrent_exports")
    if limit is not None and exports_in_progress >= limit.value:
        raise KickoffError(
            429,
            [issue("error", "throttled", f"{profile.title}: {limit.detail} (see {limit.source})")],
        )
    violations = check_export_request(profile, level, _params(pairs), scope=" ".join(scopes), group_size=group_size)
    if not violations:
        return pairs, []
    ignorable = lenient and profile.value("lenient_handling") is True
    dropped = {
        v.parameter for v in violations if v.parameter and v.rule in ("refused parameter", "unsupported parameter")
    }
    refusals = [v for v in violations if not (ignorable and v.parameter in dropped)]
    if refusals:
        raise KickoffError(400, [_issue(profile, v, "error") for v in refusals])
    warnings = [_issue(profile, v, "warning") for v in violations]
    return [(name, value) for name, value in pairs if name not in dropped], warnings
