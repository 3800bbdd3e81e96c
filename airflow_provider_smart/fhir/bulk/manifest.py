"""The Bulk Data manifest: parsing (2.0, STU3 and the STU4 ballot's ``outcome``), paging, file naming."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from airflow_provider_smart.fhir.errors import OverLimitError
from airflow_provider_smart.fhir.names import UnsafeNameError, checked_resource_type
from airflow_provider_smart.transport.sanitize import safe_text
from airflow_provider_smart.transport.urls import resolve

FileKind = Literal["output", "error", "deleted"]
KINDS: tuple[FileKind, ...] = ("output", "error", "deleted")

#: Directories for error and deleted files; lowercase so they never collide with a resource type.
ERRORS_DIR = "errors"
DELETED_DIR = "deleted"
OUTCOME_TYPE = "OperationOutcome"


class ManifestError(ValueError):
    """The status endpoint's manifest is not usable; the message says what is wrong."""


class ManifestTooLargeError(ManifestError, OverLimitError):
    """The manifest lists more files than ``max_manifest_files``: not retried."""


@dataclass(frozen=True)
class ManifestFile:
    kind: FileKind
    url: str
    type: str | None
    count: int | None
    continues_in_file: str | None = None


@dataclass(frozen=True)
class Manifest:
    transaction_time: str
    request: str | None
    requires_access_token: bool
    output: tuple[ManifestFile, ...]
    error: tuple[ManifestFile, ...]
    deleted: tuple[ManifestFile, ...]
    output_organized_by: str | None
    next_url: str | None

    def files(self) -> tuple[ManifestFile, ...]:
        return self.output + self.error + self.deleted


def _files(data: dict[str, Any], key: str, kind: FileKind, base_url: str | None) -> list[ManifestFile]:
    items = data.get(key)
    if items is None:
        return []
    if not isinstance(items, list):
        raise ManifestError(f"manifest '{key}' must be an array, got {type(items).__name__}")
    out: list[ManifestFile] = []
    for n, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("url"), str) or not item["url"]:
            raise ManifestError(f"manifest '{key}[{n}]' has no url")
        ftype = item.get("type")
        if ftype is not None:
            ftype = _type_name(ftype, f"manifest '{key}[{n}].type'")
        count = item.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise ManifestError(f"manifest '{key}[{n}].count' must be a non-negative integer, got {count!r}")
        url = resolve(base_url, item["url"]) if base_url else item["url"]
        cont = item.get("continuesInFile")
        out.append(ManifestFile(kind, url, ftype, count, cont if isinstance(cont, str) else None))
    return out


def _type_name(value: Any, what: str) -> str:
    try:
        return checked_resource_type(value, what)
    except UnsafeNameError as exc:
        raise ManifestError(str(exc)) from None


def parse_manifest(data: Any, *, base_url: str | None = None) -> Manifest:
    """Check and read one manifest page. Relative file URLs are resolved against ``base_url``."""
    if not isinstance(data, dict):
        raise ManifestError(f"manifest must be a JSON object, got {type(data).__name__}")
    tt = data.get("transactionTime")
    if not isinstance(tt, str) or not tt:
        raise ManifestError("manifest has no transactionTime")
    rat = data.get("requiresAccessToken", True)
    if not isinstance(rat, bool):
        raise ManifestError(f"manifest requiresAccessToken must be true or false, got {rat!r}")
    # STU4 ballot renames 'error' to 'outcome'; accept either (or both).
    errors = _files(data, "error", "error", base_url) + _files(data, "outcome", "error", base_url)
    next_url = None
    links = data.get("link")
    if isinstance(links, list):
        for link in links:
            if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
                next_url = resolve(base_url, link["url"]) if base_url else link["url"]
    org = data.get("outputOrganizedBy")
    if org is not None and org != "":
        org = _type_name(org, "manifest 'outputOrganizedBy'")
    return Manifest(
        transaction_time=tt,
        request=safe_text(data["request"]) if isinstance(data.get("request"), str) else None,
        requires_access_token=rat,
        output=tuple(_files(data, "output", "output", base_url)),
        error=tuple(errors),
        deleted=tuple(_files(data, "deleted", "deleted", base_url)),
        output_organized_by=org if isinstance(org, str) and org else None,
        next_url=next_url,
    )


