"""The synthetic FHIR R4 records: per-patient plans and the functions that make each resource type.

A :class:`PatientPlan` holds the decisions every resource of one patient derives from (counts from one
BLAKE2b hash, details from a :class:`Draw` stream), and ``MAKERS`` maps each per-patient type to the
function that makes that patient's resources of the type. Everything is a pure function of the seed and
the patient index; :class:`~airflow_provider_smart.sandbox.generator.SyntheticDataset` adds keys,
``meta`` and iteration.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from airflow_provider_smart.sandbox.store import Resource

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
EXT = "http://example.org/fhir/StructureDefinition"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

#: Types made per patient, with their id prefix (the order is also the µs offset that separates their keys).
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


def concept(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _iso(moment: datetime) -> str:
    # isoformat() is several times faster than strftime(), which matters for millions of resources.
    return moment.isoformat(timespec="seconds")


class PlanSettings(Protocol):
    """What a plan needs from its dataset."""

    seed: int
    practitioners: int
    organizations: int
    clinical_start: datetime
    clinical_days: int


class Draw:
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


class PatientPlan:
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

    def __init__(self, dataset: PlanSettings, index: int, details: bool = True) -> None:
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
        rng = Draw(dataset.seed, index)
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


def _rng(seed: int, plan: PatientPlan, salt: int) -> Draw:
    return Draw(seed, plan.index, salt)


def _subject(plan: PatientPlan) -> dict[str, str]:
    return _ref("Patient", f"pat-{plan.index}")


def make_patients(seed: int, plan: PatientPlan) -> list[Resource]:
    rng = _rng(seed, plan, 1)
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
                "type": concept("http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "Medical Record Number"),
                "system": "http://example.org/fhir/mrn",
                "value": f"MRN{seed}-{plan.index:07d}",
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


def make_encounters(seed: int, plan: PatientPlan) -> list[Resource]:
    rng = _rng(seed, plan, 2)
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
                "type": [concept(SNOMED, code, display)],
                "subject": _subject(plan),
                "participant": [{"individual": _ref("Practitioner", f"prac-{plan.practitioner}")}],
                "period": {"start": _iso(when), "end": _iso(when + timedelta(minutes=30))},
                "serviceProvider": _ref("Organization", f"org-{plan.org}"),
            }
        )
    return out


def make_observations(seed: int, plan: PatientPlan) -> list[Resource]:
    rng = _rng(seed, plan, 3)
    out: list[Resource] = []
    for k, when in enumerate(plan.encounters):
        n = plan.obs_per_encounter[k] - (1 if plan.diabetic else 0)
        kinds = ["height", "weight", "heart", "bp", "smoking", "note"]
        for j in range(n):
            out.append(_observation(seed, plan, rng, kinds[(j + k) % len(kinds)], k, when, len(out)))
        if plan.diabetic:
            out.append(_observation(seed, plan, rng, "hba1c", k, when, len(out)))
    return out


def _observation(
    seed: int, plan: PatientPlan, rng: Draw, kind: str, encounter: int, when: datetime, position: int
) -> Resource:
    effective = when + timedelta(minutes=5 + position)
    resource: Resource = {
        "resourceType": "Observation",
        "id": f"obs-{plan.index}-{position}",
        "status": "final",
        "subject": _subject(plan),
        "encounter": _ref("Encounter", f"enc-{plan.index}-{encounter}"),
        "effectiveDateTime": _iso(effective),
        "issued": effective.isoformat(timespec="milliseconds"),
    }
    category = ("vital-signs", "Vital Signs")
    if kind == "height":
        resource["code"] = concept(LOINC, "8302-2", "Body Height")
        resource["valueQuantity"] = _quantity(round(rng.uniform(150, 195), 1), "cm")
    elif kind == "weight":
        resource["code"] = concept(LOINC, "29463-7", "Body Weight")
        resource["valueQuantity"] = _quantity(round(rng.uniform(50, 120), 1), "kg")
    elif kind == "heart":
        resource["code"] = concept(LOINC, "8867-4", "Heart rate")
        resource["valueQuantity"] = _quantity(rng.randrange(55, 110), "/min")  # an integer value
    elif kind == "bp":
        resource["code"] = concept(LOINC, "85354-9", "Blood pressure panel with all children optional")
        resource["component"] = [
            {
                "code": concept(LOINC, "8480-6", "Systolic blood pressure"),
                "valueQuantity": _quantity(rng.randrange(100, 160), "mm[Hg]"),
            },
            {
                "code": concept(LOINC, "8462-4", "Diastolic blood pressure"),
                "valueQuantity": _quantity(rng.randrange(60, 100), "mm[Hg]"),
            },
        ]
    elif kind == "smoking":
        category = ("social-history", "Social History")
        code, display = rng.choice(SMOKING)
        resource["code"] = concept(LOINC, "72166-2", "Tobacco smoking status")
        resource["valueCodeableConcept"] = concept(SNOMED, code, display)
    elif kind == "note":
        category = ("survey", "Survey")
        resource["code"] = concept(LOINC, "75325-1", "Symptom")
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
        resource["code"] = concept(LOINC, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood")
        resource["valueQuantity"] = _quantity(round(rng.uniform(5.2, 10.5), 1), "%")
        resource["interpretation"] = [
            concept("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "H", "High")
        ]
        if position % 2:
            resource["status"] = "amended"
    resource["category"] = [{"coding": [{"system": OBS_CATEGORY, "code": category[0], "display": category[1]}]}]
    return resource


def make_conditions(seed: int, plan: PatientPlan) -> list[Resource]:
    rng = _rng(seed, plan, 4)
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
                "clinicalStatus": concept(
                    "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "resolved" if resolved else "active",
                    "Resolved" if resolved else "Active",
                ),
                "verificationStatus": concept(
                    "http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"
                ),
                "category": [
                    concept(
                        "http://terminology.hl7.org/CodeSystem/condition-category",
                        "encounter-diagnosis",
                        "Encounter Diagnosis",
                    )
                ],
                "code": concept(SNOMED, code, display),
                "subject": _subject(plan),
                "encounter": _ref("Encounter", f"enc-{plan.index}-{encounter}"),
                "onsetDateTime": _iso(onset),
                "recordedDate": _iso(onset),
            }
        )
    return out


def make_medication_requests(seed: int, plan: PatientPlan) -> list[Resource]:
    rng = _rng(seed, plan, 5)
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
                "medicationCodeableConcept": concept(RXNORM, code, display),
                "subject": _subject(plan),
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


def make_procedures(seed: int, plan: PatientPlan) -> list[Resource]:
    rng = _rng(seed, plan, 6)
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
                "code": concept(SNOMED, code, display),
                "subject": _subject(plan),
                "encounter": _ref("Encounter", f"enc-{plan.index}-{encounter}"),
                "performedPeriod": {"start": _iso(start), "end": _iso(start + timedelta(minutes=15))},
            }
        )
    return out


def make_immunizations(seed: int, plan: PatientPlan) -> list[Resource]:
    rng = _rng(seed, plan, 7)
    out = []
    for k in range(plan.immunizations):
        code, display = rng.choice(VACCINES)
        encounter = k % len(plan.encounters)
        out.append(
            {
                "resourceType": "Immunization",
                "id": f"imm-{plan.index}-{k}",
                "status": "completed",
                "vaccineCode": concept(CVX, code, display),
                "patient": _subject(plan),
                "encounter": _ref("Encounter", f"enc-{plan.index}-{encounter}"),
                "occurrenceDateTime": _iso(plan.encounters[encounter]),
                "primarySource": True,
                "lotNumber": f"LOT{rng.randrange(10000, 99999)}",
            }
        )
    return out


def make_allergies(seed: int, plan: PatientPlan) -> list[Resource]:
    rng = _rng(seed, plan, 8)
    out = []
    for k in range(plan.allergy):
        code, display = rng.choice(ALLERGENS)
        out.append(
            {
                "resourceType": "AllergyIntolerance",
                "id": f"alg-{plan.index}-{k}",
                "clinicalStatus": concept(
                    "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active", "Active"
                ),
                "verificationStatus": concept(
                    "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                    "confirmed",
                    "Confirmed",
                ),
                "type": "allergy",
                "category": ["food" if "peanut" in display else "environment"],
                "criticality": "low",
                "code": concept(SNOMED, code, display),
                "patient": _subject(plan),
                "recordedDate": _iso(plan.encounters[0]),
                "reaction": [
                    {
                        "manifestation": [concept(SNOMED, "247472004", "Wheal")],
                        "severity": "mild",
                    }
                ],
            }
        )
    return out


def make_reports(seed: int, plan: PatientPlan) -> list[Resource]:
    out = []
    first = 0
    for k, when in enumerate(plan.encounters):
        count = plan.obs_per_encounter[k]
        out.append(
            {
                "resourceType": "DiagnosticReport",
                "id": f"rep-{plan.index}-{k}",
                "status": "final",
                "category": [concept("http://terminology.hl7.org/CodeSystem/v2-0074", "LAB", "Laboratory")],
                "code": concept(LOINC, "51990-0", "Basic metabolic panel - Blood"),
                "subject": _subject(plan),
                "encounter": _ref("Encounter", f"enc-{plan.index}-{k}"),
                "effectiveDateTime": _iso(when),
                "issued": when.isoformat(timespec="milliseconds"),
                "result": [_ref("Observation", f"obs-{plan.index}-{j}") for j in range(first, first + count)],
            }
        )
        first += count
    return out


def make_documents(seed: int, plan: PatientPlan) -> list[Resource]:
    out = []
    for k in range(plan.docs):
        when = plan.encounters[-1]
        note = f"Visit note for {plan.given} {plan.family}: routine follow-up."
        out.append(
            {
                "resourceType": "DocumentReference",
                "id": f"doc-{plan.index}-{k}",
                "status": "current",
                "type": concept(LOINC, "34117-2", "History and physical note"),
                "subject": _subject(plan),
                "date": _iso(when + timedelta(minutes=45)),
                "author": [_ref("Practitioner", f"prac-{plan.practitioner}")],
                "content": [
                    {
                        "attachment": {
                            "contentType": "text/plain",
                            "data": base64.b64encode(note.encode()).decode(),
                        }
                    },
                    {
                        # The full note lives in a Binary on the server (see sandbox/binaries.py).
                        "attachment": {
                            "contentType": "text/plain",
                            "url": f"Binary/note-{plan.index}-{k}",
                            "title": "Visit note, full text",
                        }
                    },
                ],
                "context": {"encounter": [_ref("Encounter", f"enc-{plan.index}-{len(plan.encounters) - 1}")]},
            }
        )
    return out


def _quantity(value: float | int, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


#: The maker of each per-patient type: ``maker(seed, plan) -> resources`` (no ``meta``; in position order).
MAKERS: dict[str, Callable[[int, PatientPlan], list[Resource]]] = {
    "Patient": make_patients,
    "Encounter": make_encounters,
    "Observation": make_observations,
    "Condition": make_conditions,
    "MedicationRequest": make_medication_requests,
    "Procedure": make_procedures,
    "Immunization": make_immunizations,
    "AllergyIntolerance": make_allergies,
    "DiagnosticReport": make_reports,
    "DocumentReference": make_documents,
}
