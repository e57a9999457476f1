"""Webhook alerts from the persisted outbox: at-least-once delivery with retries.

Outbox rows are written in the same transaction as the flagged turn they announce (see
`store.py`), so an alert exists exactly when its event does. This dispatcher, a background thread,
POSTs every due row; a 2xx marks it delivered, anything else schedules a retry with exponential
backoff and jitter until `webhook_max_attempts`, after which the row is marked failed (it stays in
the table for inspection). A crash between a delivery and its bookkeeping means the alert is sent
again after restart — receivers deduplicate on the `Idempotency-Key` header, which is stable
across retries. When a target names `secret_env`, the body is signed:
`X-MindGuard-Signature: sha256=HMAC(secret, "<timestamp>.<body>")` with `X-MindGuard-Timestamp`.
Payloads never carry conversation text.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import os
import random
import threading
import time

import httpx

from .metrics import ServeMetrics
from .settings import ServeSettings
from .store import OutboxRow, Store, StoreError, utcnow

log = logging.getLogger("mindguard.serve")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature a receiver recomputes to check an alert came from this service."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class WebhookDispatcher:
    """Background delivery of the outbox; `wake()` after a commit delivers without waiting a poll."""

    def __init__(self, store: Store, settings: ServeSettings, metrics: ServeMetrics) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False)
        self._thread = threading.Thread(target=self._loop, name="mindguard-webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self.settings.webhook_timeout_s + 5)
        self._client.close()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                n = self.deliver_due()
            except StoreError:
                log.warning("webhook outbox: the store is unavailable; retrying")
                n = 0
            except Exception as exc:  # noqa: BLE001 - the dispatcher must outlive any one failure
                log.error("webhook outbox: unexpected %s", type(exc).__name__)
                n = 0
            if n == 0:
                self._wake.wait(self.settings.webhook_poll_s)
                self._wake.clear()

    def deliver_due(self, most: int = 50) -> int:
        """Attempt up to `most` due deliveries once each; returns how many were attempted.

        Rows are claimed one at a time with a lease a little longer than one attempt: a process
        that dies mid-delivery holds its row back for seconds, not for a whole batch."""
        n = 0
        while n < most and not self._stop.is_set():
            rows = self.store.claim_due(lease_s=2 * self.settings.webhook_timeout_s + 1, limit=1)
            if not rows:
                break
            self._deliver(rows[0])
            n += 1
        try:
            self.metrics.outbox_pending.set(self.store.outbox_counts().get("pending", 0))
        except StoreError:
            pass
        return n

    def _deliver(self, row: OutboxRow) -> None:
        body = row.payload.encode()
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", "Idempotency-Key": row.idempotency_key,
                   "X-MindGuard-Event-Id": row.event_id, "X-MindGuard-Timestamp": ts,
                   "X-MindGuard-Attempt": str(row.attempts + 1), "User-Agent": "mindguard-webhooks"}
        if row.secret_env:
            secret = os.environ.get(row.secret_env)
            if secret:
                headers["X-MindGuard-Signature"] = sign(secret, ts, body)
        error = ""
        try:
            resp = self._client.post(row.url, content=body, headers=headers)
            if 200 <= resp.status_code < 300:
                self.store.mark_delivered(row.seq)
                self.metrics.webhooks.labels("delivered").inc()
                return
            error = f"HTTP {resp.status_code}"
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        attempts = row.attempts + 1
        if attempts >= self.settings.webhook_max_attempts:
            self.store.mark_failed_attempt(row.seq, error, None)
            self.metrics.webhooks.labels("failed").inc()
            log.warning("webhook %s to %s failed for good after %d attempts (%s)", row.idempotency_key, _host(row.url), attempts, error)
            return
        delay = min(self.settings.webhook_backoff_max_s, self.settings.webhook_backoff_s * 2 ** (attempts - 1))
        delay *= random.uniform(0.8, 1.2)  # jitter: many alerts failing together do not retry in lockstep
        self.store.mark_failed_attempt(row.seq, error, utcnow() + dt.timedelta(seconds=delay))
        self.metrics.webhooks.labels("retry").inc()


def _host(url: str) -> str:
    try:
        return httpx.URL(url).host
    except Exception:  # noqa: BLE001
        return "?"
