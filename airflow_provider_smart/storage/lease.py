"""One writer per export label: a lease file with owner and heartbeat beside the export's state.

Object stores have no locks, so the lease is a small JSON file (``_exports/<label>/lease.json``) that
names its owner (the task instance: DAG, task, run and map index), a token for this hold, when it last
beat, and when it expires. A different owner finds an unexpired lease and fails at once, naming the
holder; retries of the holding task instance are the same owner and carry on.

Two runs must never both hold it, so every change of hands is a create-if-absent (``storage/exclusive.py``:
``O_EXCL`` locally, ``If-None-Match: *`` on S3), which exactly one racer wins:

- a free label (no lease file) is taken by creating ``lease.json``;
- an expired, released or unreadable lease is taken over by first creating
  ``lease.json.takeover.<digest>.<n>``, where the digest names the exact lease content being replaced:
  of the runs that saw the same old lease, one creates the marker; it then checks that the lease is
  still that content and writes its own. A marker left by a run that died mid-takeover is abandoned
  after the lease timeout for the next ``<n>``, created exclusively again.

The holder's heartbeat fails (:class:`LeaseLostError`) once the file no longer holds its token or its hold
has expired, instead of writing itself back over whoever took the label; the background heartbeat records
the loss and :meth:`ExportLease.check` (run before files are published or a watermark moves) raises it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.storage.exclusive import create_exclusive, overwrite

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

LEASE_FILE = "lease.json"
#: A lease nobody renewed for this long is free (a worker that died without releasing it).
DEFAULT_LEASE_TIMEOUT = 30 * 60.0


class LeaseHeldError(RuntimeError):
    """Another run holds this export label; the message names it."""


class LeaseLostError(LeaseHeldError):
    """This run's hold on the label lapsed or was taken over; it must stop writing under the label."""


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _digest(raw: bytes | None) -> str:
    return hashlib.sha256(raw or b"").hexdigest()[:32]


