"""Every Airflow configuration option the provider reads is declared: its own in provider info, with a
description, type, default and example, as Airflow's schema asks; any other is one of Airflow's own."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

import airflow_provider_smart
from airflow_provider_smart.get_provider_info import get_provider_info

PACKAGE = Path(airflow_provider_smart.__file__).parent
_CONF_READS = {"get", "getboolean", "getint", "getfloat", "getlist", "getjson", "getimport", "getsection", "has_option"}


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "text"`` assignments."""
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value.value
    return found


def conf_reads(source: str, where: str = "<source>") -> set[tuple[str, str | None]]:
    """(section, option) of every ``conf.<read>(section, option, ...)`` call in ``source`` (option None for
    ``getsection``). Arguments must be string literals or module-level string constants."""
    tree = ast.parse(source)
    constants = _constants(tree)

    def text(arg: ast.expr) -> str:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
        if isinstance(arg, ast.Name) and arg.id in constants:
            return constants[arg.id]
        raise AssertionError(f"{where}:{arg.lineno}: name the section and option with a literal or a module constant")

    reads: set[tuple[str, str | None]] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _CONF_READS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "conf"
        ):
            option = text(node.args[1]) if len(node.args) > 1 else None
            reads.add((text(node.args[0]), option))
    return reads


def all_conf_reads() -> set[tuple[str, str | None]]:
    reads: set[tuple[str, str | None]] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        reads |= conf_reads(path.read_text(), str(path.relative_to(PACKAGE)))
    return reads


def test_the_scan_finds_reads_through_constants_and_literals() -> None:
    source = (
        'SECTION = "smart_fhir"\n'
        'conf.getboolean(SECTION, "x", fallback=False)\n'
        'conf.get("core", "y")\n'
        'other.get("a", "b")\n'
    )
    assert conf_reads(source) == {("smart_fhir", "x"), ("core", "y")}
    with pytest.raises(AssertionError, match="literal or a module constant"):
        conf_reads("conf.get(section(), 'x')")


def test_every_option_the_code_reads_is_declared() -> None:
    from airflow.configuration import retrieve_configuration_description

    declared = get_provider_info()["config"]
    airflow_own = retrieve_configuration_description(include_providers=False)
    reads = all_conf_reads()
    assert ("smart_fhir", "jwks_merged") in reads  # the scan sees the plugin's read
    for section, option in sorted(reads, key=str):
        known = declared.get(section) or airflow_own.get(section)
        assert known is not None, f"[{section}] is read but declared nowhere: add it to get_provider_info()['config']"
        if option is not None:
            assert option in known["options"], (
                f"[{section}] {option} is read but not declared: add it to get_provider_info()['config']"
            )


def test_declared_options_follow_airflows_provider_schema() -> None:
    import jsonschema
    from airflow import configuration

    schema = json.loads((Path(configuration.__file__).parent / "provider_info.schema.json").read_text())
    info = get_provider_info()
    jsonschema.validate(info, schema)
    for section, spec in info["config"].items():
        assert spec["description"].strip(), section
        for name, option in spec["options"].items():
            for key in ("description", "type", "default", "example", "version_added"):
                assert option.get(key) not in (None, ""), f"[{section}] {name}: {key} is missing"


def test_the_declared_default_is_what_the_code_falls_back_to(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_smart.plugins.jwks import merged_jwks_enabled

    option: dict[str, Any] = get_provider_info()["config"]["smart_fhir"]["options"]["jwks_merged"]
    monkeypatch.delenv("AIRFLOW__SMART_FHIR__JWKS_MERGED", raising=False)
    assert merged_jwks_enabled() is (option["default"] == "True")
    monkeypatch.setenv("AIRFLOW__SMART_FHIR__JWKS_MERGED", option["example"])
    assert merged_jwks_enabled() is True
