"""The search iterator over faked HTTP: paging links, origins, entry modes, retries and errors."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta, timezone

import pytest
import requests
import responses
from responses import matchers

from airflow_provider_smart.fhir.errors import FhirError, TransientFhirError
from airflow_provider_smart.fhir.search import (
    FhirSearch,
    SearchRequest,
    format_instant,
    last_updated_window,
    normalize_params,
    parse_instant,
)
from tests.fhir_fakes import BASE, PlainHttp, bundle, outcome, resource

OBS = f"{BASE}/Observation"


def page_param(n: int) -> list[matchers.Any]:  # type: ignore[name-defined]
    return [matchers.query_param_matcher({"page": str(n)})]


def run(search: FhirSearch) -> list[tuple[str, str]]:
    return [(mode, f"{r['resourceType']}/{r['id']}") for mode, r in search]


def search_for(params: object = None, method: str = "GET", **kwargs: object) -> FhirSearch:
    sleeps: list[float] = []
    s = FhirSearch(PlainHttp(), SearchRequest.build("Observation", params, method), sleep=sleeps.append, **kwargs)  # type: ignore[arg-type]
    s.sleeps = sleeps  # type: ignore[attr-defined]
    return s


@responses.activate
def test_follows_relative_and_absolute_next_links_and_sends_params() -> None:
    responses.get(
        OBS,
        match=[matchers.query_param_matcher({"code": "http://loinc.org|4548-4", "_count": "2"})],
        json=bundle([resource("Observation", "1"), resource("Observation", "2")], next_url="Observation?page=2"),
    )
    responses.get(OBS, match=page_param(2), json=bundle([resource("Observation", "3")], next_url=f"{OBS}?page=3"))
    responses.get(OBS, match=page_param(3), json=bundle([resource("Observation", "4")]))
    search = search_for({"code": "http://loinc.org|4548-4", "_count": 2})
    assert run(search) == [("match", f"Observation/{i}") for i in "1234"]
    assert search.stats.pages == 3 and search.stats.matches == 4 and search.stats.retries == 0


@responses.activate
def test_relative_next_link_resolves_against_the_page_url() -> None:
    responses.get(
        OBS,
        match=[matchers.query_param_matcher({})],
        json=bundle([resource("Observation", "1")], next_url="/r4/Observation?page=2"),
    )
    responses.get(OBS, match=page_param(2), json=bundle([resource("Observation", "2")]))
    assert [k for _, k in run(search_for())] == ["Observation/1", "Observation/2"]


@responses.activate
def test_next_link_to_another_origin_is_refused_before_any_request() -> None:
    responses.get(
        OBS, json=bundle([resource("Observation", "1")], next_url="https://evil.example.net/r4/Observation?page=2")
    )
    search = search_for()
    with pytest.raises(FhirError, match="refusing to follow the next link to another origin"):
        run(search)
    assert [url for _, url in search.http.calls] == [OBS]  # type: ignore[attr-defined]
    # Same host on another port or scheme is another origin too.
    responses.replace(responses.GET, OBS, json=bundle([], next_url="http://fhir.example.org/r4/Observation?page=2"))
    with pytest.raises(FhirError, match="another origin"):
        run(search_for())


@responses.activate
def test_include_and_outcome_entries_are_separated(caplog: pytest.LogCaptureFixture) -> None:
    patient = resource("Patient", "p1")
    responses.get(
        OBS,
        json=bundle(
            [resource("Observation", "1")],
            includes=[patient],
            outcomes=[outcome("parameter 'foo' unknown and ignored", severity="warning", code="not-supported")],
        ),
    )
    caplog.set_level(logging.WARNING)
    search = search_for({"_include": "Observation:patient"})
    pages = list(search.pages())
    assert [r["id"] for r in pages[0].matches] == ["1"]
    assert [r["id"] for r in pages[0].includes] == ["p1"]
    assert pages[0].outcomes[0]["resourceType"] == "OperationOutcome"
    assert "parameter 'foo' unknown and ignored" in caplog.text
    assert search.stats.includes == 1 and search.stats.outcomes == 1


@responses.activate
def test_entry_without_search_mode_is_a_match() -> None:
    body = bundle([resource("Observation", "1")])
    del body["entry"][0]["search"]
    responses.get(OBS, json=body)
    assert run(search_for()) == [("match", "Observation/1")]


@responses.activate
def test_transient_faults_refetch_the_same_page_without_duplicates() -> None:
    responses.get(
        OBS,
        match=[matchers.query_param_matcher({})],
        json=bundle([resource("Observation", "1")], next_url="Observation?page=2"),
    )
    # Page 2 fails four different ways, then answers.
    responses.get(OBS, match=page_param(2), status=503, json=outcome("busy", code="transient"))
    responses.get(OBS, match=page_param(2), status=429, headers={"Retry-After": "7"}, body="slow down")
    responses.get(OBS, match=page_param(2), body=requests.exceptions.ChunkedEncodingError("connection dropped"))
    responses.get(
        OBS,
        match=page_param(2),
        body=json.dumps(bundle([resource("Observation", "2")]))[:40],
        content_type="application/fhir+json",
    )
    responses.get(
        OBS,
        match=page_param(2),
        json=bundle([resource("Observation", "2"), resource("Observation", "3")], next_url="Observation?page=3"),
    )
    responses.get(OBS, match=page_param(3), json=bundle([resource("Observation", "4")]))
    search = search_for(page_retries=5)
    keys = [k for _, k in run(search)]
    assert keys == ["Observation/1", "Observation/2", "Observation/3", "Observation/4"]
    assert search.stats.retries == 4
    assert 7.0 <= search.sleeps[1] <= 7.0 + 0.6  # type: ignore[attr-defined]  # Retry-After honoured (+ jitter)
    page2_calls = [u for _, u in search.http.calls if u.endswith("page=2")]  # type: ignore[attr-defined]
    assert len(page2_calls) == 5 and len(set(page2_calls)) == 1


@responses.activate
def test_a_transient_error_raised_by_the_client_is_retried() -> None:
    class GivingUpHttp(PlainHttp):
        failures = 1

        def request(self, method: str, url_or_path: str, **kwargs: object) -> requests.Response:  # type: ignore[override]
            if self.failures:
                self.failures -= 1
                raise TransientFhirError("HTTP 503 after retries", status=503, retry_after=2.0)
            return super().request(method, url_or_path, **kwargs)  # type: ignore[arg-type]

    responses.get(OBS, json=bundle([resource("Observation", "1")]))
    sleeps: list[float] = []
    search = FhirSearch(GivingUpHttp(), SearchRequest.build("Observation"), sleep=sleeps.append)
    assert run(search) == [("match", "Observation/1")]
    assert len(sleeps) == 1 and 2.0 <= sleeps[0] <= 2.0 + 0.35


@responses.activate
def test_retries_run_out_with_a_clear_error() -> None:
    responses.get(OBS, status=502, body="bad gateway")
    search = search_for(page_retries=2)
    with pytest.raises(FhirError, match=r"failed 3 times .*; last error: .*HTTP 502"):
        run(search)
    assert len(search.http.calls) == 3  # type: ignore[attr-defined]


@responses.activate
def test_operation_outcome_error_stops_with_its_text_and_is_not_retried() -> None:
    responses.get(OBS, status=400, json=outcome("Unknown search parameter 'colour'"))
    search = search_for({"colour": "red"})
    with pytest.raises(FhirError, match="Unknown search parameter 'colour'") as info:
        run(search)
    assert info.value.status == 400
    assert len(search.http.calls) == 1  # type: ignore[attr-defined]


def test_a_final_error_from_the_client_names_the_page_and_the_search() -> None:
    class RefusingHttp(PlainHttp):
        def request(self, method: str, url_or_path: str, **kwargs: object) -> requests.Response:  # type: ignore[override]
            raise FhirError(
                f"GET {OBS}?<redacted> answered HTTP 400: error/not-supported: Unknown search parameter 'colour'",
                status=400,
                outcome=outcome("Unknown search parameter 'colour'"),
            )

    request = SearchRequest.build("Observation", {"colour": "red", "patient": "Patient/secret-id"})
    with pytest.raises(FhirError) as info:
        run(FhirSearch(RefusingHttp(), request, sleep=lambda _: None))
    message = str(info.value)
    assert message.startswith("search page 1 of Observation?colour=…&patient=… failed: GET ")
    assert message.endswith("Unknown search parameter 'colour'")
    assert "secret-id" not in message  # parameter values may identify a patient
    assert info.value.status == 400 and info.value.outcome is not None


@responses.activate
def test_operation_outcome_instead_of_a_bundle_is_an_error() -> None:
    responses.get(OBS, status=200, json=outcome("too costly", code="too-costly"))
    with pytest.raises(FhirError, match="search failed: error/too-costly: too costly"):
        run(search_for())


@responses.activate
def test_not_a_searchset_is_an_error() -> None:
    responses.get(OBS, json={"resourceType": "Bundle", "type": "collection"})
    with pytest.raises(FhirError, match="not a searchset Bundle"):
        run(search_for())


@responses.activate
def test_a_next_link_seen_twice_stops_the_loop() -> None:
    responses.get(OBS, match=[matchers.query_param_matcher({})], json=bundle([], next_url="Observation?page=2"))
    responses.get(OBS, match=page_param(2), json=bundle([], next_url="Observation?page=2"))
    with pytest.raises(FhirError, match="twice"):
        run(search_for())


@responses.activate
def test_post_search_sends_a_form_and_follows_next_with_get() -> None:
    responses.post(
        f"{OBS}/_search",
        match=[matchers.urlencoded_params_matcher({"code": "a|b", "_include": "Observation:patient"})],
        json=bundle([resource("Observation", "1")], next_url=f"{OBS}?page=2"),
    )
    responses.get(OBS, match=page_param(2), json=bundle([resource("Observation", "2")]))
    search = search_for([("code", "a|b"), ("_include", "Observation:patient")], method="POST")
    assert [k for _, k in run(search)] == ["Observation/1", "Observation/2"]
    assert [m for m, _ in search.http.calls] == ["POST", "GET"]  # type: ignore[attr-defined]


@responses.activate
def test_high_water_mark_compares_instants_not_strings() -> None:
    responses.get(
        OBS,
        json=bundle(
            [
                resource("Observation", "1", "2024-01-01T10:00:00+02:00"),  # 08:00Z
                resource("Observation", "2", "2024-01-01T09:00:00Z"),
                resource("Observation", "3", "2024-01-01T08:30:00.1234567Z"),
            ],
            includes=[resource("Patient", "p", "2030-01-01T00:00:00Z")],
        ),
    )
    search = search_for()
    run(search)
    assert search.high_water_mark == "2024-01-01T09:00:00Z"  # includes never count


def test_normalize_params_keeps_repeated_keys_in_order() -> None:
    assert normalize_params({"_include": ["A:b", "C:d"], "_count": 10, "_total": True}) == [
        ("_include", "A:b"),
        ("_include", "C:d"),
        ("_count", "10"),
        ("_total", "true"),
    ]
    assert normalize_params([("date", "ge2020"), ("date", "lt2021")]) == [("date", "ge2020"), ("date", "lt2021")]
    assert normalize_params(None) == []
    with pytest.raises(TypeError, match="not a string"):
        normalize_params("code=x")
    with pytest.raises(TypeError, match="pairs"):
        normalize_params([("a", "b", "c")])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="has no value"):
        normalize_params({"code": None})


def test_bad_resource_type_and_method_are_refused() -> None:
    with pytest.raises(ValueError, match="FHIR resource type name"):
        SearchRequest.build("Observation?code=x")
    with pytest.raises(ValueError, match="'GET' or 'POST'"):
        SearchRequest.build("Observation", method="PUT")


def test_last_updated_window_is_half_open() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    assert last_updated_window(start, start + timedelta(days=1)) == [
        ("_lastUpdated", "ge2024-01-01T00:00:00Z"),
        ("_lastUpdated", "lt2024-01-02T00:00:00Z"),
    ]
    with pytest.raises(ValueError, match="empty _lastUpdated window"):
        last_updated_window(start, start)
    with pytest.raises(ValueError, match="no timezone"):
        format_instant(datetime(2024, 1, 1))


def test_instants() -> None:
    assert (
        format_instant(datetime(2024, 1, 1, 2, 0, 0, 500000, tzinfo=timezone(timedelta(hours=2))))
        == "2024-01-01T00:00:00.5Z"
    )
    assert parse_instant("2024-01-01T00:00:00.123456789Z") == datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert parse_instant("2024-01-01") is None and parse_instant("2024-01-01T00:00:00") is None
    assert parse_instant(None) is None and parse_instant("garbage T") is None


@responses.activate
def test_handling_preference_is_sent_on_every_page() -> None:
    prefer = [matchers.header_matcher({"Prefer": "handling=lenient"})]
    responses.get(
        OBS,
        match=[matchers.query_param_matcher({}), *prefer],
        json=bundle([resource("Observation", "1")], next_url="Observation?page=2"),
    )
    responses.get(OBS, match=[*page_param(2), *prefer], json=bundle([resource("Observation", "2")]))
    search = FhirSearch(PlainHttp(), SearchRequest.build("Observation", handling="lenient"))
    assert [k for _, k in run(search)] == ["Observation/1", "Observation/2"]
    with pytest.raises(ValueError, match="'strict', 'lenient'"):
        SearchRequest.build("Observation", handling="loose")


@responses.activate
def test_a_plain_500_fails_at_once_with_the_servers_text() -> None:
    responses.get(OBS, status=500, body="internal error: table locked")
    search = search_for(page_retries=5)
    with pytest.raises(FhirError, match=r"HTTP 500: .*internal error: table locked"):
        run(search)
    assert len(search.http.calls) == 1  # type: ignore[attr-defined]
    assert search.sleeps == []  # type: ignore[attr-defined]


def test_search_takes_the_clients_max_retry_after_by_default() -> None:
    from airflow_provider_smart.fhir.http import FhirHttpClient

    client = FhirHttpClient(None, BASE, max_retry_after=42)
    assert FhirSearch(client, SearchRequest.build("Patient")).wait_policy.max_retry_after == 42
    assert FhirSearch(PlainHttp(), SearchRequest.build("Patient")).wait_policy.max_retry_after == 300
    assert FhirSearch(client, SearchRequest.build("Patient"), max_retry_after=7).wait_policy.max_retry_after == 7
