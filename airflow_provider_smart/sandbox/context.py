"""Where a request is: the sandbox state behind the app, and the server's own URLs.

The server's URLs (issuer, token URL, FHIR base, the audience tokens and assertions must name) come
from the base URL the sandbox was configured with (``state.base_url``, set when it starts listening),
never from the request's ``Host`` header: a client that forges ``Host`` must not change the audience
the server expects or the links it writes.
"""

from __future__ import annotations

from fastapi import Request

from airflow_provider_smart.sandbox.state import SandboxState


def get_state(request: Request) -> SandboxState:
    state: SandboxState = request.app.state.sandbox
    return state


def root_url(request: Request) -> str:
    base = get_state(request).base_url
    if base is None:
        raise RuntimeError(
            "the sandbox's base URL is not configured: start it with SandboxServer (which sets it) or set "
            "SandboxConfig.base_url"
        )
    return base


def token_url(request: Request) -> str:
    return root_url(request) + "/auth/token"


def fhir_base(request: Request) -> str:
    return root_url(request) + "/fhir"
