"""FHIR search: building the request and walking the searchset pages, with no Airflow import.

The iterator fetches one page, parses all of it, and only then hands its entries to the caller. A page is
therefore either consumed whole or fetched again: a transient failure (throttling, a 5xx that outlived the
HTTP client's own retries, a connection dropped in the middle of the body, a truncated JSON document)
re-fetches the same page URL, so resources are never duplicated or skipped. ``next`` links may be absolute
or relative; a link to another origin is refused, because following it would either leak the access token
or silently read from a server the connection does not describe.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from airflow_provider_smart.fhir.client import FhirClient
from airflow_provider_smart.fhir.errors import (
    FhirError,
    TransientFhirError,
    describe_error_body,
    issue_text,
    operation_outcome_issues,
    operation_outcome_text,
)
from airflow_provider_smart.transport.retry import DEFAULT_MAX_RETRY_AFTER, WaitPolicy, is_retryable, parse_retry_after
from airflow_provider_smart.transport.urls import redact_url, resolve, same_origin

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
SearchParams = Mapping[str, Any] | Iterable[tuple[str, Any]] | None
Method = Literal["GET", "POST"]
EntryMode = Literal["match", "include", "outcome"]

_LONG_FRACTION = re.compile(r"(\.\d{7,})")
_RESOURCE_TYPE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


#: The search takes the one client interface (kept under its old name for existing imports).
SupportsFhirRequest = FhirClient


def normalize_params(params: SearchParams) -> list[tuple[str, str]]:
    """Turn search parameters into (key, value) pairs, keeping repeated keys and their order.

    Accepts a dict (a list value repeats the key: ``{"_include": ["A:b", "C:d"]}``), a list of pairs, or
    None. Values become strings; booleans become ``true``/``false`` as FHIR spells them.
    """
    if params is None:
        return []
    items: Iterable[tuple[Any, Any]]
    if isinstance(params, Mapping):
        items = params.items()
    elif isinstance(params, (str, bytes)):
        raise TypeError(
            "search params must be a dict or a list of (key, value) pairs, not a string; "
            "pass e.g. {'code': 'http://loinc.org|4548-4'}"
        )
    else:
        items = params
    pairs: list[tuple[str, str]] = []
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"search params must be (key, value) pairs; got {item!r}")
        key, value = item
        if not isinstance(key, str) or not key:
            raise TypeError(f"search parameter names must be non-empty strings; got {key!r}")
        values = value if isinstance(value, (list, tuple)) else [value]
        for single in values:
            if single is None:
                raise ValueError(f"search parameter {key!r} has no value (None); drop it or give a value")
            pairs.append((key, _param_text(single)))
    return pairs


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_instant(value)
    return str(value)


def validate_resource_type(resource_type: str) -> str:
    """A FHIR resource type name such as ``Observation``; anything else is refused before any request."""
    if (
        not isinstance(resource_type, str)
        or not resource_type
        or not resource_type[0].isupper()
        or not set(resource_type) <= _RESOURCE_TYPE_CHARS
    ):
        raise ValueError(
            f"resource_type must be a FHIR resource type name such as 'Observation'; got {resource_type!r}"
        )
    return resource_type


@dataclass(frozen=True)
class SearchRequest:
    """One FHIR search: ``GET [base]/Type?params`` or ``POST [base]/Type/_search`` with a form body."""

    resource_type: str
    params: tuple[tuple[str, str], ...] = ()
    method: Method = "GET"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def build(
        cls,
        resource_type: str,
        params: SearchParams = None,
        method: str = "GET",
        *,
        handling: str | None = None,
    ) -> SearchRequest:
        """:param handling: ``"strict"`` or ``"lenient"``: sent as ``Prefer: handling=...`` (FHIR search)."""
        verb = str(method).upper()
        if verb not in ("GET", "POST"):
            raise ValueError(f"method must be 'GET' or 'POST' (POST [type]/_search); got {method!r}")
        headers: tuple[tuple[str, str], ...] = ()
        if handling is not None:
            if handling not in ("strict", "lenient"):
                raise ValueError(f"handling must be 'strict', 'lenient' or None; got {handling!r}")
            headers = (("Prefer", f"handling={handling}"),)
        pairs = tuple(normalize_params(params))
        return cls(validate_resource_type(resource_type), pairs, verb, headers)  # type: ignore[arg-type]

    def page_headers(self) -> dict[str, str]:
        return {"Accept": FHIR_JSON, **dict(self.headers)}

    def describe(self) -> str:
        """The search for error messages: type and parameter names (values may identify patients)."""
        names = list(dict.fromkeys(name for name, _ in self.params))
        return f"{self.resource_type}?{'&'.join(f'{name}=…' for name in names)}" if names else self.resource_type

    def first_page(self) -> tuple[str, str, dict[str, Any]]:
        """(method, relative path, request keyword arguments) of the first page."""
        headers = self.page_headers()
        if self.method == "POST":
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            # A search changes nothing on the server, so the client may repeat this POST like a GET.
            kwargs = {"data": list(self.params), "headers": headers, "retry_post": True}
            return "POST", f"{self.resource_type}/_search", kwargs
        return "GET", self.resource_type, {"params": list(self.params), "headers": headers}


def format_instant(value: datetime) -> str:
    """A timezone-aware datetime as a FHIR instant in UTC (``2024-01-31T00:00:00Z``, micro-seconds if any)."""
    if value.tzinfo is None:
        raise ValueError(f"datetime {value.isoformat()} has no timezone; FHIR instants need one (use UTC)")
    utc = value.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_instant(value: Any) -> datetime | None:
    """Parse a FHIR instant (any number of fraction digits, ``Z`` or an offset); None when unreadable."""
    if not isinstance(value, str) or "T" not in value:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    date_part, _, time_part = text.partition("T")
    # Python reads at most 6 fraction digits; FHIR allows more. Cut them rather than fail.
    time_part = _LONG_FRACTION.sub(lambda m: m.group(1)[:7], time_part)
    try:
        parsed = datetime.fromisoformat(f"{date_part}T{time_part}")
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def last_updated_window(start: datetime | None, end: datetime | None) -> list[tuple[str, str]]:
    """``_lastUpdated`` bounds of a half-open window ``[start, end)``: consecutive windows never overlap."""
    pairs: list[tuple[str, str]] = []
    if start is not None:
        pairs.append(("_lastUpdated", "ge" + format_instant(start)))
    if end is not None:
        pairs.append(("_lastUpdated", "lt" + format_instant(end)))
    if start is not None and end is not None and start >= end:
        raise ValueError(
            f"empty _lastUpdated window: start {format_instant(start)} is not before end {format_instant(end)}"
        )
    return pairs


@dataclass
class SearchPage:
    """One parsed searchset page. ``url`` is redacted (no query string) and safe to log."""

    number: int
    url: str
    matches: list[dict[str, Any]]
    includes: list[dict[str, Any]]
    outcomes: list[dict[str, Any]]
    next_url: str | None
    total: int | None
    attempts: int = 1


@dataclass
class SearchStats:
    pages: int = 0
    matches: int = 0
    includes: int = 0
    outcomes: int = 0
    retries: int = 0
    total: int | None = None
    high_water_mark: str | None = None
    _high_water: datetime | None = field(default=None, repr=False)

    def observe_match(self, resource: Mapping[str, Any]) -> None:
        meta = resource.get("meta")
        raw = meta.get("lastUpdated") if isinstance(meta, Mapping) else None
        when = parse_instant(raw)
        if when is not None and (self._high_water is None or when > self._high_water):
            self._high_water = when
            self.high_water_mark = raw


_TRANSPORT_ERRORS: tuple[type[BaseException], ...]
try:  # requests is a dependency, but the protocol above lets any client be used; keep it optional here.
    import requests

    _TRANSPORT_ERRORS = (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
        requests.exceptions.ContentDecodingError,
    )
except ImportError:  # pragma: no cover
    _TRANSPORT_ERRORS = ()


class FhirSearch:
    """Iterate the pages and resources of one FHIR search.

    :param http: the HTTP side, e.g. ``FhirHttpClient`` (see :class:`SupportsFhirRequest`).
    :param request: the search (:meth:`SearchRequest.build`).
    :param page_retries: how many times one page may be fetched again after a transient failure.
    :param max_pages: stop with an error after this many pages (a guard against a server looping).
    :param max_retry_after: cap of one Retry-After wait; default: the client's (the connection's
        ``max_retry_after`` extra), else 300 s.
    :param sleep: the wait function (tests pass a fake).
    """

    def __init__(
        self,
        http: SupportsFhirRequest,
        request: SearchRequest,
        *,
        page_retries: int = 5,
        max_pages: int | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 60.0,
        max_retry_after: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if max_retry_after is None:
            # The client's cap: the connection's max_retry_after extra when the hook built it.
            max_retry_after = float(getattr(http, "max_retry_after", DEFAULT_MAX_RETRY_AFTER))
        self.http = http
        self.request = request
        self.page_retries = page_retries
        self.max_pages = max_pages
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.sleep = sleep
        self.stats = SearchStats()
        self.wait_policy = WaitPolicy(
            max_retry_after=max_retry_after,
            max_attempts=page_retries + 1,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
        )

    @property
    def high_water_mark(self) -> str | None:
        """The greatest ``meta.lastUpdated`` among the match entries seen so far (the original text)."""
        return self.stats.high_water_mark

    def pages(self) -> Iterator[SearchPage]:
        base = self.http.base_url.rstrip("/") + "/"
        method, path, kwargs = self.request.first_page()
        url = resolve(base, path)
        seen: set[str] = set()
        number = 0
        while True:
            number += 1
            if self.max_pages is not None and number > self.max_pages:
                raise FhirError(f"search stopped: more than {self.max_pages} pages (raise max_pages if expected)")
            page = self._fetch(number, method, url, kwargs)
            self.stats.pages += 1
            self.stats.matches += len(page.matches)
            self.stats.includes += len(page.includes)
            self.stats.outcomes += len(page.outcomes)
            if page.total is not None:
                self.stats.total = page.total
            for resource in page.matches:
                self.stats.observe_match(resource)
            yield page
            if page.next_url is None:
                return
            if page.next_url in seen:
                raise FhirError(f"search stopped: the server sent page {redact_url(page.next_url)} twice")
            seen.add(page.next_url)
            # Paging links are plain GETs with everything in the (opaque) URL, also after a POST _search.
            method, url, kwargs = "GET", page.next_url, {"headers": self.request.page_headers()}

    def entries(self) -> Iterator[tuple[EntryMode, dict[str, Any]]]:
        """Every ``(mode, resource)`` in server order: ``match`` and ``include`` (outcomes are logged)."""
        for page in self.pages():
            for resource in page.matches:
                yield "match", resource
            for resource in page.includes:
                yield "include", resource

    def __iter__(self) -> Iterator[tuple[EntryMode, dict[str, Any]]]:
        return self.entries()

    # -- one page, with retries -------------------------------------------------------------------------

    def _fetch(self, number: int, method: str, url: str, kwargs: dict[str, Any]) -> SearchPage:
        """One page, tried again within ONE retry budget shared with the client's own retries.

        The client retries answers (429, 502-504, transient outcomes, failed connections) drawing from
        the page's budget; this loop adds only what the client cannot see (a body cut short), from the
        same budget, so the two loops never multiply.
        """
        where = f"search page {number} ({redact_url(url)})"
        budget = self.wait_policy.budget(where, sleep=self.sleep)
        while True:
            wait: float | None = None
            try:
                try:
                    # Redirects of a search page to another origin are refused, not followed.
                    response = self.http.request(method, url, budget=budget, same_origin_redirects=True, **kwargs)
                except FhirError as exc:
                    if exc.retryable and not isinstance(exc, TransientFhirError):
                        # No HTTP answer at all (the client gave up on a dropped or refused connection).
                        raise _TruncatedPage(str(exc)) from exc
                    if not exc.retryable:
                        # A final answer (400 unknown parameter, 403 scope): say which page of which search.
                        raise FhirError(
                            f"search page {number} of {self.request.describe()} failed: {exc}",
                            status=exc.status,
                            outcome=exc.outcome,
                        ) from exc
                    raise
                page = self._parse(number, url, response)
                page.attempts = budget.attempts
                # Every retry of the page counts, whether the client or this loop made it.
                self.stats.retries += budget.retries
                return page
            except _TruncatedPage as exc:
                error: Exception = exc
            except TransientFhirError as exc:
                error, wait = exc, exc.retry_after
            except _TRANSPORT_ERRORS as exc:
                error = FhirError(f"connection failed while reading the page: {type(exc).__name__}")
            if not budget.wait(f"{where} failed: {error}; fetching the same page again", retry_after=wait):
                raise FhirError(
                    f"{where} failed {budget.attempts} times ({budget.give_up_text()}); last error: {error}"
                ) from error

    def _parse(self, number: int, url: str, response: Any) -> SearchPage:
        status = int(response.status_code)
        body: bytes = response.content
        content_type = response.headers.get("Content-Type")
        if status >= 400:
            message = f"search page {number} ({redact_url(url)}) failed with HTTP {status}: "
            message += describe_error_body(body, content_type)
            outcome = _json_outcome(body)
            if is_retryable(status, outcome):
                retry_after = parse_retry_after(response.headers.get("Retry-After"), maximum=self.max_retry_after)
                raise TransientFhirError(message, status=status, outcome=outcome, retry_after=retry_after)
            raise FhirError(message, status=status, outcome=outcome)
        try:
            bundle = json.loads(body)
        except ValueError as exc:
            # A 2xx body that is not JSON is almost always a body cut short: fetch the page again.
            raise _TruncatedPage(
                f"search page {number} ({redact_url(url)}) is not valid JSON ({len(body)} bytes): {exc}"
            ) from None
        if not isinstance(bundle, dict):
            raise FhirError(f"search page {number} ({redact_url(url)}) is not a FHIR resource")
        kind = bundle.get("resourceType")
        if kind == "OperationOutcome":
            raise FhirError(f"search failed: {operation_outcome_text(bundle)}", status=status, outcome=bundle)
        if kind != "Bundle" or bundle.get("type") != "searchset":
            raise FhirError(
                f"search page {number} ({redact_url(url)}) is a {kind!r} "
                f"(type {bundle.get('type')!r}), not a searchset Bundle"
            )
        return _split_bundle(number, url, bundle)


def _json_outcome(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome" else None


class _TruncatedPage(FhirError):
    """A page that never arrived whole (no answer, a body cut short): fetched again."""


def _split_bundle(number: int, url: str, bundle: dict[str, Any]) -> SearchPage:
    matches: list[dict[str, Any]] = []
    includes: list[dict[str, Any]] = []
    outcomes: list[dict[str, Any]] = []
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise FhirError(f"search page {number} ({redact_url(url)}) has an entry without a resource")
        search = entry.get("search")
        mode = search.get("mode") if isinstance(search, dict) else None
        if mode == "outcome" or (mode is None and resource["resourceType"] == "OperationOutcome"):
            outcomes.append(resource)
            _log_outcome(number, resource)
        elif mode == "include":
            includes.append(resource)
        else:
            # FHIR: an entry without search.mode is a match.
            matches.append(resource)
    next_url = None
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            next_url = resolve(url, str(link["url"]))
            if not same_origin(next_url, url):
                raise FhirError(
                    f"search page {number}: refusing to follow the next link to another origin "
                    f"({redact_url(next_url)}, the search runs against {redact_url(url)}); the access "
                    "token is only ever sent to the FHIR server's own origin. Fix the server's base URL "
                    "setting or the connection's host."
                )
            break
    total = bundle.get("total")
    return SearchPage(
        number=number,
        url=redact_url(url),
        matches=matches,
        includes=includes,
        outcomes=outcomes,
        next_url=next_url,
        total=total if isinstance(total, int) else None,
    )


def _log_outcome(number: int, outcome: Mapping[str, Any]) -> None:
    issues = operation_outcome_issues(dict(outcome))
    text = "; ".join(issue_text(i) for i in issues) if issues else "OperationOutcome with no issues"
    log.warning("Search page %d: the server reported: %s", number, text)


def resource_key(resource: Mapping[str, Any]) -> str | None:
    """``Type/id`` of a resource, or None when it has no id."""
    rid = resource.get("id")
    return f"{resource.get('resourceType')}/{rid}" if rid else None


def params_without(pairs: Sequence[tuple[str, str]], names: Iterable[str]) -> list[tuple[str, str]]:
    drop = set(names)
    return [(k, v) for k, v in pairs if k not in drop]
