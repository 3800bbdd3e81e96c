"""The newer fault switches, observed over real HTTP with the sandbox clock frozen: Retry-After forms,
blocks, ``after``, redirects, Authorization echo, token revocation, and refused settings."""

from __future__ import annotations

import math
import time
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.integration
NOW = 1_900_000_000.25  # a frozen instant with a fraction, so rounding shows


def _put(sandbox: Any, body: dict[str, Any]) -> requests.Response:
    return requests.put(f"{sandbox.base_url}/_sandbox/faults", json=body, auth=sandbox.admin_auth, timeout=10)


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ("delta-seconds", "5"),
        ("epoch-seconds", str(math.ceil(NOW + 5))),
        ("epoch-milliseconds", str(math.ceil((NOW + 5) * 1000))),
    ],
)
def test_retry_after_forms_are_sent_from_the_sandbox_clock(sandbox, smart_client, form, expected):
    session = smart_client.session()
    sandbox.state.clock.freeze(NOW)
    assert _put(sandbox, {"rules": [{"kind": "status", "status": 429, "path": "/fhir/Patient", "retry_after": 5,
                                     "retry_after_form": form}]}).status_code == 200  # fmt: skip
    response = session.get(f"{sandbox.fhir_base}/Patient", timeout=10)
    assert response.status_code == 429 and response.headers["retry-after"] == expected


def test_http_date_form_and_exact_text(sandbox, smart_client):
    session = smart_client.session()
    sandbox.state.clock.freeze(NOW)
    sandbox.state.faults.throttle("/fhir/Patient", retry_after=5, form="http-date")
    sandbox.state.faults.fail("/fhir/Observation", status=503, text="Fri, 31 Dec 9999 23:59:59 GMT")
    when = parsedate_to_datetime(session.get(f"{sandbox.fhir_base}/Patient", timeout=10).headers["retry-after"])
    assert when.timestamp() == math.ceil(NOW + 5)  # rounded up: never early
    absurd = session.get(f"{sandbox.fhir_base}/Observation", timeout=10)
    assert absurd.status_code == 503 and absurd.headers["retry-after"] == "Fri, 31 Dec 9999 23:59:59 GMT"


def test_block_answers_until_its_end_then_is_gone(sandbox, smart_client):
    session = smart_client.session()
    now = math.floor(time.time()) + 0.25  # near real time: the session's token stays valid
    sandbox.state.clock.freeze(now)
    assert _put(sandbox, {"rules": [{"kind": "block", "status": 429, "path": "/fhir/Patient*", "times": None,
                                     "block_seconds": 10, "after": 1}]}).status_code == 200  # fmt: skip
    url = f"{sandbox.fhir_base}/Patient"
    assert session.get(url, timeout=10).status_code == 200  # "after": one passes
    first = session.get(url, timeout=10)
    assert first.status_code == 429 and first.headers["retry-after"] == str(math.ceil((now + 10) * 1000))
    sandbox.state.clock.advance(4)
    later = session.get(url, timeout=10)
    assert later.status_code == 429 and later.headers["retry-after"] == str(math.ceil(now + 10))
    assert session.get(f"{sandbox.fhir_base}/Observation", timeout=10).status_code == 200  # other paths unaffected
    sandbox.state.clock.advance(6)
    assert session.get(url, timeout=10).status_code == 200
    assert sandbox.state.faults.rules == []
    statuses = [status for _, _, path, status in sandbox.state.faults.history if path == "/fhir/Patient"]
    assert statuses == [None, 429, 429, None]


def test_same_origin_redirect_goes_to_the_listening_address_not_the_host_header(sandbox, smart_client):
    session = smart_client.session()
    sandbox.state.faults.redirect("/fhir/Patient", times=1)
    url = f"{sandbox.fhir_base}/Patient"
    response = session.get(url, params={"_count": 2}, headers={"Host": "evil.example"}, allow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == f"{sandbox.base_url}/hop/fhir/Patient?_count=2"
    followed = session.get(response.headers["location"], timeout=10)
    assert followed.status_code == 200 and followed.json()["resourceType"] == "Bundle"
    assert sandbox.state.faults.requests["/hop/fhir/Patient"] == 1


def test_cross_origin_redirect_keeps_path_and_query(sandbox, smart_client):
    sandbox.state.faults.redirect("/fhir/Patient", to="http://127.0.0.1:9/", status=302)
    response = smart_client.session().get(f"{sandbox.fhir_base}/Patient?name=x", allow_redirects=False, timeout=10)
    assert (response.status_code, response.headers["location"]) == (302, "http://127.0.0.1:9/fhir/Patient?name=x")


def test_echo_repeats_the_authorization_header(sandbox, smart_client):
    session = smart_client.session()
    sandbox.state.faults.echo_authorization("/fhir/Patient", status=400)
    response = session.get(f"{sandbox.fhir_base}/Patient", timeout=10)
    assert response.status_code == 400
    assert session.headers["Authorization"] in response.json()["issue"][0]["diagnostics"]


def test_revoke_refuses_the_request_that_triggers_it(sandbox, smart_client):
    session = smart_client.session()
    sandbox.state.faults.revoke_tokens("/fhir/Patient", after=1)
    assert session.get(f"{sandbox.fhir_base}/Patient", timeout=10).status_code == 200
    assert session.get(f"{sandbox.fhir_base}/Patient", timeout=10).status_code == 401
    fresh = smart_client.session()
    assert fresh.get(f"{sandbox.fhir_base}/Patient", timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"rules": [{"kind": "status", "retry_after_form": "fortnights"}]}, "retry_after_form"),
        ({"rules": [{"kind": "block"}]}, "block_seconds"),
        ({"rules": [{"kind": "redirect", "redirect_to": "evil.example"}]}, "redirect_to"),
        ({"rules": [{"kind": "status", "after": -1}]}, "after"),
        ({"rules": [{"kind": "teleport"}]}, "teleport"),
        ({"rules": [{"kind": "status", "until": 5}]}, "until"),
        ({"bulk": {"file_gzip": "zip"}}, "file_gzip"),
    ],
)
def test_bad_switch_settings_are_refused_naming_the_field(sandbox, body, words):
    response = _put(sandbox, body)
    assert response.status_code == 400
    assert words in response.json()["issue"][0]["diagnostics"]
    assert sandbox.state.faults.rules == []
