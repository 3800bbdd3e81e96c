"""Each vendor profile end to end: the operators refuse before kick-off, the sandbox plays the vendor.

For every profile: a request breaking one of its published rules fails in the operator before any
kick-off (the sandbox sees none), with the rule and the vendor's page; the sandbox playing the vendor
refuses the same request itself with an OperationOutcome naming the rule (for a connection that names
no vendor); and an allowed request runs and lands. A profile with no published rule has nothing to
refuse: the test says so instead of inventing one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_smart.fhir.errors import FhirError
from airflow_provider_smart.sandbox.server import SandboxServer
from airflow_provider_smart.sandbox.state import SandboxConfig
from airflow_provider_smart.vendors import VendorProfile, check_export_request, get_profile, profile_names
from tests.integration.bulk_helpers import context, export_operator, kickoffs, landed
from tests.sandbox_fixtures import SmartClient

pytestmark = pytest.mark.integration

GROUP = "grp-diabetes"
#: A value for each kick-off parameter the operator can send, as operator keyword arguments.
BREAKERS: dict[str, dict[str, Any]] = {
    "_elements": {"elements": ["Patient.id"]},
    "_typeFilter": {"type_filters": ["Observation?status=final"]},
    "patient": {"patients": ["pat-1"]},
    "includeAssociatedData": {"include_associated_data": ["LatestProvenanceResources"]},
}


def allowed_level(profile: VendorProfile) -> str:
    levels = profile.value("export_levels")
    return "group" if levels is None or "group" in levels else str(levels[0])


def level_kwargs(level: str) -> dict[str, Any]:
    return {"level": level, "group_id": GROUP if level == "group" else None}


def breaking_request(profile: VendorProfile) -> tuple[str, dict[str, Any]] | None:
    """(rule, operator kwargs) of a request the profile's published rules refuse; None if none are known."""
    level = allowed_level(profile)
    refused = profile.value("refused_parameters")
    if refused:
        name = next(n for n in refused if n in BREAKERS)
        return "refused parameter", {**level_kwargs(level), "types": ["Patient", "Provenance"], **BREAKERS[name]}
    supported = profile.value("supported_parameters")
    if supported:
        name = next(n for n in BREAKERS if n not in supported)
        return "unsupported parameter", {**level_kwargs(level), **BREAKERS[name]}
    levels = profile.value("export_levels") or ("system", "patient", "group")
    other = next((lvl for lvl in ("system", "patient", "group") if lvl not in levels), None)
    return None if other is None else ("export level", level_kwargs(other))


def refuses_nothing(profile: VendorProfile) -> bool:
    """No level and no parameter the operator can send breaks a published rule of ``profile``."""
    return all(
        not check_export_request(profile, level, {name: ["x"]})
        for level in ("system", "patient", "group")
        for name in BREAKERS
    )


def breaking_or_skip(profile: VendorProfile) -> tuple[str, dict[str, Any]]:
    breaking = breaking_request(profile)
    if breaking is None:
        assert refuses_nothing(profile)
        pytest.skip(f"{profile.name}: no published rule refuses a level or parameter, so nothing is refused")
    return breaking


@pytest.fixture
def playing(
    sandbox_factory: Callable[..., SandboxServer], smart_client_factory: Callable[..., SmartClient]
) -> Callable[..., tuple[SandboxServer, SmartClient]]:
    def start(vendor: str, *, connection_vendor: str | None) -> tuple[SandboxServer, SmartClient]:
        server = sandbox_factory(SandboxConfig(patients=10, seed=42, vendor=vendor))
        extra = {"vendor": connection_vendor} if connection_vendor else None
        return server, smart_client_factory(server=server, extra=extra)

    return start


def run(tmp_path: Path, **kwargs: Any) -> Any:
    return export_operator(tmp_path / "out", deferrable=False, **kwargs).execute(context())


@pytest.mark.parametrize("vendor", profile_names())
def test_the_operator_refuses_before_kick_off(vendor: str, playing: Callable[..., Any], tmp_path: Path) -> None:
    profile = get_profile(vendor)
    rule, kwargs = breaking_or_skip(profile)
    server, _ = playing(vendor, connection_vendor=vendor)
    with pytest.raises(AirflowFailException) as caught:
        run(tmp_path, **kwargs)
    message = str(caught.value)
    assert f"{rule}:" in message and profile.title in message
    assert any(fact.source in message for fact in profile.facts.values())
    assert kickoffs(server) == 0  # refused before anything reached the server


