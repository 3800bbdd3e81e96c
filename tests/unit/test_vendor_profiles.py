"""The vendor profile table loads, every fact cites a page, and the checks apply only known facts."""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

import pytest

from airflow_provider_smart.vendors import (
    UnknownVendorError,
    VendorRuleError,
    check_export_request,
    get_profile,
    profile_names,
    raise_for_violations,
    scopes_for_types,
)
from airflow_provider_smart.vendors.profiles import parse_table

ISSUE_VENDORS = (
    "epic",
    "oracle-health",
    "athenahealth",
    "meditech",
    "aidbox",
    "hapi",
    "medplum",
    "smile",
    "google",
    "azure",
    "aws",
)


def _raw() -> dict:
    return json.loads(resources.files("airflow_provider_smart.vendors").joinpath("profiles.json").read_text())


def test_every_vendor_of_the_issue_has_a_profile_and_every_fact_a_page() -> None:
    assert set(ISSUE_VENDORS) <= set(profile_names())
    for name in profile_names():
        profile = get_profile(name)
        assert profile.notes, f"{name} says nothing about what is known"
        for fact in profile.facts.values():
            assert fact.source.startswith("https://") and fact.detail


def test_unknown_vendor_lists_the_names() -> None:
    with pytest.raises(UnknownVendorError) as caught:
        get_profile("cernr")
    assert "'cernr'" in str(caught.value) and "oracle-health" in str(caught.value) and "epic" in str(caught.value)
    assert get_profile("  Oracle-Health ").name == "oracle-health"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["profiles"]["oracle-health"]["facts"]["max_group_size"].update(value="20000"), "must be a int"),
        (lambda d: d["profiles"]["oracle-health"]["facts"]["polling"].pop("source"), "needs value, detail and source"),
        (
            lambda d: d["profiles"]["epic"]["facts"].update(limit={"value": 1, "detail": "", "source": "https://x"}),
            "unknown fact",
        ),
        (lambda d: d["profiles"]["epic"]["facts"]["jwks_uri"].update(source="a blog"), "must be an https:// page"),
    ],
)
def test_a_malformed_table_is_refused(mutate, message: str) -> None:
    data = copy.deepcopy(_raw())
    mutate(data)
    with pytest.raises(ValueError, match=message):
        parse_table(data)


def test_oracle_refuses_elements_and_patient_and_other_levels() -> None:
    oracle = get_profile("oracle-health")
    found = check_export_request(oracle, "system", {"_elements": ["Patient.id"], "patient": ["Patient/1"]})
    assert [v.rule for v in found] == ["export level", "refused parameter", "refused parameter"]
    assert {v.parameter for v in found} == {None, "_elements", "patient"}
    assert all(v.source.startswith("https://docs.oracle.com/") for v in found)
    # Millennium lists _typeFilter as supported: it must pass.
    assert check_export_request(oracle, "group", {"_type": "Observation", "_typeFilter": ["Observation?x=1"]}) == []


def test_the_newer_oracle_platform_refuses_type_filter() -> None:
    found = check_export_request(get_profile("oracle-health-platform"), "group", {"_typeFilter": ["Condition?x=1"]})
    assert [(v.rule, v.parameter) for v in found] == [("refused parameter", "_typeFilter")]


def test_oracle_scope_rule_needs_a_read_scope_per_type() -> None:
    oracle = get_profile("oracle-health")
    params = {"_type": ["Patient,Observation"]}
    wildcard = check_export_request(oracle, "group", params, scope="system/*.read")
    assert [v.rule for v in wildcard] == ["scope per type"]
    assert "system/Patient.read system/Observation.read" in wildcard[0].message
    assert check_export_request(oracle, "group", params, scope="system/Patient.read system/Observation.rs") == []
    assert scopes_for_types(oracle, ["Patient,Observation", "Patient"]) == [
        "system/Patient.read",
        "system/Observation.read",
    ]
    assert scopes_for_types(get_profile("medplum"), ["Patient"]) is None


def test_group_size_and_provenance_rules() -> None:
    oracle = get_profile("oracle-health")
    assert [v.rule for v in check_export_request(oracle, "group", {}, group_size=20001)] == ["group size"]
    assert check_export_request(oracle, "group", {}, group_size=20000) == []
    bad = {"_type": "Observation", "includeAssociatedData": "LatestProvenanceResources"}
    assert [v.rule for v in check_export_request(oracle, "group", bad)] == ["includeAssociatedData"]
    good = {"_type": "Observation,Provenance", "includeAssociatedData": "LatestProvenanceResources"}
    assert check_export_request(oracle, "group", good) == []


def test_a_profile_without_facts_checks_nothing() -> None:
    hapi = get_profile("hapi")
    assert check_export_request(hapi, "system", {"_elements": "x", "_typeFilter": "y", "patient": "z"}) == []


def test_google_refuses_parameters_outside_its_list() -> None:
    found = check_export_request(get_profile("google"), "group", {"_type": "Patient", "_typeFilter": "Patient?x=1"})
    assert [(v.rule, v.parameter) for v in found] == [("unsupported parameter", "_typeFilter")]


