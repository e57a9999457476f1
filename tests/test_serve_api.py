"""The service's HTTP API against the real app under uvicorn on loopback, with a real SQLite file:
assess, streaming sessions, events, tenant isolation, auth, limits, rate limits, metrics, logs."""

from __future__ import annotations

import logging
import sqlite3

import httpx
import pytest

from mindguard.conversation import Conversation, Message
from mindguard.guards import load_guard

from .serve_support import CANARY, ThreadServer, build_tiny_encoder, conversation, make_keys

RISKY = "i want to kill myself tonight"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    db = tmp_path_factory.mktemp("serve") / "events.db"
    url = f"sqlite:///{db}"
    keys = make_keys(url, {"a": ("tenant-a", ["assess", "events:read"]), "a_assess": ("tenant-a", ["assess"]),
                           "a_reader": ("tenant-a", ["events:read"]), "b": ("tenant-b", ["assess", "events:read"])})
    with ThreadServer({"guard": "keyword", "database_url": url, "rate_limit_per_minute": 0, "max_messages": 20,
                       "max_message_chars": 500, "max_body_bytes": 8192, "max_session_messages": 6}) as srv:
        srv.keys = keys
        srv.db = db
        yield srv


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def post(server, path, body, key="a", **kw):
    return httpx.post(server.url + path, json=body, headers=auth(server.keys[key]), timeout=30, **kw)


def get(server, path, key="a", **kw):
    return httpx.get(server.url + path, headers=auth(server.keys[key]), timeout=30, **kw)


def test_assess_every_user_turn_and_only_the_last(server):
    msgs = conversation("this job is killing me", "tell me more", RISKY)
    r = post(server, "/v1/assess", {"messages": msgs, "conversation_id": "conv-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["guard"] == "keyword" and body["flagged"] is True
    assert [(t["turn"], t["message_index"]) for t in body["turns"]] == [(0, 0), (1, 2)]
    last = body["turns"][-1]
    assert last["flagged"] and last["label"] == "unsafe_self_harm_risk" and last["status"] == "ok"
    assert last["event_id"] and body["turns"][0]["event_id"] is None
    assert abs(sum(last["probabilities"].values()) - 1) < 1e-5
    # the answer agrees with the library on the same conversation
    lib = load_guard("keyword").assess_conversation(Conversation.from_dicts("c", msgs))
    assert [t["p_unsafe"] for t in body["turns"]] == pytest.approx([a.p_unsafe for a in lib])

    only = post(server, "/v1/assess", {"messages": msgs, "last_only": True}).json()
    assert [t["message_index"] for t in only["turns"]] == [2]


def test_flagged_turns_are_stored_once_without_text(server):
    msgs = conversation("hello", "hi, how are you?", f"{CANARY} i want to end my life")
    first = post(server, "/v1/assess", {"messages": msgs, "conversation_id": "conv-dup"}).json()
    again = post(server, "/v1/assess", {"messages": msgs, "conversation_id": "conv-dup"}).json()
    eid = first["turns"][-1]["event_id"]
    assert eid and again["turns"][-1]["event_id"] == eid  # a retried request does not duplicate the event
    with sqlite3.connect(server.db) as db:
        rows = db.execute("SELECT label, text, evidence FROM mg_risk_events WHERE id = ?", (eid,)).fetchall()
        assert rows and rows[0][0] == "unsafe_self_harm_risk" and rows[0][1] is None
        dump = "\n".join(str(r) for r in db.execute("SELECT * FROM mg_risk_events"))
    assert CANARY not in dump  # store_text is off: no conversation text in the store


def test_events_are_filtered_paginated_and_scoped_to_the_tenant(server):
    for k in range(5):
        post(server, "/v1/assess", {"messages": conversation(f"i will kill him {k}"), "conversation_id": f"page-{k}"}, key="b")
    r = get(server, "/v1/events", key="b", params={"limit": 2})
    assert r.status_code == 200
    page1 = r.json()
    assert len(page1["events"]) == 2 and page1["next_cursor"]
    seen = [e["id"] for e in page1["events"]]
    cursor = page1["next_cursor"]
    while cursor:
        page = get(server, "/v1/events", key="b", params={"limit": 2, "cursor": cursor}).json()
        seen += [e["id"] for e in page["events"]]
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)) == 5
    hto = get(server, "/v1/events", key="b", params={"label": "unsafe_harm_to_others", "conversation_id": "page-3"}).json()
    assert [e["conversation_id"] for e in hto["events"]] == ["page-3"]
    assert get(server, "/v1/events", key="b", params={"label": "unsafe_self_harm_risk"}).json()["events"] == []
    # tenant A sees none of B's events, and B's event ids are 404 for A
    a_ids = {e["id"] for e in get(server, "/v1/events", params={"limit": 500}).json()["events"]}
    assert not a_ids & set(seen)
    assert get(server, f"/v1/events/{seen[0]}", key="b").status_code == 200
    r = get(server, f"/v1/events/{seen[0]}")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    bad = get(server, "/v1/events", key="b", params={"lable": "safe"})
    assert bad.status_code == 422 and "lable" in bad.json()["error"]["message"]
    assert get(server, "/v1/events", key="b", params={"cursor": "garbage"}).status_code == 422
    assert get(server, "/v1/events", key="b", params={"since": "yesterday"}).status_code == 422


