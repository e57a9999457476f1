"""Request and response bodies of the HTTP API (they are also its OpenAPI schema).

MindGuard's own endpoints validate strictly: unknown fields, wrong types (no silent coercion of
`"true"` or `1`), unknown roles and empty messages are 422 errors that name the field. The chat
proxy accepts the OpenAI chat-completions body, whose many optional parameters it forwards to the
upstream untouched, and validates only what it relies on (`model`, `messages`, `stream`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class MessageIn(Strict):
    role: Literal["system", "user", "assistant"]
    content: StrictStr = Field(min_length=1)


class AssessRequest(Strict):
    """A conversation; every user turn is assessed with everything before it (or only the last)."""

    messages: list[MessageIn] = Field(min_length=1, description="the conversation, oldest first; it must contain a user turn")
    conversation_id: StrictStr | None = Field(None, pattern=ID_PATTERN, description="your id for the conversation (stored with events)")
    last_only: StrictBool = Field(False, description="assess only the last user turn")


class SessionTurnRequest(Strict):
    """One new message of a streaming session."""

    role: Literal["system", "user", "assistant"]
    content: StrictStr = Field(min_length=1)
    message_index: StrictInt | None = Field(
        None, ge=0, description="the index this message should get; a mismatch (a lost or out-of-step session) is a 409")


class EvidenceOut(BaseModel):
    message_index: int
    role: str
    text: str | None = None
    weight: float


class TurnAssessment(BaseModel):
    turn: int = Field(description="user-turn number, from 0")
    message_index: int
    status: Literal["ok", "guard_error", "guard_timeout"] = Field(
        description="ok, or why the guard gave no verdict (then `flagged` follows the fail mode)")
    flagged: bool
    label: str | None
    p_unsafe: float | None
    probabilities: dict[str, float] | None
    threshold: float | None
    evidence: list[EvidenceOut] = []
    event_id: str | None = Field(None, description="id of the stored risk event when flagged")


class AssessResponse(BaseModel):
    conversation_id: str | None
    guard: str
    flagged: bool = Field(description="any assessed turn flagged")
    turns: list[TurnAssessment]


class SessionTurnResponse(BaseModel):
    session_id: str
    created: bool = Field(description="this message started a new session")
    message_index: int
    assessment: TurnAssessment | None = Field(description="present when the message is a user turn")


class SessionInfo(BaseModel):
    session_id: str
    messages: int
    user_turns: int
    flagged_turns: int
    last_label: str | None
    idle_seconds: float
    expires_in_seconds: float


class EventOut(BaseModel):
    id: str
    created_at: str
    endpoint: str
    conversation_id: str | None
    request_id: str
    message_index: int
    turn: int
    status: str
    label: str | None
    p_unsafe: float | None
    probabilities: dict[str, float] | None
    threshold: float | None
    guard: str
    action: str | None
    evidence: list[dict[str, Any]]
    text: str | None


class EventPage(BaseModel):
    events: list[EventOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next (older) page; null at the end")


class ChatMessage(BaseModel):
    """An OpenAI chat message; extra fields (name, tool_calls, tool_call_id, ...) pass through."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    """The OpenAI chat-completions body; parameters other than these are forwarded as they are."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False


class ErrorBody(BaseModel):
    type: str
    message: str
    code: int


class ErrorResponse(BaseModel):
    error: ErrorBody


__all__ = [
    "AssessRequest", "AssessResponse", "ChatCompletionRequest", "ChatMessage", "ErrorResponse", "EventOut", "EventPage",
    "EvidenceOut", "MessageIn", "SessionInfo", "SessionTurnRequest", "SessionTurnResponse", "TurnAssessment",
]
