"""Deterministic synthetic FHIR R4 data, produced lazily, and a loader for directories of NDJSON files.

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

import base64
import gzip
import hashlib
import json
from array import array
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow_provider_smart.sandbox.store import Key, Resource, from_micros, to_micros

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
EXT = "http://example.org/fhir/StructureDefinition"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

#: Types made per patient, with their id prefix (the order is also the µs offset that separates their keys).
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

GIVEN = ["Ana", "Ben", "Chloe", "Dmitri", "Eun-ji", "Farah", "Gus", "Hana", "Ivo", "Jun", "Kofi", "Lena", "Mateo"]
FAMILY = ["Okafor", "Silva", "Nguyen", "Schmidt", "Haddad", "Kowalski", "Tanaka", "Moreau", "Reyes", "Larsen"]
CITIES = [("Boston", "MA"), ("Worcester", "MA"), ("Springfield", "MA"), ("Providence", "RI"), ("Hartford", "CT")]
CONDITIONS = [
    ("38341003", "Hypertension"),
    ("195662009", "Acute viral pharyngitis"),
    ("10509002", "Acute bronchitis"),
    ("40055000", "Chronic sinusitis"),
    ("55822004", "Hyperlipidemia"),
]
DIABETES = ("44054006", "Diabetes mellitus type 2")
MEDICATIONS = [
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("860975", "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet"),
    ("197361", "amlodipine 5 MG Oral Tablet"),
    ("310965", "ibuprofen 200 MG Oral Tablet"),
]
PROCEDURES = [("430193006", "Medication reconciliation"), ("710824005", "Assessment of health literacy")]
VACCINES = [("140", "Influenza, seasonal, injectable, preservative free"), ("08", "Hep B, adolescent or pediatric")]
ALLERGENS = [("300916003", "Latex allergy"), ("91935009", "Allergy to peanuts"), ("419474003", "Allergy to mould")]
ENCOUNTER_TYPES = [("185349003", "Encounter for check up"), ("162673000", "General examination of patient")]
SMOKING = [("266919005", "Never smoker"), ("8517006", "Ex-smoker"), ("449868002", "Smokes tobacco daily")]
NOTES = ["Feeling well.", "Reports mild fatigue.", "No complaints today.", "Sleeping poorly this month."]


def _ref(resource_type: str, resource_id: str, display: str | None = None) -> dict[str, str]:
    ref = {"reference": f"{resource_type}/{resource_id}"}
    if display:
        ref["display"] = display
    return ref


def _concept(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _iso(moment: datetime) -> str:
    # isoformat() is several times faster than strftime(), which matters for millions of resources.
    return moment.isoformat(timespec="seconds")


class _Draw:
    """A small deterministic random stream from BLAKE2b (much cheaper to seed than ``random.Random``).

    Offers the few ``random.Random`` methods the generator uses; the tiny modulo bias is irrelevant here.
    """

    __slots__ = ("_buffer", "_counter", "_key", "_offset")

    def __init__(self, *key: int) -> None:
        self._key = b":".join(b"%d" % part for part in key)
        self._counter = 0
        self._buffer = b""
        self._offset = 0

    def _next(self) -> int:
        if self._offset + 4 > len(self._buffer):
            self._buffer = hashlib.blake2b(self._key + b"#%d" % self._counter, digest_size=64).digest()
            self._counter += 1
            self._offset = 0
        value = int.from_bytes(self._buffer[self._offset : self._offset + 4], "big")
        self._offset += 4
        return value

    def random(self) -> float:
        return self._next() / 4_294_967_296.0

    def randrange(self, start: int, stop: int | None = None) -> int:
        if stop is None:
            start, stop = 0, start
        return start + self._next() % (stop - start)

    def choice(self, items: Sequence[Any]) -> Any:
        return items[self._next() % len(items)]

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()


class _Plan:
    """The per-patient decisions every resource of that patient is derived from."""

    __slots__ = (
        "allergy",
        "birth",
        "conditions",
        "diabetic",
        "docs",
        "encounters",
        "family",
        "gender",
        "given",
        "immunizations",
        "index",
        "medications",
        "obs_per_encounter",
        "org",
        "practitioner",
        "procedures",
    )

    def __init__(self, dataset: SyntheticDataset, index: int, details: bool = True) -> None:
        # The counts come from one cheap hash, so the dataset can count 100,000+ patients quickly;
        # the details (names, dates) from a seeded generator only when resources are made.
        digest = hashlib.blake2b(b"%d:%d" % (dataset.seed, index), digest_size=16).digest()
        self.index = index
        self.diabetic = digest[5] < 77  # about 30 %
        n_encounters = 1 + digest[0] % 4
        self.obs_per_encounter = [2 + digest[1 + k] % 4 + (1 if self.diabetic else 0) for k in range(n_encounters)]
        self.conditions = digest[6] % 3 + (1 if self.diabetic else 0)
        self.medications = digest[7] % 3
        self.procedures = digest[8] % 3
        self.immunizations = digest[9] % 3
        self.allergy = 1 if digest[10] < 77 else 0
        self.docs = 1 if digest[11] < 128 else 0
        self.practitioner = int.from_bytes(digest[12:14], "big") % dataset.practitioners
        self.org = int.from_bytes(digest[14:16], "big") % dataset.organizations
        self.encounters: list[datetime] = []
        if not details:
            return
        rng = _Draw(dataset.seed, index)
        self.gender = rng.choice(("female", "male"))
        self.given = rng.choice(GIVEN)
        self.family = rng.choice(FAMILY)
        self.birth = datetime(1935, 1, 1, tzinfo=UTC) + timedelta(days=rng.randrange(85 * 365))
        days = sorted(rng.randrange(dataset.clinical_days) for _ in range(n_encounters))
        self.encounters = [
            dataset.clinical_start + timedelta(days=day, hours=8 + rng.randrange(9), minutes=rng.randrange(60))
            for day in days
        ]

    def counts(self) -> dict[str, int]:
        n_enc = len(self.obs_per_encounter)
        return {
            "Patient": 1,
            "Encounter": n_enc,
            "Observation": sum(self.obs_per_encounter),
            "Condition": self.conditions,
            "MedicationRequest": self.medications,
            "Procedure": self.procedures,
            "Immunization": self.immunizations,
            "AllergyIntolerance": self.allergy,
            "DiagnosticReport": n_enc,
            "DocumentReference": self.docs,
        }


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
            plan = _Plan(self, index, details=False)
            for name, value in plan.counts().items():
                self._counts[name].append(value)
            self._diabetic.append(1 if plan.diabetic else 0)
        self._totals = {name: sum(values) for name, values in self._counts.items()}
        self._makers: dict[str, Callable[[_Plan], list[Resource]]] = {
            "Patient": self._patient,
            "Encounter": self._encounters,
            "Observation": self._observations,
            "Condition": self._conditions,
            "MedicationRequest": self._medications,
            "Procedure": self._procedures,
            "Immunization": self._immunizations,
            "AllergyIntolerance": self._allergies,
            "DiagnosticReport": self._reports,
            "DocumentReference": self._documents,
        }

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
        plan = _Plan(self, index)
        resources = self._makers[resource_type](plan)
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
        rng = _Draw(self.seed, position, len(resource_type), 7_919)
        if resource_type == "Organization":
            city, state = rng.choice(CITIES)
            return {
                "resourceType": "Organization",
                "id": resource_id,
                "identifier": [{"system": "http://example.org/fhir/org-id", "value": f"ORG{position:05d}"}],
                "active": True,
                "type": [
                    _concept("http://terminology.hl7.org/CodeSystem/organization-type", "prov", "Healthcare Provider")
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
    def _rng(self, plan: _Plan, salt: int) -> _Draw:
        return _Draw(self.seed, plan.index, salt)

    def _subject(self, plan: _Plan) -> dict[str, str]:
        return _ref("Patient", f"pat-{plan.index}")

    def _patient(self, plan: _Plan) -> list[Resource]:
        rng = self._rng(plan, 1)
        city, state = rng.choice(CITIES)
        resource: Resource = {
            "resourceType": "Patient",
            "id": f"pat-{plan.index}",
            "extension": [
                {
                    "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
                    "valueCode": "F" if plan.gender == "female" else "M",
                },
                {
                    # Two levels: a complex extension with coded and text parts, as US Core race is.
                    "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                    "extension": [
                        {
                            "url": "ombCategory",
                            "valueCoding": {
                                "system": "urn:oid:2.16.840.1.113883.6.238",
                                "code": "2106-3",
                                "display": "White",
                            },
                        },
                        {"url": "text", "valueString": "White"},
                    ],
                },
                {
                    # Three levels: a consent record whose scope is itself a complex extension.
                    "url": f"{EXT}/sandbox-data-sharing",
                    "extension": [
                        {"url": "granted", "valueBoolean": rng.random() < 0.8},
                        {
                            "url": "scope",
                            "extension": [
                                {"url": "system", "valueUri": "http://terminology.hl7.org/CodeSystem/consentscope"},
                                {"url": "code", "valueCode": "research"},
                            ],
                        },
                    ],
                },
            ],
            "identifier": [
                {
                    "type": _concept("http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "Medical Record Number"),
                    "system": "http://example.org/fhir/mrn",
                    "value": f"MRN{self.seed}-{plan.index:07d}",
                }
            ],
            "active": True,
            "name": [{"use": "official", "family": plan.family, "given": [plan.given]}],
            "telecom": [{"system": "phone", "value": f"555-{rng.randrange(1000, 9999)}", "use": "home"}],
            "gender": plan.gender,
            "birthDate": plan.birth.date().isoformat(),
            "address": [{"line": [f"{rng.randrange(1, 999)} Main St"], "city": city, "state": state, "country": "US"}],
            "generalPractitioner": [_ref("Practitioner", f"prac-{plan.practitioner}")],
            "managingOrganization": _ref("Organization", f"org-{plan.org}"),
        }
        if plan.index % 3 == 0:
            # A primitive extension: the exact time of birth next to the date.
            resource["_birthDate"] = {
                "extension": [
                    {
                        "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                        "valueDateTime": _iso(plan.birth + timedelta(hours=rng.randrange(24))),
                    }
                ]
            }
        if plan.index % 5 == 1:
            resource["deceasedBoolean"] = False
        return [resource]

    def _encounters(self, plan: _Plan) -> list[Resource]:
        rng = self._rng(plan, 2)
        out = []
        for k, when in enumerate(plan.encounters):
            code, display = rng.choice(ENCOUNTER_TYPES)
            out.append(
                {
                    "resourceType": "Encounter",
                    "id": f"enc-{plan.index}-{k}",
                    "status": "finished",
                    "class": {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                        "code": "AMB",
                        "display": "ambulatory",
                    },
                    "type": [_concept(SNOMED, code, display)],
                    "subject": self._subject(plan),
                    "participant": [{"individual": _ref("Practitioner", f"prac-{plan.practitioner}")}],
                    "period": {"start": _iso(when), "end": _iso(when + timedelta(minutes=30))},
                    "serviceProvider": _ref("Organization", f"org-{plan.org}"),
                }
            )
        return out

    def _observations(self, plan: _Plan) -> list[Resource]:
        rng = self._rng(plan, 3)
        out: list[Resource] = []
        for k, when in enumerate(plan.encounters):
            n = plan.obs_per_encounter[k] - (1 if plan.diabetic else 0)
            kinds = ["height", "weight", "heart", "bp", "smoking", "note"]
            for j in range(n):
                out.append(self._observation(plan, rng, kinds[(j + k) % len(kinds)], k, when, len(out)))
            if plan.diabetic:
                out.append(self._observation(plan, rng, "hba1c", k, when, len(out)))
        return out

    def _observation(
        self, plan: _Plan, rng: _Draw, kind: str, encounter: int, when: datetime, position: int
    ) -> Resource:
        effective = when + timedelta(minutes=5 + position)
        resource: Resource = {
            "resourceType": "Observation",
            "id": f"obs-{plan.index}-{position}",
            "status": "final",
            "subject": self._subject(plan),
            "encounter": _ref("Encounter", f"enc-{plan.index}-{encounter}"),
            "effectiveDateTime": _iso(effective),
            "issued": effective.isoformat(timespec="milliseconds"),
        }
        category = ("vital-signs", "Vital Signs")
        if kind == "height":
            resource["code"] = _concept(LOINC, "8302-2", "Body Height")
            resource["valueQuantity"] = _quantity(round(rng.uniform(150, 195), 1), "cm")
        elif kind == "weight":
            resource["code"] = _concept(LOINC, "29463-7", "Body Weight")
            resource["valueQuantity"] = _quantity(round(rng.uniform(50, 120), 1), "kg")
        elif kind == "heart":
            resource["code"] = _concept(LOINC, "8867-4", "Heart rate")
            resource["valueQuantity"] = _quantity(rng.randrange(55, 110), "/min")  # an integer value
        elif kind == "bp":
            resource["code"] = _concept(LOINC, "85354-9", "Blood pressure panel with all children optional")
            resource["component"] = [
                {
                    "code": _concept(LOINC, "8480-6", "Systolic blood pressure"),
                    "valueQuantity": _quantity(rng.randrange(100, 160), "mm[Hg]"),
                },
                {
                    "code": _concept(LOINC, "8462-4", "Diastolic blood pressure"),
                    "valueQuantity": _quantity(rng.randrange(60, 100), "mm[Hg]"),
                },
            ]
        elif kind == "smoking":
            category = ("social-history", "Social History")
            code, display = rng.choice(SMOKING)
            resource["code"] = _concept(LOINC, "72166-2", "Tobacco smoking status")
            resource["valueCodeableConcept"] = _concept(SNOMED, code, display)
        elif kind == "note":
            category = ("survey", "Survey")
            resource["code"] = _concept(LOINC, "75325-1", "Symptom")
            resource["valueString"] = rng.choice(NOTES)
            # A primitive extension carrying a nested (two-level) translation.
            resource["_valueString"] = {
                "extension": [
                    {
                        "url": "http://hl7.org/fhir/StructureDefinition/translation",
                        "extension": [
                            {"url": "lang", "valueCode": "es"},
                            {"url": "content", "valueString": "Traducción pendiente"},
                        ],
                    }
                ]
            }
        else:  # HbA1c, the example search of the docs
            category = ("laboratory", "Laboratory")
            resource["code"] = _concept(LOINC, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood")
            resource["valueQuantity"] = _quantity(round(rng.uniform(5.2, 10.5), 1), "%")
            resource["interpretation"] = [
                _concept("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "H", "High")
            ]
            if position % 2:
                resource["status"] = "amended"
        resource["category"] = [{"coding": [{"system": OBS_CATEGORY, "code": category[0], "display": category[1]}]}]
        return resource

    def _conditions(self, plan: _Plan) -> list[Resource]:
        rng = self._rng(plan, 4)
        out = []
        for k in range(plan.conditions):
            code, display = DIABETES if plan.diabetic and k == 0 else rng.choice(CONDITIONS)
            encounter = k % len(plan.encounters)
            onset = plan.encounters[encounter]
            resolved = rng.random() < 0.3
            out.append(
                {
                    "resourceType": "Condition",
                    "id": f"cond-{plan.index}-{k}",
                    "clinicalStatus": _concept(
                        "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "resolved" if resolved else "active",
                        "Resolved" if resolved else "Active",
                    ),
                    "verificationStatus": _concept(
                        "http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"
                    ),
                    "category": [
                        _concept(
                            "http://terminology.hl7.org/CodeSystem/condition-category",
                            "encounter-diagnosis",
                            "Encounter Diagnosis",
                        )
                    ],
                    "code": _concept(SNOMED, code, display),
                    "subject": self._subject(plan),
                    "encounter": _ref("Encounter", f"enc-{plan.index}-{encounter}"),
                    "onsetDateTime": _iso(onset),
                    "recordedDate": _iso(onset),
                }
            )
        return out

    def _medications(self, plan: _Plan) -> list[Resource]:
        rng = self._rng(plan, 5)
        out = []
        for k in range(plan.medications):
            code, display = rng.choice(MEDICATIONS)
            encounter = k % len(plan.encounters)
            out.append(
                {
                    "resourceType": "MedicationRequest",
                    "id": f"med-{plan.index}-{k}",
                    "status": rng.choice(("active", "completed", "stopped")),
                    "intent": "order",
                    "medicationCodeableConcept": _concept(RXNORM, code, display),
                    "subject": self._subject(plan),
                    "encounter": _ref("Encounter", f"enc-{plan.index}-{encounter}"),
                    "authoredOn": _iso(plan.encounters[encounter]),
                    "requester": _ref("Practitioner", f"prac-{plan.practitioner}"),
                    "dosageInstruction": [
                        {
                            "sequence": 1,
                            "text": "Take one tablet by mouth daily",
                            "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                            "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet"}}],
                        }
                    ],
                }
            )
        return out

    def _procedures(self, plan: _Plan) -> list[Resource]:
        rng = self._rng(plan, 6)
        out = []
        for k in range(plan.procedures):
            code, display = rng.choice(PROCEDURES)
            encounter = k % len(plan.encounters)
            start = plan.encounters[encounter] + timedelta(minutes=10)
            out.append(
                {
                    "resourceType": "Procedure",
                    "id": f"proc-{plan.index}-{k}",
                    "status": "completed",
                    "code": _concept(SNOMED, code, display),
                    "subject": self._subject(plan),
                    "encounter": _ref("Encounter", f"enc-{plan.index}-{encounter}"),
                    "performedPeriod": {"start": _iso(start), "end": _iso(start + timedelta(minutes=15))},
                }
            )
        return out

    def _immunizations(self, plan: _Plan) -> list[Resource]:
        rng = self._rng(plan, 7)
        out = []
        for k in range(plan.immunizations):
            code, display = rng.choice(VACCINES)
            encounter = k % len(plan.encounters)
            out.append(
                {
                    "resourceType": "Immunization",
                    "id": f"imm-{plan.index}-{k}",
                    "status": "completed",
                    "vaccineCode": _concept(CVX, code, display),
                    "patient": self._subject(plan),
                    "encounter": _ref("Encounter", f"enc-{plan.index}-{encounter}"),
                    "occurrenceDateTime": _iso(plan.encounters[encounter]),
                    "primarySource": True,
                    "lotNumber": f"LOT{rng.randrange(10000, 99999)}",
                }
            )
        return out

    def _allergies(self, plan: _Plan) -> list[Resource]:
        rng = self._rng(plan, 8)
        out = []
        for k in range(plan.allergy):
            code, display = rng.choice(ALLERGENS)
            out.append(
                {
                    "resourceType": "AllergyIntolerance",
                    "id": f"alg-{plan.index}-{k}",
                    "clinicalStatus": _concept(
                        "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active", "Active"
                    ),
                    "verificationStatus": _concept(
                        "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                        "confirmed",
                        "Confirmed",
                    ),
                    "type": "allergy",
                    "category": ["food" if "peanut" in display else "environment"],
                    "criticality": "low",
                    "code": _concept(SNOMED, code, display),
                    "patient": self._subject(plan),
                    "recordedDate": _iso(plan.encounters[0]),
                    "reaction": [
                        {
                            "manifestation": [_concept(SNOMED, "247472004", "Wheal")],
                            "severity": "mild",
                        }
                    ],
                }
            )
        return out

    def _reports(self, plan: _Plan) -> list[Resource]:
        out = []
        first = 0
        for k, when in enumerate(plan.encounters):
            count = plan.obs_per_encounter[k]
            out.append(
                {
                    "resourceType": "DiagnosticReport",
                    "id": f"rep-{plan.index}-{k}",
                    "status": "final",
                    "category": [_concept("http://terminology.hl7.org/CodeSystem/v2-0074", "LAB", "Laboratory")],
                    "code": _concept(LOINC, "51990-0", "Basic metabolic panel - Blood"),
                    "subject": self._subject(plan),
                    "encounter": _ref("Encounter", f"enc-{plan.index}-{k}"),
                    "effectiveDateTime": _iso(when),
                    "issued": when.isoformat(timespec="milliseconds"),
                    "result": [_ref("Observation", f"obs-{plan.index}-{j}") for j in range(first, first + count)],
                }
            )
            first += count
        return out

    def _documents(self, plan: _Plan) -> list[Resource]:
        out = []
        for k in range(plan.docs):
            when = plan.encounters[-1]
            note = f"Visit note for {plan.given} {plan.family}: routine follow-up."
            out.append(
                {
                    "resourceType": "DocumentReference",
                    "id": f"doc-{plan.index}-{k}",
                    "status": "current",
                    "type": _concept(LOINC, "34117-2", "History and physical note"),
                    "subject": self._subject(plan),
                    "date": _iso(when + timedelta(minutes=45)),
                    "author": [_ref("Practitioner", f"prac-{plan.practitioner}")],
                    "content": [
                        {
                            "attachment": {
                                "contentType": "text/plain",
                                "data": base64.b64encode(note.encode()).decode(),
                            }
                        }
                    ],
                    "context": {"encounter": [_ref("Encounter", f"enc-{plan.index}-{len(plan.encounters) - 1}")]},
                }
            )
        return out


def _quantity(value: float | int, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def load_ndjson_dir(path: str | Path) -> Iterator[Resource]:
    """Resources from every ``*.ndjson`` / ``*.ndjson.gz`` (also ``.jsonl``) file of a directory, streamed.

    A line that is not a JSON object with ``resourceType`` and ``id`` raises ``ValueError`` naming the file
    and line. Blank lines are skipped.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory of NDJSON files")
    files = sorted(p for p in directory.iterdir() if p.name.endswith((".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")))
    if not files:
        raise ValueError(f"{directory} holds no .ndjson or .ndjson.gz files")
    for file in files:
        opener = gzip.open if file.name.endswith(".gz") else open
        with opener(file, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    resource = json.loads(line)
                except ValueError as exc:
                    raise ValueError(f"{file.name} line {number} is not JSON: {exc}") from None
                if not isinstance(resource, dict) or not resource.get("resourceType") or not resource.get("id"):
                    raise ValueError(f"{file.name} line {number} is not a FHIR resource with resourceType and id")
                yield resource
