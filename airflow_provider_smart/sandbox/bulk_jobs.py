"""Bulk Data export jobs in the sandbox: what a kick-off selects, the files it writes, the manifest.

Protocol-independent: no FastAPI here. ``bulk.py`` turns HTTP requests into calls on ``BulkJobs``.

Consistency: the resources are read from a snapshot the store hands out under its write lock, and the
snapshot's time is the manifest's ``transactionTime``. Every resource in the snapshot has
``lastUpdated <= transactionTime`` and every later write gets a later ``lastUpdated``, so an incremental
client that uses ``transactionTime`` as its next ``_since`` neither misses nor repeats a change.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from airflow_provider_smart.sandbox.bulk_files import ExportFile, dump_line, write_blocks, write_by_type
from airflow_provider_smart.sandbox.bulk_filters import apply_elements, parse_fhir_instant
from airflow_provider_smart.sandbox.bulk_params import ExportRequest, KickoffError, issue, operation_outcome
from airflow_provider_smart.sandbox.clock import SandboxClock


def format_instant(when: datetime) -> str:
    """A FHIR instant in UTC with microseconds (no precision lost against the store's timestamps)."""
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Deletion:
    resource_type: str
    resource_id: str
    deleted_at: datetime
    patients: frozenset[str] = frozenset()


class ExportSnapshot(Protocol):
    """What an export reads: a consistent view of the store at ``transaction_time``."""

    transaction_time: datetime

    def types(self) -> list[str]: ...

    def entries(self, resource_type: str) -> Iterable[tuple[datetime | None, dict[str, Any]]]:
        """(last updated, resource) of a type in a stable order; None when the time is unknown."""
        ...

    def patients_of(self, resource: dict[str, Any]) -> set[str]: ...

    def group_members(self, group_id: str) -> list[str] | None: ...

    def deletions(self, resource_types: list[str]) -> Iterable[Deletion]: ...


@dataclass
class BulkSettings:
    """How the sandbox's export jobs behave (see docs/sandbox.rst, "Bulk Data in the sandbox").

    :param polls_to_complete: status requests answered 202 before the manifest is ready.
    :param seconds_to_complete: and at least this many seconds after the kick-off.
    :param retry_after: the Retry-After value (seconds) sent with 202 and 429 answers.
    :param retry_after_http_date: send Retry-After as an HTTP-date instead of seconds.
    :param max_file_resources: at most this many resources (lines) per NDJSON file.
    :param max_file_bytes: and at most this many bytes per file (None: no byte limit).
    :param files_ttl: seconds the files stay available; the manifest's ``Expires`` header.
    :param presigned_files: list files on the second (file) origin as presigned URLs that need no
        token (``requiresAccessToken: false``) instead of on the FHIR origin with the token.
    :param presign_ttl: seconds a presigned URL stays valid.
    :param manifest_page_size: output items per manifest page when ``allowPartialManifests=true``.
    :param partial_manifests_while_running: with ``allowPartialManifests=true``, in-progress (202) status
        answers carry the first manifest page once the files are written (STU3); the completed manifest
        then only adds the ``link`` to the next page.
    """

    polls_to_complete: int = 1
    seconds_to_complete: float = 0.0
    retry_after: int = 1
    retry_after_http_date: bool = False
    max_file_resources: int = 1000
    max_file_bytes: int | None = None
    files_ttl: int = 3600
    presigned_files: bool = False
    presign_ttl: int = 900
    manifest_page_size: int = 5
    partial_manifests_while_running: bool = False


@dataclass
class ExportJob:
    id: str
    request: ExportRequest
    client_id: str | None
    transaction_time: datetime
    created: float
    directory: Path
    files: list[ExportFile] = field(default_factory=list)
    polls: int = 0
    last_poll: float | None = None  # monotonic time of the last counted status request
    failed: dict[str, Any] | None = None  # the OperationOutcome of a failed export
    completed_at: datetime | None = None
    generation: int = 1  # bumped when file URLs expire, so a fresh manifest has fresh URLs
    expired_generations: set[int] = field(default_factory=set)
    #: Set once the files are written (or writing failed, or the job was deleted).
    written: threading.Event = field(default_factory=threading.Event, repr=False)
    cancelled: bool = False
    finished: bool = False  # the writer has stopped (guarded by the registry's lock)

    @property
    def outputs(self) -> list[ExportFile]:
        return [f for f in self.files if f.kind == "output"]

    def file(self, name: str) -> ExportFile | None:
        return next((f for f in self.files if f.name == name), None)


class PolledTooSoon(Exception):
    """A status request came sooner than Retry-After allowed (answered 429)."""

    def __init__(self, wait: float):
        super().__init__(f"poll again in {wait:.1f} seconds")
        self.wait = wait


class JobGone(Exception):
    """No such export (never started, or deleted): 404 with an OperationOutcome."""


def last_updated(resource: dict[str, Any]) -> datetime | None:
    """``meta.lastUpdated`` as a datetime (None when missing or unreadable)."""
    stamp = (resource.get("meta") or {}).get("lastUpdated")
    return parse_fhir_instant(stamp) if isinstance(stamp, str) else None


def _in_window(when: datetime | None, request: ExportRequest, transaction_time: datetime) -> bool:
    if when is None:
        # Bulk Data: resources without a last-updated time MAY be included whatever _since says.
        return True
    if when > transaction_time:
        return False
    if request.since is not None and when <= request.since:
        return False
    return not (request.until is not None and when >= request.until)


class Selection:
    """Which resources (and deletions) a checked kick-off selects from a snapshot."""

    def __init__(self, request: ExportRequest, snapshot: ExportSnapshot, types: list[str], compartment: set[str]):
        self.request = request
        self.snapshot = snapshot
        self.types = types
        self.compartment_types = compartment
        self.patients: set[str] | None = self._patient_scope()

    def _patient_scope(self) -> set[str] | None:
        request = self.request
        if request.level == "system":
            return None
        if request.level == "group":
            assert request.group_id is not None
            members = self.snapshot.group_members(request.group_id)
            if members is None:
                raise KickoffError(
                    404, [issue("error", "not-found", f"Group/{request.group_id} does not exist", "Group")]
                )
            scope = set(members)
        else:
            scope = {str(p.get("id")) for _, p in self.snapshot.entries("Patient")}
        if request.patients is not None:
            unknown = [p for p in request.patients if p not in scope]
            if unknown:
                where = f"members of Group/{request.group_id}" if request.level == "group" else "on this server"
                message = f"patient(s) {', '.join('Patient/' + p for p in unknown)} are not {where}"
                if not request.lenient:
                    raise KickoffError(400, [issue("error", "invalid", message, "patient")])
                request.warnings.append(issue("warning", "not-found", f"ignored: {message}", "patient"))
            scope &= set(request.patients)
        return scope

    def in_scope(self, resource_type: str, resource: dict[str, Any]) -> bool:
        if self.patients is None:
            return True
        if resource_type == "Patient":
            return str(resource.get("id")) in self.patients
        return bool(self.snapshot.patients_of(resource) & self.patients)

    def matches(self, resource_type: str, resource: dict[str, Any], when: datetime | None) -> bool:
        if not _in_window(when, self.request, self.snapshot.transaction_time):
            return False
        queries = self.request.type_filters.get(resource_type)
        if queries and not any(q.matches(resource) for q in queries):
            return False
        return self.in_scope(resource_type, resource)

    def resources(self, resource_type: str) -> Iterator[dict[str, Any]]:
        for when, resource in self.snapshot.entries(resource_type):
            if self.matches(resource_type, resource, when):
                yield apply_elements(resource, self.request.elements)

    def provenance(self, exported: set[str]) -> list[dict[str, Any]]:
        """Provenance for the exported resources (``includeAssociatedData``)."""
        modes = self.request.include_associated or (
            # Bulk Data: without includeAssociatedData, a Patient-level export SHALL include the Provenance
            # whose target is in the compartment: the sandbox does so when the token may read Provenance.
            ["RelevantProvenanceResources"] if self.request.implicit_provenance else []
        )
        if not modes or "Provenance" not in self.snapshot.types():
            return []
        found = []
        for when, prov in self.snapshot.entries("Provenance"):
            targets = {str(t.get("reference")) for t in prov.get("target") or [] if isinstance(t, dict)}
            if targets & exported and _in_window(when, self.request, self.snapshot.transaction_time):
                found.append(prov)
        if "RelevantProvenanceResources" in modes:
            return found
        # LatestProvenanceResources: the most recent Provenance per target.
        latest: dict[str, dict[str, Any]] = {}
        for prov in found:
            for target in prov.get("target") or []:
                ref = str(target.get("reference"))
                if ref in exported and str(prov.get("recorded", "")) >= str(latest.get(ref, {}).get("recorded", "")):
                    latest[ref] = prov
        seen: dict[str, dict[str, Any]] = {str(p.get("id")): p for p in latest.values()}
        return list(seen.values())

    def deletions(self) -> list[Deletion]:
        if self.request.since is None:
            return []
        chosen = []
        for deletion in self.snapshot.deletions(self.types):
            if not _in_window(deletion.deleted_at, self.request, self.snapshot.transaction_time):
                continue
            if self.patients is not None:
                owners = {deletion.resource_id} if deletion.resource_type == "Patient" else set(deletion.patients)
                if not owners & self.patients:
                    continue
            chosen.append(deletion)
        return chosen


def deletion_bundle(deletion: Deletion) -> dict[str, Any]:
    """A transaction Bundle with one DELETE entry: one line of a ``deleted`` file."""
    key = f"{deletion.resource_type}/{deletion.resource_id}/{format_instant(deletion.deleted_at)}"
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, key)),
        "meta": {"lastUpdated": format_instant(deletion.deleted_at)},
        "type": "transaction",
        "entry": [
            {"request": {"method": "DELETE", "url": f"{deletion.resource_type}/{deletion.resource_id}"}},
        ],
    }