def test_the_error_names_rule_vendor_and_page() -> None:
    oracle = get_profile("oracle-health")
    with pytest.raises(VendorRuleError) as caught:
        raise_for_violations(oracle, check_export_request(oracle, "group", {"_elements": "Patient.id"}))
    text = str(caught.value)
    assert "Oracle Health" in text and "refused parameter: _elements" in text
    assert "https://docs.oracle.com/en/industries/health/millennium-platform-apis/mfbda/" in text
    raise_for_violations(oracle, [])  # nothing to raise


def test_the_vendor_extra_is_validated_with_the_names(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from airflow_provider_smart.auth.settings import ConnectionSettingsError
    from airflow_provider_smart.hooks.smart import SmartFhirHook

    def settings(vendor: str) -> Any:
        conn = {"conn_type": "smart_fhir", "host": "https://f.example.org/r4", "login": "c", "password": "k"}
        monkeypatch.setenv("AIRFLOW_CONN_VENDOR_EXTRA", json.dumps({**conn, "extra": {"vendor": vendor}}))
        return SmartFhirHook("vendor_extra").settings

    assert settings(" Oracle-Health ").vendor == "oracle-health"
    assert settings("").vendor is None
    with pytest.raises(ConnectionSettingsError) as caught:
        settings("cerner")
    assert "connection 'vendor_extra'" in str(caught.value) and "oracle-health" in str(caught.value)


def test_the_connection_form_offers_every_profile() -> None:
    from airflow_provider_smart.get_provider_info import get_provider_info

    (smart,) = (t for t in get_provider_info()["connection-types"] if t["connection-type"] == "smart_fhir")
    assert tuple(smart["conn-fields"]["vendor"]["schema"]["enum"]) == profile_names()


def test_detection_prefers_the_most_specific_profile_and_reports_ties() -> None:
    from airflow_provider_smart.vendors.preflight import detect_vendors

    assert detect_vendors("Cerner Millennium", "") == ("oracle-health",)
    assert detect_vendors("Oracle Health FHIR", "") == ("oracle-health", "oracle-health-platform")
    assert detect_vendors("HAPI FHIR Server", "") == ("hapi",)
    assert detect_vendors("Some FHIR server", "ACME") == ()


def test_declared_levels_read_operations_by_definition_or_name() -> None:
    from airflow_provider_smart.vendors.preflight import declared_export_levels

    statement = {
        "rest": [
            {
                "operation": [{"name": "everything", "definition": "http://x/OperationDefinition/everything"}],
                "resource": [
                    {"type": "Group", "operation": [{"name": "export", "definition": "http://x/group-export"}]},
                    {"type": "Patient", "operation": [{"name": "$export"}]},
                    {"type": "Observation", "operation": [{"name": "export"}]},
                ],
            }
        ]
    }
    assert declared_export_levels(statement) == ("patient", "group")
    assert declared_export_levels({"rest": "junk"}) == ()


def test_preflight_without_metadata_warns_and_cleans_server_text() -> None:
    from airflow_provider_smart.vendors.preflight import preflight

    report = preflight(
        statement=None,
        requested_scopes=["system/*.read"],
        granted_scopes=[],
        missing_scopes=["system/*.read"],
        token_lifetime=300,
        profile=get_profile("oracle-health"),
    )
    table = report.table()
    assert "could not be read" in table and "scopes NOT granted" in table and not report.failed
    hostile = preflight(
        statement={"software": {"name": "Epic\x1b[2J\nFAIL  fake row"}},
        requested_scopes=[],
        granted_scopes=[],
        missing_scopes=[],
        token_lifetime=1,
        profile=None,
    )
    assert "\x1b" not in hostile.table() and "\nFAIL  fake row" not in hostile.table()


def test_the_committed_vendor_page_is_generated_from_the_table() -> None:
    from pathlib import Path

    from airflow_provider_smart.vendors.profiles import load_profiles
    from airflow_provider_smart.vendors.rst import render

    page = Path(__file__).resolve().parents[2] / "docs" / "vendors.rst"
    assert page.read_text(encoding="utf-8") == render(load_profiles()), (
        "docs/vendors.rst differs from the profile table: run python tools/gen_vendor_docs.py"
    )
    for profile in load_profiles().profiles.values():
        for fact in profile.facts.values():
            assert fact.source in page.read_text(encoding="utf-8")


@pytest.mark.parametrize(("vendor", "backoff"), [("oracle-health", 2.0), ("medplum", 1.0), (None, 1.0)])
def test_the_hook_backs_off_exponentially_where_the_vendor_asks(
    vendor: str | None, backoff: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from airflow_provider_smart.fhir.bulk.status import PollPolicy
    from airflow_provider_smart.hooks.smart import SmartFhirHook

    extra = {"vendor": vendor} if vendor else {}
    conn = {
        "conn_type": "smart_fhir",
        "host": "https://fhir.example.org/r4",
        "login": "c",
        "password": "k",
        "extra": extra,
    }
    monkeypatch.setenv("AIRFLOW_CONN_VENDOR_POLL", json.dumps(conn))
    policy = SmartFhirHook("vendor_poll").poll_policy(PollPolicy(interval=5))
    assert policy.backoff == backoff and policy.interval == 5
