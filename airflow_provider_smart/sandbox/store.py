"""The sandbox's in-memory FHIR resource store: a contract shared by search (``fhir_rest``) and Bulk Data (``bulk``).

Resources are plain JSON dicts. Callers must treat every dict the store returns as read-only (copy before
changing it, then :meth:`ResourceStore.put` the copy).

Ordering and time
    Every stored version has a *key* ``(lastUpdated in integer microseconds since the epoch, id)``. A type
    is always iterated in ascending key order, which is stable across requests and gives keyset paging.
    Resources loaded without ``meta.lastUpdated`` (most of the Synthea fixture) get the store's load time,
    so ``_since`` still answers for them. :func:`to_micros` / :func:`from_micros` convert between
    datetimes/instants and the integer form.

Versions and snapshots
    :meth:`ResourceStore.put` (add or update) sets ``meta.versionId`` (previous + 1) and
    ``meta.lastUpdated`` (the store clock: strictly increasing, never earlier than anything stored).
    Old versions are kept, so a reader can iterate *as of* a snapshot key (:meth:`ResourceStore.now`
    taken when the search or export started): it then sees each resource exactly once, in the version
    that was current at the snapshot, however the data changes while it pages.
    :meth:`ResourceStore.load` stores resources as they are (no version bump): it is the bulk loader.

Lazy sources
    Generated data sets (see ``generator.SyntheticDataset``) are attached with
    :meth:`ResourceStore.add_source`: their resources are produced on demand in key order, so 100,000+
    patients need no memory beyond an index. A ``put`` of a source resource shadows the source's copy.

API
    ``types()``; ``count(type)``; ``get(type, id)``; ``resolve(reference)``;
    ``iter_type(type, since=, until=, as_of=)`` (dicts); ``iter_entries(type, min_key=, max_key=, after=,
    as_of=, patient_ids=)`` (``(key, resource)`` pairs, for keyset paging; ``patient_ids`` limits to those
    patients' compartments, fast for generated data); ``put(resource)``; ``load(resources)``;
    ``delete(type, id)``; ``iter_deletions(type, min_key=, max_key=, as_of=)``;
    ``now()``; ``patient_refs(resource)`` (patient ids a resource belongs to: its own id for Patient, else
    ``subject`` / ``patient`` / ``beneficiary`` references as ``Patient/x``, ``urn:uuid:x`` or absolute
    URLs); ``in_patient_compartment(resource, patient_ids)``; ``group_member_ids(group_id)``;
    ``patient_compartment_types()``.
"""

from __future__ import annotations

import bisect
import heapq
import threading
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

Resource = dict[str, Any]
#: (lastUpdated in microseconds since the epoch, resource id)
Key = tuple[int, str]

#: Top-level elements that put a resource in a patient's compartment (enough for the R4 types we serve).
PATIENT_REFERENCE_FIELDS = ("subject", "patient", "beneficiary")

#: Types that can belong to a patient compartment (Bulk Data Patient- and Group-level export).
PATIENT_COMPARTMENT_TYPES = frozenset(
    {
        "AllergyIntolerance",
        "CarePlan",
        "CareTeam",
        "Claim",
        "Condition",
        "Coverage",
        "Device",
        "DiagnosticReport",
        "DocumentReference",
        "Encounter",
        "ExplanationOfBenefit",
        "Goal",
        "ImagingStudy",
        "Immunization",
        "MedicationAdministration",
        "MedicationDispense",
        "MedicationRequest",
        "MedicationStatement",
        "Observation",
        "Patient",
        "Procedure",
        "ServiceRequest",
    }
)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(value: datetime | str) -> int:
    """An instant (aware datetime or FHIR instant/dateTime text) as integer microseconds since the epoch."""
    if isinstance(value, str):
        text = value.strip()
        if len(text) == 4:  # a bare year
            text += "-01-01"
        if len(text) == 7:  # year-month
            text += "-01"
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> str:
    """Integer microseconds since the epoch as a FHIR instant (UTC, microsecond precision)."""
    moment = _EPOCH + timedelta(microseconds=micros)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"  # isoformat is much faster than strftime


