from __future__ import annotations

from datetime import timedelta

import pytest

from airflow_provider_smart.operators.bulk_export import FhirBulkExportOperator, default_export_label
from airflow_provider_smart.storage.export_state import read_watermark, watermark_path, write_watermark
from airflow_provider_smart.storage.paths import resolve_output


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"formats": ("csv",)}, "supported formats"),
        ({"download_mode": "later"}, "download_mode"),
        ({"fail_on_severity": "bad"}, "fail_on_severity"),
    ],
)
def test_bad_arguments_fail_at_parse_time(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        FhirBulkExportOperator(task_id="t", output="/tmp/x", **kwargs)  # type: ignore[arg-type]


def test_template_fields_and_the_output_xcomarg_stay_separate() -> None:
    op = FhirBulkExportOperator(task_id="t", output="/data/fhir", export_timeout=timedelta(minutes=2))
    assert op.output_uri == "/data/fhir"
    assert op.export_timeout == 120
    assert "output_uri" in op.template_fields and "since" in op.template_fields
    assert op.output is not None and type(op.output).__name__ == "PlainXComArg"


def test_default_label_is_the_run_id_plus_map_index() -> None:
    class TI:
        map_index = 3

    assert default_export_label({"run_id": "scheduled__2024-01-01T00:00:00+00:00"}) == (  # type: ignore[typeddict-item]
        "scheduled__2024-01-01T00_00_00_00_00"
    )
    assert default_export_label({"run_id": "manual__x", "ti": TI()}).endswith(".3")  # type: ignore[typeddict-item]


def test_watermark_is_per_scope_and_never_moves_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = resolve_output(str(tmp_path))
    a = {"level": "system", "group_id": None, "types": ["Patient"]}
    b = {"level": "group", "group_id": "7", "types": ["Patient"]}
    assert watermark_path(root, "c", a) != watermark_path(root, "c", b)
    assert watermark_path(root, "c", a) != watermark_path(root, "other", a)
    assert read_watermark(root, "c", a) is None
    write_watermark(root, "c", a, "2024-02-01T00:00:00Z", "run2")
    write_watermark(root, "c", a, "2024-01-01T00:00:00Z", "run1")  # an older export finishing late
    assert read_watermark(root, "c", a) == "2024-02-01T00:00:00Z"
    assert read_watermark(root, "c", b) is None
    assert watermark_path(root, "c", b).name.startswith("c.group.7.")
