"""The lazily loaded package names: each resolves to its module's object, an unknown one says so."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = ["airflow_provider_smart.parquet", "airflow_provider_smart.tables"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_loads_from_its_module(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        assert getattr(importlib.import_module(module._EXPORTS[name]), name) is value


@pytest.mark.parametrize("package", PACKAGES)
def test_an_unknown_name_is_an_attribute_error_naming_it(package: str) -> None:
    module = importlib.import_module(package)
    with pytest.raises(AttributeError, match=rf"module '{package}' has no attribute 'NoSuchThing'"):
        module.NoSuchThing  # noqa: B018
    assert not hasattr(module, "NoSuchThing")
