"""The guarded service's core, independent of HTTP: assess turns under the fail mode, record flags
durably, run streaming sessions, and own the background parts (guard thread, webhook dispatcher,
housekeeping).

Every path that assesses a user turn goes through `GuardService.assess` (guard verdict, or the
fail-mode verdict when the guard errors or misses its deadline) and, for flagged turns,
`GuardService.record` (one committed transaction per request, before the caller answers). The
HTTP layer (`app.py`) only translates requests and errors.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..conversation import Conversation, Message
from ..guards import Assessment, BaseGuard
from .auth import KeyVerifier, Principal, RateLimiter, retry_after_header
from .metrics import ServeMetrics
from .runner import GuardFailure, GuardRunner, GuardTimeout
from .sessions import SessionState, SessionStore
from .settings import ServeSettings
from .store import NewEvent, OutboxTarget, Store, utcnow
from .webhooks import WebhookDispatcher

log = logging.getLogger("mindguard.serve")


class ApiError(Exception):
    """An error the API answers with `{"error": {"type", "message", "code"}}` and `status`."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.headers = headers or {}


@dataclass
class Verdict:
    """The outcome for one user turn: the guard's assessment, or why there is none."""

    message_index: int
    turn: int
    status: str  # ok | guard_error | guard_timeout
    assessment: Assessment | None
    flagged: bool
    event_id: str | None = None

    @property
    def label(self) -> str | None:
        return self.assessment.label if self.assessment else None

    def to_dict(self, messages: Sequence[Message] | None = None) -> dict[str, Any]:
        a = self.assessment
        ev = []
        for e in (a.evidence if a else ()):
            ev.append({"message_index": e.message_index, "role": e.role, "text": e.text, "weight": round(float(e.weight), 6)})
        return {
            "turn": self.turn, "message_index": self.message_index, "status": self.status, "flagged": self.flagged,
            "label": a.label if a else None, "p_unsafe": round(float(a.p_unsafe), 6) if a else None,
            "probabilities": {k: round(float(v), 6) for k, v in a.probabilities.items()} if a else None,
            "threshold": float(a.threshold) if a else None, "evidence": ev, "event_id": self.event_id,
        }


def prefix_hashes(messages: Sequence[Message]) -> list[str]:
    """A running hash of the conversation up to each message (part of an event's fingerprint)."""
    h = hashlib.sha256()
    out = []
    for m in messages:
        h.update(m.role.encode() + b"\x00" + m.content.encode() + b"\x00")
        out.append(h.copy().hexdigest())
    return out


