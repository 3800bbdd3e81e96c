"""A connection saved by the form loads without Airflow's "too short to mask" warning.

Airflow masks every string value of a connection's Extra when a task loads it; a value shorter than
``[logging] min_length_masked_secret`` cannot be masked and logs ``Skipping masking for a secret as it's too
short`` at the start of every task. The form's defaults must not put such a value there.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from airflow_provider_smart.get_provider_info import get_provider_info
from airflow_provider_smart.hooks.smart import SmartFhirHook


def _form_extra() -> dict[str, Any]:
    """What Airflow's form saves in Extra when nothing is typed: each field's default, else null."""
    (conn_type,) = [t for t in get_provider_info()["connection-types"] if t["connection-type"] == "smart_fhir"]
    return {name: field["schema"].get("default") for name, field in conn_type["conn-fields"].items()}


@pytest.fixture
def warned_flag_reset() -> Any:
    """The masker warns once per process: forget that it did, so this test sees its own warning."""
    from airflow.sdk._shared.secrets_masker.secrets_masker import SecretsMasker

    saved = SecretsMasker._has_warned_short_secret
    SecretsMasker._has_warned_short_secret = False
    yield
    SecretsMasker._has_warned_short_secret = saved


def test_a_form_made_connection_loads_without_the_short_secret_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, warned_flag_reset: None
) -> None:
    conn = {
        "conn_type": "smart_fhir",
        "host": "https://fhir.example.org/r4",
        "login": "my-registered-client-id",
        "password": "-----BEGIN PRIVATE KEY----- not a real key -----END PRIVATE KEY-----",
        "extra": _form_extra(),
    }
    monkeypatch.setenv("AIRFLOW_CONN_SMART_FORM_MADE", json.dumps(conn))
    with caplog.at_level(logging.WARNING):
        SmartFhirHook("smart_form_made").get_connection("smart_form_made")
    assert "too short" not in caplog.text


def test_the_check_sees_the_warning_when_a_short_value_is_saved(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, warned_flag_reset: None
) -> None:
    """The test above can fail: the same load with ``verify: "true"`` in Extra warns."""
    conn = {"conn_type": "smart_fhir", "host": "https://x/r4", "login": "c", "extra": {"verify": "true"}}
    monkeypatch.setenv("AIRFLOW_CONN_SMART_SHORT_EXTRA", json.dumps(conn))
    with caplog.at_level(logging.WARNING):
        SmartFhirHook("smart_short_extra").get_connection("smart_short_extra")
    assert "too short" in caplog.text
