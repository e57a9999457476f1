"""`OpenAICompatClient`: the `ChatClient` for any OpenAI-compatible chat-completions endpoint.

vLLM, TGI, Ollama, llama.cpp server and hosted APIs all speak `POST {base_url}/chat/completions`.
This client adds what batch work over such servers needs: an API key read from an environment
variable the user names (read per request, never stored), timeouts, retries with exponential
backoff and jitter on 429/5xx and dropped connections (honouring `Retry-After`), a thread-safe
concurrency limit (synthesis, judging and evaluation call it from thread pools), per-token
logprobs when the server offers them (and a silent fallback when it refuses them), and
cumulative token accounting. Every failure a user can fix becomes a one-line `MindGuardError`.

Example:
    >>> client = OpenAICompatClient("Qwen/Qwen3-8B", base_url="http://localhost:8000/v1")  # doctest: +SKIP
    >>> client.complete([{"role": "user", "content": "hello"}]).text  # doctest: +SKIP
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from ..errors import MindGuardError
from ._client import ChatResult, TokenLogprob, Usage

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class LLMServerError(MindGuardError):
    """The server could not be used: unreachable, rejected the key, no such model, bad answer.

    `fatal` is True when retrying later cannot help without the user changing something (URL,
    key, model name, request limits); batch jobs stop on those and carry on past the others.
    """

    def __init__(self, message: str, status: int | None = None, fatal: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.fatal = fatal


def _retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` is either seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_message(resp: Any) -> str:
    """The server's own error text (OpenAI `{"error": {"message": ...}}`, vLLM `{"message": ...}`)."""
    try:
        data = resp.json()
    except (ValueError, json.JSONDecodeError):
        return (resp.text or "").strip()[:200]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or "")[:200]
        return str(err)[:200]
    return str(data)[:200]