def merge_pages(pages: Iterable[Manifest]) -> Manifest:
    """One manifest from the pages of a paged manifest (``link`` next), in page order."""
    pages = list(pages)
    if not pages:
        raise ManifestError("no manifest pages")
    first = pages[0]
    for page in pages[1:]:
        if page.transaction_time != first.transaction_time:
            raise ManifestError(
                f"manifest pages disagree on transactionTime ({first.transaction_time} vs {page.transaction_time})"
            )
    return Manifest(
        transaction_time=first.transaction_time,
        request=first.request,
        requires_access_token=any(p.requires_access_token for p in pages),
        output=tuple(f for p in pages for f in p.output),
        error=tuple(f for p in pages for f in p.error),
        deleted=tuple(f for p in pages for f in p.deleted),
        output_organized_by=first.output_organized_by,
        next_url=None,
    )


def manifest_to_dict(manifest: Manifest) -> dict[str, Any]:
    """A JSON form of a (merged) manifest, readable back with :func:`parse_manifest`."""

    def files(items: tuple[ManifestFile, ...]) -> list[dict[str, Any]]:
        out = []
        for f in items:
            entry: dict[str, Any] = {"url": f.url}
            if f.type:
                entry["type"] = f.type
            if f.count is not None:
                entry["count"] = f.count
            if f.continues_in_file:
                entry["continuesInFile"] = f.continues_in_file
            out.append(entry)
        return out

    data: dict[str, Any] = {
        "transactionTime": manifest.transaction_time,
        "requiresAccessToken": manifest.requires_access_token,
        "output": files(manifest.output),
        "error": files(manifest.error),
        "deleted": files(manifest.deleted),
    }
    if manifest.request:
        data["request"] = manifest.request
    if manifest.output_organized_by:
        data["outputOrganizedBy"] = manifest.output_organized_by
    return data


@dataclass(frozen=True)
class PlannedFile:
    """One manifest file and where it lands: ``<directory>/<export label>/<filename>``."""

    key: str
    kind: FileKind
    url: str
    directory: str
    filename: str
    expected_type: str | None
    count: int | None
    resource_type: str | None

    @property
    def holds_outcomes(self) -> bool:
        """Whether the file's OperationOutcomes are read for severity: every ``error[]`` file, and an
        ``output[]`` file of type OperationOutcome (a server may list its errors there; they are errors
        all the same, so both lists take the one path: counted in the summary, failing the run)."""
        return self.kind == "error" or (self.kind == "output" and self.expected_type == OUTCOME_TYPE)


def plan_files(manifest: Manifest) -> list[PlannedFile]:
    """Deterministic names for every file, so a resumed or re-fetched manifest maps to the same paths.

    Output files land in a directory named after their resource type (``Patient/``); files organised
    by a resource type (``organizeOutputBy``) hold many types and land in ``by-<Type>/``; error files
    in ``errors/`` and deleted-resource Bundles in ``deleted/``. Files are numbered per directory in
    manifest order.

    A manifest ``count`` is checked for data files only: some servers copy a data file's count onto
    the error entries, and an error file's length says nothing about the data.
    """
    counters: dict[str, int] = {}
    planned: list[PlannedFile] = []
    for f in manifest.files():
        if f.kind == "error":
            directory, stem, expected = ERRORS_DIR, OUTCOME_TYPE, OUTCOME_TYPE
        elif f.kind == "deleted":
            directory, stem, expected = DELETED_DIR, "Bundle", "Bundle"
        elif manifest.output_organized_by:
            directory, stem, expected = f"by-{manifest.output_organized_by}", "block", None
        elif f.type:
            directory, stem, expected = f.type, f.type, f.type
        else:
            raise ManifestError(f"manifest output file {f.url!r} has no type and the output is not organised by one")
        index = counters.get(directory, 0)
        counters[directory] = index + 1
        planned.append(
            PlannedFile(
                key=f"{directory}.{index:05d}",
                kind=f.kind,
                url=f.url,
                directory=directory,
                filename=f"{stem}.{index:05d}.ndjson",
                expected_type=expected,
                count=None if f.kind == "error" else f.count,
                resource_type=f.type if f.kind == "output" else expected,
            )
        )
    return planned
