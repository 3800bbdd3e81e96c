"""One writer per export label: a lease file with owner and heartbeat beside the export's state.

Object stores have no locks, so the lease is a small JSON file (``_exports/<label>/lease.json``) that
names its owner (the task instance: DAG, task, run and map index), when it last beat, and when it
expires. A different owner finds an unexpired lease and fails at once, naming the holder; retries of
the holding task instance are the same owner and carry on. After writing, the file is read back, so of
two owners writing at the same moment the one whose write lost sees the other and stops; the holder
checks the lease again before it publishes files or moves a watermark, the steps that would otherwise
mix two exports.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.storage.atomic import atomic_write_json, read_json

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

LEASE_FILE = "lease.json"
#: A lease nobody renewed for this long is free (a worker that died without releasing it).
DEFAULT_LEASE_TIMEOUT = 30 * 60.0


class LeaseHeldError(RuntimeError):
    """Another run holds this export label; the message names it."""


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class ExportLease:
    """The lease of one export directory for one ``owner``."""

    def __init__(self, directory: ObjectStoragePath, owner: str, *, timeout: float = DEFAULT_LEASE_TIMEOUT) -> None:
        if timeout <= 0:
            raise ValueError(f"lease timeout must be positive, got {timeout!r}")
        self.path = directory / LEASE_FILE
        self.owner = owner
        self.timeout = float(timeout)

    def holder(self) -> dict[str, Any] | None:
        """The current lease when it is held by someone (expired and released leases are free)."""
        try:
            data = read_json(self.path)
        except ValueError:  # a torn or foreign file: treat as free, it is overwritten
            return None
        if not isinstance(data, dict) or data.get("released"):
            return None
        expires = data.get("expires_at")
        if not isinstance(expires, (int, float)) or expires <= time.time():
            return None
        return data

    def _refuse(self, data: dict[str, Any]) -> LeaseHeldError:
        beat = data.get("heartbeat_at")
        return LeaseHeldError(
            f"export label {self.path.parent.name!r} at {self.path.parent.parent.parent} is held by "
            f"{data.get('owner')!r} (host {data.get('host')!r}, last heartbeat "
            f"{_iso(beat) if isinstance(beat, (int, float)) else 'unknown'}, expires "
            f"{_iso(float(data['expires_at']))}); two runs must not write one export. Wait for it to finish, "
            "give this run another export_label, or remove the lease file if that run is gone"
        )

    def acquire(self, *, until: float | None = None) -> None:
        """Take (or renew) the lease; raise :class:`LeaseHeldError` when another owner holds it."""
        current = self.holder()
        if current is not None and current.get("owner") != self.owner:
            raise self._refuse(current)
        self.heartbeat(until=until)
        back = self.holder()
        if back is not None and back.get("owner") != self.owner:
            raise self._refuse(back)

    def check(self) -> None:
        """Raise when someone else has taken the lease since (this run's lease expired meanwhile)."""
        current = self.holder()
        if current is not None and current.get("owner") != self.owner:
            raise self._refuse(current)

    def heartbeat(self, *, until: float | None = None) -> None:
        now = time.time()
        atomic_write_json(
            self.path,
            {
                "owner": self.owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "heartbeat_at": now,
                "expires_at": max(now + self.timeout, until or 0.0),
                "released": False,
            },
        )

    def release(self) -> None:
        """Free the lease (the export finished or failed for good)."""
        current = self.holder()
        if current is None or current.get("owner") == self.owner:
            atomic_write_json(self.path, {"owner": self.owner, "released": True, "released_at": time.time()})

    @contextlib.contextmanager
    def kept_alive(self) -> Iterator[None]:
        """Renew the lease in the background while a long step (the download) runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.timeout / 3):
                with contextlib.suppress(Exception):
                    self.heartbeat()

        thread = threading.Thread(target=beat, name="export-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)
