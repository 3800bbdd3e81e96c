"""Prove an output location writable before anything starts on the server."""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING

from airflow_provider_smart.transport.sanitize import safe_text

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


class OutputNotWritableError(RuntimeError):
    """The output location cannot be written; the message says which and what to check."""


def storage_uri(path: ObjectStoragePath) -> str:
    return f"{path.protocol or 'file'}://{path.path}".rstrip("/")


def check_writable(root: ObjectStoragePath) -> None:
    """Write and delete a small probe file under ``root`` (a hidden name every reader skips).

    :raises OutputNotWritableError: one sentence naming the location, what failed, and what to check.
    """
    probe = root / f"_probe.{uuid.uuid4().hex}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with probe.open("wb") as handle:  # type: ignore[no-untyped-call]
            handle.write(b"probe\n")
    except Exception as exc:
        raise OutputNotWritableError(
            f"the output {storage_uri(root)} is not writable ({type(exc).__name__}: {safe_text(exc, limit=200)}); "
            "check that the path or bucket exists, and that this worker (or output_conn_id's credentials) "
            "may create and delete files there"
        ) from None
    try:
        probe.unlink()
    except Exception as exc:
        raise OutputNotWritableError(
            f"the output {storage_uri(root)} accepts new files but this worker cannot delete them "
            f"({type(exc).__name__}: {safe_text(exc, limit=200)}); exports replace temporary files, so grant "
            "delete permission there"
        ) from None
    finally:
        with contextlib.suppress(Exception):
            if probe.exists():
                probe.unlink()
