"""The one client interface every FHIR request path is written against.

:class:`~airflow_provider_smart.fhir.http.FhirHttpClient` implements it; the downloader, the Bulk Data
kick-off/status/manifest code and the search take any object with this shape (tests pass fakes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import requests

    from airflow_provider_smart.transport.retry import RetryBudget


class FhirClient(Protocol):
    """Requests to one FHIR server: its token only where :func:`~..transport.urls.may_carry_token` allows it,
    redirects re-decided at every hop, retries drawn from a :class:`~..transport.retry.RetryBudget`."""

    @property
    def base_url(self) -> str:
        """The FHIR base URL: relative paths resolve against it; its origin alone gets the token."""
        ...

    def request(
        self,
        method: str,
        url_or_path: str,
        *,
        params: Any = None,
        json: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        authorize: bool | None = None,
        raise_for_status: bool = True,
        retry_post: bool = False,
        retries: int | None = None,
        budget: RetryBudget | None = None,
        timeout: float | None = None,
        same_origin_redirects: bool = False,
    ) -> requests.Response:
        """Send one request (with its redirects and the retries ``budget`` allows) and return the answer.

        :param authorize: False never sends the token; otherwise it goes only to the base URL's origin.
        :param raise_for_status: raise :class:`~.errors.FhirError` for a final status >= 400.
        :param retry_post: the caller knows this POST is safe to repeat.
        :param retries: 0 answers 429/5xx at once (a polling loop that waits on its own).
        :param budget: the retry budget to draw from (the caller's, when its own loop retries too); a
            fresh one from the client's wait policy when None.
        :param same_origin_redirects: refuse a redirect to another origin instead of following it.
        """
        ...
