"""The daemon's persistence: SQLAlchemy 2 ORM models, the engine set-up, Alembic upgrades and a few helpers.

SQLite (WAL mode) is the default so a single box needs no database server; PostgreSQL works by URL
(`postgresql+psycopg://user@host/db`). The schema is owned by the Alembic migrations in `migrations/`; the ORM
models here are its mirror (a test checks that both agree). The job queue on top of these tables is `queue.py`.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

if TYPE_CHECKING:
    from .triager import TriageResult

JOB_STATES = ("queued", "running", "done", "dead")
WRITEBACK_OUTCOMES = ("applied", "shadow", "skipped", "failed", "filtered")
MODEL_STATUSES = ("champion", "challenger", "retired")
RUN_STATES = ("running", "promoted", "kept", "failed", "dry-run")

# SQLite waits this long for another writer's lock before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 10_000
# A PostgreSQL advisory lock key so two daemons starting at once do not run the migrations twice.
_PG_MIGRATION_LOCK = 0x7472_6961_6765  # "triage"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes everywhere, even on SQLite (which stores them naive, in UTC).

    SQLite keeps the fixed-width text form, so comparisons such as `lease_expires_at <= now` stay correct.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


# Deterministic constraint names: Alembic's batch mode on SQLite (and any later migration) needs them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON-ready values (datetimes as ISO-8601), for the API and the CLI."""
        out: dict[str, Any] = {}
        for column in self.__table__.columns:  # type: ignore[attr-defined]
            value = getattr(self, column.key)
            out[column.key] = value.isoformat() if isinstance(value, datetime) else value
        return out


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