def fingerprint(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()


def content_error(path: str, content: str, max_chars: int) -> str | None:
    if not content.strip():
        return f"{path}: must contain some text"
    if len(content) > max_chars:
        return f"{path}: longer than {max_chars} characters ({len(content)})"
    return None


class GuardService:
    """Everything the HTTP layer needs, created once per app."""

    def __init__(self, settings: ServeSettings, guard: BaseGuard, store: Store) -> None:
        self.settings = settings
        self.guard = guard
        self.store = store
        self.metrics = ServeMetrics()
        self.runner = GuardRunner(guard, settings.guard_timeout_s, settings.guard_max_batch, self.metrics.observe_guard)
        self.sessions = SessionStore(settings.session_ttl_s, settings.max_sessions)
        self.verifier = KeyVerifier(store, settings.key_cache_s)
        self.limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        self.dispatcher = WebhookDispatcher(store, settings, self.metrics)
        self._stop = threading.Event()
        self._housekeeper = threading.Thread(target=self._housekeeping, name="mindguard-housekeeping", daemon=True)
        self.started = False

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.dispatcher.start()
        self._housekeeper.start()
        self.started = True

    def stop(self) -> None:
        self._stop.set()
        self.dispatcher.stop()
        self.runner.close()
        self._housekeeper.join(timeout=5)
        self.store.close()

    def _housekeeping(self) -> None:
        last_prune: float | None = None
        while not self._stop.is_set():
            self.sessions.sweep()
            self.metrics.sessions.set(len(self.sessions))
            now = time.monotonic()
            if self.settings.retention_days > 0 and (last_prune is None or now - last_prune > 3600):
                last_prune = now
                try:
                    n_ev, n_ob = self.store.prune(utcnow() - dt.timedelta(days=self.settings.retention_days))
                    if n_ev or n_ob:
                        log.info("retention: deleted %d risk events and %d finished alerts", n_ev, n_ob)
                except Exception as exc:  # noqa: BLE001 - retry at the next round
                    log.warning("retention: prune failed (%s)", type(exc).__name__)
            self._stop.wait(30)

    # -- auth --------------------------------------------------------------------------------------
    def authenticate(self, key: str | None, scope: str) -> Principal:
        if not key:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                           "authentication_error", {"WWW-Authenticate": "Bearer"})
        p = self.verifier.verify(key)
        if p is None:
            raise ApiError(401, "invalid API key", "authentication_error", {"WWW-Authenticate": "Bearer"})
        if scope not in p.scopes:
            raise ApiError(403, f"this API key lacks the '{scope}' scope (it has: {', '.join(sorted(p.scopes))})", "permission_error")
        wait = self.limiter.check(p.key_id)
        if wait > 0:
            self.metrics.rate_limited.inc()
            raise ApiError(429, f"rate limit of {self.settings.rate_limit_per_minute:g} requests per minute exceeded for this key; "
                           f"retry in {wait:.1f}s", "rate_limit_error", {"Retry-After": retry_after_header(wait)})
        return p

    # -- assessing ---------------------------------------------------------------------------------
    def _failed(self, kind: str, indices: Sequence[int], turns: Sequence[int]) -> list[Verdict]:
        self.metrics.guard_errors.labels(kind).inc()
        flagged = self.settings.fail_mode == "closed"
        return [Verdict(i, t, kind, None, flagged) for i, t in zip(indices, turns)]

    def assess(self, conversation: Conversation, indices: Sequence[int], endpoint: str, request_id: str) -> list[Verdict]:
        """Verdicts for the user turns at `indices` (message indices) of `conversation`."""
        user_idx = conversation.user_turn_indices()
        turn_of = {i: k for k, i in enumerate(user_idx)}
        turns = [turn_of[i] for i in indices]
        try:
            res = self.runner.assess(conversation, indices)
        except GuardTimeout:
            log.warning("guard missed its %.3gs deadline (request %s)", self.settings.guard_timeout_s, request_id)
            return self._failed("guard_timeout", indices, turns)
        except GuardFailure as exc:
            log.error("guard failed with %s (request %s)", exc.kind, request_id)
            return self._failed("guard_error", indices, turns)
        self.metrics.assessments.labels(endpoint).inc(len(res))
        return [Verdict(i, t, "ok", a, a.flagged) for i, t, a in zip(indices, turns, res)]

    def _event(self, principal: Principal, v: Verdict, fp: str, endpoint: str, conversation_id: str | None,
               request_id: str, text: str, action: str | None) -> NewEvent:
        a = v.assessment
        keep = self.settings.store_text
        evidence = [{"message_index": e.message_index, "role": e.role, "weight": round(float(e.weight), 6),
                     **({"text": e.text} if keep else {})} for e in (a.evidence if a else ())]
        return NewEvent(
            tenant=principal.tenant, fingerprint=fp, endpoint=endpoint, conversation_id=conversation_id,
            request_id=request_id, message_index=v.message_index, turn=v.turn, status=v.status,
            label=a.label if a else None, p_unsafe=round(float(a.p_unsafe), 6) if a else None,
            probabilities={k: round(float(x), 6) for k, x in a.probabilities.items()} if a else None,
            threshold=float(a.threshold) if a else None, guard=self.guard.name, action=action, evidence=evidence,
            text=text if keep else None)

    def record(self, principal: Principal, items: Sequence[tuple[Verdict, str, str]], endpoint: str,
               conversation_id: str | None, request_id: str, action: str | None = None) -> None:
        """Durably store the flagged verdicts among `items` ((verdict, fingerprint, turn text));
        sets their `event_id`. Raises StoreError (the caller answers 503) when it cannot commit."""
        flagged = [(v, fp, t) for v, fp, t in items if v.flagged]
        for v, _, _ in flagged:
            self.metrics.flags.labels(v.label or v.status, endpoint).inc()
        if not flagged:
            return
        events = [self._event(principal, v, fp, endpoint, conversation_id, request_id, t, action) for v, fp, t in flagged]
        ids = self.store.record_events(events, self.webhook_targets)
        for (v, _, _), eid in zip(flagged, ids):
            v.event_id = eid
        self.dispatcher.wake()

    def webhook_targets(self, tenant: str) -> list[OutboxTarget]:
        return [OutboxTarget(w.url, w.secret_env) for w in self.settings.webhooks if w.tenant in (None, tenant)]

    def assess_and_record(self, principal: Principal, conversation: Conversation, indices: Sequence[int], endpoint: str,
                          conversation_id: str | None, request_id: str, action_for: Any = None) -> list[Verdict]:
        """`assess` then `record`, with fingerprints from the conversation id and its content.
        `action_for(verdict)` gives the proxy's intervention, stored with the event."""
        verdicts = self.assess(conversation, indices, endpoint, request_id)
        hashes = prefix_hashes(conversation.messages)
        items = [(v, fingerprint("conv", conversation_id or "", v.message_index, v.status, hashes[v.message_index]),
                  conversation.messages[v.message_index].content) for v in verdicts]
        action = action_for(verdicts[-1]) if action_for and verdicts and verdicts[-1].flagged else None
        self.record(principal, items, endpoint, conversation_id, request_id, action)
        return verdicts

    # -- streaming sessions ------------------------------------------------------------------------
    def session_turn(self, principal: Principal, session_id: str, role: str, content: str, message_index: int | None,
                     request_id: str) -> dict[str, Any]:
        s = self.settings
        err = content_error("content", content, s.max_message_chars)
        if err:
            raise ApiError(422, err)
        state = self.sessions.get(principal.tenant, session_id)
        if state is None and message_index not in (None, 0):
            raise ApiError(409, f"session {session_id!r} has no messages (unknown or expired), so this message would be "
                                f"index 0, not {message_index}; start it again from its first message", "conflict_error")
        created = False
        if state is None:
            state, created = self.sessions.get_or_create(principal.tenant, session_id, self._new_session)
        with state.lock:
            idx = state.n_messages
            if message_index is not None and message_index != idx:
                raise ApiError(409, f"session {session_id!r} has {idx} messages, so this message would be index {idx}, "
                                    f"not {message_index}", "conflict_error")
            if idx >= s.max_session_messages:
                raise ApiError(422, f"session {session_id!r} already holds the maximum of {s.max_session_messages} messages")
            state.n_messages += 1
            self.sessions.touch(state)
            if role != "user":
                # applied on the guard thread in arrival order; nothing to wait for
                self.runner.submit(lambda: state.guard_session.add(role, content))
                return {"session_id": session_id, "created": created, "message_index": idx, "assessment": None}
            turn = state.n_user_turns
            state.n_user_turns += 1
            verdict = self._session_verdict(state, role, content, idx, turn, request_id)
            fp = fingerprint("session", state.uid, idx, verdict.status)
            self.record(principal, [(verdict, fp, content)], "session", session_id, request_id)
            if verdict.flagged:
                state.n_flagged += 1
            state.last_label = verdict.label
        return {"session_id": session_id, "created": created, "message_index": idx, "assessment": verdict.to_dict()}

    def _new_session(self) -> Any:
        return self.guard.session()

    def _session_verdict(self, state: SessionState, role: str, content: str, idx: int, turn: int, request_id: str) -> Verdict:
        try:
            a = self.runner.call(lambda: state.guard_session.add(role, content))
        except GuardTimeout:
            log.warning("guard missed its %.3gs deadline (request %s)", self.settings.guard_timeout_s, request_id)
            return self._failed("guard_timeout", [idx], [turn])[0]
        except GuardFailure as exc:
            log.error("guard failed with %s (request %s)", exc.kind, request_id)
            return self._failed("guard_error", [idx], [turn])[0]
        if a is None:  # a guard session that does not assess user turns is a broken guard
            return self._failed("guard_error", [idx], [turn])[0]
        self.metrics.assessments.labels("session").inc()
        return Verdict(idx, turn, "ok", a, a.flagged)
