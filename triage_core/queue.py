"""The durable job queue: webhook events become jobs that worker threads (or processes) claim under a lease.

Why a lease and not a lock: a worker that dies mid-job (crash, OOM, deploy) holds nothing; once its lease expires
another worker takes the job again, up to `max_attempts` claims, after which the job is dead and waits for a
human (`ticket-triage jobs retry`). Exactly one worker holds a job at a time: claiming runs in a transaction that
holds SQLite's write lock (BEGIN IMMEDIATE) or, on PostgreSQL, `SELECT ... FOR UPDATE SKIP LOCKED`.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from .store import JOB_STATES, InboundEvent, Job, Store

# Longest last_error kept: the head and the tail of a traceback are what explain it.
MAX_ERROR_CHARS = 4096
# Share of the backoff added as jitter, so jobs failing together do not retry together.
JITTER = 0.1


class LeaseLost(RuntimeError):
    """The job is no longer this worker's: its lease expired and another worker claimed it (or it finished).

    The worker must drop its result rather than overwrite the new owner's work.
    """


@dataclass(frozen=True)
class InboundTicket:
    """A ticket as a connector parsed it from a webhook or a poll: everything a worker needs, as plain data."""

    connector: str
    ref: str
    event_key: str
    text: str
    project: str | None = None
    ticket_type: str | None = None
    # Fields a human already set on the ticket, so the policy never overwrites them.
    current: dict[str, str] = field(default_factory=dict)
    callback_url: str | None = None
    # Connector-specific data (vendor ids, the raw status, ...), JSON-serialisable.
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"connector": self.connector, "ref": self.ref, "event_key": self.event_key, "text": self.text,
                "project": self.project, "ticket_type": self.ticket_type, "current": dict(self.current),
                "callback_url": self.callback_url, "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "InboundTicket":
        return cls(connector=data["connector"], ref=data["ref"], event_key=data["event_key"], text=data["text"],
                   project=data.get("project"), ticket_type=data.get("ticket_type"),
                   current=dict(data.get("current") or {}), callback_url=data.get("callback_url"),
                   extra=dict(data.get("extra") or {}))


@dataclass(frozen=True)
class SubmitResult:
    event_id: int
    job_id: int
    # False when this (connector, ref, event_key) was already received: a redelivery, acknowledged and ignored.
    created: bool


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker now holds until `lease_expires_at` (extend it for long work)."""

    id: int
    event_id: int
    attempts: int
    max_attempts: int
    lease_expires_at: datetime
    ticket: InboundTicket

    @property
    def job_id(self) -> int:
        return self.id


@dataclass(frozen=True)
class JobInfo:
    """A job row as plain data, for the CLI and the API."""

    id: int
    event_id: int
    connector: str
    ticket_ref: str
    state: str
    attempts: int
    max_attempts: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Job) -> "JobInfo":
        return cls(id=row.id, event_id=row.event_id, connector=row.connector, ticket_ref=row.ticket_ref,
                   state=row.state, attempts=row.attempts, max_attempts=row.max_attempts,
                   lease_owner=row.lease_owner, lease_expires_at=row.lease_expires_at,
                   next_attempt_at=row.next_attempt_at, last_error=row.last_error, created_at=row.created_at,
                   updated_at=row.updated_at, finished_at=row.finished_at)

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in self.__dict__.items()}


def truncate_error(error: str, limit: int = MAX_ERROR_CHARS) -> str:
    """Keep the head and the tail of a long error, marking what was cut."""
    if len(error) <= limit:
        return error
    half = (limit - 40) // 2
    return f"{error[:half]}\n... [{len(error) - 2 * half} characters cut] ...\n{error[-half:]}"