class InboundEvent(Base):
    """A webhook delivery (or poll hit); the unique key makes a redelivery a no-op."""

    __tablename__ = "inbound_events"
    __table_args__ = (
        UniqueConstraint("connector", "ticket_ref", "event_key"),
        Index(None, "received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    connector: Mapped[str] = mapped_column(String(64))
    ticket_ref: Mapped[str] = mapped_column(String(255))
    event_key: Mapped[str] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    payload: Mapped[dict[str, Any]]


class Job(Base):
    """One unit of triage work for an event; the queue's state machine lives in `queue.py`."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"state IN ({_in(JOB_STATES)})", name="state"),
        Index(None, "state", "next_attempt_at"),
        Index(None, "state", "lease_expires_at"),
        Index(None, "connector", "ticket_ref"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("inbound_events.id", ondelete="CASCADE"), index=True)
    connector: Mapped[str] = mapped_column(String(64))
    ticket_ref: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int]
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None]


class TriageResultRow(Base):
    """What the model said about a ticket (the DESIGN.md result shape, flattened)."""

    __tablename__ = "triage_results"
    __table_args__ = (Index(None, "connector", "ticket_ref"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    connector: Mapped[str] = mapped_column(String(64))
    ticket_ref: Mapped[str] = mapped_column(String(255))
    fields: Mapped[dict[str, Any]]
    confidence: Mapped[dict[str, Any]]
    model_base: Mapped[str | None] = mapped_column(String(255))
    model_adapter: Mapped[str | None] = mapped_column(String(255))
    latency_ms: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Each enum field's values ranked by probability, and the model that scored them (the review console).
    alternatives: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Writeback(Base):
    """What the policy decided and what the ITSM answered, so every field change can be explained."""

    __tablename__ = "writebacks"
    __table_args__ = (
        CheckConstraint(f"outcome IN ({_in(WRITEBACK_OUTCOMES)})", name="outcome"),
        Index(None, "connector", "ticket_ref"),
        Index(None, "outcome"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    result_id: Mapped[int | None] = mapped_column(ForeignKey("triage_results.id", ondelete="SET NULL"),
                                                  index=True)
    connector: Mapped[str] = mapped_column(String(64))
    ticket_ref: Mapped[str] = mapped_column(String(255))
    fields_sent: Mapped[dict[str, Any]]
    suggested: Mapped[dict[str, Any]]
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False)
    note: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))
    vendor_status: Mapped[int | None]
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Correction(Base):
    """A human changed a field we wrote: the signal that feeds retraining."""

    __tablename__ = "corrections"
    __table_args__ = (Index(None, "connector", "ticket_ref"), Index(None, "created_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    connector: Mapped[str] = mapped_column(String(64))
    ticket_ref: Mapped[str] = mapped_column(String(255))
    field: Mapped[str] = mapped_column(String(64))
    old_value: Mapped[str | None] = mapped_column(Text)
    new_value: Mapped[str | None] = mapped_column(Text)
    result_id: Mapped[int | None] = mapped_column(ForeignKey("triage_results.id", ondelete="SET NULL"),
                                                  index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Who decided (a console user), and the console decision: accept | correct | dismiss (NULL: an ITSM edit).
    actor: Mapped[str | None] = mapped_column(String(255))
    decision: Mapped[str | None] = mapped_column(String(16))


class ModelVersion(Base):
    """A trained adapter known to the daemon; the champion serves, challengers are evaluated against it."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        CheckConstraint(f"status IN ({_in(MODEL_STATUSES)})", name="status"),
        Index(None, "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    base: Mapped[str] = mapped_column(String(255))
    adapter_path: Mapped[str | None] = mapped_column(Text)
    taxonomy_hash: Mapped[str | None] = mapped_column(String(128))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="challenger")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[datetime | None]


class ConnectorCursor(Base):
    """Where a polling connector got to (an opaque string it chose), so a restart neither misses nor repeats."""

    __tablename__ = "connector_cursors"

    connector: Mapped[str] = mapped_column(String(64), primary_key=True)
    cursor: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class LockRow(Base):
    """A named lock shared by every instance on the database; it expires so a crashed holder frees it."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))
    acquired_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class RetrainRun(Base):
    """One retraining run: what it gathered and dropped, both models' metrics, the decision and why."""

    __tablename__ = "retrain_runs"
    __table_args__ = (CheckConstraint(f"state IN ({_in(RUN_STATES)})", name="state"), Index(None, "started_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="running")
    owner: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    # The window gathered: closed tickets after `since` (the previous successful run's start).
    since: Mapped[datetime | None]
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    decision: Mapped[str | None] = mapped_column(Text)
    challenger_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))


def migrations_dir() -> Path:
    """$TRIAGE_MIGRATIONS_DIR, else the shipped migrations/ (inside the installed package, or the checkout's)."""
    env = os.environ.get("TRIAGE_MIGRATIONS_DIR")
    if env:
        return Path(env)
    from .shipped import shipped_path

    return shipped_path("migrations")


def alembic_config(url: str | None = None) -> Any:
    """An Alembic Config built in code (no alembic.ini needed), pointing at our migrations folder."""
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        # ConfigParser interpolates "%": a percent-encoded password must be escaped.
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str) -> None:
    """Run the migrations to head on the database at `url` (a no-op when it is already there)."""
    store = Store(url)
    try:
        store.upgrade()
    finally:
        store.dispose()


class Store:
    """The engine and session factory shared by the daemon's threads, plus the few writes the daemon makes.

    On SQLite every connection gets WAL (readers never block the writer), a busy timeout, foreign keys and
    synchronous=NORMAL; SQLAlchemy emits BEGIN itself, and write sessions use BEGIN IMMEDIATE so they take the
    write lock up front (no deadlock between two read-then-write transactions, and the queue's claim is atomic
    across threads and processes).
    """

    def __init__(self, url: str, echo: bool = False) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_on_connect)
            event.listen(self.engine, "begin", _sqlite_on_begin)
        # Same pool; the option only changes how SQLite begins a transaction.
        self._write_engine = self.engine.execution_options(sqlite_immediate=True)
        self._read_sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(self._write_engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self, readonly: bool = False) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back on an exception.

        `readonly=True` skips taking SQLite's write lock (plain BEGIN); writes inside it may hit "database is
        locked" under contention, so use it only for reads.
        """
        factory = self._read_sessions if readonly else self._write_sessions
        with factory() as session:
            with session.begin():
                yield session

    def ping(self) -> bool:
        """True when the database answers (for /readyz)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    def upgrade(self, revision: str = "head") -> None:
        """Run the Alembic migrations to `revision`, so an empty database (or file) gets the schema by itself."""
        from alembic import command

        cfg = alembic_config()
        with self._write_engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

    def current_revision(self) -> str | None:
        """The Alembic revision the database is at (None when it was never migrated)."""
        from alembic.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def dispose(self) -> None:
        """Close every pooled connection (at shutdown, and in a child process after fork)."""
        self.engine.dispose()

    # -- the daemon's writes ------------------------------------------------------------------------------

    def record_result(self, job_id: int | None, connector: str, ticket_ref: str, ticket: dict[str, Any],
                      confidence: dict[str, Any], model: dict[str, Any], latency_ms: int | None) -> int:
        """Store one triage result (the DESIGN.md shape); returns its id for the write-back row."""
        with self.session() as s:
            row = TriageResultRow(job_id=job_id, connector=connector, ticket_ref=ticket_ref, fields=dict(ticket),
                                  confidence=dict(confidence), model_base=model.get("base"),
                                  model_adapter=model.get("adapter"), latency_ms=latency_ms)
            s.add(row)
            s.flush()
            return row.id

    def record_writeback(self, job_id: int | None, result_id: int | None, connector: str, ticket_ref: str,
                         outcome: str, fields_sent: dict[str, Any], suggested: dict[str, Any],
                         needs_review: bool, note: str | None, vendor_status: int | None = None,
                         detail: str | None = None) -> int:
        """Store what was (or was not) written back to the ITSM, and why; returns the row id."""
        if outcome not in WRITEBACK_OUTCOMES:
            raise ValueError(f"write-back outcome must be one of {', '.join(WRITEBACK_OUTCOMES)}, got {outcome!r}")
        with self.session() as s:
            row = Writeback(job_id=job_id, result_id=result_id, connector=connector, ticket_ref=ticket_ref,
                            outcome=outcome, fields_sent=dict(fields_sent), suggested=dict(suggested),
                            needs_review=bool(needs_review), note=note, vendor_status=vendor_status,
                            detail=detail)
            s.add(row)
            s.flush()
            return row.id

    def record_correction(self, connector: str, ticket_ref: str, field: str, old_value: str | None,
                          new_value: str | None, result_id: int | None = None) -> int:
        """Store a human's change to a field we wrote (training signal); returns the row id."""
        with self.session() as s:
            row = Correction(connector=connector, ticket_ref=ticket_ref, field=field, old_value=old_value,
                             new_value=new_value, result_id=result_id)
            s.add(row)
            s.flush()
            return row.id

    def save_cursor(self, connector: str, cursor: str) -> None:
        """Store a polling connector's cursor (after the tickets it covers are queued)."""
        with self.session() as s:
            row = s.get(ConnectorCursor, connector)
            if row is None:
                s.add(ConnectorCursor(connector=connector, cursor=cursor))
            else:
                row.cursor = cursor
                row.updated_at = utcnow()

    def cursor(self, connector: str) -> str | None:
        with self.session(readonly=True) as s:
            row = s.get(ConnectorCursor, connector)
            return None if row is None else row.cursor

    def last_correction(self, connector: str, ticket_ref: str, field: str) -> str | None:
        """The new value of the latest correction of `field` on the ticket (None: none recorded)."""
        with self.session(readonly=True) as s:
            return s.scalar(select(Correction.new_value).where(
                Correction.connector == connector, Correction.ticket_ref == ticket_ref, Correction.field == field)
                .order_by(Correction.id.desc()).limit(1))

    def written_value(self, connector: str, ticket_ref: str, field: str) -> tuple[int | None, str] | None:
        """(result id, value) of the last write-back that applied `field` to the ticket; None if we never did.

        A human's later change to that field is a correction; a change to a field we never wrote is not."""
        with self.session(readonly=True) as s:
            rows = s.scalars(select(Writeback).where(Writeback.connector == connector,
                                                     Writeback.ticket_ref == ticket_ref,
                                                     Writeback.outcome == "applied")
                             .order_by(Writeback.id.desc()).limit(20)).all()
        for row in rows:
            if field in (row.fields_sent or {}):
                return row.result_id, str(row.fields_sent[field])
        return None

    # -- the daemon's reads -------------------------------------------------------------------------------

    def ticket_history(self, connector: str, ticket_ref: str) -> dict[str, Any]:
        """Everything known about one ticket, for GET /v1/tickets/<connector>/<ref>.

        `result` and `writeback` are the latest of each (None when there is none), `state` the latest job's
        state; `history` lists every event, job, result, write-back and correction, oldest first. An empty
        dict means the daemon has never seen the ticket (a 404).
        """
        kinds: dict[str, Any] = {"events": InboundEvent, "jobs": Job, "results": TriageResultRow,
                                 "writebacks": Writeback, "corrections": Correction}
        with self.session(readonly=True) as s:
            history = {
                name: [r.to_dict() for r in s.scalars(
                    select(model).where(model.connector == connector, model.ticket_ref == ticket_ref)
                    .order_by(model.id))]
                for name, model in kinds.items()
            }
        if not any(history.values()):
            return {}
        result = None
        if history["results"]:
            last = history["results"][-1]
            result = {"id": last["id"], "ticket": last["fields"], "confidence": last["confidence"],
                      "model": {"base": last["model_base"], "adapter": last["model_adapter"]},
                      "latency_ms": last["latency_ms"], "created_at": last["created_at"]}
        return {
            "connector": connector,
            "ref": ticket_ref,
            "state": history["jobs"][-1]["state"] if history["jobs"] else None,
            "result": result,
            "writeback": history["writebacks"][-1] if history["writebacks"] else None,
            "history": history,
        }

    def result_for_job(self, job_id: int) -> tuple[int, TriageResult] | None:
        """The job's latest stored result (id, result), so a retried job reuses it instead of triaging again."""
        from .triager import TriageResult

        with self.session(readonly=True) as s:
            row = s.scalars(select(TriageResultRow).where(TriageResultRow.job_id == job_id)
                            .order_by(TriageResultRow.id.desc()).limit(1)).first()
        if row is None:
            return None
        return row.id, TriageResult(ticket=dict(row.fields), confidence=dict(row.confidence),
                                    model={"base": row.model_base, "adapter": row.model_adapter},
                                    latency_ms=row.latency_ms or 0)

    def writeback_applied(self, job_id: int) -> bool:
        """True when the job's write-back already reached the ITSM, so a retry must not write it twice."""
        with self.session(readonly=True) as s:
            return s.scalar(select(Writeback.id).where(Writeback.job_id == job_id, Writeback.outcome == "applied")
                            .limit(1)) is not None

    def counts(self) -> dict[str, Any]:
        """Jobs by state and write-backs by outcome (every key present, zeros included), for /metrics."""
        with self.session(readonly=True) as s:
            jobs = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            outcomes = dict(s.execute(select(Writeback.outcome, func.count()).group_by(Writeback.outcome))
                            .all())
            results = s.scalar(select(func.count()).select_from(TriageResultRow)) or 0
            corrections = s.scalar(select(func.count()).select_from(Correction)) or 0
        return {
            "jobs": {state: int(jobs.get(state, 0)) for state in JOB_STATES},
            "writebacks": {outcome: int(outcomes.get(outcome, 0)) for outcome in WRITEBACK_OUTCOMES},
            "results": int(results),
            "corrections": int(corrections),
        }


    # -- re-triage (a ticket that gained information is triaged again) -------------------------------------------

    def earlier_jobs(self, connector: str, ticket_ref: str, job_id: int) -> dict[str, int]:
        """The ticket's jobs queued before job `job_id`, counted by state (every state present): a re-triage waits
        for unfinished ones, and needs a finished one (the daemon triaged the ticket before)."""
        with self.session(readonly=True) as s:
            counts = dict(s.execute(select(Job.state, func.count()).where(
                Job.connector == connector, Job.ticket_ref == ticket_ref, Job.id < job_id).group_by(Job.state)).all())
        return {state: int(counts.get(state, 0)) for state in JOB_STATES}

    def postpone_job(self, job_id: int, worker_id: str, seconds: float, reason: str) -> bool:
        """Hand a job this worker holds back to the queue for `seconds` without charging the attempt (it waits for
        an earlier job of its ticket, which is no failure of its own). False when the job is no longer this
        worker's."""
        from datetime import timedelta

        from sqlalchemy import update

        now = utcnow()
        with self.session() as s:
            result = s.execute(
                update(Job).where(Job.id == job_id, Job.state == "running", Job.lease_owner == worker_id)
                .values(state="queued", attempts=Job.attempts - 1, lease_owner=None, lease_expires_at=None,
                        next_attempt_at=now + timedelta(seconds=seconds), last_error=reason[:4096], updated_at=now)
                .execution_options(synchronize_session=False))
            return result.rowcount == 1  # type: ignore[attr-defined]

    def last_event(self, connector: str, ticket_ref: str) -> dict[str, Any] | None:
        """The payload of the latest inbound event of the ticket (what the daemon last saw of it), or None."""
        with self.session(readonly=True) as s:
            return s.scalar(select(InboundEvent.payload).where(
                InboundEvent.connector == connector, InboundEvent.ticket_ref == ticket_ref)
                .order_by(InboundEvent.id.desc()).limit(1))

    def record_event(self, connector: str, ticket_ref: str, event_key: str, payload: dict[str, Any]) -> bool:
        """Store an inbound event that queues no job (a poll saw the ticket in a state to remember, such as closed);
        False when that event was stored already."""
        from sqlalchemy.exc import IntegrityError

        try:
            with self.session() as s:
                if s.scalar(select(InboundEvent.id).where(
                        InboundEvent.connector == connector, InboundEvent.ticket_ref == ticket_ref,
                        InboundEvent.event_key == event_key)) is not None:
                    return False
                s.add(InboundEvent(connector=connector, ticket_ref=ticket_ref, event_key=event_key,
                                   payload=dict(payload)))
            return True
        except IntegrityError:  # a concurrent poll stored it first
            return False

    def retriage_replies(self, connector: str, ticket_ref: str, before_event_id: int) -> list[str]:
        """The requester's replies that earlier re-triages of the ticket read (`payload.extra.retriage.reply` of its
        inbound events before `before_event_id`), oldest first: a later re-triage reads them too."""
        with self.session(readonly=True) as s:
            payloads = s.scalars(select(InboundEvent.payload).where(
                InboundEvent.connector == connector, InboundEvent.ticket_ref == ticket_ref,
                InboundEvent.id < before_event_id).order_by(InboundEvent.id)).all()
        replies = []
        for payload in payloads:
            info = ((payload or {}).get("extra") or {}).get("retriage")
            if isinstance(info, dict) and isinstance(info.get("reply"), str) and info["reply"].strip():
                replies.append(info["reply"])
        return replies

    def keep_reply(self, event_id: int, reply: str) -> None:
        """Store a reply read back from the vendor in its inbound event (`payload.extra.retriage.reply`), for the
        ticket's later re-triages."""
        with self.session() as s:
            event = s.get(InboundEvent, event_id)
            if event is None:
                return
            payload = dict(event.payload or {})
            extra = dict(payload.get("extra") or {})
            extra["retriage"] = {**(extra.get("retriage") or {}), "reply": reply}
            event.payload = {**payload, "extra": extra}

    # -- the review console --------------------------------------------------------------------------------------

    def record_alternatives(self, result_id: int, distributions: dict[str, dict[str, float]],
                            model: dict[str, Any], scored: str = "triage", top: int = 5) -> bool:
        """Keep a result's ranked alternatives (each enum field's `top` values by probability, and the model that
        scored them) for the review console; False when the result is gone or already has them. A worker that
        calls this right after `record_result` saves the console from scoring the ticket again."""
        ranked = {name: [[v, round(float(p), 6)] for v, p in sorted(dist.items(), key=lambda kv: -kv[1])[:top]]
                  for name, dist in distributions.items()}
        with self.session() as s:
            row = s.get(TriageResultRow, result_id)
            if row is None or row.alternatives:
                return False
            row.alternatives = {"model": dict(model), "fields": ranked, "scored": scored}
            return True

    # -- retraining runs -------------------------------------------------------------------------------------

    def corrections(self, since: datetime | None = None) -> list[Correction]:
        """Every correction recorded after `since` (None: all), oldest first: the retraining signal."""
        with self.session(readonly=True) as s:
            stmt = select(Correction).order_by(Correction.id)
            if since is not None:
                stmt = stmt.where(Correction.created_at > since)
            return list(s.scalars(stmt).all())

    def last_fields(self, connector: str, ticket_ref: str) -> dict[str, Any] | None:
        """The fields of the ticket's latest triage result (what we said last), or None when it has none."""
        with self.session(readonly=True) as s:
            return s.scalar(select(TriageResultRow.fields).where(
                TriageResultRow.connector == connector, TriageResultRow.ticket_ref == ticket_ref)
                .order_by(TriageResultRow.id.desc()).limit(1))

    def last_promotion_start(self) -> datetime | None:
        """When the latest retraining run that promoted its challenger started (None: no run ever promoted)."""
        with self.session(readonly=True) as s:
            return s.scalar(select(RetrainRun.started_at).where(RetrainRun.state == "promoted")
                            .order_by(RetrainRun.started_at.desc()).limit(1))

    def open_retrain_run(self, owner: str, since: datetime) -> int:
        """Record a retraining run as running (gathering after `since`); returns its id."""
        with self.session() as s:
            row = RetrainRun(state="running", owner=owner, since=since, counts={}, metrics={})
            s.add(row)
            s.flush()
            return row.id

    def close_retrain_run(self, run_id: int, state: str, counts: dict[str, Any], metrics: dict[str, Any],
                          decision: str, challenger_id: int | None = None) -> None:
        """Record how a retraining run ended: its state (RUN_STATES), counts, both models' metrics and why."""
        with self.session() as s:
            row = s.get(RetrainRun, run_id)
            row.state = state
            row.finished_at = utcnow()
            row.counts = dict(counts)
            row.metrics = dict(metrics)
            row.decision = decision
            row.challenger_id = challenger_id


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # SQLAlchemy emits BEGIN itself (see _sqlite_on_begin); pysqlite's own implicit BEGIN is turned off, which
    # also lets the PRAGMAs below run outside a transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Any) -> None:
    immediate = conn.get_execution_options().get("sqlite_immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


__all__ = [
    "Base", "InboundEvent", "Job", "TriageResultRow", "Writeback", "Correction", "ModelVersion", "Store",
    "UTCDateTime", "JOB_STATES", "WRITEBACK_OUTCOMES", "MODEL_STATUSES", "upgrade", "alembic_config",
    "migrations_dir", "utcnow",
]
