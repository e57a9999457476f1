"""The OpenAI-compatible client against a real HTTP server on loopback (the fake server)."""

from __future__ import annotations

import json
import math
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from mindguard.errors import MindGuardError
from mindguard.llm import ChatClient, ChatResult, TokenLogprob
from mindguard.llm.fake_server import Failure, FakeOpenAIServer, split_tokens
from mindguard.llm.openai_compat import LLMServerError, OpenAICompatClient, _retry_after_seconds

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


def echo(req: dict) -> str:
    return "you said: " + req["messages"][-1]["content"]


def client_for(server: FakeOpenAIServer, **kw) -> OpenAICompatClient:
    kw.setdefault("backoff", 0.001)
    kw.setdefault("max_backoff", 0.01)
    return OpenAICompatClient("fake-model", base_url=server.url, **kw)


def test_fake_server_speaks_openai_json_and_models() -> None:
    with FakeOpenAIServer(echo, models=("fake-model", "other")) as s:
        r = httpx.post(s.url + "/chat/completions", json={"model": "fake-model", "messages": MSGS})
        data = r.json()
        assert data["choices"][0]["message"]["content"] == "you said: hello there"
        assert data["usage"]["completion_tokens"] == len(split_tokens("you said: hello there"))
        assert data["choices"][0]["logprobs"] is None  # not asked for
        assert [m["id"] for m in httpx.get(s.url + "/models").json()["data"]] == ["fake-model", "other"]
        assert s.requests[0]["messages"] == MSGS


def test_fake_server_streams_sse_with_logprobs_and_usage() -> None:
    tokens = (TokenLogprob("Safety:", -0.01), TokenLogprob(" Unsafe", -0.3, {" Unsafe": -0.3, " Safe": -1.4}))
    with FakeOpenAIServer(lambda req: ChatResult("Safety: Unsafe", tokens)) as s:
        body = {"model": "fake-model", "messages": MSGS, "stream": True, "logprobs": True, "top_logprobs": 2,
                "stream_options": {"include_usage": True}}
        events = []
        with httpx.stream("POST", s.url + "/chat/completions", json=body) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Safety: Unsafe"
    lps = [c["choices"][0]["logprobs"]["content"][0] for c in chunks if c["choices"] and c["choices"][0]["logprobs"]]
    assert [lp["token"] for lp in lps] == ["Safety:", " Unsafe"]
    assert {a["token"]: a["logprob"] for a in lps[1]["top_logprobs"]} == {" Unsafe": -0.3, " Safe": -1.4}
    assert chunks[-1]["usage"]["completion_tokens"] == 2


def test_client_roundtrip_logprobs_and_usage_accounting() -> None:
    tokens = (TokenLogprob("Safety:", 0.0, {"Safety:": 0.0}),
              TokenLogprob(" Unsafe", math.log(0.8), {" Unsafe": math.log(0.8), " Safe": math.log(0.2)}))
    with FakeOpenAIServer(lambda req: ChatResult("Safety: Unsafe", tokens)) as s, client_for(s) as c:
        assert isinstance(c, ChatClient)
        r = c.complete(MSGS, logprobs=True, top_logprobs=5, seed=7, stop=["\n\n"], max_tokens=16)
        assert r.text == "Safety: Unsafe" and r.model == "fake-model"
        assert r.logprobs is not None and math.isclose(math.exp(r.logprobs[1].top[" Safe"]), 0.2)
        sent = s.requests[-1]
        assert sent["seed"] == 7 and sent["stop"] == ["\n\n"] and sent["top_logprobs"] == 5 and sent["max_tokens"] == 16
        c.complete(MSGS)
        assert c.n_requests == 2
        assert c.usage.completion_tokens == 4 and c.usage.prompt_tokens == 2 * 4
        assert c.supports_logprobs is True


def test_client_without_logprob_support_returns_none_and_stops_asking() -> None:
    with FakeOpenAIServer(echo, logprobs=False) as s, client_for(s) as c:
        assert c.complete(MSGS, logprobs=True).logprobs is None
        assert c.supports_logprobs is False
        c.complete(MSGS, logprobs=True)
        assert "logprobs" not in s.requests[-1]


def test_client_retries_without_logprobs_when_server_rejects_them() -> None:
    with FakeOpenAIServer(echo, reject_logprobs=True) as s, client_for(s) as c:
        r = c.complete(MSGS, logprobs=True, top_logprobs=3)
        assert r.text == "you said: hello there" and r.logprobs is None
        assert c.supports_logprobs is False
        assert s.requests[0].get("logprobs") is True and "logprobs" not in s.requests[1]