class JobQueue:
    """Submit, claim, heartbeat, complete and fail jobs stored in the `jobs` table.

    :param store: the database the jobs live in (one queue per store; processes sharing it share the queue).
    :param max_attempts: claims a job gets before it is dead (a failed attempt and an expired lease both count).
    :param lease_seconds: how long a claim holds the job before another worker may take it; `extend` renews it.
    :param backoff_base_seconds: the wait after the first failed attempt, doubled after each next one...
    :param backoff_max_seconds: ...up to this, with up to 10% jitter.
    :param poll_interval_seconds: how long an idle worker sleeps between claims (the queue itself never sleeps).
    :param clock: seconds since the epoch (default `time.time`); tests pass a fake one to move time.

    A connector's ticket goes in once, however often the vendor delivers it; a worker takes it under a lease::

        queue = JobQueue.from_config(store, config)
        queue.submit(InboundTicket(connector="jira", ref="IT-7", event_key="created", text="VPN drops"))
        job = queue.claim("worker-1")          # None when nothing is due
        try:
            ...                                # triage job.ticket; call queue.extend(job.id, "worker-1") if slow
            queue.complete(job.id, "worker-1")
        except Exception as exc:
            queue.fail(job.id, "worker-1", str(exc))   # back to queued after a backoff, or dead
    """

    def __init__(self, store: Store, max_attempts: int = 6, lease_seconds: float = 120,
                 backoff_base_seconds: float = 2.0, backoff_max_seconds: float = 600.0,
                 poll_interval_seconds: float = 0.5, clock: Callable[[], float] = time.time) -> None:
        if max_attempts < 1 or lease_seconds <= 0 or backoff_base_seconds < 0 or backoff_max_seconds < 0:
            raise ValueError("queue: max_attempts must be >= 1, lease_seconds > 0 and backoffs >= 0")
        self.store = store
        self.max_attempts = max_attempts
        self.lease_seconds = float(lease_seconds)
        self.backoff_base_seconds = float(backoff_base_seconds)
        self.backoff_max_seconds = float(backoff_max_seconds)
        # How long an idle worker sleeps between claims; the queue itself never sleeps.
        self.poll_interval_seconds = float(poll_interval_seconds)
        self.clock = clock

    @classmethod
    def from_config(cls, store: Store, config_section: Mapping[str, Any] | Any,
                    clock: Callable[[], float] = time.time) -> "JobQueue":
        """Build from the "queue" config section (a Config is accepted too: its "queue" section is used)."""
        section = config_section["queue"] if hasattr(config_section, "data") else config_section
        keys = ("max_attempts", "lease_seconds", "backoff_base_seconds", "backoff_max_seconds",
                "poll_interval_seconds")
        return cls(store, clock=clock, **{k: section[k] for k in keys if k in section})

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), timezone.utc)

    def backoff(self, job_id: int, attempts: int) -> float:
        """Seconds to wait after failed attempt number `attempts`: exponential, capped, with seeded jitter."""
        raw = self.backoff_base_seconds * 2 ** max(attempts - 1, 0)
        jitter = random.Random(f"{job_id}:{attempts}").random() * JITTER
        return min(raw * (1.0 + jitter), self.backoff_max_seconds)

    # -- producers ----------------------------------------------------------------------------------------

    def submit(self, ticket: InboundTicket) -> SubmitResult:
        """Store the event and queue its job in one transaction; a duplicate event returns the existing ids."""
        existing = self._find(ticket)
        if existing is not None:
            return existing
        now = self._now()
        try:
            with self.store.session() as s:
                ev = InboundEvent(connector=ticket.connector, ticket_ref=ticket.ref, event_key=ticket.event_key,
                                  received_at=now, payload=ticket.to_dict())
                s.add(ev)
                s.flush()
                job = Job(event_id=ev.id, connector=ticket.connector, ticket_ref=ticket.ref, state="queued",
                          attempts=0, max_attempts=self.max_attempts, next_attempt_at=now, created_at=now,
                          updated_at=now)
                s.add(job)
                s.flush()
                return SubmitResult(event_id=ev.id, job_id=job.id, created=True)
        except IntegrityError:
            # A concurrent delivery of the same event won the race: its rows are the ones to report.
            existing = self._find(ticket)
            if existing is None:
                raise
            return existing

    def _find(self, ticket: InboundTicket) -> SubmitResult | None:
        with self.store.session(readonly=True) as s:
            row = s.execute(
                select(InboundEvent.id, Job.id)
                .join(Job, Job.event_id == InboundEvent.id)
                .where(InboundEvent.connector == ticket.connector, InboundEvent.ticket_ref == ticket.ref,
                       InboundEvent.event_key == ticket.event_key)
                .order_by(Job.id).limit(1)
            ).first()
        return None if row is None else SubmitResult(event_id=row[0], job_id=row[1], created=False)

    # -- workers ------------------------------------------------------------------------------------------

    def claim(self, worker_id: str) -> ClaimedJob | None:
        """Take the oldest due job (queued and due, or running with an expired lease), or None when idle.

        A job whose lease expired on its last allowed attempt goes dead here instead of running again.
        """
        now = self._now()
        due = or_(
            and_(Job.state == "queued", Job.next_attempt_at <= now),
            and_(Job.state == "running", Job.lease_expires_at <= now),
        )
        with self.store.session() as s:
            while True:
                job = s.scalars(
                    select(Job).where(due).order_by(Job.next_attempt_at, Job.id).limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if job is None:
                    return None
                if job.state == "running" and job.attempts >= job.max_attempts:
                    job.state = "dead"
                    job.last_error = truncate_error(
                        f"lease of worker {job.lease_owner!r} expired on attempt {job.attempts} of "
                        f"{job.max_attempts}" + (f"; earlier error: {job.last_error}" if job.last_error else ""))
                    job.lease_owner = None
                    job.lease_expires_at = None
                    job.finished_at = now
                    job.updated_at = now
                    s.flush()
                    continue
                lease = now + timedelta(seconds=self.lease_seconds)
                job.state = "running"
                job.lease_owner = worker_id
                job.lease_expires_at = lease
                job.attempts += 1
                job.updated_at = now
                event = s.get(InboundEvent, job.event_id)
                assert event is not None  # the foreign key guarantees it
                return ClaimedJob(id=job.id, event_id=job.event_id, attempts=job.attempts,
                                  max_attempts=job.max_attempts, lease_expires_at=lease,
                                  ticket=InboundTicket.from_dict(event.payload))

    def extend(self, job_id: int, worker_id: str) -> datetime:
        """Heartbeat: push this worker's lease on the job `lease_seconds` into the future; returns the new end."""
        now = self._now()
        lease = now + timedelta(seconds=self.lease_seconds)
        self._owned_update(job_id, worker_id, lease_expires_at=lease, updated_at=now)
        return lease

    def complete(self, job_id: int, worker_id: str) -> None:
        """Mark the job done; raises LeaseLost when it is no longer this worker's."""
        now = self._now()
        self._owned_update(job_id, worker_id, state="done", lease_owner=None, lease_expires_at=None,
                           finished_at=now, updated_at=now)

    def release(self, job_id: int, worker_id: str) -> None:
        """Hand a held job back untouched (a clean stop that cannot finish it): queued again at once, this attempt
        not counted. Raises LeaseLost when the job is no longer this worker's."""
        now = self._now()
        self._owned_update(job_id, worker_id, state="queued", lease_owner=None, lease_expires_at=None,
                           attempts=Job.attempts - 1, next_attempt_at=now, updated_at=now)

    def fail(self, job_id: int, worker_id: str, error: str, retry_after: float | None = None,
             permanent: bool = False) -> str:
        """Record a failed attempt: back to 'queued' after a backoff (at least `retry_after` seconds, e.g. a
        vendor's Retry-After), or 'dead' once max_attempts are used or when `permanent` (retrying cannot help,
        e.g. a 4xx from the vendor). Returns the new state; raises LeaseLost when the job is not this worker's."""
        now = self._now()
        with self.store.session() as s:
            job = s.scalars(select(Job).where(Job.id == job_id).with_for_update()).first()
            self._check_owner(job, job_id, worker_id)
            assert job is not None
            job.last_error = truncate_error(error)
            job.lease_owner = None
            job.lease_expires_at = None
            job.updated_at = now
            if permanent or job.attempts >= job.max_attempts:
                job.state = "dead"
                job.finished_at = now
            else:
                delay = max(retry_after or 0.0, self.backoff(job.id, job.attempts))
                job.state = "queued"
                job.next_attempt_at = now + timedelta(seconds=delay)
            return job.state

    def _owned_update(self, job_id: int, worker_id: str, **values: Any) -> None:
        with self.store.session() as s:
            result = s.execute(
                update(Job).where(Job.id == job_id, Job.state == "running", Job.lease_owner == worker_id)
                .values(**values).execution_options(synchronize_session=False)
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                return
            self._check_owner(s.get(Job, job_id), job_id, worker_id)
            raise LeaseLost(f"job {job_id} changed hands while worker {worker_id!r} was updating it")

    @staticmethod
    def _check_owner(job: Job | None, job_id: int, worker_id: str) -> None:
        if job is None:
            raise KeyError(f"job {job_id} does not exist")
        if job.state != "running" or job.lease_owner != worker_id:
            holder = f"held by {job.lease_owner!r}" if job.state == "running" else f"now {job.state!r}"
            raise LeaseLost(f"job {job_id} is no longer held by worker {worker_id!r} ({holder})")

    # -- operators ----------------------------------------------------------------------------------------

    def retry(self, job_ids: list[int] | None = None) -> int:
        """Put dead jobs (all, or those named) back in the queue with their attempts reset; returns how many."""
        now = self._now()
        stmt = update(Job).where(Job.state == "dead")
        if job_ids is not None:
            if not job_ids:
                return 0
            stmt = stmt.where(Job.id.in_(job_ids))
        with self.store.session() as s:
            result = s.execute(
                stmt.values(state="queued", attempts=0, next_attempt_at=now, lease_owner=None,
                            lease_expires_at=None, finished_at=None, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    def depth(self) -> dict[str, int]:
        """Jobs per state, every state present (for /metrics and `jobs list`)."""
        with self.store.session(readonly=True) as s:
            counts = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        return {state: int(counts.get(state, 0)) for state in JOB_STATES}

    def get(self, job_id: int) -> JobInfo | None:
        with self.store.session(readonly=True) as s:
            row = s.get(Job, job_id)
            return None if row is None else JobInfo.from_row(row)

    def list(self, state: str | None = None, limit: int = 50) -> list[JobInfo]:
        """The newest jobs first, optionally of one state."""
        if state is not None and state not in JOB_STATES:
            raise ValueError(f"job state must be one of {', '.join(JOB_STATES)}, got {state!r}")
        stmt = select(Job).order_by(Job.id.desc()).limit(limit)
        if state is not None:
            stmt = stmt.where(Job.state == state)
        with self.store.session(readonly=True) as s:
            return [JobInfo.from_row(r) for r in s.scalars(stmt)]


__all__ = ["InboundTicket", "SubmitResult", "ClaimedJob", "JobInfo", "JobQueue", "LeaseLost", "truncate_error"]
