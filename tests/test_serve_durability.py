"""Durability of flags and alerts: the `mindguard serve` process is SIGKILLed while requests are
in flight; every flag whose response was acknowledged is in the store afterwards, and alerts still
pending are delivered after a restart. Webhook retries, idempotency keys and signatures."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import httpx

from .serve_support import CANARY, ThreadServer, WebhookReceiver, conversation, free_port, subprocess_server, write_toml


def _wait_for(pred, timeout=60.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False


def test_sigkill_in_flight_loses_no_acknowledged_flag_and_alerts_follow_restart(tmp_path):
    db = tmp_path / "events.db"
    log = tmp_path / "server.log"
    with WebhookReceiver(status=503) as receiver:
        config = write_toml(tmp_path / "serve.toml", {
            "guard": "keyword", "database_url": f"sqlite:///{db}", "rate_limit_per_minute": 0, "log_level": "info",
            "webhook_backoff_s": 0.05, "webhook_backoff_max_s": 0.2, "webhook_poll_s": 0.05, "webhook_max_attempts": 100000,
            "webhook_timeout_s": 1,  # a delivery cut off by the kill is retried once its 3 s lease lapses
            "webhooks": [{"url": receiver.url}],
        })
        # the key is made with the CLI, as an operator would
        out = subprocess.run([sys.executable, "-m", "mindguard", "serve", "keys", "add", "--tenant", "clinic", "--json",
                              "--config", str(config)], capture_output=True, text=True, check=True)
        key = json.loads(out.stdout)["key"]
        headers = {"Authorization": f"Bearer {key}"}

        acknowledged: list[str] = []
        broken: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()
        port = free_port()

        def client(worker: int) -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as c:
                n = 0
                while not stop.is_set():
                    n += 1
                    body = {"messages": conversation("hi", "hello, what's on your mind?", f"{CANARY} i want to kill myself {worker}-{n}"),
                            "conversation_id": f"w{worker}-{n}", "last_only": True}
                    try:
                        r = c.post("/v1/assess", json=body)
                    except httpx.HTTPError as exc:
                        with lock:
                            broken.append(type(exc).__name__)
                        return  # the server died with this request in flight (or before it): not acknowledged
                    if r.status_code == 200:
                        eid = r.json()["turns"][0]["event_id"]
                        assert eid
                        with lock:
                            acknowledged.append(eid)

        with subprocess_server(config, port, log) as proc:
            threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
            for t in threads:
                t.start()
            assert _wait_for(lambda: len(acknowledged) >= 40, 120)
            proc.send_signal(signal.SIGKILL)  # mid-flight: 8 clients are still sending
            proc.wait(timeout=30)
            stop.set()
            for t in threads:
                t.join(timeout=60)
        assert receiver.accepted() == []  # every delivery so far failed (503): alerts are pending
        # the kill landed mid-request for some clients (a read failed, not just a later connect)
        assert len(broken) == 8 and any(kind != "ConnectError" for kind in broken), broken

        with sqlite3.connect(db) as conn:
            stored = {r[0] for r in conn.execute("SELECT id FROM mg_risk_events")}
            pending = conn.execute("SELECT count(*) FROM mg_webhook_outbox WHERE status = 'pending'").fetchone()[0]
        assert set(acknowledged) <= stored, f"{len(set(acknowledged) - stored)} acknowledged flags lost"
        print(f"acknowledged {len(acknowledged)}, stored {len(stored)}, interrupted: {sorted(broken)}")
        assert pending == len(stored)  # one alert per stored flag, none delivered yet

        # restart with the receiver healthy: every pending alert is delivered
        receiver.status = 200
        with subprocess_server(config, free_port(), log):
            assert _wait_for(lambda: {d["headers"]["x-mindguard-event-id"] for d in receiver.accepted()} >= stored, 60)
            assert _wait_for(lambda: _outbox_states(db) == {"delivered"}, 30)
        got = receiver.accepted()
        by_event: dict[str, set[str]] = {}
        for d in got:
            by_event.setdefault(d["headers"]["x-mindguard-event-id"], set()).add(d["headers"]["idempotency-key"])
            payload = json.loads(d["body"])
            assert payload["type"] == "mindguard.flag" and payload["event"]["id"] == d["headers"]["x-mindguard-event-id"]
            assert CANARY.encode() not in d["body"]  # alerts never carry conversation text
        assert all(len(keys) == 1 for keys in by_event.values())  # one stable idempotency key per alert
        assert CANARY not in log.read_text()


def _outbox_states(db) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT DISTINCT status FROM mg_webhook_outbox")}


def test_webhooks_retry_sign_and_give_up(tmp_path, monkeypatch):
    monkeypatch.setenv("MG_TEST_HOOK_SECRET", "s3cret")
    url = f"sqlite:///{tmp_path / 'w.db'}"
    from .serve_support import make_keys

    keys = make_keys(url, {"a": ("tenant-a", ["assess"]), "b": ("tenant-b", ["assess"])})
    with WebhookReceiver(status=500) as flaky, WebhookReceiver(status=200) as only_b, WebhookReceiver(status=500) as dead:
        hooks = [{"url": flaky.url, "secret_env": "MG_TEST_HOOK_SECRET"}, {"url": only_b.url, "tenant": "tenant-b"},
                 {"url": dead.url, "tenant": "tenant-a"}]
        with ThreadServer({"guard": "keyword", "database_url": url, "webhooks": hooks, "webhook_backoff_s": 0.05,
                           "webhook_backoff_max_s": 0.1, "webhook_poll_s": 0.05, "webhook_max_attempts": 3}) as srv:
            r = httpx.post(srv.url + "/v1/assess", json={"messages": conversation("i want to kill myself")},
                           headers={"Authorization": f"Bearer {keys['a']}"})
            eid = r.json()["turns"][0]["event_id"]
            assert eid
            assert _wait_for(lambda: len(flaky.deliveries) >= 2)
            flaky.status = 200  # recovers: the next retry is accepted
            assert _wait_for(lambda: len(flaky.accepted()) == 1)
            assert _wait_for(lambda: len(dead.deliveries) == 3)  # gives up after webhook_max_attempts
            assert _wait_for(lambda: 'mindguard_webhook_deliveries_total{result="failed"} 1.0' in httpx.get(srv.url + "/metrics").text, 10)
            httpx.post(srv.url + "/v1/assess", json={"messages": conversation("i will hurt her")},
                       headers={"Authorization": f"Bearer {keys['b']}"})
            assert _wait_for(lambda: len(only_b.accepted()) == 1)
        attempts = [d for d in flaky.deliveries if d["headers"]["x-mindguard-event-id"] == eid]
        assert len({d["headers"]["idempotency-key"] for d in attempts}) == 1  # the same key on every retry
        assert [int(d["headers"]["x-mindguard-attempt"]) for d in attempts] == list(range(1, len(attempts) + 1))
        d = flaky.accepted()[0]
        expected = hmac.new(b"s3cret", d["headers"]["x-mindguard-timestamp"].encode() + b"." + d["body"], hashlib.sha256).hexdigest()
        assert d["headers"]["x-mindguard-signature"] == f"sha256={expected}"
        assert json.loads(d["body"])["event"]["id"] == eid
        assert "x-mindguard-signature" not in only_b.deliveries[0]["headers"]
        assert json.loads(only_b.deliveries[0]["body"])["tenant"] == "tenant-b"  # tenant-b's target saw only its event
    with sqlite3.connect(tmp_path / "w.db") as conn:
        states = dict(conn.execute("SELECT url, status FROM mg_webhook_outbox WHERE event_id = ?", (eid,)))
    assert states[dead.url] == "failed" and states[flaky.url] == "delivered"