def test_api_key_read_from_named_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeOpenAIServer(echo, api_key="sekret") as s:
        monkeypatch.setenv("MG_TEST_KEY", "sekret")
        c = client_for(s, api_key_env="MG_TEST_KEY")
        assert c.complete(MSGS).text.startswith("you said")
        assert "sekret" not in repr(c) and "sekret" not in json.dumps(vars(c), default=str)
        monkeypatch.setenv("MG_TEST_KEY", "wrong")
        with pytest.raises(LLMServerError, match=r"rejected the request \(401.*MG_TEST_KEY") as e:
            c.complete(MSGS)
        assert e.value.status == 401
        monkeypatch.delenv("MG_TEST_KEY")
        with pytest.raises(MindGuardError, match="MG_TEST_KEY .* is not set"):
            c.complete(MSGS)
        with pytest.raises(LLMServerError, match="401"):
            client_for(s).complete(MSGS)  # no key configured at all
        assert len(s.requests) == 3  # the unset-variable case never reached the server


def test_unknown_model_404_lists_served_models() -> None:
    with FakeOpenAIServer(echo, models=("a", "b")) as s:
        c = OpenAICompatClient("nope", base_url=s.url)
        with pytest.raises(LLMServerError, match=r"model 'nope' not found .*serves: a, b") as e:
            c.complete(MSGS)
        assert e.value.status == 404
        assert c.list_models() == ["a", "b"]


def test_wrong_base_url_path_says_so() -> None:
    with FakeOpenAIServer(echo) as s:
        with pytest.raises(LLMServerError, match="ending in /v1"):
            OpenAICompatClient("fake-model", base_url=s.base_url + "/api").list_models()


def test_unreachable_server() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    c = OpenAICompatClient("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=3)
    with pytest.raises(LLMServerError, match="cannot reach the LLM server"):
        c.complete(MSGS)
    assert c.n_retries == 0


def test_retries_429_and_5xx_then_succeeds() -> None:
    with FakeOpenAIServer(echo) as s, client_for(s, max_retries=3) as c:
        s.fail(status=429, retry_after="0")
        s.fail(status=503)
        s.fail(Failure(drop=True))
        assert c.complete(MSGS).text == "you said: hello there"
        assert c.n_retries == 3 and s.pending_failures() == 0
        assert len(s.requests) == 4


def test_gives_up_after_max_retries_with_clear_message() -> None:
    with FakeOpenAIServer(echo) as s, client_for(s, max_retries=2) as c:
        s.fail(status=500, times=5)
        with pytest.raises(LLMServerError, match="answered 500.*gave up after 3 attempts"):
            c.complete(MSGS)
        assert s.pending_failures() == 2


def test_client_error_statuses_are_not_retried() -> None:
    with FakeOpenAIServer(echo) as s, client_for(s, max_retries=3) as c:
        s.fail(status=400, body=json.dumps({"error": {"message": "max_tokens is too large"}}))
        with pytest.raises(LLMServerError, match="answered 400: max_tokens is too large"):
            c.complete(MSGS)
        assert c.n_retries == 0


def test_malformed_responses() -> None:
    with FakeOpenAIServer(echo) as s, client_for(s) as c:
        s.fail(malformed=True)
        with pytest.raises(LLMServerError, match="malformed response .*not JSON"):
            c.complete(MSGS)
        s.fail(malformed=True, body=json.dumps({"id": "x", "object": "chat.completion"}))
        with pytest.raises(LLMServerError, match="malformed response .*no 'choices'"):
            c.complete(MSGS)
        s.fail(malformed=True, body=json.dumps({"choices": [{"message": {"content": 5}}]}))
        with pytest.raises(LLMServerError, match="'content' is int"):
            c.complete(MSGS)


def test_timeout_is_retried_then_reported() -> None:
    with FakeOpenAIServer(echo) as s:
        c = client_for(s, timeout=0.2, max_retries=1)
        s.fail(status=200, delay=1.0, times=2)
        with pytest.raises(LLMServerError, match=r"within 0.2s \(timeout\); gave up after 2 attempts"):
            c.complete(MSGS)
        s.fail(status=200, delay=1.0)
        assert c.complete(MSGS).text.startswith("you said")  # the retry gets through


def test_concurrency_limit_holds_across_threads() -> None:
    gate = threading.Event()
    seen = threading.Semaphore(0)

    def slow(req: dict) -> str:
        seen.release()
        gate.wait(5)
        return "ok"

    with FakeOpenAIServer(slow) as s, client_for(s, max_concurrency=2) as c, ThreadPoolExecutor(6) as pool:
        futs = [pool.submit(c.complete, MSGS) for _ in range(6)]
        assert seen.acquire(timeout=5) and seen.acquire(timeout=5)
        assert not seen.acquire(timeout=0.3)  # a third request must not reach the server while two are open
        gate.set()
        assert [f.result().text for f in futs] == ["ok"] * 6
        assert s.max_in_flight == 2 and c.n_requests == 6


def test_retry_after_parsing() -> None:
    assert _retry_after_seconds("3") == 3.0
    assert _retry_after_seconds(None) is None
    assert _retry_after_seconds("garbage") is None
    assert _retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