def _parse(raw: bytes | None) -> dict[str, Any] | None:
    """The lease record in ``raw``; None for no file, a torn file or a foreign one (all free to take)."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _live(data: dict[str, Any] | None, now: float) -> bool:
    if data is None or data.get("released"):
        return False
    expires = data.get("expires_at")
    return isinstance(expires, (int, float)) and expires > now


class ExportLease:
    """The lease of one export directory for one ``owner``."""

    def __init__(self, directory: ObjectStoragePath, owner: str, *, timeout: float = DEFAULT_LEASE_TIMEOUT) -> None:
        if timeout <= 0:
            raise ValueError(f"lease timeout must be positive, got {timeout!r}")
        self.path = directory / LEASE_FILE
        self.owner = owner
        self.timeout = float(timeout)
        #: This hold's token: set by :meth:`acquire` (or adopted from a lease this owner already holds).
        self.token: str | None = None
        self._lost: LeaseLostError | None = None

    def _raw(self) -> bytes | None:
        try:
            return bytes(self.path.read_bytes())
        except FileNotFoundError:
            return None

    def holder(self) -> dict[str, Any] | None:
        """The current lease when it is held by someone (expired and released leases are free)."""
        data = _parse(self._raw())
        return data if _live(data, time.time()) else None

    def _refuse(self, data: dict[str, Any]) -> LeaseHeldError:
        beat = data.get("heartbeat_at")
        expires = data.get("expires_at")
        return LeaseHeldError(
            f"export label {self.path.parent.name!r} at {self.path.parent.parent.parent} is held by "
            f"{data.get('owner')!r} (host {data.get('host')!r}, last heartbeat "
            f"{_iso(beat) if isinstance(beat, (int, float)) else 'unknown'}, expires "
            f"{_iso(float(expires)) if isinstance(expires, (int, float)) else 'unknown'}); two runs must not "
            "write one export. Wait for it to finish, give this run another export_label, or remove the lease "
            "file if that run is gone"
        )

    def _record(self, token: str, until: float | None) -> bytes:
        now = time.time()
        record = {
            "owner": self.owner,
            "token": token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat_at": now,
            "expires_at": max(now + self.timeout, until or 0.0),
            "released": False,
        }
        return json.dumps(record, indent=2, sort_keys=True).encode() + b"\n"

    def acquire(self, *, until: float | None = None) -> None:
        """Take (or renew) the lease; raise :class:`LeaseHeldError` when another owner holds it."""
        for _ in range(3):  # a lost race re-reads once or twice, then refuses or renews
            raw = self._raw()
            data = _parse(raw)
            if data is not None and _live(data, time.time()):
                if data.get("owner") != self.owner:
                    raise self._refuse(data)
                # The same task instance again (a retry, or after deferral): carry on with its hold.
                self.token = str(data.get("token") or uuid.uuid4().hex)
                self._lost = None
                self.heartbeat(until=until)
                return
            token = uuid.uuid4().hex
            if raw is None:
                if create_exclusive(self.path, self._record(token, until)):
                    self.token, self._lost = token, None
                    return
                continue  # another run created it first: look at what it wrote
            marker = self._claim_takeover(raw)
            if marker is None:
                continue  # another run is taking over the same old lease
            try:
                if self._raw() == raw:  # still the lease this run saw lapse: nobody else moved in
                    overwrite(self.path, self._record(token, until))
                    self.token, self._lost = token, None
                    return
            finally:
                with contextlib.suppress(FileNotFoundError):
                    marker.unlink()
        current = self.holder()
        if current is not None and current.get("owner") != self.owner:
            raise self._refuse(current)
        raise LeaseHeldError(f"export label lease {self.path} kept changing hands; retry the task")

    def _claim_takeover(self, raw: bytes) -> ObjectStoragePath | None:
        """Create the marker that lets this run alone replace the lease ``raw``; None when another run has it.

        A takeover takes milliseconds; a marker older than the lease timeout belongs to a run that died in
        between. It is never deleted (a run deleting it could delete a live one): the next generation's
        marker is created instead, again exclusively, so the label is stuck no longer than a dead holder's.
        """
        for generation in range(1, 11):
            marker = self.path.parent / f"{LEASE_FILE}.takeover.{_digest(raw)}.{generation}"
            if create_exclusive(marker, json.dumps({"created_at": time.time()}).encode()):
                return marker
            try:
                created = _parse(bytes(marker.read_bytes()))
            except FileNotFoundError:
                return None  # finished a moment ago: the lease has changed, look again
            started = created.get("created_at") if created else None
            if isinstance(started, (int, float)) and time.time() - started < self.timeout:
                return None
        return None

    def check(self) -> None:
        """Raise when this run's hold is gone (taken by another run, or lost while the heartbeat ran)."""
        if self._lost is not None:
            raise self._lost
        current = self.holder()
        if current is not None and current.get("owner") != self.owner:
            raise self._refuse(current)

    def heartbeat(self, *, until: float | None = None) -> None:
        """Extend this run's hold; :class:`LeaseLostError` when it has lapsed or another run holds it now."""
        data = _parse(self._raw())
        if self.token is None and data is not None and data.get("owner") == self.owner:
            self.token = str(data.get("token") or "")  # a hold this task instance took in an earlier process
        if not _live(data, time.time()) or data is None or data.get("token") != self.token:
            holder = f"{data.get('owner')!r}" if _live(data, time.time()) and data is not None else "nobody"
            raise LeaseLostError(
                f"the lease on export label {self.path.parent.name!r} was lost (it lapsed or another run took it; "
                f"held by {holder} now): this run stops rather than write beside another. Raise lease_timeout "
                "if the heartbeat could not keep up, and run the task again"
            )
        overwrite(self.path, self._record(str(self.token), until))

    def release(self) -> None:
        """Free the lease (the export finished or failed for good); a hold already lost is left alone."""
        data = _parse(self._raw())
        if data is None or data.get("owner") != self.owner or (self.token and data.get("token") != self.token):
            return
        released = {"owner": self.owner, "token": data.get("token"), "released": True, "released_at": time.time()}
        overwrite(self.path, json.dumps(released, indent=2, sort_keys=True).encode() + b"\n")

    @contextlib.contextmanager
    def kept_alive(self) -> Iterator[None]:
        """Renew the lease in the background while a long step (the download) runs.

        A heartbeat that finds the hold lost stops beating and records it; :meth:`check` raises it (the
        step before publishing calls it), and so does leaving this block.
        """
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.timeout / 3):
                try:
                    self.heartbeat()
                except LeaseLostError as exc:
                    self._lost = exc
                    return
                except Exception:  # noqa: S112 - a storage hiccup: the next beat tries again
                    continue

        thread = threading.Thread(target=beat, name="export-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)
        if self._lost is not None:
            raise self._lost
