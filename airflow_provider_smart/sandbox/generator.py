"""Deterministic synthetic FHIR R4 data, produced lazily (the records themselves: ``synthetic_records``).

:class:`SyntheticDataset` is a :class:`~airflow_provider_smart.sandbox.store.ResourceSource`: nothing is
kept in memory but a few bytes per patient. Every resource is a pure function of ``(seed, patient index,
type, position)``, so the same seed always gives the same data and any one resource can be made on its
own (reads, include resolution, paging from a cursor). Each patient gets a window of ``meta.lastUpdated``
values inside ``[start, start + span)``, in patient order; within the window its resources of one type
are spaced evenly. Iterating a type in key order is therefore iterating patients in order.

Resource ids are readable and say where they come from: ``pat-12``, ``enc-12-0``, ``obs-12-3`` ...;
shared resources are ``org-0``, ``prac-4``, ``grp-all`` and ``grp-diabetes``.
"""

from __future__ import annotations

from array import array
from collections.abc import Collection, Iterable, Iterator
from datetime import UTC, datetime, timedelta

from airflow_provider_smart.sandbox.ndjson_dir import load_ndjson_dir
from airflow_provider_smart.sandbox.store import Key, Resource, from_micros, to_micros
from airflow_provider_smart.sandbox.synthetic_records import (
    CITIES,
    FAMILY,
    GIVEN,
    MAKERS,
    Draw,
    PatientPlan,
    concept,
)

__all__ = ["PATIENT_TYPES", "SHARED_TYPES", "SyntheticDataset", "load_ndjson_dir"]

PATIENT_TYPES = {
    "Patient": "pat",
    "Encounter": "enc",
    "Observation": "obs",
    "Condition": "cond",
    "MedicationRequest": "med",
    "Procedure": "proc",
    "Immunization": "imm",
    "AllergyIntolerance": "alg",
    "DiagnosticReport": "rep",
    "DocumentReference": "doc",
}
SHARED_TYPES = {"Organization": "org", "Practitioner": "prac", "Group": "grp"}
_PREFIX_TO_TYPE = {prefix: name for name, prefix in {**PATIENT_TYPES, **SHARED_TYPES}.items()}
_TYPE_OFFSET = {name: position for position, name in enumerate(PATIENT_TYPES)}
_SLOTS = 256  # lastUpdated positions per patient window and type (the most resources of a type per patient)


