"""Helpers for unit tests that fake FHIR over HTTP with ``responses``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urljoin

import requests

BASE = "https://fhir.example.org/r4"


class PlainHttp:
    """The smallest client that satisfies the search's HTTP protocol: no auth, no retries of its own."""

    def __init__(self, base_url: str = BASE) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.calls: list[tuple[str, str]] = []

    def request(
        self,
        method: str,
        url_or_path: str,
        *,
        params: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        **_: Any,
    ) -> requests.Response:
        url = urljoin(self.base_url.rstrip("/") + "/", url_or_path)
        self.calls.append((method, url))
        return self.session.request(method, url, params=params, data=data, headers=dict(headers or {}), timeout=10)


def resource(kind: str, rid: str, updated: str = "2024-01-01T00:00:00Z", **fields: Any) -> dict[str, Any]:
    return {"resourceType": kind, "id": rid, "meta": {"lastUpdated": updated}, **fields}


def bundle(
    matches: Iterable[dict[str, Any]] = (),
    includes: Iterable[dict[str, Any]] = (),
    outcomes: Iterable[dict[str, Any]] = (),
    next_url: str | None = None,
    total: int | None = None,
) -> dict[str, Any]:
    entries = [
        {"fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
        for r in matches
    ]
    entries += [
        {"fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "include"}}
        for r in includes
    ]
    entries += [{"resource": r, "search": {"mode": "outcome"}} for r in outcomes]
    out: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": entries,
        "link": [{"relation": "self", "url": f"{BASE}/x"}],
    }
    if next_url:
        out["link"].append({"relation": "next", "url": next_url})
    if total is not None:
        out["total"] = total
    return out


def outcome(text: str, severity: str = "error", code: str = "invalid") -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": code, "diagnostics": text}]}
