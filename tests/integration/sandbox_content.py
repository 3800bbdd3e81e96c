"""Put content into a running sandbox through its admin API (Binaries and DocumentReferences)."""

from __future__ import annotations

from typing import Any

import requests

from airflow_provider_smart.sandbox.server import SandboxServer


def admin(server: SandboxServer, method: str, path: str, **kwargs: Any) -> requests.Response:
    """One admin API request; anything but a 2xx fails the test with the server's answer."""
    response = requests.request(method, server.base_url + path, auth=server.admin_auth, timeout=30, **kwargs)
    assert response.status_code < 300, response.text
    return response


def put_binary(server: SandboxServer, binary_id: str, data: bytes, content_type: str, wrapped: bool = False) -> None:
    """Store ``data`` as Binary ``binary_id`` (``wrapped``: served as a FHIR Binary resource, base64 inside)."""
    params = {"wrapped": "true"} if wrapped else None
    headers = {"Content-Type": content_type}
    admin(server, "PUT", f"/_sandbox/binary/{binary_id}", data=data, headers=headers, params=params)


def put_document(server: SandboxServer, doc_id: str, *attachments: dict[str, Any]) -> None:
    """Store a current DocumentReference of Patient/pat-0 with these attachments."""
    body = {
        "resourceType": "DocumentReference",
        "id": doc_id,
        "status": "current",
        "subject": {"reference": "Patient/pat-0"},
        "content": [{"attachment": a} for a in attachments],
    }
    admin(server, "PUT", f"/_sandbox/fhir/DocumentReference/{doc_id}", json=body)