#: Issues of the "error file" fault: one of ``severity`` (fatal by default), one informational.
def fault_error_outcomes(job_id: str, severity: str = "fatal") -> list[dict[str, Any]]:
    return [
        operation_outcome(
            [issue(severity, "exception", f"export {job_id}: a storage node failed while writing part of the export")]
        ),
        operation_outcome([issue("information", "informational", f"export {job_id}: finished in the sandbox")]),
    ]


class BulkJobs:
    """The sandbox's export jobs: thread-safe, files under one temporary directory."""

    def __init__(self, settings: BulkSettings | None = None, clock: SandboxClock | None = None):
        self.settings = settings or BulkSettings()
        #: "Now" for completion, poll intervals and file expiry (tests freeze or advance it).
        self.clock = clock or SandboxClock()
        self._lock = threading.Lock()
        self._jobs: dict[str, ExportJob] = {}
        self._writers: list[threading.Thread] = []
        self._root = Path(tempfile.mkdtemp(prefix="smart-sandbox-bulk-"))

    def close(self) -> None:
        """Cancel and forget every job, wait for the writers, remove the files."""
        with self._lock:
            jobs = list(self._jobs.values())
            self._jobs.clear()
            writers, self._writers = self._writers, []
        for job in jobs:
            job.cancelled = True
        for writer in writers:
            writer.join(timeout=30)
        shutil.rmtree(self._root, ignore_errors=True)

    # -- kick-off ------------------------------------------------------------------------------

    def start(
        self,
        request: ExportRequest,
        snapshot: ExportSnapshot,
        *,
        types: list[str],
        compartment_types: set[str],
        client_id: str | None,
        error_file_fault: str | bool | None = None,
    ) -> ExportJob:
        """Check what the export selects, register the job and write its files in a background thread
        (so a big export does not hold the kick-off response; the job is in progress until they are written).

        :param types: the resource types to export (already limited to what the token may read).
        :raises KickoffError: a Group that does not exist, patients outside it (before anything starts).
        """
        selection = Selection(request, snapshot, types, compartment_types)
        job_id = uuid.uuid4().hex
        directory = self._root / job_id
        directory.mkdir(parents=True)  # parents: the root is made again after close()
        job = ExportJob(
            id=job_id,
            request=request,
            client_id=client_id,
            transaction_time=snapshot.transaction_time,
            created=self.clock.monotonic(),
            directory=directory,
        )
        with self._lock:
            self._jobs[job_id] = job
        writer = threading.Thread(
            target=self._build, args=(job, selection, types, error_file_fault), name=f"export-{job_id}", daemon=True
        )
        with self._lock:
            self._writers = [w for w in self._writers if w.is_alive()] + [writer]
        writer.start()
        return job

    def _build(
        self, job: ExportJob, selection: Selection, types: list[str], error_file_fault: str | bool | None
    ) -> None:
        try:
            files = self._write(job, selection, types, error_file_fault)
        except Exception as exc:
            if not job.cancelled:
                # The job's OperationOutcome, as a server reports an export that failed as a whole.
                text = f"export {job.id} could not be written: {type(exc).__name__}: {exc}"
                self.fail(job.id, operation_outcome([issue("fatal", "exception", text)]))
        else:
            with self._lock:
                job.files = files
        finally:
            # Under the lock, exactly one of the writer and delete() sees the other's mark and cleans up.
            with self._lock:
                job.finished = True
                cleanup = job.cancelled
            if cleanup:
                shutil.rmtree(job.directory, ignore_errors=True)
            job.written.set()

    def _write(
        self, job: ExportJob, selection: Selection, types: list[str], error_file_fault: str | bool | None
    ) -> list[ExportFile]:
        settings = self.settings
        request = job.request
        files: list[ExportFile] = []
        exported: set[str] = set()

        def remember(resources: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            for resource in resources:
                if job.cancelled:
                    raise JobGone(job.id)  # deleted while writing: stop early
                exported.add(f"{resource.get('resourceType')}/{resource.get('id')}")
                yield resource

        if request.organize_output_by == "Patient":
            files += write_blocks(
                job.directory,
                self._patient_blocks(selection, types, remember),
                prefix="patient-blocks",
                max_resources=max(2, settings.max_file_resources),
                max_bytes=settings.max_file_bytes,
            )
        else:
            for resource_type in types:
                if resource_type == "Provenance" and request.include_associated:
                    continue  # written below, limited to the exported resources
                files += write_by_type(
                    job.directory,
                    remember(selection.resources(resource_type)),
                    kind="output",
                    resource_type=resource_type,
                    prefix=resource_type,
                    max_resources=settings.max_file_resources,
                    max_bytes=settings.max_file_bytes,
                )
            provenance = selection.provenance(exported)
            if provenance:
                files += write_by_type(
                    job.directory,
                    provenance,
                    kind="output",
                    resource_type="Provenance",
                    prefix="Provenance",
                    max_resources=settings.max_file_resources,
                    max_bytes=settings.max_file_bytes,
                )
        deletions = selection.deletions()
        if deletions:
            files += write_by_type(
                job.directory,
                (deletion_bundle(d) for d in deletions),
                kind="deleted",
                resource_type="Bundle",
                prefix="deleted",
                max_resources=settings.max_file_resources,
                max_bytes=settings.max_file_bytes,
            )
        errors = [operation_outcome([w]) for w in request.warnings]
        if error_file_fault:
            # True (or a severity): the error file fault, with that severity (fatal by default).
            errors += fault_error_outcomes(job.id, error_file_fault if isinstance(error_file_fault, str) else "fatal")
        if errors:
            files += write_by_type(
                job.directory,
                errors,
                kind="error",
                resource_type="OperationOutcome",
                prefix="errors",
                max_resources=settings.max_file_resources,
                max_bytes=None,
            )
        return files

    def _patient_blocks(
        self,
        selection: Selection,
        types: list[str],
        remember: Callable[[Iterable[dict[str, Any]]], Iterator[dict[str, Any]]],
    ) -> Iterator[tuple[str, str, Iterable[dict[str, Any]]]]:
        """One block per patient: the Patient (when selected) and its compartment's selected resources."""
        by_patient: dict[str, list[dict[str, Any]]] = {}
        order: list[str] = []
        patients = {str(p.get("id")): p for _, p in selection.snapshot.entries("Patient")}
        for pid in patients:
            if selection.patients is None or pid in selection.patients:
                order.append(pid)
                by_patient[pid] = []
        if "Patient" in types:
            for patient in selection.resources("Patient"):
                by_patient[str(patient.get("id"))].append(patient)
        for resource_type in types:
            if resource_type == "Patient":
                continue
            for when, resource in selection.snapshot.entries(resource_type):
                if not selection.matches(resource_type, resource, when):
                    continue
                owners = sorted(selection.snapshot.patients_of(resource) & by_patient.keys())
                if owners:
                    # A resource about several patients goes in the first one's block only.
                    by_patient[owners[0]].append(apply_elements(resource, selection.request.elements))
        for pid in order:
            yield "Patient", pid, list(remember(by_patient[pid]))

    # -- status --------------------------------------------------------------------------------

    def get(self, job_id: str) -> ExportJob:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobGone(job_id)
        return job

    def in_progress(self, client_id: str | None) -> list[ExportJob]:
        """Jobs of this client whose manifest has not been handed out yet."""
        with self._lock:
            return [
                j
                for j in self._jobs.values()
                if j.client_id == client_id and j.completed_at is None and j.failed is None
            ]

    def poll(self, job_id: str, *, min_interval: float | None = None) -> ExportJob:
        """Count a status request; mark the job complete once it has waited long enough.

        :param min_interval: seconds a client must leave between polls of one job; a poll sooner than that
            raises :class:`PolledTooSoon` and is not counted.
        """
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise JobGone(job_id)
            now = self.clock.monotonic()
            if (
                min_interval is not None
                and job.completed_at is None
                and job.last_poll is not None
                and now - job.last_poll < min_interval
            ):
                raise PolledTooSoon(min_interval - (now - job.last_poll))
            job.last_poll = now
            job.polls += 1
            if job.completed_at is None and job.failed is None and self._ready(job):
                job.completed_at = self.clock.now()
            return job

    def _ready(self, job: ExportJob) -> bool:
        waited = self.clock.monotonic() - job.created
        return (
            job.written.is_set()
            and job.polls > self.settings.polls_to_complete
            and waited >= self.settings.seconds_to_complete
        )

    def progress(self, job: ExportJob) -> str:
        """The X-Progress text (under 100 characters)."""
        if not job.written.is_set():
            return "writing files"
        total = max(1, self.settings.polls_to_complete)
        percent = min(99, int(100 * min(job.polls, total) / (total + 1)))
        return f"{percent}% complete"

    def fail(self, job_id: str, outcome: dict[str, Any]) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                job.failed = outcome

    def delete(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.pop(job_id, None)
            if job is None:
                raise JobGone(job_id)
            job.cancelled = True
            finished = job.finished
        if finished:
            shutil.rmtree(job.directory, ignore_errors=True)
        # else the writer removes the directory when it stops

    def expires_at(self, job: ExportJob) -> datetime:
        done = job.completed_at or self.clock.now()
        return done + timedelta(seconds=self.settings.files_ttl)

    def expire_generation(self, job: ExportJob, generation: int) -> None:
        """The URLs of ``generation`` expire (410 from now on); the next manifest gets fresh URLs."""
        with self._lock:
            job.expired_generations.add(generation)
            if job.generation <= generation:
                job.generation = generation + 1


def build_manifest(
    job: ExportJob,
    *,
    url_for: Callable[[ExportFile], str],
    requires_access_token: bool,
    page: int = 1,
    page_size: int = 5,
    page_url: Callable[[int], str] | None = None,
) -> dict[str, Any]:
    """The completion manifest (Bulk Data 2.0 fields plus STU3 ``outputOrganizedBy``, ``continuesInFile``
    and ``link``). With ``allowPartialManifests`` the output items are split into pages of ``page_size``
    linked by ``link: [{relation: next}]``; ``error`` repeats on every page as STU3 asks, ``deleted`` is
    on the first page only.
    """
    request = job.request
    by_name = {f.name: f for f in job.files}

    def item(entry: ExportFile) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if entry.resource_type is not None:
            result["type"] = entry.resource_type
        result["url"] = url_for(entry)
        if entry.continues_in is not None:
            result["continuesInFile"] = url_for(by_name[entry.continues_in])
        result["count"] = entry.count
        return result

    outputs = [item(f) for f in job.files if f.kind == "output"]
    deleted = [item(f) for f in job.files if f.kind == "deleted"]
    errors = [item(f) for f in job.files if f.kind == "error"]
    manifest: dict[str, Any] = {
        "transactionTime": format_instant(job.transaction_time),
        "request": request.request_url,
        "requiresAccessToken": requires_access_token,
    }
    if request.organize_output_by:
        manifest["outputOrganizedBy"] = request.organize_output_by
    if request.allow_partial_manifests and page_url is not None:
        size = max(1, page_size)
        pages = max(1, -(-len(outputs) // size))
        if page < 1 or page > pages:
            raise JobGone(f"{job.id} manifest page {page}")
        manifest["output"] = outputs[(page - 1) * size : page * size]
        manifest["deleted"] = deleted if page == 1 else []
        manifest["error"] = errors
        if page < pages:
            manifest["link"] = [{"relation": "next", "url": page_url(page + 1)}]
    else:
        if page != 1:
            raise JobGone(f"{job.id} manifest page {page}")
        manifest["output"] = outputs
        manifest["deleted"] = deleted
        manifest["error"] = errors
    return manifest


def dump_lines(resources: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(dump_line(r) for r in resources)