def reference_id(reference: str, resource_type: str | None = None) -> str | None:
    """The id in ``Type/id``, ``urn:uuid:id`` or ``http://host/base/Type/id[/_history/n]``.

    With ``resource_type``, a typed reference to another type gives ``None``; ``urn:uuid:`` references
    carry no type and always match.
    """
    if reference.startswith("urn:uuid:"):
        return reference[len("urn:uuid:") :]
    parts = reference.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2:
        return None
    typ, rid = parts[-2], parts[-1]
    if resource_type is not None and typ != resource_type:
        return None
    return rid or None


class ResourceSource(Protocol):
    """A read-only, lazily produced set of resources (e.g. the synthetic generator)."""

    def types(self) -> list[str]: ...

    def count(self, resource_type: str) -> int: ...

    def iter_entries(self, resource_type: str, min_key: int | None = None) -> Iterator[tuple[Key, Resource]]:
        """Resources of a type in ascending key order, starting at the first key >= ``min_key``."""
        ...

    def get(self, resource_type: str, resource_id: str) -> Resource | None: ...

    def type_of(self, resource_id: str) -> str | None:
        """The type of a resource id this source owns, or None."""
        ...


@dataclass
class _Version:
    key: Key
    resource: Resource
    superseded_at: int | None = None  # key micros of the next version
    deleted: bool = False  # a tombstone: the resource was deleted at ``key``


@dataclass
class _TypeIndex:
    versions: list[tuple[Key, _Version]] = field(default_factory=list)  # sorted by key
    current: dict[str, _Version] = field(default_factory=dict)
    shadowed: dict[str, int] = field(default_factory=dict)  # source id -> micros of the first overlay version


