"""A process-wide cache of discovery and access tokens, so a deferred task's trigger and the resumed
operator do not fetch both again when a still-valid token is at hand.

One :class:`AuthState` per (connection id, FHIR base URL, client_id, signing kid, scope, token URL):
every :class:`~airflow_provider_smart.auth.client.SmartAuthClient` built for that key in this process
shares the discovered configuration, the current token and the lock that keeps at most one token
request in flight. Anything that changes which token the server would issue is part of the key, so an
edited connection (another key, scope or client) never sees the old token.

Secrets stay in memory only: nothing here is pickled, logged or written anywhere (``AccessToken``
refuses to be pickled). The cache is bounded; the least recently used entries are dropped first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_smart.auth.discovery import SmartConfiguration
    from airflow_provider_smart.auth.tokens import AccessToken

#: Connections one process talks to are few; this bound only stops an unbounded growth.
MAX_ENTRIES = 64


@dataclass(eq=False)
class AuthState:
    """What clients of one key share: discovery, the current token and their locks."""

    configuration: SmartConfiguration | None = None
    token: AccessToken | None = field(default=None, repr=False)
    token_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    discovery_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __reduce__(self) -> Any:
        raise TypeError("AuthState holds a bearer token and cannot be pickled")


CacheKey = tuple[str, str, str, str, str, str]

_lock = threading.Lock()
_states: OrderedDict[CacheKey, AuthState] = OrderedDict()


def shared_state(
    conn_id: str, base_url: str, *, client_id: str, kid: str, scope: str, token_url: str | None
) -> AuthState:
    """The state shared by every client of this connection and base URL in this process."""
    key: CacheKey = (conn_id, base_url, client_id, kid, scope, token_url or "")
    with _lock:
        state = _states.get(key)
        if state is None:
            state = _states[key] = AuthState()
            while len(_states) > MAX_ENTRIES:
                _states.popitem(last=False)
        else:
            _states.move_to_end(key)
        return state


def clear() -> None:
    """Forget every cached configuration and token (tests; a process that rotates all keys)."""
    with _lock:
        _states.clear()
