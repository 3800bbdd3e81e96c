"""The sandbox's clock (``state.clock``): real time unless a test freezes or moves it.

Everything in the sandbox that depends on "now" reads this clock: token issue and expiry, token
revocation, when an export is complete, the poll-too-soon check and Retry-After dates. A test on a busy
machine then says "two seconds pass" instead of sleeping and hoping the machine kept up:

* ``freeze()``: time stands still (at the current moment, or at ``at``) until moved or thawed.
* ``advance(seconds)``: move time forward, frozen or not.
* ``thaw()``: time runs again, on from the frozen moment.

Over HTTP: ``PUT /_sandbox/clock`` with ``{"freeze": bool, "advance": seconds}`` (admin credential).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any


class SandboxClock:
    """Real time plus an offset, or a frozen instant (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset = 0.0
        self._frozen_at: float | None = None

    def time(self) -> float:
        """Seconds since the epoch, as :func:`time.time`."""
        with self._lock:
            if self._frozen_at is not None:
                return self._frozen_at
            return time.time() + self._offset

    def monotonic(self) -> float:
        """The same clock, for measuring intervals (moves only forward: ``advance`` refuses negatives)."""
        return self.time()

    def now(self) -> datetime:
        """The current moment as an aware UTC datetime."""
        return datetime.fromtimestamp(self.time(), UTC)

    @property
    def frozen(self) -> bool:
        return self._frozen_at is not None

    def freeze(self, at: float | None = None) -> None:
        """Stop time at ``at`` (epoch seconds) or at the current moment."""
        current = self.time()
        with self._lock:
            self._frozen_at = current if at is None else float(at)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward: advance by 0 seconds or more")
        with self._lock:
            if self._frozen_at is not None:
                self._frozen_at += seconds
            else:
                self._offset += seconds

    def thaw(self) -> None:
        """Let time run again, on from the frozen (possibly advanced) moment."""
        with self._lock:
            if self._frozen_at is not None:
                self._offset = self._frozen_at - time.time()  # go on from the frozen moment
                self._frozen_at = None

    def reset(self) -> None:
        """Real time, no offset."""
        with self._lock:
            self._offset = 0.0
            self._frozen_at = None

    def apply_json(self, body: Any) -> None:
        """Apply ``{"freeze": bool, "advance": seconds, "reset": bool}`` (every key optional)."""
        if not isinstance(body, dict):
            raise ValueError("the clock settings must be a JSON object")
        unknown = set(body) - {"freeze", "advance", "reset"}
        if unknown:
            raise ValueError(f"unknown clock setting(s) {sorted(unknown)}: use advance, freeze or reset")
        if body.get("reset"):
            self.reset()
        if "freeze" in body:
            if body["freeze"]:
                self.freeze()
            else:
                self.thaw()
        if "advance" in body:
            self.advance(float(body["advance"]))

    def to_json(self) -> dict[str, Any]:
        return {"now": self.now().isoformat(), "frozen": self.frozen}
