"""The token never follows a next link to another origin: two real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from airflow_provider_smart.fhir.errors import FhirError
from airflow_provider_smart.fhir.http import FhirHttpClient
from airflow_provider_smart.fhir.search import FhirSearch, SearchRequest

pytestmark = pytest.mark.integration


class Recorder:
    """A loopback HTTP server answering every GET with ``body`` and recording paths and Authorization."""

    def __init__(self) -> None:
        self.body: dict[str, Any] = {}
        self.seen: list[tuple[str, str | None]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.seen.append((self.path, self.headers.get("Authorization")))
                data = json.dumps(owner.body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def two_servers() -> Iterator[tuple[Recorder, Recorder]]:
    a, b = Recorder(), Recorder()
    yield a, b
    a.close()
    b.close()


class FixedToken:
    """Stands in for SmartAuthClient: always the same token, so the test can look for it on the wire."""

    class Token:
        value = "secret-token-value-123"
        authorization_header = "Bearer secret-token-value-123"

    def get_token(self, force_refresh: bool = False) -> Any:
        return self.Token()

    def invalidate(self, token: Any) -> None:
        pass


def test_next_link_to_another_port_is_refused_and_never_requested(two_servers: tuple[Recorder, Recorder]) -> None:
    fhir, other = two_servers
    fhir.body = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"resourceType": "Observation", "id": "1"}, "search": {"mode": "match"}}],
        "link": [{"relation": "next", "url": f"{other.url}/fhir/Observation?page=2"}],
    }
    client = FhirHttpClient(FixedToken(), f"{fhir.url}/fhir")  # type: ignore[arg-type]
    search = FhirSearch(client, SearchRequest.build("Observation", {"code": "x|y"}))
    with pytest.raises(FhirError, match="refusing to follow the next link to another origin") as info:
        list(search.entries())
    assert "secret-token-value-123" not in str(info.value)
    assert fhir.seen == [("/fhir/Observation?code=x%7Cy", "Bearer secret-token-value-123")]
    assert other.seen == []  # not even an unauthenticated request
