"""API keys scoped to a tenant, and per-key rate limits.

A key looks like `mgk_<key id>_<secret>`. Only the key id, a random per-key salt and
HMAC-SHA256(salt, secret) are stored, so a leaked database does not leak usable keys; the secret
has 256 bits of entropy, which makes a fast salted hash sufficient (no password-stretching
needed). Verification compares digests in constant time. Each key belongs to one tenant and
carries scopes: `assess` (assess, sessions, chat proxy) and `events:read` (the reviewer's event
feed). Rate limits are token buckets per key held in memory (per process).

Example:
    >>> key, row = new_api_key("clinic-a", ["assess"])
    >>> verify_secret(row, key)
    True
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import MindGuardError
from .store import ApiKeyRow, Store, utcnow

SCOPES = ("assess", "events:read")
_KEY_RX = re.compile(r"^mgk_([0-9a-f]{16})_([A-Za-z0-9_-]{20,100})$")
TENANT_RX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key id, its tenant and scopes."""

    key_id: str
    tenant: str
    scopes: frozenset[str]


def _digest(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode(), hashlib.sha256).hexdigest()


def new_api_key(tenant: str, scopes: Sequence[str], name: str = "") -> tuple[str, ApiKeyRow]:
    """A fresh key (shown once) and the row to store for it."""
    if not TENANT_RX.match(tenant):
        raise MindGuardError(f"tenant {tenant!r} must be 1-128 letters, digits, '.', '_' or '-' and start with a letter or digit")
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise MindGuardError(f"unknown scope {bad[0]!r}; allowed: {', '.join(SCOPES)}" if bad else "a key needs at least one scope")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    row = ApiKeyRow(key_id=key_id, tenant=tenant, name=name, scopes=",".join(sorted(set(scopes))), salt=salt,
                    digest=_digest(salt, secret), created_at=utcnow())
    return f"mgk_{key_id}_{secret}", row


def verify_secret(row: ApiKeyRow, key: str) -> bool:
    m = _KEY_RX.match(key)
    if not m or m.group(1) != row.key_id:
        return False
    return hmac.compare_digest(_digest(row.salt, m.group(2)), row.digest)


def create_key(store: Store, tenant: str, scopes: Sequence[str], name: str = "") -> tuple[str, str]:
    """Create and store a key; returns (the key to hand out, its id)."""
    key, row = new_api_key(tenant, scopes, name)
    store.add_key(row)
    return key, row.key_id


class KeyVerifier:
    """Looks keys up in the store, with a short in-memory cache of verified keys (by digest of the
    whole key string, so the cache never holds a usable secret)."""

    def __init__(self, store: Store, cache_s: float = 10.0) -> None:
        self.store = store
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def verify(self, key: str) -> Principal | None:
        """The principal for `key`, or None when it is malformed, unknown, wrong or revoked."""
        m = _KEY_RX.match(key)
        if not m:
            return None
        ck = hashlib.sha256(key.encode()).hexdigest()
        now = time.monotonic()
        if self.cache_s > 0:
            with self._lock:
                hit = self._cache.get(ck)
            if hit and hit[0] > now:
                return hit[1]
        row = self.store.get_key(m.group(1))
        if row is None or row.revoked_at is not None or not verify_secret(row, key):
            return None
        p = Principal(row.key_id, row.tenant, frozenset(filter(None, row.scopes.split(","))))
        if self.cache_s > 0:
            with self._lock:
                if len(self._cache) > 10000:
                    self._cache.clear()
                self._cache[ck] = (now + self.cache_s, p)
        return p


class RateLimiter:
    """Token bucket per key: `burst` requests at once, refilled at `per_minute`/60 per second."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key_id: str) -> float:
        """0 when the request may proceed (and takes a token), else seconds until one is free."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / self.rate


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
