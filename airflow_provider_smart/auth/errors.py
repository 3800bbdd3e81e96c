"""Errors of the authorization layer. Messages say what to fix and never hold key material or tokens."""

from __future__ import annotations


class SmartAuthError(Exception):
    """Base class: anything that stops the client from getting an access token."""


class KeyLoadError(SmartAuthError, ValueError):
    """The private key text or file could not be used (format, type, curve, algorithm or kid)."""


class DiscoveryError(SmartAuthError):
    """No token endpoint could be found for the FHIR server."""


class TokenRequestError(SmartAuthError):
    """The token endpoint refused the request, could not be reached, or answered something unusable.

    ``error`` carries the OAuth error code (``invalid_client``, ...) when the server sent one.
    """

    def __init__(self, message: str, *, error: str | None = None, status: int | None = None):
        super().__init__(message)
        self.error = error
        self.status = status
