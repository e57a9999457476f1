"""Prometheus metrics of the service, in a registry of its own (one per app, so tests can run
several apps in one process).

Labels are bounded: the route *template* (never a raw path with a session id), the method, the
status, the risk label, the endpoint kind. Nothing derived from conversation text is exported.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("mindguard_http_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram("mindguard_http_request_seconds", "HTTP request latency", ["route", "method"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.guard_latency = Histogram("mindguard_guard_seconds", "time of one guard call (a batch)",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.guard_batch = Histogram("mindguard_guard_batch_size", "requests assessed per guard call",
                                     buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.assessments = Counter("mindguard_assessments", "user turns assessed", ["endpoint"], registry=r)
        self.flags = Counter("mindguard_flags", "flagged user turns", ["label", "endpoint"], registry=r)
        self.guard_errors = Counter("mindguard_guard_errors", "guard failures", ["kind"], registry=r)
        self.actions = Counter("mindguard_proxy_actions", "interventions applied by the chat proxy", ["action"], registry=r)
        self.rate_limited = Counter("mindguard_rate_limited", "requests refused by the per-key rate limit", registry=r)
        self.webhooks = Counter("mindguard_webhook_deliveries", "webhook delivery attempts", ["result"], registry=r)
        self.outbox_pending = Gauge("mindguard_webhook_outbox_pending", "alerts waiting for delivery", registry=r)
        self.sessions = Gauge("mindguard_sessions_active", "live streaming sessions", registry=r)
        self.guard_queue = Gauge("mindguard_guard_queue_depth", "requests waiting for the guard", registry=r)

    def observe_guard(self, batch: int, seconds: float) -> None:
        self.guard_batch.observe(batch)
        self.guard_latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
