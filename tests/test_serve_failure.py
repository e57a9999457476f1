"""Failure behaviour: when the guard raises or misses its deadline the service fails closed by
default (the turn counts as flagged, is stored and alerted, and the proxy intervenes), or open
when configured; the store being unavailable is a 503, never a silent success."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import httpx
import pytest

from mindguard.conversation import Message
from mindguard.guards import Assessment
from mindguard.guards.keyword import KeywordGuard
from mindguard.llm.fake_server import FakeOpenAIServer

from .serve_support import CANARY, ThreadServer, conversation, make_keys


class BrokenGuard(KeywordGuard):
    """Raises on every turn, quoting the text in its message (which must not reach the logs)."""

    def assess_batch(self, contexts: Sequence[Sequence[Message]]) -> list[Assessment]:
        raise RuntimeError(f"model crashed on {contexts[-1][-1].content!r}")


class StuckGuard(KeywordGuard):
    """Blocks until released, so any deadline shorter than the test's wait is certainly missed."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def assess_batch(self, contexts: Sequence[Sequence[Message]]) -> list[Assessment]:
        self.release.wait(30)
        return super().assess_batch(contexts)


def _start(tmp_path, guard, **overrides):
    url = f"sqlite:///{tmp_path / 'f.db'}"
    keys = make_keys(url, {"k": ("t", ["assess", "events:read"])})
    srv = ThreadServer({"guard": "keyword", "database_url": url, **overrides}, guard=guard)
    srv.h = {"Authorization": f"Bearer {keys['k']}"}
    return srv


def test_guard_error_fails_closed_and_is_recorded(tmp_path, caplog):
    with _start(tmp_path, BrokenGuard()) as srv:
        r = httpx.post(srv.url + "/v1/assess", json={"messages": conversation(f"{CANARY} nice weather")}, headers=srv.h)
        assert r.status_code == 200
        t = r.json()["turns"][0]
        assert t["status"] == "guard_error" and t["flagged"] is True and t["label"] is None and t["p_unsafe"] is None
        assert t["event_id"]
        ev = httpx.get(srv.url + "/v1/events", params={"status": "guard_error"}, headers=srv.h).json()["events"]
        assert [e["id"] for e in ev] == [t["event_id"]]
        # the session path fails closed too
        s = httpx.post(srv.url + "/v1/sessions/x/turns", json={"role": "user", "content": "hello"}, headers=srv.h).json()
        assert s["assessment"]["status"] == "guard_error" and s["assessment"]["flagged"]
        metrics = httpx.get(srv.url + "/metrics").text
        assert 'mindguard_guard_errors_total{kind="guard_error"} 2.0' in metrics
    assert "RuntimeError" in caplog.text and CANARY not in caplog.text  # the kind is logged, the text is not


def test_guard_deadline_fails_closed(tmp_path):
    guard = StuckGuard()
    with _start(tmp_path, guard, guard_timeout_s=0.2) as srv:
        try:
            r = httpx.post(srv.url + "/v1/assess", json={"messages": conversation("hello")}, headers=srv.h)
            t = r.json()["turns"][0]
            assert t["status"] == "guard_timeout" and t["flagged"] is True and t["event_id"]
        finally:
            guard.release.set()
        assert 'mindguard_guard_errors_total{kind="guard_timeout"} 1.0' in httpx.get(srv.url + "/metrics").text


def test_fail_open_when_configured(tmp_path):
    with _start(tmp_path, BrokenGuard(), fail_mode="open") as srv:
        t = httpx.post(srv.url + "/v1/assess", json={"messages": conversation("hello")}, headers=srv.h).json()["turns"][0]
        assert t["status"] == "guard_error" and t["flagged"] is False and t["event_id"] is None
        assert httpx.get(srv.url + "/v1/events", headers=srv.h).json()["events"] == []


@pytest.mark.parametrize("policy", ["inject", "crisis_response"])
def test_proxy_fails_closed_with_the_intervention(tmp_path, policy):
    with FakeOpenAIServer(lambda req: "ok") as upstream:
        with _start(tmp_path, BrokenGuard(), upstream_url=upstream.url, intervention=policy) as srv:
            r = httpx.post(srv.url + "/v1/chat/completions", headers=srv.h,
                           json={"model": "fake-model", "messages": conversation("hello there")})
            assert r.status_code == 200
            mg = r.json()["mindguard"]
            assert mg["status"] == "guard_error" and mg["flagged"] and mg["action"] == policy
            if policy == "inject":
                assert "guard unavailable" in upstream.requests[-1]["messages"][-1]["content"]
            else:
                assert upstream.requests == []


def test_store_failure_is_a_503_not_a_silent_success(tmp_path):
    with _start(tmp_path, None) as srv:
        srv.service.store.engine.dispose()
        # make every write fail: the table the events go to disappears
        import sqlite3

        with sqlite3.connect(tmp_path / "f.db") as db:
            db.execute("DROP TABLE mg_risk_events")
        r = httpx.post(srv.url + "/v1/assess", json={"messages": conversation("i want to kill myself")}, headers=srv.h)
        assert r.status_code == 503 and "could not be recorded" in r.json()["error"]["message"]
        # a turn that is not flagged needs no write and still succeeds
        assert httpx.post(srv.url + "/v1/assess", json={"messages": conversation("hello")}, headers=srv.h).status_code == 200
