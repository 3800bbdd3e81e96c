"""Check a Bulk Data kick-off against a vendor profile before it is sent.

One function, :func:`check_export_request`, serves both sides: the operators call it before kick-off
(and fail with the vendor's rule and page), and the sandbox calls it to refuse what the vendor refuses.
A fact the profile does not hold is never checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from airflow_provider_smart.fhir.bulk.kickoff import ExportRequest
from airflow_provider_smart.vendors.profiles import VendorProfile

PER_TYPE_SCOPES = "system-read-per-type"


@dataclass(frozen=True)
class Violation:
    """One rule of a vendor that a request breaks."""

    rule: str
    message: str
    source: str
    #: The kick-off parameter at fault (for an OperationOutcome's ``expression``), if one is.
    parameter: str | None = None

    def __str__(self) -> str:
        return f"{self.rule}: {self.message} (see {self.source})"


class VendorRuleError(ValueError):
    """A request breaks one or more rules of the connection's vendor profile."""

    def __init__(self, profile: VendorProfile, violations: Sequence[Violation]):
        self.profile = profile
        self.violations = tuple(violations)
        lines = "; ".join(str(v) for v in violations)
        super().__init__(
            f"the request breaks {profile.title}'s published rules (vendor profile {profile.name!r}): {lines}. "
            "Change the request, or set the connection's vendor extra to another profile (or empty) if this "
            "server is not that vendor's."
        )


def _present(params: Mapping[str, Sequence[str] | str | None]) -> dict[str, tuple[str, ...]]:
    present: dict[str, tuple[str, ...]] = {}
    for name, value in params.items():
        if value is None or value == "" or value == ():
            continue
        values = (value,) if isinstance(value, str) else tuple(value)
        if values:
            present[name] = values
    return present


def _types(values: Iterable[str]) -> list[str]:
    return [t.strip() for value in values for t in value.split(",") if t.strip()]


def scope_covers(scopes: Iterable[str], resource_type: str) -> bool:
    """Whether one of ``scopes`` names ``system/<resource_type>`` read access explicitly."""
    for scope in scopes:
        if "/" not in scope or "." not in scope:
            continue
        context, rest = scope.split("/", 1)
        name, _, access = rest.partition(".")
        if context == "system" and name == resource_type and (access in ("read", "*") or "r" in access.split("?")[0]):
            return True
    return False


def scopes_for_types(profile: VendorProfile, types: Iterable[str]) -> list[str] | None:
    """The per-type scopes a profile asks for (``system/<Type>.read`` for each type), or None."""
    if profile.value("scope_rule") != PER_TYPE_SCOPES:
        return None
    wanted = _types(types)
    return [f"system/{t}.read" for t in dict.fromkeys(wanted)] or None


def export_params(request: ExportRequest) -> dict[str, tuple[str, ...]]:
    """The kick-off parameters of ``request`` by wire name (what :func:`check_export_request` reads)."""
    optional = {
        "_outputFormat": request.output_format,
        "_since": request.since,
        "_until": request.until,
        "organizeOutputBy": request.organize_output_by,
        "allowPartialManifests": None
        if request.allow_partial_manifests is None
        else str(request.allow_partial_manifests),
    }
    params: dict[str, tuple[str, ...]] = {name: (value,) for name, value in optional.items() if value}
    lists = {
        "_type": request.types,
        "_elements": request.elements,
        "_typeFilter": request.type_filters,
        "patient": request.patients,
        "includeAssociatedData": request.include_associated_data,
    }
    params.update({name: tuple(values) for name, values in lists.items() if values})
    return params


def check_export_request(
    profile: VendorProfile,
    level: str,
    params: Mapping[str, Sequence[str] | str | None],
    *,
    scope: str | None = None,
    group_size: int | None = None,
) -> list[Violation]:
    """The rules of ``profile`` that a kick-off at ``level`` with ``params`` breaks (empty: none known).

    :param params: kick-off parameters by their wire name (``_type``, ``_typeFilter``, ``patient``, ...).
    :param scope: the space-separated scopes requested, for the per-type scope rule; None skips it.
    :param group_size: members of the exported Group, when known, for the group-size limit.
    """
    violations: list[Violation] = []
    present = _present(params)
    levels = profile.fact("export_levels")
    if levels is not None and level not in levels.value:
        violations.append(
            Violation(
                "export level",
                f"{level}-level $export is not offered; {profile.title} exports at: {', '.join(levels.value)}",
                levels.source,
            )
        )
    refused = profile.fact("refused_parameters")
    if refused is not None:
        for name in refused.value:
            if name in present:
                violations.append(
                    Violation("refused parameter", f"{name} is not supported ({refused.detail})", refused.source, name)
                )
    supported = profile.fact("supported_parameters")
    if supported is not None:
        for name in present:
            if name not in supported.value:
                violations.append(
                    Violation(
                        "unsupported parameter",
                        f"{name} is not among the parameters {profile.title} supports ({', '.join(supported.value)})",
                        supported.source,
                        name,
                    )
                )
    associated = profile.fact("associated_data_needs_provenance_type")
    if (
        associated is not None
        and associated.value
        and "includeAssociatedData" in present
        and "_type" in present
        and "Provenance" not in _types(present["_type"])
    ):
        violations.append(
            Violation("includeAssociatedData", associated.detail, associated.source, "includeAssociatedData")
        )
    rule = profile.fact("scope_rule")
    if rule is not None and rule.value == PER_TYPE_SCOPES and scope is not None and "_type" in present:
        missing = [t for t in dict.fromkeys(_types(present["_type"])) if not scope_covers(scope.split(), t)]
        if missing:
            violations.append(
                Violation(
                    "scope per type",
                    f"the requested scope lacks {' '.join(f'system/{t}.read' for t in missing)} ({rule.detail})",
                    rule.source,
                    "_type",
                )
            )
    limit = profile.fact("max_group_size")
    if limit is not None and level == "group" and group_size is not None and group_size > limit.value:
        violations.append(
            Violation(
                "group size",
                f"the Group has {group_size} members; at most {limit.value} are allowed ({limit.detail})",
                limit.source,
            )
        )
    return violations


def raise_for_violations(profile: VendorProfile, violations: Sequence[Violation]) -> None:
    if violations:
        raise VendorRuleError(profile, violations)