class SyntheticDataset:
    """A lazily generated population (see the module docstring).

    :param patients: number of patients (0 or more).
    :param seed: the random seed; the same seed gives byte-identical resources.
    :param start: the earliest ``meta.lastUpdated``.
    :param span: the time ``meta.lastUpdated`` values are spread over.
    """

    def __init__(
        self,
        patients: int,
        seed: int = 42,
        *,
        start: datetime = datetime(2023, 1, 1, tzinfo=UTC),
        span: timedelta = timedelta(days=730),
    ) -> None:
        if patients < 0:
            raise ValueError("patients must be 0 or more")
        self.patients = patients
        self.seed = seed
        self.start_us = to_micros(start)
        self.span_us = int(span.total_seconds() * 1_000_000)
        self.window_us = max(_SLOTS * 64, self.span_us // max(1, patients))
        self.step_us = self.window_us // _SLOTS
        self.clinical_start = datetime(2015, 1, 1, tzinfo=UTC)
        self.clinical_days = 3000
        self.practitioners = max(3, patients // 20)
        self.organizations = max(2, patients // 100)
        # A few bytes per patient: counts per type (for count()) and the diabetic flag (for the Group).
        self._counts = {name: array("B") for name in PATIENT_TYPES}
        self._diabetic = bytearray()
        for index in range(patients):
            plan = PatientPlan(self, index, details=False)
            for name, value in plan.counts().items():
                self._counts[name].append(value)
            self._diabetic.append(1 if plan.diabetic else 0)
        self._totals = {name: sum(values) for name, values in self._counts.items()}

    # -- ResourceSource ---------------------------------------------------------------------------
    def types(self) -> list[str]:
        return sorted([*PATIENT_TYPES, *SHARED_TYPES])

    def count(self, resource_type: str) -> int:
        if resource_type in PATIENT_TYPES:
            return self._totals[resource_type]
        return self._shared_count(resource_type)

    def type_of(self, resource_id: str) -> str | None:
        prefix = resource_id.split("-", 1)[0]
        resource_type = _PREFIX_TO_TYPE.get(prefix)
        if resource_type is None or self.get(resource_type, resource_id) is None:
            return None
        return resource_type

    def get(self, resource_type: str, resource_id: str) -> Resource | None:
        parts = resource_id.split("-")
        if resource_type in PATIENT_TYPES:
            if parts[0] != PATIENT_TYPES[resource_type] or len(parts) not in (2, 3):
                return None
            try:
                index = int(parts[1])
                position = int(parts[2]) if len(parts) == 3 else 0
            except ValueError:
                return None
            if not 0 <= index < self.patients or str(index) != parts[1]:
                return None
            resources = self.patient_resources(resource_type, index)
            if 0 <= position < len(resources) and resources[position]["id"] == resource_id:
                return resources[position]
            return None
        if resource_type in SHARED_TYPES:
            ids = self._shared_ids(resource_type)
            # Made directly from the id: a read must not build thousands of Practitioners.
            if resource_type == "Group":
                position = ids.index(resource_id) if resource_id in ids else -1
            elif parts[0] == SHARED_TYPES[resource_type] and len(parts) == 2 and parts[1].isdigit():
                position = int(parts[1]) if str(int(parts[1])) == parts[1] else -1
            else:
                position = -1
            if 0 <= position < self._shared_count(resource_type):
                return self._shared_entry(resource_type, position)[1]
        return None

    def iter_entries(self, resource_type: str, min_key: int | None = None) -> Iterator[tuple[Key, Resource]]:
        if resource_type in SHARED_TYPES:
            for position in range(self._shared_count(resource_type)):
                key, resource = self._shared_entry(resource_type, position)
                if min_key is None or key[0] >= min_key:
                    yield key, resource
            return
        if resource_type not in PATIENT_TYPES:
            return
        first = 0
        if min_key is not None and min_key > self.start_us:
            first = min(self.patients, (min_key - self.start_us) // self.window_us)
        counts = self._counts[resource_type]
        for index in range(first, self.patients):
            if not counts[index]:
                continue
            for micros, resource in self._keyed(resource_type, index):
                if min_key is None or micros >= min_key:
                    yield (micros, resource["id"]), resource

    def iter_patient_entries(
        self, resource_type: str, patient_ids: Collection[str], min_key: int | None = None
    ) -> Iterator[tuple[Key, Resource]]:
        """Like :meth:`iter_entries`, limited to the compartments of the given patient ids (made directly,
        without scanning the other patients). Shared types have no compartment: nothing."""
        if resource_type not in PATIENT_TYPES:
            return
        indexes = sorted({index for index in (self._patient_index(pid) for pid in patient_ids) if index is not None})
        counts = self._counts[resource_type]
        for index in indexes:
            if not counts[index]:
                continue
            for micros, resource in self._keyed(resource_type, index):
                if min_key is None or micros >= min_key:
                    yield (micros, resource["id"]), resource

    def _patient_index(self, patient_id: str) -> int | None:
        prefix, _, number = patient_id.partition("-")
        if prefix != "pat" or not number.isdigit() or str(int(number)) != number:
            return None
        index = int(number)
        return index if index < self.patients else None

    # -- helpers for callers that know the generator ----------------------------------------------
    def patient_id(self, index: int) -> str:
        return f"pat-{index}"

    def patient_resources(self, resource_type: str, index: int) -> list[Resource]:
        """The resources of one type in patient ``index``'s record, in key order."""
        return [resource for _, resource in self._keyed(resource_type, index)]

    def _keyed(self, resource_type: str, index: int) -> list[tuple[int, Resource]]:
        plan = PatientPlan(self, index)
        resources = MAKERS[resource_type](self.seed, plan)
        offset = _TYPE_OFFSET[resource_type]
        base = self.start_us + index * self.window_us + offset
        out = []
        for position, resource in enumerate(resources):
            micros = base + (position + 1) * self.step_us
            resource["meta"] = {"versionId": "1", "lastUpdated": from_micros(micros)}
            out.append((micros, resource))
        return out

    def _shared_ids(self, resource_type: str) -> list[str]:
        if resource_type == "Organization":
            return [f"org-{j}" for j in range(self.organizations)]
        if resource_type == "Practitioner":
            return [f"prac-{j}" for j in range(self.practitioners)]
        if resource_type == "Group":
            return ["grp-all", "grp-diabetes"] if self.patients else []
        return []

    def _shared_count(self, resource_type: str) -> int:
        if resource_type == "Organization":
            return self.organizations
        if resource_type == "Practitioner":
            return self.practitioners
        if resource_type == "Group":
            return 2 if self.patients else 0
        return 0

    def _shared_entry(self, resource_type: str, position: int) -> tuple[Key, Resource]:
        total = self._shared_count(resource_type)
        resource_id = (
            self._shared_ids(resource_type)[position]
            if resource_type == "Group"
            else (f"{SHARED_TYPES[resource_type]}-{position}")
        )
        # Shared resources come before every patient window, one second apart.
        micros = self.start_us - (total - position) * 1_000_000 - list(SHARED_TYPES).index(resource_type)
        resource = self._make_shared(resource_type, resource_id, position)
        resource["meta"] = {"versionId": "1", "lastUpdated": from_micros(micros)}
        return (micros, resource_id), resource

    def _make_shared(self, resource_type: str, resource_id: str, position: int) -> Resource:
        rng = Draw(self.seed, position, len(resource_type), 7_919)
        if resource_type == "Organization":
            city, state = rng.choice(CITIES)
            return {
                "resourceType": "Organization",
                "id": resource_id,
                "identifier": [{"system": "http://example.org/fhir/org-id", "value": f"ORG{position:05d}"}],
                "active": True,
                "type": [
                    concept("http://terminology.hl7.org/CodeSystem/organization-type", "prov", "Healthcare Provider")
                ],
                "name": f"{city} Community Clinic {position}",
                "telecom": [{"system": "phone", "value": f"555-01{position % 100:02d}"}],
                "address": [{"city": city, "state": state, "country": "US"}],
            }
        if resource_type == "Practitioner":
            return {
                "resourceType": "Practitioner",
                "id": resource_id,
                "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": f"{9_990_000_000 + position}"}],
                "active": True,
                "name": [{"family": rng.choice(FAMILY), "given": [rng.choice(GIVEN)], "prefix": ["Dr."]}],
                "gender": rng.choice(("female", "male")),
            }
        if resource_id == "grp-all":
            members: Iterable[int] = range(self.patients)
            name = "All sandbox patients"
        else:
            members = (i for i in range(self.patients) if self._diabetic[i])
            name = "Sandbox patients with diabetes"
        entries = [{"entity": {"reference": f"Patient/pat-{i}"}} for i in members]
        return {
            "resourceType": "Group",
            "id": resource_id,
            "type": "person",
            "actual": True,
            "name": name,
            "quantity": len(entries),
            "member": entries,
        }

    # -- per-patient makers -----------------------------------------------------------------------
