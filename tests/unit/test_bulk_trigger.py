from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from airflow_provider_smart.triggers.bulk_export import BulkExportStatusTrigger, _TriggerSettings

BASE = "http://fhir.test/fhir"
STATUS = f"{BASE}/status/9"
MANIFEST = {"transactionTime": "2024-01-01T00:00:00Z", "requiresAccessToken": True, "output": []}


class Script:
    """Answers status polls from a list of (status, headers, body); records the requests."""

    def __init__(self, answers: list[tuple[int, dict[str, str], Any]]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status, headers, body = self.answers.pop(0)
        content = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
        return httpx.Response(status, headers=headers, content=content)


def make_trigger(script: Script, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> BulkExportStatusTrigger:
    trigger = BulkExportStatusTrigger(
        smart_fhir_conn_id="c",
        status_url=kwargs.pop("status_url", STATUS),
        poll_interval=0.01,
        min_poll_interval=0,
        **kwargs,
    )
    tokens = iter(["t2", "t3"])
    current = ["t1"]
    forced: list[bool] = []

    def token(force: bool) -> str:
        # Like the hook: the cached token until a renewal is forced.
        forced.append(force)
        if force:
            current[0] = next(tokens)
        return current[0]

    monkeypatch.setattr(trigger, "_base_url", lambda: BASE)
    # The connection's (allow_insecure_http, max_retry_after, allowed_internal_hosts) extras; tests set trigger.extras.
    trigger.extras = (False, 300.0, ())  # type: ignore[attr-defined]
    monkeypatch.setattr(trigger, "_connection_settings", lambda: connection_settings(trigger))
    monkeypatch.setattr(trigger, "_token", token)
    monkeypatch.setattr(
        trigger,
        "_http_client",
        lambda: httpx.AsyncClient(transport=httpx.MockTransport(script), follow_redirects=False),
    )
    trigger.forced = forced  # type: ignore[attr-defined]
    return trigger


def connection_settings(trigger: BulkExportStatusTrigger) -> _TriggerSettings:
    """What the trigger reads from the connection, from the test's ``_base_url`` and ``extras``."""
    allow_insecure, max_retry_after, allowed_internal = trigger.extras  # type: ignore[attr-defined]
    return _TriggerSettings(trigger.policy, trigger._base_url(), allow_insecure, max_retry_after, allowed_internal)


async def first_event(trigger: BulkExportStatusTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return dict(event.payload)
    raise AssertionError("no event")


def test_serialize_round_trip_is_json_safe() -> None:
    t = BulkExportStatusTrigger(smart_fhir_conn_id="c", status_url=STATUS, deadline=123.0)
    path, kwargs = t.serialize()
    assert path == "airflow_provider_smart.triggers.bulk_export.BulkExportStatusTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert BulkExportStatusTrigger(**kwargs).serialize() == (path, kwargs)


def test_polls_through_pending_throttle_and_transient_then_completes(monkeypatch: pytest.MonkeyPatch) -> None:
    script = Script(
        [
            (202, {"X-Progress": "10%", "Retry-After": "0"}, b""),
            (429, {"Retry-After": "0"}, b""),
            (503, {}, b"busy"),
            (202, {"X-Progress": "90%"}, b""),
            (200, {"Expires": "later"}, MANIFEST),
        ]
    )
    event = asyncio.run(first_event(make_trigger(script, monkeypatch)))
    # A reference, not the manifest: nothing from the manifest travels in the event.
    assert event == {"status": "complete", "status_url": STATUS, "expires": "later"}
    assert [r.headers["Authorization"] for r in script.requests] == ["Bearer t1"] * 5


def test_reauthenticates_once_on_401(monkeypatch: pytest.MonkeyPatch) -> None:
    script = Script([(401, {}, b""), (200, {}, MANIFEST)])
    trigger = make_trigger(script, monkeypatch)
    event = asyncio.run(first_event(trigger))
    assert event["status"] == "complete"
    assert [r.headers["Authorization"] for r in script.requests] == ["Bearer t1", "Bearer t2"]
    assert trigger.forced == [False, True]  # type: ignore[attr-defined]


def test_failed_export_yields_error_with_outcome_text(monkeypatch: pytest.MonkeyPatch) -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception", "diagnostics": "disk full"}],
    }
    event = asyncio.run(first_event(make_trigger(Script([(500, {}, outcome)]), monkeypatch)))
    assert event["status"] == "error" and "disk full" in event["message"] and event["http_status"] == 500


def test_gives_up_after_too_many_transient_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    script = Script([(503, {}, b"")] * 3)
    event = asyncio.run(first_event(make_trigger(script, monkeypatch, max_transient_errors=2)))
    assert event["status"] == "error" and "3 failed status polls" in event["message"]


def test_deadline_yields_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    script = Script([(202, {"Retry-After": "3600"}, b"")] * 5)
    event = asyncio.run(first_event(make_trigger(script, monkeypatch, deadline=0.0)))
    assert event["status"] == "timeout" and script.requests == []


def test_no_token_to_a_status_url_on_another_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    script = Script([(200, {}, MANIFEST)])
    trigger = make_trigger(script, monkeypatch, status_url="http://elsewhere.test/status/1")
    event = asyncio.run(first_event(trigger))
    assert event["status"] == "complete"
    assert "Authorization" not in script.requests[0].headers
    assert trigger.forced == []  # type: ignore[attr-defined]


def recorded_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr("airflow_provider_smart.triggers.bulk_export.asyncio.sleep", fake_sleep)
    return slept


def test_throttle_waits_at_most_the_connections_max_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    slept = recorded_sleeps(monkeypatch)
    script = Script(
        [
            (429, {"Retry-After": "3600"}, b""),
            (503, {"Retry-After": "3600"}, b""),
            (202, {"Retry-After": "900"}, b""),  # the server's polling pace: max_poll_interval caps it
            (200, {}, MANIFEST),
        ]
    )
    trigger = make_trigger(script, monkeypatch, max_poll_interval=1200)
    trigger.extras = (False, 45.0, ())  # type: ignore[attr-defined]
    assert asyncio.run(first_event(trigger))["status"] == "complete"
    assert slept == [45.0, 45.0, 900.0]


def test_connection_extra_allow_insecure_http_reaches_the_trigger(monkeypatch: pytest.MonkeyPatch) -> None:
    secure_status = "https://fhir.test/fhir/status/9"
    answers = [(302, {"Location": "http://fhir.test/fhir/status/9b"}, b""), (200, {}, MANIFEST)]
    refused = make_trigger(Script(list(answers)), monkeypatch, status_url=secure_status)
    monkeypatch.setattr(refused, "_base_url", lambda: "https://fhir.test/fhir")
    event = asyncio.run(first_event(refused))
    assert event["status"] == "error" and "allow_insecure_http" in event["message"]

    allowed = make_trigger(Script(list(answers)), monkeypatch, status_url=secure_status)
    monkeypatch.setattr(allowed, "_base_url", lambda: "https://fhir.test/fhir")
    allowed.extras = (True, 300.0, ())  # type: ignore[attr-defined]
    assert asyncio.run(first_event(allowed))["status"] == "complete"


def test_a_server_echoing_the_token_never_gets_it_into_the_event(monkeypatch: pytest.MonkeyPatch) -> None:
    import responses

    from airflow_provider_smart.auth.client import SmartAuthClient
    from airflow_provider_smart.auth.keys import load_keys
    from airflow_provider_smart.transport.sanitize import forget_secrets
    from tests.smart_keys import ec_key, pem

    forget_secrets()
    opaque = "opaque0token0without0any0shape0123"  # no JWT shape, no Bearer prefix in the echo
    with responses.RequestsMock() as mocked:
        mocked.post("http://fhir.test/token", json={"access_token": opaque, "token_type": "bearer", "expires_in": 300})
        auth = SmartAuthClient(BASE, "c", load_keys(pem(ec_key())), token_url="http://fhir.test/token")
        auth.get_token()
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception", "diagnostics": f"bad credentials: {opaque}"}],
    }
    trigger = make_trigger(Script([(500, {}, outcome)]), monkeypatch)
    monkeypatch.setattr(trigger, "_token", lambda force: auth.get_token(force_refresh=force).value)
    event = asyncio.run(first_event(trigger))
    assert event["status"] == "error" and "bad credentials" in event["message"]
    assert opaque not in json.dumps(event)


def test_a_manifest_over_the_triggers_cap_completes_and_leaves_it_to_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow_provider_smart.fhir.bulk import sync

    # The trigger reads no more than the default cap; the worker reads the page under its own
    # download_limits (max_manifest_bytes), which may be higher, and refuses it naming the setting if not.
    monkeypatch.setattr("airflow_provider_smart.triggers.bulk_export.MAX_MANIFEST_BODY", 1024)
    huge = dict(MANIFEST, output=[{"type": "Patient", "url": f"{BASE}/f{n}"} for n in range(100)])
    script = Script([(200, {"Expires": "later"}, huge)])
    event = asyncio.run(first_event(make_trigger(script, monkeypatch)))
    assert event == {"status": "complete", "status_url": STATUS, "expires": "later"}
    assert sync.MAX_MANIFEST_BODY == 32 << 20
