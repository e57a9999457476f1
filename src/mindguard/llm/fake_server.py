"""A real, local OpenAI-compatible HTTP server that answers from a scripted responder function.

It is the stand-in for vLLM / a hosted API in tests and offline demos: it listens on 127.0.0.1 on
a free port, speaks `POST /v1/chat/completions` (plain JSON and `stream: true` server-sent events,
with `logprobs` / `top_logprobs` when asked) and `GET /v1/models`, checks a bearer key when given
one, and can be told to misbehave (error statuses with `Retry-After`, delays, malformed or
truncated bodies, dropped connections) so error handling is tested over a real socket. Every
request body is recorded in `.requests`, and `.max_in_flight` counts the most requests it served
at once (to check client-side concurrency limits without measuring time).

Example:
    >>> from mindguard.llm.fake_server import FakeOpenAIServer
    >>> with FakeOpenAIServer(lambda req: "Safety: Safe") as server:
    ...     import httpx
    ...     r = httpx.post(server.url + "/chat/completions",
    ...                    json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]})
    ...     r.json()["choices"][0]["message"]["content"]
    'Safety: Safe'
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ._client import ChatResult, TokenLogprob

FakeResponder = Callable[[dict[str, Any]], "str | ChatResult"]
"""Gets the parsed request body (model, messages, temperature, seed, …); returns the answer text,
or a `ChatResult` whose `logprobs` script the per-token logprobs the server reports."""

_TOKEN_RX = re.compile(r"\s*\S+|\s+")


def split_tokens(text: str) -> list[str]:
    """The fake server's tokenizer: words with their leading whitespace (concatenates to `text`)."""
    return _TOKEN_RX.findall(text) or [text]


@dataclass
class Failure:
    """One scripted misbehaviour, consumed by the next matching request.

    `status` (e.g. 429, 500, 401) answers with an OpenAI-style error body (or `body` verbatim);
    `retry_after` adds that header; `delay` sleeps first (for timeouts); `malformed=True` answers
    200 with a body that is not the chat-completions shape (`body` or a non-JSON default);
    `drop=True` closes the connection without answering.
    """

    status: int = 500
    body: str | None = None
    retry_after: str | None = None
    delay: float = 0.0
    malformed: bool = False
    drop: bool = False
    path: str = "/v1/chat/completions"


