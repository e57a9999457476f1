"""The one `Guard` interface every backend honours, its result types, and a streaming session.

A guard assesses one user turn *in the context of everything before it* and returns an
`Assessment`: a label, per-label probabilities, p(unsafe), whether it is flagged at the guard's
operating threshold, and optional evidence. Backends subclass `BaseGuard` and implement
`assess_batch`; the rest (single turns, whole conversations, sessions) comes for free and may be
overridden where a backend can do better (the encoder streams in constant time per turn).

Example:
    >>> from mindguard.guards import load_guard
    >>> from mindguard.conversation import Message
    >>> guard = load_guard("keyword")
    >>> a = guard.assess([Message("user", "i want to kill myself")])
    >>> a.flagged, a.label
    (True, 'unsafe_self_harm_risk')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..conversation import Conversation, Message, require_user_last
from ..errors import DataError
from ..taxonomy import LABELS, SAFE, UNSAFE_LABELS


@dataclass(frozen=True)
class Evidence:
    """A message or phrase that drove an assessment; `weight` is its contribution to p(unsafe)."""

    message_index: int
    role: str
    text: str
    weight: float


@dataclass(frozen=True)
class Assessment:
    """The verdict on one user turn."""

    label: str
    probabilities: Mapping[str, float]
    p_unsafe: float
    flagged: bool
    threshold: float
    message_index: int
    evidence: tuple[Evidence, ...] = ()
    guard: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["probabilities"] = {k: round(float(v), 6) for k, v in self.probabilities.items()}
        d["p_unsafe"] = round(float(self.p_unsafe), 6)
        return d


def make_assessment(
    probabilities: Mapping[str, float],
    threshold: float,
    message_index: int,
    guard: str,
    evidence: Sequence[Evidence] = (),
    extra: Mapping[str, Any] | None = None,
) -> Assessment:
    """Build an Assessment from per-label probabilities: flagged iff p(unsafe) >= threshold, and
    then the label is the likelier unsafe label; otherwise `safe`."""
    probs = {lab: float(probabilities.get(lab, 0.0)) for lab in LABELS}
    p_unsafe = sum(probs[lab] for lab in UNSAFE_LABELS)
    flagged = p_unsafe >= threshold
    label = max(UNSAFE_LABELS, key=lambda lab: probs[lab]) if flagged else SAFE
    return Assessment(label, probs, p_unsafe, flagged, threshold, message_index, tuple(evidence), guard, dict(extra or {}))


@runtime_checkable
class Guard(Protocol):
    """What the evaluator, CLI, server and red teaming rely on."""

    name: str
    threshold: float

    def assess(self, messages: Sequence[Message]) -> Assessment: ...

    def assess_batch(self, contexts: Sequence[Sequence[Message]]) -> list[Assessment]: ...

    def assess_conversation(self, conversation: Conversation, indices: Sequence[int] | None = None) -> list[Assessment]: ...

    def session(self) -> GuardSession: ...


class BaseGuard:
    """Shared behaviour; subclasses implement `assess_batch` (contexts each ending in a user turn)."""

    name = "base"
    threshold = 0.5

    def assess_batch(self, contexts: Sequence[Sequence[Message]]) -> list[Assessment]:
        raise NotImplementedError

    def assess(self, messages: Sequence[Message]) -> Assessment:
        """Assess the last message of `messages`, which must be a user turn."""
        require_user_last(messages)
        return self.assess_batch([messages])[0]

    def assess_conversation(self, conversation: Conversation, indices: Sequence[int] | None = None) -> list[Assessment]:
        """Assess the user turns at `indices` (default: every user turn), each with its prefix."""
        idx = conversation.user_turn_indices() if indices is None else list(indices)
        for i in idx:
            if conversation.messages[i].role != "user":
                raise DataError(f"message {i} of conversation {conversation.id!r} is not a user turn")
        return self.assess_batch([conversation.prefix(i) for i in idx])

    def assess_many(self, conversations: Sequence[Conversation], indices: Sequence[Sequence[int]]) -> list[list[Assessment]]:
        """`assess_conversation` over many conversations; backends override it to batch across them."""
        return [self.assess_conversation(c, i) for c, i in zip(conversations, indices)]

    def session(self) -> GuardSession:
        """A streaming session: feed messages as they arrive, get an assessment per user turn."""
        return GuardSession(self)


class GuardSession:
    """Streaming use of a guard. This generic session re-reads the whole context each turn;
    backends with incremental state (the encoder) return their own constant-cost session."""

    def __init__(self, guard: BaseGuard) -> None:
        self.guard = guard
        self.messages: list[Message] = []

    def add(self, role: str, content: str) -> Assessment | None:
        """Append a message; returns the assessment when it is a user turn, else None."""
        msg = Message(role, content)
        self.messages.append(msg)
        if role != "user":
            return None
        return self.guard.assess(self.messages)
