"""The one decision where the token may go: a differential corpus of tricky URLs.

For every URL, the decision must agree with where requests/urllib3 (and httpx, the trigger's client)
would really connect: a URL is only given the token when every parser sees the FHIR server's origin,
and an ambiguous one is refused outright.
"""

from __future__ import annotations

import httpx
import pytest
from urllib3.util import parse_url

from airflow_provider_smart.transport.urls import UnsafeUrlError, check_transport, check_url, may_carry_token

BASE = "http://127.0.0.1:8000/fhir"
EVIL = 9999

# (url, may carry the token)
CORPUS: list[tuple[str, bool]] = [
    (f"{BASE}/Patient", True),
    ("http://127.0.0.1:8000/other/path?x=1", True),
    ("HTTP://127.0.0.1:8000/fhir/x", True),
    ("http://127.0.0.1:08000/fhir/x", True),
    ("http://127.0.0.1/fhir/x", False),  # default port 80 is another origin
    ("https://127.0.0.1:8000/fhir/x", False),
    ("http://localhost:8000/fhir/x", False),
    (f"http://127.0.0.1:{EVIL}/fhir/x", False),
    # The crafted URL of the report and its cousins: urllib.parse says 8000, urllib3 connects to EVIL.
    (f"http://127.0.0.1:{EVIL}\\@127.0.0.1:8000/x", False),
    (f"http://127.0.0.1:{EVIL}\\\\@127.0.0.1:8000/x", False),
    (f"http://127.0.0.1:{EVIL}/\\@127.0.0.1:8000/x", False),
    (f"http://127.0.0.1:{EVIL}%5C@127.0.0.1:8000/x", False),
    ("http://user:pw@127.0.0.1:8000/fhir/x", False),
    (f"http://127.0.0.1:8000@127.0.0.1:{EVIL}/x", False),
    (f"http://127.0.0.1:{EVIL}#@127.0.0.1:8000/x", False),
    (f"http://127.0.0.1:{EVIL}?@127.0.0.1:8000/x", False),
    ("http://127.0.0.1:8000\t/fhir/x", False),
    ("http://127.0.0.1:8000/fhir/x\r\nHost: evil", False),
    (" http://127.0.0.1:8000/fhir/x", False),
    ("http://127.0.0.1:8000 /fhir/x", False),
    ("http://127.0.0.1%3a8000/fhir/x", False),
    ("http://127.0.0.%31:8000/fhir/x", False),
    ("http://127\u30020\u30020\u30021:8000/fhir/x", False),  # ideographic full stops
    ("http://\uff11\uff12\uff17.0.0.1:8000/fhir/x", False),  # full-width digits
    ("http://127.0.0.1:8000\x00@evil/x", False),
    ("//127.0.0.1:8000/fhir/x", False),
    ("/fhir/x", False),
    ("file:///etc/passwd", False),
    ("http:127.0.0.1:8000/fhir/x", False),
    ("http:/127.0.0.1:8000/fhir/x", False),
    ("http://127.0.0.1:8000:9999/fhir/x", False),
    ("http://[::1]:8000/fhir/x", False),
    ("http://127.0.0.1:-1/fhir/x", False),
    ("http://127.0.0.1:65536/fhir/x", False),
]


@pytest.mark.parametrize(("url", "allowed"), CORPUS)
def test_the_token_goes_only_where_every_parser_sees_the_fhir_origin(url: str, allowed: bool) -> None:
    assert may_carry_token(url, BASE) is allowed
    if allowed:
        # Where urllib3 (requests) and httpx (the trigger) connect really is the FHIR server.
        parsed = parse_url(url)
        assert (parsed.host, parsed.port or 80) == ("127.0.0.1", 8000)
        hx = httpx.URL(url)
        assert (hx.host, hx.port or 80) == ("127.0.0.1", 8000)


def _ambiguous(url: str) -> bool:
    if "#@" in url or "?@" in url:  # every parser agrees: the host is the one before '#' or '?'
        return False
    return any(c in url for c in "\\@\t\r ") or "%" in url.split("/")[2]


@pytest.mark.parametrize("url", [u for u, _ in CORPUS if _ambiguous(u)])
def test_ambiguous_urls_are_refused_outright(url: str) -> None:
    with pytest.raises(UnsafeUrlError, match="refusing the URL"):
        check_url(url)


def test_refusal_messages_never_show_a_query_secret() -> None:
    with pytest.raises(UnsafeUrlError) as info:
        check_url("http://a\\@b/x?X-Amz-Signature=topsecret")
    assert "topsecret" not in str(info.value)


def test_tls_downgrades_are_refused_unless_allowed(caplog: pytest.LogCaptureFixture) -> None:
    https = "https://ehr.example.org/fhir"
    check_transport("https://cdn.example.net/f", https)
    check_transport("http://127.0.0.1/x", "http://127.0.0.1/fhir")  # a plain http server stays allowed
    with pytest.raises(UnsafeUrlError, match=r"TLS downgrade.*allow_insecure_http"):
        check_transport("http://cdn.example.net/f", https)
    with pytest.raises(UnsafeUrlError, match="TLS downgrade"):
        check_transport("http://a/x", "http://a/fhir", previous="https://a/redirecting")
    with caplog.at_level("WARNING"):
        check_transport("http://cdn.example.net/f", https, allow_insecure_http=True)
    assert "allow_insecure_http" in caplog.text
