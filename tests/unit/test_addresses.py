"""The address policy for URLs from data: which resolved addresses a connection may reach.

No test here sends a byte to a non-loopback address: name resolution is faked where a name would need
DNS, and the socket's connect is replaced by a recorder wherever a refused address is tried.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
import requests

from airflow_provider_smart.fhir.http import FhirHttpClient, RefusedRequestError
from airflow_provider_smart.transport.addresses import (
    AddressPolicy,
    BlockedAddressError,
    guard_session,
    internal_kind,
    parse_allowed_entry,
)
from tests.loopback import AnswerServer, Seen, answering, recording

FHIR = "http://fhir.example.org/r4"

METADATA_FORMS = [
    "169.254.169.254",
    "::ffff:169.254.169.254",  # IPv4-mapped IPv6
    "::ffff:a9fe:a9fe",  # the same, in hex
    "2002:a9fe:a9fe::1",  # 6to4 carrying it
    "64:ff9b::a9fe:a9fe",  # NAT64 carrying it
    "fe80::1",
]


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.0.0.5", "private"),
        ("172.16.3.4", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("100.64.0.1", "shared (carrier-grade NAT)"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "private"),  # documentation range: never a real server
    ]
    + [(form, "link-local (where cloud metadata services live)") for form in METADATA_FORMS],
)
def test_internal_addresses_are_named(text: str, kind: str) -> None:
    assert internal_kind(ipaddress.ip_address(text)) == kind


@pytest.mark.parametrize("text", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(text: str) -> None:
    assert internal_kind(ipaddress.ip_address(text)) is None


def test_the_fhir_origin_and_listed_networks_are_allowed_others_refused() -> None:
    policy = AddressPolicy.for_server(
        "http://127.0.0.1:8080/fhir", ["10.1.0.0/16", "https://minio.internal:9000", "::1"]
    )
    loopback = ipaddress.ip_address("127.0.0.1")
    assert policy.refusal("127.0.0.1", 8080, loopback) is None  # the FHIR server's own origin
    assert policy.refusal("127.0.0.1", 8081, loopback) == "loopback"  # another port is another endpoint
    assert policy.refusal("minio.internal", 9000, ipaddress.ip_address("10.9.9.9")) is None
    assert policy.refusal("minio.internal", 9001, ipaddress.ip_address("10.9.9.9")) == "private"
    assert policy.refusal("db.internal", 5432, ipaddress.ip_address("10.1.2.3")) is None  # in 10.1.0.0/16
    assert policy.refusal("db.internal", 5432, ipaddress.ip_address("10.2.2.3")) == "private"
    assert policy.refusal("[::1]", 80, ipaddress.ip_address("::1")) is None
    assert policy.refusal("example.org", 443, ipaddress.ip_address("93.184.216.34")) is None


@pytest.mark.parametrize("entry", ["nonsense", "10.0.0.0/33", "http://a\\@b/", "ftp://x"])
def test_bad_allowed_entries_are_refused_with_the_forms(entry: str) -> None:
    with pytest.raises(ValueError, match="allowed_internal_hosts"):
        parse_allowed_entry(entry)


@pytest.fixture
def no_connect(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every connect the guarded connections would make (and make none)."""
    tried: list[Any] = []

    def refuse(address: Any, *args: Any, **kwargs: Any) -> Any:
        tried.append(address)
        raise OSError("connect disabled in this test")

    monkeypatch.setattr("urllib3.util.connection.create_connection", refuse)
    return tried


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",
        "2852039166",  # decimal
        "0251.0376.0251.0376",  # octal
        "0xa9fea9fe",  # hex
        "169.254.43518",  # two-part dotted form
        "[::ffff:169.254.169.254]",  # IPv4-mapped IPv6
        "[::ffff:a9fe:a9fe]",
    ],
)
def test_metadata_address_in_every_spelling_is_refused_before_connecting(host: str, no_connect: list[Any]) -> None:
    client = FhirHttpClient(None, FHIR, max_retries=0)
    with pytest.raises(RefusedRequestError, match=r"link-local .*allowed_internal_hosts"):
        client.get(f"http://{host}/latest/meta-data/iam/security-credentials/")
    assert no_connect == []