def parse_chat_response(data: Any, where: str) -> ChatResult:
    """A chat-completions JSON body -> ChatResult; raises LLMServerError naming what is missing."""
    if not isinstance(data, dict):
        raise LLMServerError(f"malformed response from {where}: expected a JSON object, got {type(data).__name__}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LLMServerError(f"malformed response from {where}: no 'choices'")
    msg = choices[0].get("message")
    if not isinstance(msg, dict):
        raise LLMServerError(f"malformed response from {where}: choice has no 'message'")
    content = msg.get("content")
    if content is None:
        # reasoning models served by vLLM may put everything in reasoning_content when truncated
        content = msg.get("reasoning_content") or ""
    if not isinstance(content, str):
        raise LLMServerError(f"malformed response from {where}: 'content' is {type(content).__name__}, not text")
    logprobs = None
    lp = choices[0].get("logprobs")
    if isinstance(lp, dict) and isinstance(lp.get("content"), list):
        toks = []
        for t in lp["content"]:
            if not isinstance(t, dict) or "token" not in t or "logprob" not in t:
                raise LLMServerError(f"malformed response from {where}: a logprobs entry lacks 'token'/'logprob'")
            top = {str(a["token"]): float(a["logprob"]) for a in (t.get("top_logprobs") or [])
                   if isinstance(a, dict) and "token" in a and "logprob" in a}
            toks.append(TokenLogprob(str(t["token"]), float(t["logprob"]), top))
        logprobs = tuple(toks)
    u = data.get("usage")
    u = u if isinstance(u, dict) else {}
    usage = Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
    return ChatResult(content, logprobs, usage, str(data.get("model") or ""), data)


class OpenAICompatClient:
    """A `ChatClient` over HTTP for OpenAI-compatible servers.

    Args:
        model: model id as the server knows it (e.g. "swordhealth/MindGuard-4B").
        base_url: the API root including `/v1` (vLLM default http://localhost:8000/v1).
        api_key_env: name of the environment variable holding the key; None sends no key
            (local vLLM). The key is read at each request and never kept on the object.
        timeout: seconds to wait for a response (connect gets min(timeout, 10)).
        max_retries: extra attempts after a 429/5xx, a dropped connection or a timeout.
        backoff: first backoff in seconds; doubles each retry, with jitter, capped by max_backoff.
        max_concurrency: most requests in flight at once across all threads using this client.
        extra_body: merged into every request (e.g. {"chat_template_kwargs": {"enable_thinking": False}}).
    """

    def __init__(self, model: str, base_url: str = "http://localhost:8000/v1", api_key_env: str | None = None,
                 timeout: float = 60.0, max_retries: int = 4, backoff: float = 0.5, max_backoff: float = 30.0,
                 max_concurrency: int = 8, extra_body: Mapping[str, Any] | None = None) -> None:
        if not model:
            raise MindGuardError("an LLM model name is required (the id the server serves, e.g. its /v1/models entry)")
        if max_concurrency < 1:
            raise MindGuardError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_concurrency = int(max_concurrency)
        self.extra_body = dict(extra_body or {})
        self.supports_logprobs: bool | None = None  # learnt from the server's first answers
        self.usage = Usage()
        self.n_requests = 0
        self.n_retries = 0
        self._usage_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._http = httpx.Client(timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                                  limits=httpx.Limits(max_connections=self.max_concurrency,
                                                      max_keepalive_connections=self.max_concurrency))
        self._rng = random.Random()

    # -- plumbing ----------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise LLMServerError(f"environment variable {self.api_key_env} (the API key for {self.base_url}) is not set",
                                     fatal=True)
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _sleep_before_retry(self, attempt: int, retry_after: float | None) -> None:
        wait = min(self.max_backoff, self.backoff * (2 ** attempt))
        wait = wait * (0.5 + self._rng.random() / 2)  # jitter: many workers must not retry in lockstep
        if retry_after is not None:
            wait = min(max(wait, retry_after), max(self.max_backoff, retry_after))
        time.sleep(wait)

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send with retries; returns the parsed JSON body of a 2xx answer."""
        url = self.base_url + path
        last: str = ""
        err: Exception | None = None
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            try:
                with self._slots:
                    resp = self._http.request(method, url, json=body, headers=self._headers())
            except httpx.ConnectError as exc:
                # a refused connection will not heal within a backoff: report it at once
                raise LLMServerError(f"cannot reach the LLM server at {self.base_url} ({exc.__class__.__name__}); "
                                     "is it running and is the URL right?", fatal=True) from exc
            except httpx.TimeoutException as exc:
                last = f"no answer from {self.base_url} within {self.timeout:g}s (timeout)"
                err = exc
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                last = f"the LLM server at {self.base_url} dropped the connection ({exc.__class__.__name__})"
                err = exc
            else:
                if resp.status_code < 300:
                    try:
                        return resp.json()
                    except (ValueError, json.JSONDecodeError) as exc:
                        raise LLMServerError(f"malformed response from {url}: the body is not JSON "
                                             f"({resp.text[:80]!r})", resp.status_code) from exc
                detail = _error_message(resp)
                if resp.status_code in (401, 403):
                    hint = (f"check the key in {self.api_key_env}" if self.api_key_env
                            else "pass api_key_env=NAME_OF_THE_VARIABLE_HOLDING_THE_KEY")
                    raise LLMServerError(f"the LLM server at {self.base_url} rejected the request "
                                         f"({resp.status_code} {detail or 'unauthorized'}); {hint}", resp.status_code, fatal=True)
                if resp.status_code == 404:
                    raise LLMServerError(self._not_found_message(path, detail), 404, fatal=True)
                if resp.status_code not in RETRY_STATUSES:
                    # other 4xx: the request itself is wrong (limits, parameters); every retry would fail
                    raise LLMServerError(f"the LLM server at {self.base_url} answered {resp.status_code}: {detail}",
                                         resp.status_code, fatal=True)
                last = f"the LLM server at {self.base_url} answered {resp.status_code}: {detail}"
                retry_after = _retry_after_seconds(resp.headers.get("Retry-After"))
                err = LLMServerError(last, resp.status_code)
            if attempt < self.max_retries:
                with self._usage_lock:
                    self.n_retries += 1
                self._sleep_before_retry(attempt, retry_after)
        raise LLMServerError(f"{last}; gave up after {self.max_retries + 1} attempts") from err

    def _not_found_message(self, path: str, detail: str) -> str:
        if path == "/chat/completions":
            try:
                served = self.list_models()
            except MindGuardError:
                served = []
            avail = f"; the server serves: {', '.join(served)}" if served else ""
            return f"model {self.model!r} not found at {self.base_url} (404){avail}"
        return f"{self.base_url}{path} not found (404): {detail}; is the base URL the API root ending in /v1?"

    # -- public API --------------------------------------------------------------------------
    def list_models(self) -> list[str]:
        """Model ids the server serves (`GET /models`)."""
        data = self._request("GET", "/models")
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise LLMServerError(f"malformed response from {self.base_url}/models: no 'data' list")
        return [str(m.get("id")) for m in items if isinstance(m, dict)]

    def complete(self, messages: Sequence[dict[str, str]], *, temperature: float = 0.0, max_tokens: int = 512,
                 logprobs: bool = False, top_logprobs: int = 0, seed: int | None = None,
                 stop: Sequence[str] | None = None) -> ChatResult:
        """One chat completion. With `logprobs=True` the result carries per-token logprobs if the
        server offers them, else `logprobs is None` (callers fall back to sampling)."""
        body: dict[str, Any] = {"model": self.model, "messages": [dict(m) for m in messages],
                                "temperature": temperature, "max_tokens": max_tokens, **self.extra_body}
        if seed is not None:
            body["seed"] = seed
        if stop:
            body["stop"] = list(stop)
        want_lp = logprobs and self.supports_logprobs is not False
        if want_lp:
            body["logprobs"] = True
            if top_logprobs:
                body["top_logprobs"] = top_logprobs
        try:
            data = self._request("POST", "/chat/completions", body)
        except LLMServerError as exc:
            # some hosted APIs refuse logprobs with a 400: remember, and answer without them
            if want_lp and exc.status in (400, 422) and "logprob" in str(exc).lower():
                self.supports_logprobs = False
                body.pop("logprobs", None)
                body.pop("top_logprobs", None)
                data = self._request("POST", "/chat/completions", body)
            else:
                raise
        result = parse_chat_response(data, f"{self.base_url}/chat/completions")
        if want_lp:
            self.supports_logprobs = result.logprobs is not None
        with self._usage_lock:
            self.n_requests += 1
            self.usage = Usage(self.usage.prompt_tokens + result.usage.prompt_tokens,
                               self.usage.completion_tokens + result.usage.completion_tokens)
        return result

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OpenAICompatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        # deliberately no key: only the variable's name
        return f"OpenAICompatClient(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"
