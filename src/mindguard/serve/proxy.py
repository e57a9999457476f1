"""The guarded OpenAI-compatible chat proxy: assess the last user turn, apply the intervention
policy, relay to the upstream clinician LLM, and report the assessment with the answer.

Policy on a flagged turn (per label, see settings): `inject` adds a system (or developer) message
telling the LLM to follow the crisis protocol and forwards the request; `crisis_response` answers
with the configured crisis text and does not call the upstream at all; `none` forwards unchanged.
A guard failure under the default fail-closed mode counts as a flag. The answer carries the
assessment in a `mindguard` field (on the first chunk when streaming) and in `X-MindGuard-*`
headers. This is a byte-level relay, not a use of the `ChatClient` seam, on purpose: the proxy must
forward every OpenAI parameter it does not know (tools, response_format, ...) and the upstream's
server-sent events as they arrive, which a completion-returning client cannot do.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx

from ..conversation import Conversation, Message
from .auth import Principal
from .schemas import ChatCompletionRequest, ChatMessage
from .service import ApiError, GuardService, Verdict
from .settings import ServeSettings

_ROLE_FOR_GUARD = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def message_text(m: ChatMessage) -> str:
    """The text of an OpenAI message (string content, or the text parts of a parts list)."""
    c = m.content
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return " ".join(str(p.get("text")) for p in c if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
    return ""


def guard_messages(req: ChatCompletionRequest, settings: ServeSettings) -> tuple[list[Message], int]:
    """The conversation as the guard reads it (tool messages and empty ones left out) and the
    index in it of the last user turn; 422 errors name the offending message."""
    if len(req.messages) > settings.max_messages:
        raise ApiError(422, f"messages: at most {settings.max_messages} messages are allowed (got {len(req.messages)})")
    out: list[Message] = []
    last_user = -1
    for k, m in enumerate(req.messages):
        role = _ROLE_FOR_GUARD.get(m.role)
        text = message_text(m)
        if len(text) > settings.max_message_chars:
            raise ApiError(422, f"messages.{k}.content: longer than {settings.max_message_chars} characters ({len(text)})")
        if role is None or not text.strip():
            continue
        if role == "user":
            last_user = len(out)
        out.append(Message(role, text))
    if last_user < 0:
        raise ApiError(422, "messages: there is no user message with text to assess")
    return out[: last_user + 1], last_user


def apply_injection(body: dict[str, Any], settings: ServeSettings, label: str | None) -> None:
    note = {"role": settings.intervention_role,
            "content": settings.intervention_message.replace("{label}", label or "guard unavailable: treated as a risk")}
    if settings.intervention_position == "prepend":
        body["messages"].insert(0, note)
    else:
        body["messages"].append(note)


def mindguard_field(v: Verdict, action: str) -> dict[str, Any]:
    return {**v.to_dict(), "action": action}


def mindguard_headers(v: Verdict, action: str) -> dict[str, str]:
    h = {"X-MindGuard-Flagged": "true" if v.flagged else "false", "X-MindGuard-Status": v.status,
         "X-MindGuard-Action": action}
    if v.label:
        h["X-MindGuard-Label"] = v.label
    if v.assessment is not None:
        h["X-MindGuard-P-Unsafe"] = f"{v.assessment.p_unsafe:.6f}"
    if v.event_id:
        h["X-MindGuard-Event-Id"] = v.event_id
    return h


class ChatProxy:
    """Holds the upstream HTTP client; `handle` returns (status, headers, JSON body or SSE iterator)."""

    def __init__(self, service: GuardService) -> None:
        self.service = service
        self.settings = service.settings
        self.client = httpx.Client(timeout=httpx.Timeout(self.settings.upstream_timeout_s, connect=10.0),
                                   limits=httpx.Limits(max_connections=200, max_keepalive_connections=50))

    def close(self) -> None:
        self.client.close()

    def _upstream(self) -> tuple[str, dict[str, str]]:
        s = self.settings
        if not s.upstream_url:
            raise ApiError(503, "the chat proxy has no upstream: set upstream_url (MINDGUARD_SERVE_UPSTREAM_URL)", "server_error")
        headers = {"Content-Type": "application/json"}
        if s.upstream_api_key_env:
            key = os.environ.get(s.upstream_api_key_env)
            if not key:
                raise ApiError(503, f"the upstream API key variable {s.upstream_api_key_env} is not set on the server", "server_error")
            headers["Authorization"] = f"Bearer {key}"
        return s.upstream_url.rstrip("/") + "/chat/completions", headers

    def handle(self, principal: Principal, req: ChatCompletionRequest, conversation_id: str | None,
               request_id: str) -> tuple[int, dict[str, str], Any]:
        url, up_headers = self._upstream()
        msgs, last = guard_messages(req, self.settings)
        conv = Conversation(conversation_id or "proxy", tuple(msgs))
        verdict = self.service.assess_and_record(principal, conv, [last], "proxy", conversation_id, request_id,
                                                 action_for=lambda v: self.settings.action_for(v.label))[0]
        action = self.settings.action_for(verdict.label) if verdict.flagged else "none"
        self.service.metrics.actions.labels(action).inc()
        mg = mindguard_field(verdict, action)
        headers = mindguard_headers(verdict, action)
        if action == "crisis_response":
            return 200, headers, (self._crisis_stream(req.model, mg) if req.stream else self._crisis_json(req.model, mg))
        body = req.model_dump(exclude_unset=True)  # forward exactly the parameters the client sent
        body["messages"] = [m.model_dump(exclude_unset=True) for m in req.messages]
        if action == "inject":
            apply_injection(body, self.settings, verdict.label)
        if self.settings.upstream_model:
            body["model"] = self.settings.upstream_model
        if req.stream:
            return self._stream(url, up_headers, body, headers, mg)
        try:
            resp = self.client.post(url, json=body, headers=up_headers)
        except httpx.HTTPError as exc:
            raise ApiError(502, f"the upstream LLM is unreachable ({type(exc).__name__})", "upstream_error") from None
        self._raise_for_upstream(resp.status_code, resp.content)
        try:
            data = resp.json()
        except ValueError:
            raise ApiError(502, "the upstream LLM answered with a body that is not JSON", "upstream_error") from None
        if not isinstance(data, dict):
            raise ApiError(502, "the upstream LLM answered with JSON that is not an object", "upstream_error")
        data["mindguard"] = mg
        return 200, headers, data

    @staticmethod
    def _raise_for_upstream(status: int, content: bytes) -> None:
        if status == 200:
            return
        detail = ""
        try:
            err = json.loads(content).get("error")
            detail = str(err.get("message") if isinstance(err, dict) else err or "")[:200]
        except (ValueError, AttributeError):
            pass
        suffix = f": {detail}" if detail else ""
        if status in (400, 404, 409, 413, 422):
            # the client's request (its model name, its parameters) is what the upstream refused
            raise ApiError(status, f"the upstream LLM rejected the request (HTTP {status}){suffix}", "upstream_error")
        if status == 429:
            raise ApiError(429, f"the upstream LLM is rate limiting (HTTP 429){suffix}", "upstream_error", {"Retry-After": "1"})
        raise ApiError(502, f"the upstream LLM failed (HTTP {status}){suffix}", "upstream_error")

    def _stream(self, url: str, up_headers: dict[str, str], body: dict[str, Any], headers: dict[str, str],
                mg: dict[str, Any]) -> tuple[int, dict[str, str], Iterator[bytes]]:
        try:
            resp = self.client.send(self.client.build_request("POST", url, json=body, headers=up_headers), stream=True)
        except httpx.HTTPError as exc:
            raise ApiError(502, f"the upstream LLM is unreachable ({type(exc).__name__})", "upstream_error") from None
        if resp.status_code != 200:
            try:
                content = resp.read()
            except httpx.HTTPError:
                content = b""
            finally:
                resp.close()
            self._raise_for_upstream(resp.status_code, content)

        def relay() -> Iterator[bytes]:
            first = True
            try:
                for line in resp.iter_lines():
                    if first and line.startswith("data:") and line[5:].strip() != "[DONE]":
                        try:
                            chunk = json.loads(line[5:])
                            if isinstance(chunk, dict):
                                chunk["mindguard"] = mg
                                line = "data: " + json.dumps(chunk)
                                first = False
                        except ValueError:
                            pass
                    yield (line + "\n").encode()
            except httpx.HTTPError:
                # the upstream broke off mid-answer: tell the client in-band, the status is already sent
                err = {"error": {"type": "upstream_error", "message": "the upstream LLM stream ended unexpectedly", "code": 502}}
                yield f"data: {json.dumps(err)}\n\n".encode()
            finally:
                resp.close()

        return 200, headers, relay()

    def _crisis_json(self, model: str, mg: dict[str, Any]) -> dict[str, Any]:
        text = self.settings.crisis_response
        return {"id": f"chatcmpl-mindguard-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": model, "system_fingerprint": "mindguard-crisis-response",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}, "mindguard": mg}

    def _crisis_stream(self, model: str, mg: dict[str, Any]) -> Iterator[bytes]:
        cid = f"chatcmpl-mindguard-{uuid.uuid4().hex}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None, extra: dict[str, Any] | None = None) -> bytes:
            c = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **(extra or {})}
            return f"data: {json.dumps(c)}\n\n".encode()

        yield chunk({"role": "assistant", "content": ""}, None, {"mindguard": mg})
        yield chunk({"content": self.settings.crisis_response}, None)
        yield chunk({}, "stop")
        yield b"data: [DONE]\n\n"
