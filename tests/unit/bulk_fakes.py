"""A stand-in for FhirHttpClient in unit tests: plain requests, bearer token only when authorised."""

from __future__ import annotations

from typing import Any

import requests

from airflow_provider_smart.transport.urls import resolve, same_origin

TOKEN = "secret-token-value"


class FakeFhirClient:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.calls: list[tuple[str, str, bool]] = []

    def request(
        self,
        method: str,
        url_or_path: str,
        *,
        params: Any = None,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        authorize: bool | None = None,
        raise_for_status: bool = True,
        timeout: float | None = None,
        **_: Any,
    ) -> requests.Response:
        url = url_or_path if "://" in url_or_path else resolve(self.base_url + "/", url_or_path)
        send_token = authorize is not False and same_origin(url, self.base_url)
        hdrs = dict(headers or {})
        if send_token:
            hdrs["Authorization"] = f"Bearer {TOKEN}"
        self.calls.append((method, url, send_token))
        response = self.session.request(
            method,
            url,
            params=params,
            json=json,
            data=data,
            headers=hdrs,
            stream=stream,
            allow_redirects=False,
            timeout=timeout,
        )
        if raise_for_status:
            response.raise_for_status()
        return response
