"""What the FHIR client needs from a token giver, so ``fhir/`` never imports ``auth/``.

:class:`~airflow_provider_smart.auth.client.SmartAuthClient` satisfies :class:`TokenSource`; the hook
wires the two together.
"""

from __future__ import annotations

from typing import Protocol


class BearerToken(Protocol):
    """An access token: its secret value and the ``Authorization`` header that carries it."""

    @property
    def value(self) -> str: ...

    @property
    def authorization_header(self) -> str: ...


class TokenSource(Protocol):
    """Gives access tokens and forgets one the server refused (a 401)."""

    def get_token(self, force_refresh: bool = False) -> BearerToken: ...

    def invalidate(self, token: str | None = None) -> None: ...
