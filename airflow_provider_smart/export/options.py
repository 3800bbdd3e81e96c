"""The finishing steps' settings as JSON-safe dicts: they travel in the fan-out reference (an XCom)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, e.g. under ``taskset``), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # platforms without affinity (macOS)
        return max(1, os.cpu_count() or 1)


def check_finish_workers(value: Any) -> int | None:
    """``max_finish_workers`` checked when the DAG is parsed: None (the CPUs the task may use) or >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"max_finish_workers={value!r} must be a whole number of processes >= 1, or None for the CPUs the "
            "task may use"
        )
    return value


def storage_uri(path: Any) -> str | None:
    """An ObjectStoragePath as a URI string (so it can travel); strings and None pass through."""
    if path is None:
        return None
    if hasattr(path, "protocol"):
        return f"{path.protocol or 'file'}://{path.path}"
    return str(path)


def parquet_spec(
    formats: Sequence[str], output: Any, output_conn_id: str | None, options: Mapping[str, Any]
) -> dict[str, Any] | None:
    """What the Parquet step needs (``{"output", "output_conn_id", "options"}``), or None without Parquet."""
    if "parquet" not in formats:
        return None
    return {"output": storage_uri(output), "output_conn_id": output_conn_id, "options": dict(options)}


def delta_spec(formats: Sequence[str], options: Mapping[str, Any], output_conn_id: str | None) -> dict[str, Any] | None:
    """What the Delta step needs, or None without Delta."""
    if "delta" not in formats:
        return None
    return {"options": dict(options), "output_conn_id": output_conn_id}


def attachments_spec(option: Any) -> dict[str, Any] | None:
    """The attachment settings as the finishing step takes them, or None when attachments are off."""
    from airflow_provider_smart.storage.attachments import AttachmentSettings

    settings = AttachmentSettings.from_option(option)
    return None if settings is None else settings.to_option()


@dataclass(frozen=True)
class FinishOptions:
    """Everything the finishing steps need besides the export itself (JSON-safe parts only)."""

    delete_on_success: bool = True
    fail_on_severity: str | None = "error"
    parquet: dict[str, Any] | None = None
    delta: dict[str, Any] | None = None
    attachments: dict[str, Any] | None = None
    #: Processes for the per-type work; None: the CPUs this task may use.
    max_workers: int | None = None

    @property
    def workers(self) -> int:
        return self.max_workers if self.max_workers is not None else available_cpus()

    def to_ref(self) -> dict[str, Any]:
        """The fan-out reference's part of these settings."""
        return {
            "delete_on_success": self.delete_on_success,
            "fail_on_severity": self.fail_on_severity,
            "parquet": self.parquet,
            "delta": self.delta,
            "attachments": self.attachments,
            "max_finish_workers": self.max_workers,
        }

    @classmethod
    def from_ref(
        cls,
        ref: Mapping[str, Any],
        *,
        delete_on_success: bool | None = None,
        fail_on_severity: str | None = None,
        max_workers: int | None = None,
    ) -> FinishOptions:
        """The settings of a fan-out reference; explicit arguments win over the reference's."""
        delete = delete_on_success if delete_on_success is not None else bool(ref.get("delete_on_success", True))
        return cls(
            delete_on_success=delete,
            fail_on_severity=fail_on_severity or ref.get("fail_on_severity", "error"),
            parquet=ref.get("parquet"),
            delta=ref.get("delta"),
            attachments=ref.get("attachments"),
            max_workers=max_workers if max_workers is not None else ref.get("max_finish_workers"),
        )


#: ``fail_on_severity`` values, most severe first; ``none`` (or None) accepts every error file.
SEVERITIES: tuple[str | None, ...] = ("fatal", "error", "warning", "information", "none", None)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """A clear error naming the argument and its allowed values."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices if c is not None)
        raise ValueError(f"{name}={value!r} must be one of {allowed}")