def test_a_name_is_resolved_once_and_the_checked_address_is_the_one_connected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: a name that resolves to a public address for the check and to loopback later can
    not get through, because the connection uses the address that was checked, not the name again."""
    hits: list[str] = []

    def answer(request: BaseHTTPRequestHandler) -> None:
        hits.append(request.path)
        request.send_response(204)
        request.end_headers()

    # One answer per lookup: a second lookup of the name for one connection would fail the test.
    answers = iter([["127.0.0.1"], ["127.0.0.1"]])
    lookups: list[str] = []

    real_getaddrinfo = socket.getaddrinfo

    def fake_getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host != "rebind.example":  # the checked address itself, connected by number
            return real_getaddrinfo(host, port, *args, **kwargs)
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in next(answers)]

    with answering(answer) as server:
        # Only now: starting the server looks its own name up.
        monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
        port = int(server.url.rsplit(":", 1)[1])
        refused = FhirHttpClient(None, FHIR, max_retries=0)
        with pytest.raises(RefusedRequestError, match="loopback"):
            refused.get(f"http://rebind.example:{port}/admin/config")
        assert hits == []
        allowed = FhirHttpClient(None, FHIR, max_retries=0, allowed_internal_hosts=["127.0.0.1/32"])
        assert allowed.get(f"http://rebind.example:{port}/ok").status_code == 204
    assert hits == ["/ok"]
    assert lookups == ["rebind.example", "rebind.example"]  # one lookup per connection, by the policy


def test_every_address_refused_names_the_first_and_the_setting() -> None:
    policy = AddressPolicy.for_server(FHIR)
    with pytest.raises(BlockedAddressError, match=r"a private address \(10\.0\.0\.1\).*allowed_internal_hosts"):
        policy.allowed_of("db.internal", 5432, ["10.0.0.1", "127.0.0.1"])
    assert policy.allowed_of("mixed.example", 443, ["10.0.0.1", "93.184.216.34"]) == ["93.184.216.34"]


@pytest.fixture
def listener() -> Iterator[tuple[AnswerServer, Seen]]:
    with recording() as started:
        yield started


def test_a_guarded_session_refuses_loopback_unless_allowed(listener: tuple[AnswerServer, Seen]) -> None:
    server, hits = listener
    session = requests.Session()
    guard_session(session, AddressPolicy.for_server(FHIR))
    with pytest.raises(BlockedAddressError, match="loopback"):
        session.get(server.url + "/admin", timeout=5)
    assert hits == []
    guard_session(session, AddressPolicy.for_server(FHIR, [server.url]))
    assert session.get(server.url + "/admin", timeout=5).text == "ok"
    assert [path for path, _ in hits] == ["/admin"]


def test_a_proxied_request_checks_the_target_before_sending(
    listener: tuple[AnswerServer, Seen], no_connect: list[Any]
) -> None:
    """Through a proxy the socket goes to the proxy: the target's resolved addresses are checked first."""
    server, hits = listener
    session = requests.Session()
    guard_session(session, AddressPolicy.for_server(FHIR))
    with pytest.raises(BlockedAddressError, match="link-local"):
        session.get("http://169.254.169.254/latest/", proxies={"http": server.url}, timeout=5)
    assert hits == [] and no_connect == []


@pytest.mark.parametrize("proxied", [False, True], ids=["direct", "via-proxy"])
def test_the_status_trigger_judges_addresses_like_the_worker(
    listener: tuple[AnswerServer, Seen], monkeypatch: pytest.MonkeyPatch, proxied: bool
) -> None:
    """The trigger's httpx client: a status URL on another loopback port is refused before any request,
    also when a proxy from the environment would carry it (the proxy is the listener here)."""
    import asyncio

    from airflow_provider_smart.triggers.bulk_export import BulkExportStatusTrigger, _TriggerSettings

    server, seen = listener
    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    status_url = f"{server.url}/fhir/$bulk-status/1"
    if proxied:
        monkeypatch.setenv("HTTP_PROXY", server.url)
        status_url = "http://169.254.169.254/fhir/$bulk-status/1"
    trigger = BulkExportStatusTrigger(smart_fhir_conn_id="c", status_url=status_url, poll_interval=0.01)
    monkeypatch.setattr(trigger, "_base_url", lambda: FHIR)
    # No vendor profile, no extras.
    settings = _TriggerSettings(trigger.policy, FHIR, False, 300.0, ())
    monkeypatch.setattr(trigger, "_connection_settings", lambda: settings)

    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("no event")

    event = asyncio.run(first())
    assert event["status"] == "error"
    assert ("link-local" if proxied else "loopback") in event["message"]
    assert "allowed_internal_hosts" in event["message"]
    assert seen == []
