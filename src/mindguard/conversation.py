"""Messages and conversations, with a label on each user turn and provenance metadata.

A `Conversation` is an ordered tuple of `Message`s. User turns may carry a gold `label`, the
labellers' `votes`, a `rationale` and a `hard_negative` flag; other roles may not. Construction
validates and raises `DataError` with a message that names what is wrong.

Example:
    >>> c = Conversation.from_dicts("c1", [{"role": "user", "content": "hi", "label": "safe"}])
    >>> [m.content for m in c.user_turns()]
    ['hi']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import DataError
from .taxonomy import LABELS

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One message. `label`, `votes`, `rationale` and `hard_negative` belong to user turns only."""

    role: str
    content: str
    label: str | None = None
    votes: Mapping[str, str] | None = None
    rationale: str | None = None
    hard_negative: bool = False
    rows: tuple[int, ...] = ()  # original row numbers when read from the testset schema

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise DataError(f"unknown role {self.role!r}; allowed: {', '.join(ROLES)}")
        if not isinstance(self.content, str) or not self.content.strip():
            raise DataError(f"empty content in a {self.role} message")
        if self.role != "user" and (self.label is not None or self.votes):
            raise DataError(f"a label is only allowed on user turns, found one on a {self.role} message")
        if self.label is not None and self.label not in LABELS:
            raise DataError(f"unknown label {self.label!r}; allowed: {', '.join(LABELS)}")
        for who, v in (self.votes or {}).items():
            if v not in LABELS:
                raise DataError(f"unknown label {v!r} in votes of {who!r}; allowed: {', '.join(LABELS)}")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.label is not None:
            d["label"] = self.label
        if self.votes:
            d["votes"] = dict(self.votes)
        if self.rationale:
            d["rationale"] = self.rationale
        if self.hard_negative:
            d["hard_negative"] = True
        if self.rows:
            d["rows"] = list(self.rows)
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Message:
        if not isinstance(d, Mapping):
            raise DataError(f"a message must be an object, got {type(d).__name__}")
        if "role" not in d or "content" not in d:
            raise DataError("a message needs 'role' and 'content'")
        content = d["content"]
        if isinstance(content, list):  # OpenAI content parts
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
        return Message(
            role=str(d["role"]),
            content=content if isinstance(content, str) else "",
            label=d.get("label"),
            votes=dict(d["votes"]) if d.get("votes") else None,
            rationale=d.get("rationale") or None,
            hard_negative=bool(d.get("hard_negative", False)),
            rows=tuple(int(x) for x in d.get("rows", ())),
        )


@dataclass(frozen=True)
class Conversation:
    """An ordered conversation with provenance `meta` (source, scenario, persona, family, …)."""

    id: str
    messages: tuple[Message, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.messages:
            raise DataError(f"conversation {self.id!r} has no messages")
        if not any(m.role == "user" for m in self.messages):
            raise DataError(f"conversation {self.id!r} has no user turn")

    @staticmethod
    def from_dicts(
        conv_id: str,
        messages: Iterable[Mapping[str, Any]],
        meta: Mapping[str, Any] | None = None,
        labels: Sequence[str] | None = None,
    ) -> Conversation:
        """Build from message dicts; `labels`, if given, are assigned to user turns in order."""
        msgs = [Message.from_dict(m) for m in messages]
        if labels is not None:
            users = [i for i, m in enumerate(msgs) if m.role == "user"]
            if len(labels) != len(users):
                raise DataError(
                    f"conversation {conv_id!r} has {len(users)} user turns but {len(labels)} labels"
                )
            for i, lab in zip(users, labels):
                m = msgs[i]
                msgs[i] = Message(m.role, m.content, lab, m.votes, m.rationale, m.hard_negative, m.rows)
        return Conversation(str(conv_id), tuple(msgs), dict(meta or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "messages": [m.to_dict() for m in self.messages], "meta": dict(self.meta)}

    def user_turn_indices(self) -> list[int]:
        """Message indices of the user turns, in order."""
        return [i for i, m in enumerate(self.messages) if m.role == "user"]

    def user_turns(self) -> list[Message]:
        return [m for m in self.messages if m.role == "user"]

    def labelled_turns(self) -> list[int]:
        """Message indices of user turns that carry a gold label."""
        return [i for i, m in enumerate(self.messages) if m.role == "user" and m.label is not None]

    def prefix(self, index: int) -> tuple[Message, ...]:
        """Messages up to and including `index`: the context a guard sees for that turn."""
        if not 0 <= index < len(self.messages):
            raise IndexError(f"message index {index} out of range for conversation {self.id!r}")
        return self.messages[: index + 1]

    def with_labels(self, labels: Mapping[int, str]) -> Conversation:
        """A copy with the user turns at the given message indices relabelled."""
        msgs = list(self.messages)
        for i, lab in labels.items():
            m = msgs[i]
            msgs[i] = Message(m.role, m.content, lab, m.votes, m.rationale, m.hard_negative, m.rows)
        return Conversation(self.id, tuple(msgs), self.meta)


def require_user_last(messages: Sequence[Message], what: str = "context") -> None:
    """Raise DataError unless `messages` ends with a user turn (the turn to assess)."""
    if not messages:
        raise DataError(f"the {what} is empty")
    if messages[-1].role != "user":
        raise DataError(f"the {what} must end with a user turn, but the last message is from {messages[-1].role!r}")
