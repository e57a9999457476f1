"""The one chat-client seam used by synthesis, LLM judges, LLM guards and red teaming.

`ChatClient.complete(messages, ...)` sends OpenAI-style chat messages and returns a `ChatResult`
with the text, optional per-token logprobs and token usage. Two implementations live behind it:
the OpenAI-compatible HTTP client (`llm.openai_compat`, for vLLM, TGI, Ollama, llama.cpp server or
a hosted API) and `ScriptedChatClient`, a deterministic offline stand-in for tests and offline runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its logprob and the top alternatives (token -> logprob)."""

    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ChatResult:
    """A completion: text, token logprobs when the server returns them, usage, raw payload."""

    text: str
    logprobs: tuple[TokenLogprob, ...] | None = None
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    raw: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class ChatClient(Protocol):
    """Anything that completes chat messages."""

    def complete(
        self,
        messages: Sequence[dict[str, str]],
        *,
        temperature: float = 0.0,
        max_tokens: int = 512,
        logprobs: bool = False,
        top_logprobs: int = 0,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> ChatResult: ...


Responder = Callable[[Sequence[dict[str, str]]], "str | ChatResult"]


class ScriptedChatClient:
    """Offline client: answers with `responder(messages)` (a function) or pops from a list of
    scripted answers. Records every request in `.calls`; usage counts whitespace tokens."""

    def __init__(self, responder: Responder | Sequence[str | ChatResult]) -> None:
        self._fn: Responder | None = responder if callable(responder) else None
        self._queue = list(responder) if not callable(responder) else []
        self.calls: list[list[dict[str, str]]] = []

    def complete(self, messages: Sequence[dict[str, str]], *, temperature: float = 0.0, max_tokens: int = 512,
                 logprobs: bool = False, top_logprobs: int = 0, seed: int | None = None,
                 stop: Sequence[str] | None = None) -> ChatResult:
        self.calls.append([dict(m) for m in messages])
        if self._fn is not None:
            out = self._fn(messages)
        elif self._queue:
            out = self._queue.pop(0)
        else:
            raise RuntimeError("ScriptedChatClient ran out of scripted answers")
        if isinstance(out, ChatResult):
            return out
        prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
        return ChatResult(str(out), None, Usage(prompt, len(str(out).split())), "scripted")