@pytest.mark.parametrize("vendor", profile_names())
def test_the_sandbox_plays_the_vendor_refusal(vendor: str, playing: Callable[..., Any], tmp_path: Path) -> None:
    profile = get_profile(vendor)
    rule, kwargs = breaking_or_skip(profile)
    server, _ = playing(vendor, connection_vendor=None)  # the connection knows nothing: the server refuses
    # A refused request fails at once (no retry sends other parameters), the server's answer as the cause.
    with pytest.raises(AirflowFailException) as caught:
        run(tmp_path, **kwargs)
    message = str(caught.value)
    refusal = caught.value.__cause__
    assert isinstance(refusal, FhirError) and refusal.status == 400
    assert rule in message and profile.title in message
    assert any(fact.source in message for fact in profile.facts.values())
    assert kickoffs(server) == 1


@pytest.mark.parametrize("vendor", profile_names())
def test_an_allowed_request_runs(vendor: str, playing: Callable[..., Any], tmp_path: Path) -> None:
    profile = get_profile(vendor)
    server, _ = playing(vendor, connection_vendor=vendor)
    level = allowed_level(profile)
    summary = run(tmp_path, types=["Patient", "Observation"], **level_kwargs(level))
    got = landed(tmp_path / "out", "manual__run1")
    assert set(got) == {"Patient", "Observation"} and summary["counts"]["Patient"] == len(got["Patient"])
    assert kickoffs(server) == 1


def test_oracle_scopes_are_built_from_type(
    playing: Callable[..., Any], tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    _server, client = playing("oracle-health", connection_vendor="oracle-health")
    assert client.scope == "system/*.read"
    caplog.set_level("INFO")
    run(tmp_path, types=["Patient", "Observation"], **level_kwargs("group"))
    logged = caplog.text + capsys.readouterr().out
    assert "requesting system/Patient.read system/Observation.read instead of the connection's scope" in logged
    assert "grants 2 scope(s): system/Patient.read system/Observation.read" in logged


def test_oracle_lenient_handling_ignores_a_refused_parameter(playing: Callable[..., Any], tmp_path: Path) -> None:
    server, _ = playing("oracle-health", connection_vendor=None)
    summary = run(tmp_path, types=["Patient"], elements=["Patient.id"], lenient=True, **level_kwargs("group"))
    assert summary["counts"]["Patient"] > 0
    errors = list((tmp_path / "out").glob("errors/manual__run1/*.ndjson"))
    text = "".join(p.read_text() for p in errors)
    assert "ignored (Prefer: handling=lenient)" in text and "_elements" in text
    # The parameter was dropped, not applied: the Patients landed whole.
    patients = landed(tmp_path / "out", "manual__run1")["Patient"]
    assert all("name" in p for p in patients.values())
    assert kickoffs(server) == 1


def test_oracle_allows_one_export_at_a_time(playing: Callable[..., Any]) -> None:
    server, client = playing("oracle-health", connection_vendor=None)
    session = client.session()
    url = f"{server.fhir_base}/Group/{GROUP}/$export"
    headers = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
    first = session.get(url, headers=headers, timeout=30)
    second = session.get(url, headers=headers, timeout=30)
    assert first.status_code == 202
    assert second.status_code == 429
    assert "one bulk export per client application and tenant" in second.json()["issue"][0]["diagnostics"]


def test_an_unknown_vendor_is_refused_with_the_names(sandbox_factory: Callable[..., SandboxServer]) -> None:
    with pytest.raises(ValueError, match="choose one of: epic, oracle-health"):
        sandbox_factory(SandboxConfig(vendor="cernr"))


def test_a_deferred_export_polls_with_the_vendors_backoff(
    playing: Callable[..., Any], tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.integration.bulk_helpers import run_deferred

    server, _ = playing("oracle-health", connection_vendor="oracle-health")
    caplog.set_level("INFO")
    op = export_operator(tmp_path / "out", types=["Patient"], **level_kwargs("group"))
    summary, triggers = run_deferred(op, context())
    assert len(triggers) == 1 and summary["counts"]["Patient"] > 0
    logged = caplog.text + capsys.readouterr().out
    assert "vendor profile oracle-health asks for exponential backoff" in logged
    assert kickoffs(server) == 1
