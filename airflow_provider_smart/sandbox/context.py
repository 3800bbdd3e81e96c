"""Where a request is: the sandbox state behind the app, and the server's URLs as the client addressed them."""

from __future__ import annotations

from fastapi import Request

from airflow_provider_smart.sandbox.state import SandboxState


def get_state(request: Request) -> SandboxState:
    state: SandboxState = request.app.state.sandbox
    return state


def root_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def token_url(request: Request) -> str:
    return root_url(request) + "/auth/token"


def fhir_base(request: Request) -> str:
    return root_url(request) + "/fhir"
