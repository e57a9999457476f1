"""The guarded OpenAI-compatible proxy, against the local fake OpenAI server as the upstream
clinician LLM: pass-through, injection, crisis response, streaming (SSE), upstream failures."""

from __future__ import annotations

import json

import httpx
import pytest

from mindguard.llm.fake_server import FakeOpenAIServer

from .serve_support import ThreadServer, conversation, make_keys

ANSWER = "I hear you. Let's talk about what is weighing on you."
RISKY = "i want to kill myself tonight"


@pytest.fixture(scope="module")
def upstream():
    with FakeOpenAIServer(lambda req: ANSWER, api_key="upstream-secret") as fake:
        yield fake


def _server(tmp_path_factory, upstream, **overrides):
    url = f"sqlite:///{tmp_path_factory.mktemp('proxy') / 'p.db'}"
    keys = make_keys(url, {"k": ("t", ["assess", "events:read"])})
    srv = ThreadServer({"guard": "keyword", "database_url": url, "upstream_url": upstream.url,
                        "upstream_api_key_env": "MG_TEST_UPSTREAM_KEY", **overrides})
    srv.key = keys["k"]
    return srv


@pytest.fixture(scope="module")
def server(tmp_path_factory, upstream):
    mp = pytest.MonkeyPatch()
    mp.setenv("MG_TEST_UPSTREAM_KEY", "upstream-secret")
    with _server(tmp_path_factory, upstream, intervention_by_label={"unsafe_harm_to_others": "crisis_response"}) as srv:
        yield srv
    mp.undo()


def chat(server, messages, stream=False, key=None, **extra):
    body = {"model": "fake-model", "messages": messages, "stream": stream, **extra}
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {key or server.key}", "X-MindGuard-Conversation-Id": "proxy-conv"})


def sse_chunks(resp: httpx.Response) -> list[dict]:
    out = []
    for line in resp.text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    assert resp.text.rstrip().endswith("data: [DONE]")
    return out


def test_safe_turn_is_forwarded_unchanged_with_the_assessment(server, upstream):
    n = len(upstream.requests)
    msgs = [{"role": "system", "content": "You are a supportive companion."}, *conversation("work was rough today")]
    r = chat(server, msgs, temperature=0.3, max_tokens=50)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == ANSWER
    assert body["mindguard"]["flagged"] is False and body["mindguard"]["action"] == "none"
    assert r.headers["x-mindguard-flagged"] == "false" and r.headers["x-mindguard-label"] == "safe"
    sent = upstream.requests[n]
    assert sent["messages"] == msgs  # unchanged
    assert sent["temperature"] == 0.3 and sent["max_tokens"] == 50  # unknown parameters pass through


def test_flagged_turn_injects_a_safety_message(server, upstream):
    n = len(upstream.requests)
    r = chat(server, conversation("hi", "hello, how are you?", RISKY))
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == ANSWER
    mg = r.json()["mindguard"]
    assert mg["flagged"] and mg["label"] == "unsafe_self_harm_risk" and mg["action"] == "inject" and mg["event_id"]
    assert r.headers["x-mindguard-action"] == "inject" and r.headers["x-mindguard-event-id"] == mg["event_id"]
    sent = upstream.requests[n]["messages"]
    assert sent[-1]["role"] == "system" and "crisis protocol" in sent[-1]["content"]
    assert "unsafe_self_harm_risk" in sent[-1]["content"] and sent[:-1] == conversation("hi", "hello, how are you?", RISKY)
    ev = httpx.get(server.url + f"/v1/events/{mg['event_id']}", headers={"Authorization": f"Bearer {server.key}"}).json()
    assert ev["endpoint"] == "proxy" and ev["action"] == "inject" and ev["conversation_id"] == "proxy-conv"


def test_crisis_response_does_not_call_upstream(server, upstream):
    n = len(upstream.requests)
    r = chat(server, conversation("i'm going to kill him when he gets home"))
    assert r.status_code == 200
    body = r.json()
    assert "crisis line" in body["choices"][0]["message"]["content"]
    assert body["mindguard"]["action"] == "crisis_response" and body["mindguard"]["label"] == "unsafe_harm_to_others"
    s = chat(server, conversation("i'm going to kill him when he gets home"), stream=True)
    chunks = sse_chunks(s)
    assert chunks[0]["mindguard"]["action"] == "crisis_response"
    assert "crisis line" in "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert len(upstream.requests) == n  # never reached the LLM


def test_streaming_relays_the_upstream_events(server, upstream):
    n = len(upstream.requests)
    r = chat(server, conversation("can we talk about my week?"), stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-mindguard-flagged"] == "false"
    chunks = sse_chunks(r)
    assert chunks[0]["mindguard"]["status"] == "ok"
    assert sum("mindguard" in c for c in chunks) == 1
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == ANSWER
    assert chunks[-1]["usage"]["completion_tokens"] > 0  # the usage chunk came through
    assert upstream.requests[n]["stream"] is True


def test_streaming_flagged_turn_is_injected(server, upstream):
    n = len(upstream.requests)
    r = chat(server, conversation(RISKY), stream=True)
    chunks = sse_chunks(r)
    assert chunks[0]["mindguard"]["action"] == "inject"
    assert upstream.requests[n]["messages"][-1]["role"] == "system"


def test_upstream_failures_become_clear_errors(server, upstream):
    r = chat(server, conversation("hello"), model="no-such-model")
    assert r.status_code == 404 and "upstream" in r.json()["error"]["message"]
    upstream.fail(status=500)
    r = chat(server, conversation("hello"))
    assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_error"
    upstream.fail(status=503)
    r = chat(server, conversation("hello"), stream=True)
    assert r.status_code == 502
    upstream.fail(malformed=True)
    assert chat(server, conversation("hello")).status_code == 502


def test_proxy_validation(server):
    r = chat(server, [{"role": "assistant", "content": "hello"}])
    assert r.status_code == 422 and "no user message" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": conversation("hi")},
                   headers={"Authorization": f"Bearer {server.key}"})
    assert r.status_code == 422 and "model" in r.json()["error"]["message"]
    r = chat(server, [{"role": "wizard", "content": "hi"}])
    assert r.status_code == 422 and "messages.0.role" in r.json()["error"]["message"]
    assert httpx.post(server.url + "/v1/chat/completions", json={"model": "m", "messages": conversation("hi")}).status_code == 401
    # OpenAI content parts are read for their text
    r = chat(server, [{"role": "user", "content": [{"type": "text", "text": RISKY}, {"type": "image_url", "image_url": {"url": "x"}}]}])
    assert r.status_code == 200 and r.json()["mindguard"]["flagged"]


def test_unreachable_or_unconfigured_upstream(tmp_path_factory, upstream):
    with FakeOpenAIServer() as gone:
        url = gone.url
    with _server(tmp_path_factory, upstream, upstream_url=url, upstream_api_key_env=None) as srv:
        r = chat(srv, conversation("hello"))
        assert r.status_code == 502 and "unreachable" in r.json()["error"]["message"]
    with _server(tmp_path_factory, upstream, upstream_url=None) as srv:
        r = chat(srv, conversation("hello"))
        assert r.status_code == 503 and "upstream_url" in r.json()["error"]["message"]