class ResourceStore:
    """Thread-safe in-memory store (see the module docstring for the contract)."""

    def __init__(self, load_time: datetime | None = None) -> None:
        self._lock = threading.RLock()
        self._types: dict[str, _TypeIndex] = {}
        self._sources: list[ResourceSource] = []
        self._ids: dict[str, set[str]] = {}  # id -> overlay types holding it (for urn:uuid references)
        self.load_time = to_micros(load_time or datetime.now(UTC))
        self._clock = self.load_time

    # -- writing ----------------------------------------------------------------------------------
    def add_source(self, source: ResourceSource) -> None:
        with self._lock:
            self._sources.append(source)

    def load(self, resources: Iterable[Resource]) -> int:
        """Store resources as given (no version bump); missing ``meta.lastUpdated`` reads as the load time."""
        count = 0
        with self._lock:
            for resource in resources:
                self._insert(resource, self._key_of(resource))
                count += 1
        return count

    def put(self, resource: Resource) -> Resource:
        """Add or update a resource: bumps ``meta.versionId`` and ``meta.lastUpdated``; returns the stored dict."""
        resource_type = resource.get("resourceType")
        resource_id = resource.get("id")
        if not isinstance(resource_type, str) or not isinstance(resource_id, str) or not resource_id:
            raise ValueError("a stored resource needs a resourceType and an id")
        with self._lock:
            previous = self.get(resource_type, resource_id)
            old_version = 0
            if previous is not None:
                try:
                    old_version = int((previous.get("meta") or {}).get("versionId") or 1)
                except (TypeError, ValueError):
                    old_version = 1
            micros = max(to_micros(datetime.now(UTC)), self._clock + 1)
            stored = dict(resource)
            meta = dict(stored.get("meta") or {})
            meta["versionId"] = str(old_version + 1)
            meta["lastUpdated"] = from_micros(micros)
            stored["meta"] = meta
            self._insert(stored, (micros, resource_id))
            return stored

    def delete(self, resource_type: str, resource_id: str) -> bool:
        """Delete a resource (kept as a tombstone for :meth:`iter_deletions`); False if it did not exist."""
        with self._lock:
            previous = self.get(resource_type, resource_id)
            if previous is None:
                return False
            micros = max(to_micros(datetime.now(UTC)), self._clock + 1)
            tombstone = {
                "resourceType": resource_type,
                "id": resource_id,
                "_patients": sorted(self.patient_refs(previous)),
            }
            self._insert(tombstone, (micros, resource_id), deleted=True)
            return True

    def _insert(self, resource: Resource, key: Key, deleted: bool = False) -> None:
        resource_type = resource.get("resourceType")
        resource_id = resource.get("id")
        if not isinstance(resource_type, str) or not isinstance(resource_id, str) or not resource_id:
            raise ValueError(f"cannot store a resource without resourceType and id: {str(resource)[:120]}")
        index = self._types.setdefault(resource_type, _TypeIndex())
        version = _Version(key=key, resource=resource, deleted=deleted)
        old = index.current.get(resource_id)
        if old is not None:
            old.superseded_at = key[0]
        elif resource_id not in index.shadowed and self._source_get(resource_type, resource_id) is not None:
            index.shadowed[resource_id] = key[0]
        index.current[resource_id] = version
        if not index.versions or index.versions[-1][0] <= key:
            index.versions.append((key, version))
        else:
            bisect.insort(index.versions, (key, version), key=lambda item: item[0])
        self._ids.setdefault(resource_id, set()).add(resource_type)
        self._clock = max(self._clock, key[0])

    def _key_of(self, resource: Resource) -> Key:
        text = (resource.get("meta") or {}).get("lastUpdated")
        micros = self.load_time
        if isinstance(text, str) and text:
            try:
                micros = to_micros(text)
            except ValueError:
                micros = self.load_time
        return (micros, str(resource.get("id")))

    # -- reading ----------------------------------------------------------------------------------
    def now(self) -> int:
        """A snapshot key: everything stored so far has a key at or below it, and (because the clock is
        moved to it) everything stored later has a key above it, so a snapshot never misses a write made
        in its own microsecond (an incremental export using it as ``_since`` misses nothing)."""
        with self._lock:
            self._clock = max(self._clock, to_micros(datetime.now(UTC)))
            return self._clock

    def types(self) -> list[str]:
        with self._lock:
            names = {name for name, index in self._types.items() if any(not v.deleted for v in index.current.values())}
            for source in self._sources:
                names.update(name for name in source.types() if source.count(name))
        return sorted(names)

    def count(self, resource_type: str) -> int:
        with self._lock:
            index = self._types.get(resource_type)
            overlay = 0
            if index is not None:
                overlay = sum(1 for rid, v in index.current.items() if rid not in index.shadowed and not v.deleted)
                overlay -= sum(1 for rid in index.shadowed if index.current[rid].deleted)
            return overlay + sum(source.count(resource_type) for source in self._sources)

    def get(self, resource_type: str, resource_id: str) -> Resource | None:
        with self._lock:
            index = self._types.get(resource_type)
            if index is not None and resource_id in index.current:
                version = index.current[resource_id]
                return None if version.deleted else version.resource
        return self._source_get(resource_type, resource_id)

    def _source_get(self, resource_type: str, resource_id: str) -> Resource | None:
        for source in self._sources:
            found = source.get(resource_type, resource_id)
            if found is not None:
                return found
        return None

    def resolve(self, reference: str, resource_type: str | None = None) -> Resource | None:
        """The resource a reference points at (``Type/id``, absolute URL or ``urn:uuid:id``), or None."""
        rid = reference_id(reference, resource_type)
        if rid is None:
            return None
        if not reference.startswith("urn:uuid:"):
            parts = reference.split("/")
            if len(parts) >= 4 and parts[-2] == "_history":
                parts = parts[:-2]
            return self.get(parts[-2], rid)
        with self._lock:
            candidates = sorted(self._ids.get(rid, set()))
        if resource_type is not None:
            candidates = [resource_type]
        for typ in candidates:
            found = self.get(typ, rid)
            if found is not None:
                return found
        for source in self._sources:
            owner = source.type_of(rid)
            if owner is not None and (resource_type is None or owner == resource_type):
                return self.get(owner, rid)
        return None

    def iter_entries(
        self,
        resource_type: str,
        *,
        min_key: int | None = None,
        max_key: int | None = None,
        after: Key | None = None,
        as_of: int | None = None,
        patient_ids: Collection[str] | None = None,
    ) -> Iterator[tuple[Key, Resource]]:
        """``(key, resource)`` in ascending key order with ``min_key <= key micros <= max_key``, strictly
        after the ``after`` key, each resource in its version current at ``as_of`` (default: now).

        With ``patient_ids``, only resources in those patients' compartments (see :meth:`patient_refs`);
        sources that can (the generator) then make only those patients' resources instead of scanning."""
        lower = min_key
        if after is not None:
            lower = after[0] if lower is None else max(lower, after[0])
        with self._lock:
            index = self._types.get(resource_type) or _TypeIndex()
            snapshot = as_of if as_of is not None else self.now()
            start = 0
            if lower is not None:
                start = bisect.bisect_left(index.versions, (lower, ""), key=lambda item: item[0])
            # A copy of the matching slice keeps iteration safe while writers append.
            overlay = index.versions[start:]
            shadowed = dict(index.shadowed)
            sources = list(self._sources)

        def overlay_entries() -> Iterator[tuple[Key, Resource]]:
            for key, version in overlay:
                if key[0] > snapshot:
                    break
                if version.deleted or (version.superseded_at is not None and version.superseded_at <= snapshot):
                    continue
                yield key, version.resource

        wanted = None if patient_ids is None else frozenset(patient_ids)

        def source_entries(source: ResourceSource) -> Iterator[tuple[Key, Resource]]:
            by_patient = getattr(source, "iter_patient_entries", None)
            if wanted is not None and by_patient is not None:
                entries = by_patient(resource_type, wanted, lower)
            else:
                entries = source.iter_entries(resource_type, lower)
            for key, resource in entries:
                if key[0] > snapshot:
                    break
                shadow = shadowed.get(key[1])
                if shadow is not None and shadow <= snapshot:
                    continue
                yield key, resource

        streams = [overlay_entries()] + [source_entries(source) for source in sources]
        merged = heapq.merge(*streams, key=lambda item: item[0]) if len(streams) > 1 else streams[0]
        for key, resource in merged:
            if after is not None and key <= after:
                continue
            if max_key is not None and key[0] > max_key:
                return
            if wanted is not None and self.patient_refs(resource).isdisjoint(wanted):
                continue
            yield key, resource

    def iter_type(
        self,
        resource_type: str,
        *,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        as_of: int | None = None,
    ) -> Iterator[Resource]:
        """Resources of a type in key order; ``since`` / ``until`` are inclusive bounds on lastUpdated."""
        for _, resource in self.iter_entries(
            resource_type,
            min_key=None if since is None else to_micros(since),
            max_key=None if until is None else to_micros(until),
            as_of=as_of,
        ):
            yield resource

    def iter_deletions(
        self, resource_type: str, *, min_key: int | None = None, max_key: int | None = None, as_of: int | None = None
    ) -> Iterator[tuple[Key, str, frozenset[str]]]:
        """Deletions of a type as ``(key, resource id, patient ids it belonged to)``, in key order, with
        ``min_key <= key micros <= min(max_key, as_of)``."""
        with self._lock:
            index = self._types.get(resource_type) or _TypeIndex()
            snapshot = as_of if as_of is not None else self.now()
            tombstones = [(key, v) for key, v in index.versions if v.deleted]
        for key, version in tombstones:
            if min_key is not None and key[0] < min_key:
                continue
            if key[0] > snapshot or (max_key is not None and key[0] > max_key):
                break
            yield key, key[1], frozenset(version.resource.get("_patients") or ())

    # -- compartments -----------------------------------------------------------------------------
    @staticmethod
    def patient_compartment_types() -> frozenset[str]:
        return PATIENT_COMPARTMENT_TYPES

    @staticmethod
    def patient_refs(resource: Resource) -> set[str]:
        """Ids of the patients whose compartment holds this resource."""
        if resource.get("resourceType") == "Patient":
            rid = resource.get("id")
            return {rid} if isinstance(rid, str) else set()
        found: set[str] = set()
        for name in PATIENT_REFERENCE_FIELDS:
            value = resource.get(name)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict) and isinstance(item.get("reference"), str):
                    rid = reference_id(item["reference"], "Patient")
                    if rid:
                        found.add(rid)
        return found

    def in_patient_compartment(self, resource: Resource, patient_ids: set[str] | frozenset[str]) -> bool:
        return not self.patient_refs(resource).isdisjoint(patient_ids)

    def group_member_ids(self, group_id: str) -> list[str] | None:
        """Patient ids of a Group's members (``Patient/x`` or ``urn:uuid:x`` entities), None if no such Group."""
        group = self.get("Group", group_id)
        if group is None:
            return None
        members: list[str] = []
        for member in group.get("member") or []:
            if member.get("inactive") is True:
                continue
            reference = (member.get("entity") or {}).get("reference")
            if isinstance(reference, str):
                rid = reference_id(reference, "Patient")
                if rid:
                    members.append(rid)
        return members
