from __future__ import annotations

import pytest

from airflow_provider_smart.fhir.bulk import (
    LineChecker,
    ManifestError,
    NdjsonCheckError,
    OutcomeSummary,
    manifest_to_dict,
    merge_pages,
    parse_manifest,
    plan_files,
)

STATUS = "https://ehr.example.org/fhir/status/1"


def test_parse_manifest_accepts_error_and_stu4_outcome_and_resolves_urls() -> None:
    m = parse_manifest(
        {
            "transactionTime": "2024-01-01T00:00:00Z",
            "request": "https://ehr.example.org/fhir/$export",
            "requiresAccessToken": False,
            "output": [
                {"type": "Patient", "url": "files/p1.ndjson", "count": 2},
                {"type": "Patient", "url": "https://s3.example.com/p2?sig=x"},
                {"type": "Observation", "url": "files/o1.ndjson", "count": 0},
            ],
            "error": [{"type": "OperationOutcome", "url": "files/e1.ndjson"}],
            "outcome": [{"type": "OperationOutcome", "url": "files/e2.ndjson"}],
            "deleted": [{"type": "Bundle", "url": "files/d1.ndjson"}],
        },
        base_url=STATUS,
    )
    assert m.requires_access_token is False
    assert m.output[0].url == "https://ehr.example.org/fhir/status/files/p1.ndjson"
    assert m.output[0].count == 2 and m.output[1].count is None
    assert [f.url.rsplit("/", 1)[1] for f in m.error] == ["e1.ndjson", "e2.ndjson"]
    plan = plan_files(m)
    assert [(p.key, p.directory, p.filename, p.expected_type) for p in plan] == [
        ("Patient.00000", "Patient", "Patient.00000.ndjson", "Patient"),
        ("Patient.00001", "Patient", "Patient.00001.ndjson", "Patient"),
        ("Observation.00000", "Observation", "Observation.00000.ndjson", "Observation"),
        ("errors.00000", "errors", "OperationOutcome.00000.ndjson", "OperationOutcome"),
        ("errors.00001", "errors", "OperationOutcome.00001.ndjson", "OperationOutcome"),
        ("deleted.00000", "deleted", "Bundle.00000.ndjson", "Bundle"),
    ]
    # The stored form reads back to the same plan (used when resuming).
    assert plan_files(parse_manifest(manifest_to_dict(m))) == plan


def test_paged_manifests_merge_in_order() -> None:
    p1 = parse_manifest(
        {
            "transactionTime": "T",
            "requiresAccessToken": True,
            "output": [{"type": "Patient", "url": "a"}],
            "link": [{"relation": "next", "url": "page2"}],
        },
        base_url=STATUS,
    )
    assert p1.next_url == "https://ehr.example.org/fhir/status/page2"
    p2 = parse_manifest({"transactionTime": "T", "output": [{"type": "Patient", "url": "b"}]}, base_url=STATUS)
    merged = merge_pages([p1, p2])
    assert [f.url[-1] for f in merged.output] == ["a", "b"] and merged.next_url is None
    other = parse_manifest({"transactionTime": "U", "requiresAccessToken": True}, base_url=STATUS)
    with pytest.raises(ManifestError, match="disagree"):
        merge_pages([p1, other])


def test_organize_output_by_blocks_accept_any_type() -> None:
    m = parse_manifest(
        {
            "transactionTime": "T",
            "requiresAccessToken": True,
            "outputOrganizedBy": "Patient",
            "output": [{"url": "b1"}, {"url": "b2", "continuesInFile": "b3"}, {"url": "b3"}],
        },
        base_url=STATUS,
    )
    plan = plan_files(m)
    assert [p.filename for p in plan] == ["block.00000.ndjson", "block.00001.ndjson", "block.00002.ndjson"]
    assert {p.directory for p in plan} == {"by-Patient"} and all(p.expected_type is None for p in plan)
    assert m.output[1].continues_in_file == "b3"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ([], "JSON object"),
        ({}, "transactionTime"),
        ({"transactionTime": "T", "requiresAccessToken": "yes"}, "true or false"),
        ({"transactionTime": "T", "output": {}}, "must be an array"),
        ({"transactionTime": "T", "output": [{"type": "Patient"}]}, "no url"),
        ({"transactionTime": "T", "output": [{"type": "Patient", "url": "u", "count": -1}]}, "non-negative"),
        ({"transactionTime": "T", "output": [{"type": "bad type", "url": "u"}]}, "not a FHIR resource type"),
    ],
)
def test_bad_manifests(data: object, words: str) -> None:
    with pytest.raises(ManifestError, match=words):
        parse_manifest(data)


def test_output_without_type_needs_organize_by() -> None:
    m = parse_manifest({"transactionTime": "T", "output": [{"url": "u"}]})
    with pytest.raises(ManifestError, match="no type"):
        plan_files(m)


def test_line_checker() -> None:
    c = LineChecker("Patient.00000", "Patient", 2)
    c.check(b'{"resourceType":"Patient","id":"1"}')
    with pytest.raises(NdjsonCheckError, match="line 2: resourceType 'Observation'"):
        c.check(b'{"resourceType":"Observation"}')
    c2 = LineChecker("f", "Patient", 3)
    c2.check(b'{"resourceType":"Patient"}')
    with pytest.raises(NdjsonCheckError, match="1 lines but the manifest says count=3"):
        c2.finish()
    with pytest.raises(NdjsonCheckError, match="not valid JSON"):
        LineChecker("f", None, None).check(b'{"resourceType":')
    with pytest.raises(NdjsonCheckError, match="not a resource"):
        LineChecker("f", None, None).check(b"[1]")
    with pytest.raises(NdjsonCheckError, match="no resourceType"):
        LineChecker("f", None, None).check(b'{"id": 1}')
    any_type = LineChecker("f", None, None)
    any_type.check(b'{"resourceType":"Patient"}')
    any_type.check(b'{"resourceType":"Observation"}')
    assert any_type.finish() == 2


def test_outcome_summary_sorts_by_severity() -> None:
    s = OutcomeSummary(keep=2)
    s.add_outcome(
        {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "x", "diagnostics": "fyi"}]}
    )
    s.add_outcome(
        {"resourceType": "OperationOutcome", "issue": [{"severity": "fatal", "code": "y", "diagnostics": "lost"}]}
    )
    s.add_outcome({"resourceType": "OperationOutcome", "issue": [{"severity": "odd", "code": "z"}]})
    assert s.counts == {"fatal": 1, "error": 1, "warning": 0, "information": 1}
    assert s.sorted_messages()[0] == "[fatal] fatal/y: lost"
    assert s.sorted_messages()[-1].startswith("[information]")
    assert s.at_least("fatal") == 1 and s.at_least("error") == 2 and s.at_least("information") == 3
    t = OutcomeSummary()
    t.merge(s.to_dict())
    assert t.counts == s.counts
