"""Property-based fuzzing of the live API (hypothesis): arbitrary and near-valid bodies, paths,
query strings, headers and raw bytes never produce a 5xx, and every error has the documented shape.
The proxy's upstream is the local fake OpenAI server, so well-formed chat requests go all the way."""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mindguard.llm.fake_server import FakeOpenAIServer

from .serve_support import ThreadServer, make_keys

# MINDGUARD_FUZZ_EXAMPLES=2000 for a deeper run
FUZZ = settings(max_examples=int(os.environ.get("MINDGUARD_FUZZ_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)
# well-formed parts, so that requests get past validation and exercise the guard, store and proxy
good_text = st.sampled_from(["i want to kill myself", "yes", "i will hurt him", "hello", "this job is killing me"]) | st.text(
    min_size=1, max_size=40).filter(str.strip)
good_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]), "content": good_text})
good_chat_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]),
     "content": good_text | st.none() | st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]),
                                                                        "text": good_text | json_values}), max_size=2)})
# and malformed ones
roles = st.sampled_from(["user", "assistant", "system", "developer", "tool", "function", "", "USER", "bot"]) | json_values
contents = st.text(max_size=60) | st.sampled_from(["i want to kill myself", "   ", "", "yes"]) | json_values
bad_message = st.fixed_dictionaries({"role": roles, "content": contents}, optional={"name": json_values, "label": json_values})
messages = (st.lists(good_message, min_size=1, max_size=5) | st.lists(good_message | bad_message, max_size=7)
            | json_values)
chat_messages = (st.lists(good_chat_message, min_size=1, max_size=5) | st.lists(good_chat_message | bad_message, max_size=7)
                 | json_values)
extra_keys = st.dictionaries(st.text(max_size=10), json_values, max_size=2)


def _body(fixed: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[Any]:
    valid = st.fixed_dictionaries(fixed, optional=optional)
    with_extras = st.builds(lambda d, e: {**e, **d}, valid, extra_keys)
    return valid | with_extras | json_values


assess_bodies = _body({"messages": messages}, {"conversation_id": st.sampled_from(["c1", "c-2"]) | json_values,
                                              "last_only": st.booleans() | json_values})
turn_bodies = _body({"role": st.sampled_from(["user", "assistant"]) | roles, "content": good_text | contents},
                    {"message_index": st.integers(-3, 5) | json_values})
chat_bodies = _body({"model": st.sampled_from(["fake-model", "other"]) | json_values, "messages": chat_messages},
                    {"stream": st.booleans() | json_values, "temperature": json_values, "stream_options": json_values})
session_ids = st.sampled_from(["s1", "s2", "a.b:c@d-e_f"]) | st.text(max_size=140) | st.sampled_from([".hidden", "x" * 129])
query = st.dictionaries(st.sampled_from(["label", "status", "endpoint", "conversation_id", "since", "until", "min_p_unsafe",
                                         "limit", "cursor", "other"]),
                        st.sampled_from(["safe", "unsafe_self_harm_risk", "ok", "assess", "5", "0.5", "2024-01-01T00:00:00",
                                         "2024-01-01T00:00:00+02:00", "c1"]) | st.text(max_size=30), max_size=4)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}"
    keys = make_keys(url, {"k": ("t", ["assess", "events:read"])})
    with FakeOpenAIServer(lambda req: "fine") as upstream:
        with ThreadServer({"guard": "keyword", "database_url": url, "rate_limit_per_minute": 0, "upstream_url": upstream.url,
                           "max_messages": 5, "max_message_chars": 40, "max_body_bytes": 4096}) as srv:
            srv.client = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {keys['k']}"}, timeout=30)
            yield srv
            srv.client.close()


STATUSES: dict[str, list[int]] = {}


def check(r: httpx.Response) -> None:
    STATUSES.setdefault(r.request.url.path.split("/")[2] if r.request.url.path.count("/") > 1 else r.request.url.path, []).append(r.status_code)
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        err = r.json()["error"]
        assert isinstance(err["message"], str) and err["message"] and err["code"] == r.status_code


@FUZZ
@given(body=assess_bodies)
def test_fuzz_assess(server, body):
    check(server.client.post("/v1/assess", json=body))


@FUZZ
@given(sid=session_ids, body=turn_bodies)
def test_fuzz_session_turns(server, sid, body):
    check(server.client.post(f"/v1/sessions/{quote(sid, safe='')}/turns", json=body))
    check(server.client.get(f"/v1/sessions/{quote(sid, safe='')}"))


@FUZZ
@given(body=chat_bodies)
def test_fuzz_chat_proxy(server, body):
    check(server.client.post("/v1/chat/completions", json=body))


@FUZZ
@given(params=query, eid=st.text(max_size=80))
def test_fuzz_events(server, params, eid):
    check(server.client.get("/v1/events", params=params))
    check(server.client.get(f"/v1/events/{quote(eid, safe='')}"))


@FUZZ
@given(path=st.sampled_from(["/v1/assess", "/v1/chat/completions", "/v1/sessions/s/turns", "/v1/events", "/nowhere"]),
       method=st.sampled_from(["POST", "GET", "PUT", "DELETE", "PATCH"]),
       raw=st.binary(max_size=300) | st.builds(lambda v: json.dumps(v).encode(), json_values),
       ctype=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]),
       auth=st.sampled_from(["good", "none", "garbage", "Bearer", "Basic abc"]))
def test_fuzz_raw_requests(server, path, method, raw, ctype, auth):
    headers = {"Content-Type": ctype} if ctype else {}
    if auth == "good":
        headers["Authorization"] = server.client.headers["Authorization"]
    elif auth != "none":
        headers["Authorization"] = auth
    r = httpx.request(method, server.url + path, content=raw, headers=headers, timeout=30)
    check(r)
