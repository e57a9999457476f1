"""The risk-event store: flagged turns, the webhook outbox and API keys, through SQLAlchemy.

A SQLite file by default (opened in WAL mode with `synchronous=FULL`, so a committed transaction
survives a crash of the process or the machine) and PostgreSQL by URL. The service commits every
flagged turn *and* its webhook outbox rows in one transaction before it answers the request (the
transactional-outbox pattern): an acknowledged flag is never lost, and an alert is never sent for a
flag that was not stored. Events carry a fingerprint (tenant, conversation, message index and a
hash of the context) so a client that retries a request, or re-sends a growing conversation, does
not create duplicate events or alerts. Conversation text is stored only when `store_text` is on;
otherwise an event holds labels, scores and message indices. Tables are created on first use.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ..errors import MindGuardError


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def as_utc(t: dt.datetime) -> dt.datetime:
    """SQLite returns naive datetimes; everything stored is UTC."""
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.timezone.utc)


class StoreError(MindGuardError):
    """The store could not be read or written (the service answers 503)."""


class Base(DeclarativeBase):
    pass


class ApiKeyRow(Base):
    __tablename__ = "mg_api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    scopes: Mapped[str] = mapped_column(String(256))
    salt: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RiskEventRow(Base):
    __tablename__ = "mg_risk_events"
    __table_args__ = (
        UniqueConstraint("tenant", "fingerprint", name="uq_mg_event_fingerprint"),
        Index("ix_mg_events_tenant_seq", "tenant", "seq"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True)
    tenant: Mapped[str] = mapped_column(String(128))
    fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    endpoint: Mapped[str] = mapped_column(String(16))
    conversation_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    request_id: Mapped[str] = mapped_column(String(36))
    message_index: Mapped[int] = mapped_column(Integer)
    turn: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # ok | guard_error | guard_timeout
    label: Mapped[str | None] = mapped_column(String(32), nullable=True)
    p_unsafe: Mapped[float | None] = mapped_column(Float, nullable=True)
    probabilities: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    guard: Mapped[str] = mapped_column(String(64))
    action: Mapped[str | None] = mapped_column(String(16), nullable=True)
    evidence: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)


class OutboxRow(Base):
    __tablename__ = "mg_webhook_outbox"
    __table_args__ = (Index("ix_mg_outbox_due", "status", "next_attempt_at"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(80), unique=True)
    event_id: Mapped[str] = mapped_column(String(36), index=True)
    tenant: Mapped[str] = mapped_column(String(128))
    url: Mapped[str] = mapped_column(Text)
    secret_env: Mapped[str | None] = mapped_column(String(128), nullable=True)
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass
class NewEvent:
    """A flagged turn to record (built by the service from an assessment)."""

    tenant: str
    fingerprint: str
    endpoint: str
    conversation_id: str | None
    request_id: str
    message_index: int
    turn: int
    status: str
    label: str | None
    p_unsafe: float | None
    probabilities: dict[str, float] | None
    threshold: float | None
    guard: str
    action: str | None = None
    evidence: list[dict[str, Any]] = field(default_factory=list)
    text: str | None = None


@dataclass(frozen=True)
class OutboxTarget:
    url: str
    secret_env: str | None


def event_to_dict(row: RiskEventRow) -> dict[str, Any]:
    """The public view of an event (what /v1/events returns and webhooks carry, text aside)."""
    return {
        "id": row.id, "created_at": as_utc(row.created_at).isoformat(), "endpoint": row.endpoint,
        "conversation_id": row.conversation_id, "request_id": row.request_id, "message_index": row.message_index,
        "turn": row.turn, "status": row.status, "label": row.label, "p_unsafe": row.p_unsafe,
        "probabilities": row.probabilities, "threshold": row.threshold, "guard": row.guard, "action": row.action,
        "evidence": row.evidence or [], "text": row.text,
    }


class Store:
    """Access to the database; thread-safe (one short session per call)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        try:
            if self.is_sqlite:
                # check_same_thread off: sessions are short-lived and used from the server's worker threads
                self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
                event.listen(self.engine, "connect", _sqlite_pragmas)
            else:
                self.engine = create_engine(url, pool_pre_ping=True)
            Base.metadata.create_all(self.engine)
        except ImportError as exc:
            raise MindGuardError(f"the database driver for {url.split(':')[0]!r} is not installed ({exc.name})") from None
        except SQLAlchemyError as exc:
            raise MindGuardError(f"cannot open the risk-event store {_redact(url)}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
        # SQLite allows one writer: serialising writes in-process avoids busy-waiting on its file lock
        self._write_lock = threading.Lock() if self.is_sqlite else None

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Session]:
        lock = self._write_lock
        if lock is not None:
            lock.acquire()
        try:
            with Session(self.engine, expire_on_commit=False) as s, s.begin():
                yield s
        except SQLAlchemyError as exc:
            raise StoreError(f"risk-event store write failed ({type(exc).__name__})") from exc
        finally:
            if lock is not None:
                lock.release()

    @contextmanager
    def _read(self) -> Iterator[Session]:
        try:
            with Session(self.engine, expire_on_commit=False) as s:
                yield s
        except SQLAlchemyError as exc:
            raise StoreError(f"risk-event store read failed ({type(exc).__name__})") from exc

    def ping(self) -> bool:
        try:
            with self._read() as s:
                s.execute(text("SELECT 1"))
            return True
        except StoreError:
            return False

    # -- API keys ------------------------------------------------------------------------------
    def add_key(self, row: ApiKeyRow) -> None:
        with self._write() as s:
            s.add(row)

    def get_key(self, key_id: str) -> ApiKeyRow | None:
        with self._read() as s:
            return s.get(ApiKeyRow, key_id)

    def list_keys(self, tenant: str | None = None) -> list[ApiKeyRow]:
        with self._read() as s:
            q = select(ApiKeyRow).order_by(ApiKeyRow.created_at)
            if tenant is not None:
                q = q.where(ApiKeyRow.tenant == tenant)
            return list(s.scalars(q))

    def revoke_key(self, key_id: str) -> bool:
        with self._write() as s:
            res = s.execute(update(ApiKeyRow).where(ApiKeyRow.key_id == key_id, ApiKeyRow.revoked_at.is_(None))
                            .values(revoked_at=utcnow()))
            return bool(res.rowcount)  # type: ignore[attr-defined]

    # -- risk events ---------------------------------------------------------------------------
    def record_events(self, events: Sequence[NewEvent], targets_for: Any) -> list[str]:
        """Commit `events` (skipping ones already stored, by fingerprint) with one outbox row per
        webhook target (`targets_for(tenant)`); returns the event ids in order, old or new."""
        if not events:
            return []
        for _attempt in range(3):
            try:
                return self._record_once(events, targets_for)
            except StoreError as exc:
                # a concurrent writer (another process) stored the same fingerprint first: re-read
                if not isinstance(exc.__cause__, IntegrityError):
                    raise
        raise StoreError("risk-event store write failed (conflicting concurrent writes)")

    def _record_once(self, events: Sequence[NewEvent], targets_for: Any) -> list[str]:
        with self._write() as s:
            tenant_fps = {(e.tenant, e.fingerprint) for e in events}
            existing: dict[tuple[str, str], str] = {}
            for tenant in {t for t, _ in tenant_fps}:
                fps = [fp for t, fp in tenant_fps if t == tenant]
                q = select(RiskEventRow.fingerprint, RiskEventRow.id).where(RiskEventRow.tenant == tenant,
                                                                           RiskEventRow.fingerprint.in_(fps))
                existing.update({(tenant, fp): eid for fp, eid in s.execute(q)})
            ids = []
            now = utcnow()
            for e in events:
                key = (e.tenant, e.fingerprint)
                if key in existing:
                    ids.append(existing[key])
                    continue
                row = RiskEventRow(id=str(uuid.uuid4()), created_at=now, **e.__dict__)
                s.add(row)
                existing[key] = row.id
                ids.append(row.id)
                payload = json.dumps({"type": "mindguard.flag", "tenant": e.tenant,
                                      "event": {**event_to_dict(row), "text": None}}, default=str)
                for t in targets_for(e.tenant):
                    s.add(OutboxRow(idempotency_key=f"{row.id}:{_short_hash(t.url)}", event_id=row.id, tenant=e.tenant,
                                    url=t.url, secret_env=t.secret_env, payload=payload, next_attempt_at=now, created_at=now))
            return ids

    def get_event(self, tenant: str, event_id: str) -> dict[str, Any] | None:
        with self._read() as s:
            row = s.scalars(select(RiskEventRow).where(RiskEventRow.id == event_id, RiskEventRow.tenant == tenant)).first()
            return event_to_dict(row) if row else None

    def list_events(self, tenant: str, *, label: str | None = None, status: str | None = None, endpoint: str | None = None,
                    conversation_id: str | None = None, since: dt.datetime | None = None, until: dt.datetime | None = None,
                    min_p_unsafe: float | None = None, before_seq: int | None = None,
                    limit: int = 50) -> tuple[list[dict[str, Any]], int | None]:
        """Newest first; returns (events, the cursor of the next page or None)."""
        q = select(RiskEventRow).where(RiskEventRow.tenant == tenant)
        if label is not None:
            q = q.where(RiskEventRow.label == label)
        if status is not None:
            q = q.where(RiskEventRow.status == status)
        if endpoint is not None:
            q = q.where(RiskEventRow.endpoint == endpoint)
        if conversation_id is not None:
            q = q.where(RiskEventRow.conversation_id == conversation_id)
        if since is not None:
            q = q.where(RiskEventRow.created_at >= since)
        if until is not None:
            q = q.where(RiskEventRow.created_at < until)
        if min_p_unsafe is not None:
            q = q.where(RiskEventRow.p_unsafe >= min_p_unsafe)
        if before_seq is not None:
            q = q.where(RiskEventRow.seq < before_seq)
        q = q.order_by(RiskEventRow.seq.desc()).limit(limit + 1)
        with self._read() as s:
            rows = list(s.scalars(q))
        more = len(rows) > limit
        rows = rows[:limit]
        return [event_to_dict(r) for r in rows], (rows[-1].seq if more and rows else None)

    def count_events(self, tenant: str | None = None) -> int:
        q = select(func.count()).select_from(RiskEventRow)
        if tenant is not None:
            q = q.where(RiskEventRow.tenant == tenant)
        with self._read() as s:
            return int(s.scalar(q) or 0)

    # -- webhook outbox ------------------------------------------------------------------------
    def claim_due(self, lease_s: float, limit: int = 20) -> list[OutboxRow]:
        """Take up to `limit` due deliveries: their next attempt moves `lease_s` ahead in the same
        transaction, so another service process sharing the store skips them while this one
        delivers, and picks them up again if this one dies before recording the outcome."""
        now = utcnow()
        q = (select(OutboxRow).where(OutboxRow.status == "pending", OutboxRow.next_attempt_at <= now)
             .order_by(OutboxRow.next_attempt_at).limit(limit))
        if not self.is_sqlite:
            q = q.with_for_update(skip_locked=True)  # PostgreSQL: concurrent claimers take different rows
        with self._write() as s:
            rows = list(s.scalars(q))
            if rows:
                s.execute(update(OutboxRow).where(OutboxRow.seq.in_([r.seq for r in rows]))
                          .values(next_attempt_at=now + dt.timedelta(seconds=lease_s)))
            return rows

    def mark_delivered(self, seq: int) -> None:
        with self._write() as s:
            s.execute(update(OutboxRow).where(OutboxRow.seq == seq)
                      .values(status="delivered", delivered_at=utcnow(), attempts=OutboxRow.attempts + 1, last_error=None))

    def mark_failed_attempt(self, seq: int, error: str, retry_at: dt.datetime | None) -> None:
        """Record a failed attempt; `retry_at` None gives up (status failed)."""
        values: dict[str, Any] = {"attempts": OutboxRow.attempts + 1, "last_error": error[:256]}
        if retry_at is None:
            values["status"] = "failed"
        else:
            values["next_attempt_at"] = retry_at
        with self._write() as s:
            s.execute(update(OutboxRow).where(OutboxRow.seq == seq).values(**values))

    def outbox_counts(self) -> dict[str, int]:
        with self._read() as s:
            rows = s.execute(select(OutboxRow.status, func.count()).group_by(OutboxRow.status)).all()
        return {str(k): int(v) for k, v in rows}

    # -- retention -----------------------------------------------------------------------------
    def prune(self, older_than: dt.datetime) -> tuple[int, int]:
        """Delete events created before `older_than` and finished outbox rows; returns the counts."""
        with self._write() as s:
            n_ev = s.execute(delete(RiskEventRow).where(RiskEventRow.created_at < older_than)).rowcount  # type: ignore[attr-defined]
            n_ob = s.execute(delete(OutboxRow).where(OutboxRow.created_at < older_than,
                                                     OutboxRow.status.in_(("delivered", "failed")))).rowcount  # type: ignore[attr-defined]
        return int(n_ev or 0), int(n_ob or 0)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers work while a write commits; synchronous=FULL makes each commit durable
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _short_hash(s: str) -> str:
    import hashlib

    return hashlib.sha256(s.encode()).hexdigest()[:16]


def _redact(url: str) -> str:
    """A database URL without its password (for error messages)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is reported by the caller
        return url.split("@")[-1]
