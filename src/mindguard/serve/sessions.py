"""Server-side streaming sessions: the guard's per-conversation state, per tenant, with a TTL.

A client of `POST /v1/sessions/{id}/turns` sends only the new message; the guard session built
by `guard.session()` carries the conversation (for the encoder: a small recurrent state, so each
turn costs the same however long the conversation is). Sessions live in memory, keyed by
(tenant, id), so one tenant can neither see nor extend another's session. A session idle longer
than the TTL is forgotten, and beyond `max_sessions` the longest-idle one is dropped; clients that
send `message_index` learn of a lost session (after a restart, say) from a 409 instead of having
a turn silently assessed without its context.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..guards import GuardSession


@dataclass
class SessionState:
    """One live session: the guard session plus bookkeeping (no text is kept here)."""

    guard_session: GuardSession
    created: float
    last_used: float
    n_messages: int = 0
    n_user_turns: int = 0
    n_flagged: int = 0
    last_label: str | None = None
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)  # tells a re-created session id apart
    lock: threading.Lock = field(default_factory=threading.Lock)

    def summary(self, session_id: str, ttl_s: float) -> dict[str, Any]:
        return {"session_id": session_id, "messages": self.n_messages, "user_turns": self.n_user_turns,
                "flagged_turns": self.n_flagged, "last_label": self.last_label,
                "idle_seconds": round(time.monotonic() - self.last_used, 3),
                "expires_in_seconds": round(max(0.0, ttl_s - (time.monotonic() - self.last_used)), 3)}


class SessionStore:
    """(tenant, session id) -> SessionState, LRU-ordered by last use."""

    def __init__(self, ttl_s: float, max_sessions: int) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._data: OrderedDict[tuple[str, str], SessionState] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def _expired(self, s: SessionState, now: float) -> bool:
        return now - s.last_used > self.ttl_s

    def get(self, tenant: str, session_id: str) -> SessionState | None:
        now = time.monotonic()
        with self._lock:
            s = self._data.get((tenant, session_id))
            if s is None:
                return None
            if self._expired(s, now):
                del self._data[(tenant, session_id)]
                return None
            return s

    def get_or_create(self, tenant: str, session_id: str, make: Any) -> tuple[SessionState, bool]:
        """The live session, or a new one from `make()` (a GuardSession); True when created."""
        now = time.monotonic()
        with self._lock:
            key = (tenant, session_id)
            s = self._data.get(key)
            if s is not None and not self._expired(s, now):
                s.last_used = now
                self._data.move_to_end(key)
                return s, False
            s = SessionState(make(), now, now)
            self._data[key] = s
            self._data.move_to_end(key)
            while len(self._data) > self.max_sessions:
                self._data.popitem(last=False)
            return s, True

    def touch(self, s: SessionState) -> None:
        s.last_used = time.monotonic()

    def delete(self, tenant: str, session_id: str) -> bool:
        with self._lock:
            return self._data.pop((tenant, session_id), None) is not None

    def sweep(self) -> int:
        """Forget expired sessions; returns how many."""
        now = time.monotonic()
        with self._lock:
            dead = [k for k, s in self._data.items() if self._expired(s, now)]
            for k in dead:
                del self._data[k]
        return len(dead)