class FakeOpenAIServer:
    """Context manager: `with FakeOpenAIServer(responder) as s: ... s.url ...`.

    `models` are the ids `/v1/models` lists; a chat request for another model gets 404, as vLLM
    does. `api_key`, when set, must be sent as `Authorization: Bearer <key>` (else 401).
    `logprobs=False` makes the server ignore logprob requests, like servers that do not offer them;
    `reject_logprobs=True` makes it answer them with a 400, as some hosted APIs do. `delay` sleeps
    before every answer.
    """

    def __init__(self, responder: FakeResponder | None = None, models: Sequence[str] = ("fake-model",),
                 api_key: str | None = None, logprobs: bool = True, reject_logprobs: bool = False,
                 delay: float = 0.0, host: str = "127.0.0.1") -> None:
        self.responder: FakeResponder = responder or (lambda req: "OK")
        self.models = tuple(models)
        self.api_key = api_key
        self.logprobs = logprobs
        self.reject_logprobs = reject_logprobs
        self.delay = delay
        self.host = host
        self.requests: list[dict[str, Any]] = []
        self.max_in_flight = 0
        self.errors: list[Exception] = []
        self._failures: list[Failure] = []
        self._lock = threading.Lock()
        self._in_flight = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeOpenAIServer:
        handler = _make_handler(self)
        self._httpd = _Server((self.host, 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the fake server is not running")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """Root URL, e.g. http://127.0.0.1:51234 (no /v1)."""
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL clients take, e.g. http://127.0.0.1:51234/v1."""
        return self.base_url + "/v1"

    # -- scripting ---------------------------------------------------------------------------
    def fail(self, *failures: Failure, times: int = 1, **kwargs: Any) -> None:
        """Queue misbehaviours: `fail(status=429, retry_after="0", times=2)` or `fail(Failure(...), ...)`."""
        with self._lock:
            if failures:
                self._failures.extend(failures)
            else:
                self._failures.extend(Failure(**kwargs) for _ in range(times))

    def pending_failures(self) -> int:
        with self._lock:
            return len(self._failures)

    def _next_failure(self, path: str) -> Failure | None:
        with self._lock:
            for i, f in enumerate(self._failures):
                if f.path == path:
                    return self._failures.pop(i)
        return None

    def _enter(self, body: dict[str, Any] | None) -> None:
        with self._lock:
            if body is not None:
                self.requests.append(body)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # the stdlib default backlog of 5 makes bursts of parallel clients wait out SYN retries
    request_queue_size = 128


def _error_body(status: int, message: str) -> str:
    kind = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
            429: "RateLimitError"}.get(status, "InternalServerError")
    return json.dumps({"error": {"message": message, "type": kind, "code": status}})


def _tokens_for(result: ChatResult) -> list[TokenLogprob]:
    if result.logprobs is not None:
        return list(result.logprobs)
    # unscripted: every token certain, which is what greedy decoding of a confident model reports
    return [TokenLogprob(t, 0.0, {t: 0.0}) for t in split_tokens(result.text)]


def _logprob_content(tokens: Iterable[TokenLogprob], top_n: int) -> list[dict[str, Any]]:
    out = []
    for t in tokens:
        top = sorted(t.top.items(), key=lambda kv: -kv[1])[:top_n] if top_n else []
        out.append({"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode()),
                    "top_logprobs": [{"token": k, "logprob": v, "bytes": list(k.encode())} for k, v in top]})
    return out


def _count_prompt_tokens(messages: Any) -> int:
    if not isinstance(messages, list):
        return 0
    return sum(len(split_tokens(str(m.get("content", "")))) for m in messages if isinstance(m, Mapping))


def _make_handler(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # headers and body leave in separate writes: without this, Nagle + delayed ACK add ~40 ms a request
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            # silent: tests should not print access logs (and conversation text never goes to logs)
            return

        def _send(self, status: int, body: str, content_type: str = "application/json",
                  headers: Mapping[str, str] | None = None) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if server.api_key is None:
                return True
            return self.headers.get("Authorization", "") == f"Bearer {server.api_key}"

        def _apply_failure(self, path: str) -> bool:
            f = server._next_failure(path)
            if f is None:
                return False
            if f.delay:
                time.sleep(f.delay)
            if f.drop:
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass
                return True
            if f.malformed:
                self._send(200, f.body if f.body is not None else "this is not json {")
                return True
            headers = {"Retry-After": f.retry_after} if f.retry_after is not None else {}
            self._send(f.status, f.body if f.body is not None else _error_body(f.status, f"scripted failure {f.status}"),
                       headers=headers)
            return True

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            path = self.path.split("?")[0].rstrip("/")
            server._enter(None)
            try:
                if self._apply_failure(path):
                    return
                if path in ("/health", "/v1/health"):
                    self._send(200, "{}")
                elif path == "/v1/models":
                    if not self._authorized():
                        self._send(401, _error_body(401, "invalid API key"))
                        return
                    data = [{"id": m, "object": "model", "created": 0, "owned_by": "mindguard-fake"} for m in server.models]
                    self._send(200, json.dumps({"object": "list", "data": data}))
                else:
                    self._send(404, _error_body(404, f"no route {path}"))
            finally:
                server._leave()

        def do_POST(self) -> None:  # noqa: N802 - stdlib naming
            path = self.path.split("?")[0].rstrip("/")
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                self._send(400, _error_body(400, "request body is not JSON"))
                return
            server._enter(body if isinstance(body, dict) else None)
            try:
                if self._apply_failure(path):
                    return
                if server.delay:
                    time.sleep(server.delay)
                if path != "/v1/chat/completions":
                    self._send(404, _error_body(404, f"no route {path}"))
                    return
                if not self._authorized():
                    self._send(401, _error_body(401, "invalid API key"))
                    return
                if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                    self._send(400, _error_body(400, "'messages' must be a list"))
                    return
                model = body.get("model")
                if model not in server.models:
                    self._send(404, _error_body(404, f"The model `{model}` does not exist."))
                    return
                wants_logprobs = bool(body.get("logprobs"))
                if wants_logprobs and server.reject_logprobs:
                    self._send(400, _error_body(400, "logprobs is not supported for this model"))
                    return
                try:
                    out = server.responder(body)
                except Exception as exc:  # a crashing model server answers 500; tests read .errors
                    server.errors.append(exc)
                    self._send(500, _error_body(500, f"responder raised {exc.__class__.__name__}: {exc}"))
                    return
                result = out if isinstance(out, ChatResult) else ChatResult(str(out))
                tokens = _tokens_for(result)
                top_n = int(body.get("top_logprobs") or 0)
                with_lp = wants_logprobs and server.logprobs
                prompt_tokens = _count_prompt_tokens(body["messages"])
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens),
                         "total_tokens": prompt_tokens + len(tokens)}
                if body.get("stream"):
                    self._stream(model, tokens, top_n, with_lp, usage, bool((body.get("stream_options") or {}).get("include_usage")))
                    return
                choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": result.text},
                                          "finish_reason": "stop",
                                          "logprobs": {"content": _logprob_content(tokens, top_n)} if with_lp else None}
                payload = {"id": f"chatcmpl-fake-{len(server.requests)}", "object": "chat.completion",
                           "created": int(time.time()), "model": model, "choices": [choice], "usage": usage}
                self._send(200, json.dumps(payload))
            finally:
                server._leave()

        def _stream(self, model: str, tokens: list[TokenLogprob], top_n: int, with_lp: bool, usage: dict[str, int],
                    include_usage: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.close_connection = True  # no Content-Length: the end of the stream is the end of the body
            self.end_headers()

            def chunk(delta: dict[str, Any], finish: str | None, lp: list[dict[str, Any]] | None) -> None:
                c: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish,
                                     "logprobs": {"content": lp} if lp is not None else None}
                payload = {"id": "chatcmpl-fake-stream", "object": "chat.completion.chunk", "created": int(time.time()),
                           "model": model, "choices": [c]}
                self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
                self.wfile.flush()

            chunk({"role": "assistant", "content": ""}, None, None)
            for t in tokens:
                chunk({"content": t.token}, None, _logprob_content([t], top_n) if with_lp else None)
            chunk({}, "stop", None)
            if include_usage:
                payload = {"id": "chatcmpl-fake-stream", "object": "chat.completion.chunk", "created": int(time.time()),
                           "model": model, "choices": [], "usage": usage}
                self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler
