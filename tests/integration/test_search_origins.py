"""The token never follows a next link to another origin: two real HTTP servers on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from airflow_provider_smart.fhir.errors import FhirError
from airflow_provider_smart.fhir.http import FhirHttpClient
from airflow_provider_smart.fhir.search import FhirSearch, SearchRequest
from tests.loopback import AnswerServer, send_json

pytestmark = pytest.mark.integration


class Recorder:
    """A loopback HTTP server answering every GET with ``body`` and recording paths and Authorization."""

    def __init__(self) -> None:
        self.body: dict[str, Any] = {}
        self.seen: list[tuple[str, str | None]] = []
        self.httpd = AnswerServer(self._answer)
        self.url = self.httpd.url

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        self.seen.append((request.path, request.headers.get("Authorization")))
        send_json(request, self.body, content_type="application/fhir+json")

    def close(self) -> None:
        self.httpd.close()


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