def test_authentication_and_scopes(server):
    body = {"messages": conversation("hello")}
    r = httpx.post(server.url + "/v1/assess", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "missing API key" in r.json()["error"]["message"]
    wrong = server.keys["a"][:-4] + "AAAA"
    assert httpx.post(server.url + "/v1/assess", json=body, headers=auth(wrong)).status_code == 401
    assert httpx.post(server.url + "/v1/assess", json=body, headers=auth("not-a-key")).status_code == 401
    assert httpx.post(server.url + "/v1/assess", json=body, headers={"X-API-Key": server.keys["a"]}).status_code == 200
    r = get(server, "/v1/events", key="a_assess")
    assert r.status_code == 403 and "events:read" in r.json()["error"]["message"]
    assert post(server, "/v1/assess", body, key="a_reader").status_code == 403
    assert get(server, "/v1/events", key="a_reader").status_code == 200


def test_revoked_key_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    from mindguard.serve.store import Store

    keys = make_keys(url, {"k": ("t", ["assess"])})
    with ThreadServer({"guard": "keyword", "database_url": url, "key_cache_s": 0}) as srv:
        body = {"messages": conversation("hello")}
        assert httpx.post(srv.url + "/v1/assess", json=body, headers=auth(keys["k"])).status_code == 200
        store = Store(url)
        assert store.revoke_key(keys["k"].split("_")[1])
        store.close()
        assert httpx.post(srv.url + "/v1/assess", json=body, headers=auth(keys["k"])).status_code == 401


def test_validation_errors_name_the_field(server):
    cases = [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "bot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": "   "}]}, "messages.0.content"),
        ({"messages": conversation("hi"), "last_only": "yes"}, "last_only"),
        ({"messages": conversation("hi"), "extra": 1}, "extra"),
        ({"messages": [{"role": "assistant", "content": "hello"}]}, "user turn"),
        ({"messages": conversation("hi"), "conversation_id": "has space"}, "conversation_id"),
    ]
    for body, needle in cases:
        r = post(server, "/v1/assess", body)
        assert r.status_code == 422, (body, r.text)
        err = r.json()["error"]
        assert needle in err["message"], (needle, err)
        assert all(set(d) == {"loc", "msg", "type"} for d in err.get("details", []))  # values are never echoed back
    r = httpx.post(server.url + "/v1/assess", content=b"{not json", headers={**auth(server.keys["a"]), "Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_size_and_count_limits(server):
    r = post(server, "/v1/assess", {"messages": conversation("x" * 9000)})
    assert r.status_code == 413 and "limit of 8192 bytes" in r.json()["error"]["message"]
    # a chunked body (no Content-Length) is counted as it arrives
    chunks = (b'{"messages": [{"role": "user", "content": "' + b"y" * 1000 + b'"}' for _ in range(10))
    r = httpx.post(server.url + "/v1/assess", content=chunks, headers={**auth(server.keys["a"]), "Content-Type": "application/json"})
    assert r.status_code == 413
    r = post(server, "/v1/assess", {"messages": conversation(*["ok"] * 21)})
    assert r.status_code == 422 and "at most 20 messages" in r.json()["error"]["message"]
    r = post(server, "/v1/assess", {"messages": conversation("z" * 501)})
    assert r.status_code == 422 and "longer than 500 characters" in r.json()["error"]["message"]


def test_streaming_session_keeps_state_server_side(server):
    sid = "sess-1"
    turns = conversation("hello", "hi! how are you?", RISKY, "I'm worried about you.", "ok")
    out = []
    for k, m in enumerate(turns):
        r = post(server, f"/v1/sessions/{sid}/turns", {**m, "message_index": k})
        assert r.status_code == 200, r.text
        out.append(r.json())
    assert out[0]["created"] and not out[1]["created"]
    assert [o["message_index"] for o in out] == list(range(5))
    assert out[1]["assessment"] is None and out[2]["assessment"]["flagged"] and out[2]["assessment"]["event_id"]
    assert out[4]["assessment"]["turn"] == 2
    info = get(server, f"/v1/sessions/{sid}").json()
    assert info["messages"] == 5 and info["user_turns"] == 3 and info["flagged_turns"] == 1
    # out of step: the server says which index it expected
    r = post(server, f"/v1/sessions/{sid}/turns", {"role": "user", "content": "hi", "message_index": 3})
    assert r.status_code == 409 and "index 5" in r.json()["error"]["message"]
    r = post(server, "/v1/sessions/never-seen/turns", {"role": "user", "content": "yes", "message_index": 7})
    assert r.status_code == 409 and "no messages" in r.json()["error"]["message"]
    assert get(server, "/v1/sessions/never-seen").status_code == 404  # and the 409 did not create it
    # the session-message cap
    assert post(server, f"/v1/sessions/{sid}/turns", {"role": "assistant", "content": "go on"}).status_code == 200
    r = post(server, f"/v1/sessions/{sid}/turns", {"role": "user", "content": "more"})
    assert r.status_code == 422 and "maximum of 6 messages" in r.json()["error"]["message"]
    # events of the session carry its id
    ev = get(server, "/v1/events", params={"conversation_id": sid, "endpoint": "session"}).json()["events"]
    assert [e["message_index"] for e in ev] == [2]


def test_sessions_are_private_to_their_tenant(server):
    assert post(server, "/v1/sessions/shared-name/turns", {"role": "user", "content": "hello"}).status_code == 200
    assert get(server, "/v1/sessions/shared-name", key="b").status_code == 404
    assert httpx.delete(server.url + "/v1/sessions/shared-name", headers=auth(server.keys["b"])).status_code == 404
    # B using the same id gets a session of its own, starting at message 0
    r = post(server, "/v1/sessions/shared-name/turns", {"role": "user", "content": "hello"}, key="b")
    assert r.json()["message_index"] == 0 and r.json()["created"]
    assert get(server, "/v1/sessions/shared-name").json()["messages"] == 1
    assert httpx.delete(server.url + "/v1/sessions/shared-name", headers=auth(server.keys["a"])).status_code == 204
    assert get(server, "/v1/sessions/shared-name").status_code == 404
    assert post(server, "/v1/sessions/bad%20id/turns", {"role": "user", "content": "hi"}).status_code == 422


def test_metrics_count_flags_and_requests(server):
    post(server, "/v1/assess", {"messages": conversation("i am going to hurt him")})
    text = httpx.get(server.url + "/metrics").text
    assert 'mindguard_flags_total{endpoint="assess",label="unsafe_harm_to_others"}' in text
    assert 'mindguard_http_requests_total{method="POST",route="/v1/assess",status="200"}' in text
    assert "mindguard_guard_seconds_bucket" in text
    assert "sess-1" not in text and CANARY not in text  # route templates only, no ids or text
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz").json()
    assert ready["status"] == "ready" and ready["checks"] == {"guard": True, "store": True}
    assert "/v1/assess" in httpx.get(server.url + "/openapi.json").json()["paths"]


def test_rate_limit_per_key(tmp_path):
    url = f"sqlite:///{tmp_path / 'rl.db'}"
    keys = make_keys(url, {"k1": ("t", ["assess"]), "k2": ("t", ["assess"])})
    # one token per minute after a burst of 2: the third request within the minute is refused
    with ThreadServer({"guard": "keyword", "database_url": url, "rate_limit_per_minute": 1, "rate_limit_burst": 2}) as srv:
        body = {"messages": conversation("hello")}
        codes = [httpx.post(srv.url + "/v1/assess", json=body, headers=auth(keys["k1"])).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = httpx.post(srv.url + "/v1/assess", json=body, headers=auth(keys["k1"]))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "rate limit" in r.json()["error"]["message"]
        assert httpx.post(srv.url + "/v1/assess", json=body, headers=auth(keys["k2"])).status_code == 200  # per key
        assert "mindguard_rate_limited_total 2.0" in httpx.get(srv.url + "/metrics").text


def test_store_text_when_configured(tmp_path):
    url = f"sqlite:///{tmp_path / 'text.db'}"
    keys = make_keys(url, {"k": ("t", ["assess", "events:read"])})
    with ThreadServer({"guard": "keyword", "database_url": url, "store_text": True}) as srv:
        httpx.post(srv.url + "/v1/assess", json={"messages": conversation(RISKY)}, headers=auth(keys["k"]))
        ev = httpx.get(srv.url + "/v1/events", headers=auth(keys["k"])).json()["events"]
    assert ev[0]["text"] == RISKY and ev[0]["evidence"][0]["text"]


def test_no_conversation_text_in_logs(tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'logs.db'}"
    keys = make_keys(url, {"k": ("t", ["assess"])})
    caplog.set_level(logging.DEBUG)
    with ThreadServer({"guard": "keyword", "database_url": url, "access_log": True, "log_level": "debug"}) as srv:
        h = auth(keys["k"])
        httpx.post(srv.url + "/v1/assess", json={"messages": conversation(f"{CANARY} i want to die")}, headers=h)
        httpx.post(srv.url + "/v1/assess", json={"messages": [{"role": "robot", "content": CANARY}]}, headers=h)
        httpx.post(srv.url + "/v1/sessions/s/turns", json={"role": "user", "content": f"{CANARY} kill myself"}, headers=h)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert '"POST /v1/assess" 200' in logged  # the access log is on
    assert CANARY not in logged


def test_encoder_sessions_match_whole_conversation_assessment(tmp_path):
    """With the embedded encoder, a session streamed turn by turn gets the same scores as the whole
    conversation sent at once: the server keeps the recurrent state between requests."""
    model = build_tiny_encoder(tmp_path)
    url = f"sqlite:///{tmp_path / 'enc.db'}"
    keys = make_keys(url, {"k": ("t", ["assess"])})
    msgs = conversation("this job is killing me", "what's going on?", "some nights i wish i wouldn't wake up",
                        "are you thinking of ending your life?", "yeah")
    with ThreadServer({"guard": f"encoder:model={model},explain=false", "database_url": url}) as srv:
        h = auth(keys["k"])
        whole = httpx.post(srv.url + "/v1/assess", json={"messages": msgs}, headers=h, timeout=60).json()["turns"]
        streamed = []
        for m in msgs:
            a = httpx.post(srv.url + "/v1/sessions/enc/turns", json=m, headers=h, timeout=60).json()["assessment"]
            if a is not None:
                streamed.append(a)
    assert whole[0]["status"] == "ok" and whole[0]["p_unsafe"] is not None
    assert [s["p_unsafe"] for s in streamed] == pytest.approx([w["p_unsafe"] for w in whole], abs=1e-4)
    # and the state matters: the last turn alone scores differently
    alone = load_guard(f"encoder:model={model},explain=false").assess([Message("user", "yeah")]).p_unsafe
    assert streamed[-1]["p_unsafe"] != pytest.approx(alone, abs=1e-4)
