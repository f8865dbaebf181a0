"""The store and the durable queue, on real SQLite files and a real PostgreSQL database (conftest.py's `db_url`).

No model is loaded here; time is moved with a fake clock instead of sleeping.
"""
from __future__ import annotations

import multiprocessing
import threading
from datetime import datetime, timezone

import pytest
from sqlalchemy import create_engine, inspect, text

from triage_core.queue import InboundTicket, JobQueue, LeaseLost, truncate_error
from triage_core.store import Base, Store, upgrade

T0 = 1_700_000_000.0


class Clock:
    """A clock the test moves by hand (seconds since the epoch)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def ticket(ref: str = "T-1", key: str = "d-1", **kw) -> InboundTicket:
    return InboundTicket(connector=kw.pop("connector", "generic"), ref=ref, event_key=key,
                         text=kw.pop("text", f"VPN drops for {ref}"), **kw)


# `db_url` (conftest.py): each of these tests runs on a fresh SQLite file and on an empty PostgreSQL database.


@pytest.fixture
def store(db_url):
    s = Store(db_url)
    s.upgrade()
    yield s
    s.dispose()


@pytest.fixture
def sqlite_store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'triage.db'}")
    s.upgrade()
    yield s
    s.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(store, clock) -> JobQueue:
    return JobQueue(store, max_attempts=3, lease_seconds=60, backoff_base_seconds=2.0, backoff_max_seconds=30.0,
                    clock=clock)


# -- schema --------------------------------------------------------------------------------------------------

def _schema(engine) -> dict:
    insp = inspect(engine)
    out = {}
    for table in insp.get_table_names():
        if table == "alembic_version":
            continue
        out[table] = {
            "columns": {c["name"]: bool(c["nullable"]) for c in insp.get_columns(table)},
            "pk": insp.get_pk_constraint(table)["constrained_columns"],
            "indexes": {(i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(table)},
            "unique": {(u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(table)},
            "fks": {(f["name"], tuple(f["constrained_columns"]), f["referred_table"],
                     (f.get("options") or {}).get("ondelete")) for f in insp.get_foreign_keys(table)},
            "checks": {c["name"] for c in insp.get_check_constraints(table)},
        }
    return out


def test_migrations_create_exactly_the_orm_schema_and_rerun_is_a_noop(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    migrated_url = f"sqlite:///{tmp_path / 'migrated.db'}"
    upgrade(migrated_url)  # an empty file is upgraded by itself
    store = Store(migrated_url)
    reference = create_engine(f"sqlite:///{tmp_path / 'reference.db'}")
    Base.metadata.create_all(reference)
    try:
        got, want = _schema(store.engine), _schema(reference)
        assert set(got) == {"inbound_events", "jobs", "triage_results", "writebacks", "corrections",
                            "model_versions", "connector_cursors", "locks", "retrain_runs"}
        assert got == want
        assert ("ix_jobs_state_next_attempt_at", ("state", "next_attempt_at"), False) in got["jobs"]["indexes"]
        assert ("uq_inbound_events_connector_ticket_ref_event_key", ("connector", "ticket_ref", "event_key")) \
            in got["inbound_events"]["unique"]
        with store.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                    Base.metadata) == []
            before = conn.execute(text("SELECT type, name, sql FROM sqlite_master ORDER BY name")).all()
        assert store.current_revision() == "0004"
        store.upgrade()
        store.upgrade()
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT type, name, sql FROM sqlite_master ORDER BY name")).all() == before
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        store.dispose()
        reference.dispose()


def test_migrations_render_for_postgresql():
    """Offline mode (`alembic upgrade head --sql`): the migration compiles for PostgreSQL with no server."""
    import io

    from alembic import command

    from triage_core.store import alembic_config

    buf = io.StringIO()
    cfg = alembic_config("postgresql+psycopg://triage@localhost/triage")
    cfg.output_buffer = buf
    command.upgrade(cfg, "head", sql=True)
    sql = buf.getvalue()
    assert "CREATE TABLE jobs" in sql and "TIMESTAMP WITH TIME ZONE" in sql
    assert "CONSTRAINT uq_inbound_events_connector_ticket_ref_event_key UNIQUE" in sql
    assert "CREATE INDEX ix_jobs_state_next_attempt_at ON jobs (state, next_attempt_at)" in sql


@pytest.mark.postgres
def test_postgresql_schema_matches_the_orm(postgres_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    PG_URL = postgres_url
    upgrade(PG_URL)
    upgrade(PG_URL)
    store = Store(PG_URL)
    try:
        assert store.current_revision() == "0004" and store.ping()
        with store.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                    Base.metadata) == []
    finally:
        store.dispose()


def test_sqlite_connections_use_wal_and_foreign_keys(sqlite_store):
    assert sqlite_store.ping() is True
    with sqlite_store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_ping_is_false_when_the_database_cannot_be_opened(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    assert store.ping() is False


# -- submit --------------------------------------------------------------------------------------------------

def test_inbound_ticket_round_trips_through_its_dict():
    t = ticket(project="IT", ticket_type="Incident", current={"priority": "High"}, callback_url="http://cb/1",
               extra={"vendor_id": 7})
    assert InboundTicket.from_dict(t.to_dict()) == t


def test_submit_is_idempotent(queue, store):
    first = queue.submit(ticket())
    again = queue.submit(ticket(text="a redelivery carries the same key"))
    assert first.created is True and again.created is False
    assert (again.event_id, again.job_id) == (first.event_id, first.job_id)
    other = queue.submit(ticket(key="d-2"))  # a new event on the same ticket is new work
    assert other.created and other.job_id != first.job_id
    assert queue.depth() == {"queued": 2, "running": 0, "done": 0, "dead": 0}


def test_concurrent_duplicate_submits_make_exactly_one_job(queue, store):
    barrier = threading.Barrier(8)
    results, errors = [], []

    def deliver():
        try:
            barrier.wait()
            results.append(queue.submit(ticket("T-9", "same-delivery")))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(r.created for r in results) == 1
    assert len({(r.event_id, r.job_id) for r in results}) == 1
    assert queue.depth()["queued"] == 1
    assert len(queue.list()) == 1


# -- claim / complete ----------------------------------------------------------------------------------------

def test_claim_then_complete(queue, clock):
    assert queue.claim("w1") is None
    t = ticket(current={"priority": "Low"}, extra={"x": 1})
    sub = queue.submit(t)
    clock.advance(1)
    job = queue.claim("w1")
    assert job is not None and job.id == sub.job_id and job.job_id == sub.job_id
    assert job.attempts == 1 and job.ticket == t
    assert job.lease_expires_at == datetime.fromtimestamp(T0 + 1 + 60, timezone.utc)
    assert queue.claim("w2") is None  # leased
    info = queue.get(job.id)
    assert info.state == "running" and info.lease_owner == "w1"
    assert info.created_at.tzinfo is not None
    queue.complete(job.id, "w1")
    info = queue.get(job.id)
    assert info.state == "done" and info.lease_owner is None and info.finished_at is not None
    assert queue.depth() == {"queued": 0, "running": 0, "done": 1, "dead": 0}
    assert queue.claim("w1") is None
    assert [j.id for j in queue.list(state="done")] == [job.id]
    assert queue.list(state="queued") == []
    assert queue.get(10_000) is None


def test_claim_takes_the_oldest_due_job_first(queue, clock):
    ids = [queue.submit(ticket(f"T-{i}", f"k-{i}")).job_id for i in range(3)]
    clock.advance(1)
    assert [queue.claim("w").id for _ in range(3)] == ids


def test_two_threads_never_claim_the_same_job(store):
    queue = JobQueue(store, lease_seconds=60)
    n = 30
    submitted = {queue.submit(ticket(f"T-{i}", f"k-{i}")).job_id for i in range(2 * n)}
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    errors = []

    def work(name: str) -> None:
        try:
            while (job := queue.claim(name)) is not None:
                claimed[name].append(job.id)
                queue.complete(job.id, name)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(name,)) for name in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    every = claimed["a"] + claimed["b"]
    assert len(every) == len(set(every)) == 2 * n
    assert set(every) == submitted
    assert queue.depth() == {"queued": 0, "running": 0, "done": 2 * n, "dead": 0}


def test_a_crashed_workers_job_is_claimed_again_after_its_lease(queue, clock):
    sub = queue.submit(ticket())
    job = queue.claim("crashed")
    assert job.attempts == 1
    clock.advance(59)
    assert queue.claim("w2") is None  # the lease still holds
    clock.advance(2)
    again = queue.claim("w2")
    assert again is not None and again.id == sub.job_id and again.attempts == 2
    # The stale worker comes back: it must not overwrite the new owner's work.
    with pytest.raises(LeaseLost):
        queue.complete(job.id, "crashed")
    with pytest.raises(LeaseLost):
        queue.fail(job.id, "crashed", "late failure")
    with pytest.raises(LeaseLost):
        queue.extend(job.id, "crashed")
    assert queue.get(job.id).lease_owner == "w2"
    queue.complete(job.id, "w2")
    assert queue.get(job.id).state == "done"
    with pytest.raises(LeaseLost):
        queue.complete(job.id, "w2")  # done is done
    with pytest.raises(KeyError):
        queue.complete(10_000, "w2")


def test_extend_keeps_the_lease(queue, clock):
    queue.submit(ticket())
    job = queue.claim("w1")
    clock.advance(50)
    new_end = queue.extend(job.id, "w1")
    assert new_end == datetime.fromtimestamp(T0 + 50 + 60, timezone.utc)
    clock.advance(50)  # past the first lease, inside the extended one
    assert queue.claim("w2") is None
    queue.complete(job.id, "w1")


def test_lease_expiring_on_the_last_attempt_makes_the_job_dead(queue, clock):
    sub = queue.submit(ticket())
    for attempt in range(1, 4):
        job = queue.claim(f"w{attempt}")
        assert job.attempts == attempt
        clock.advance(61)  # each worker dies holding the job
    assert queue.claim("w4") is None
    info = queue.get(sub.job_id)
    assert info.state == "dead" and "expired" in info.last_error and info.attempts == 3
    assert queue.depth()["dead"] == 1


# -- failure, backoff, dead jobs -----------------------------------------------------------------------------

def test_fail_backs_off_exponentially_and_honours_retry_after(store, clock):
    queue = JobQueue(store, max_attempts=6, lease_seconds=60, backoff_base_seconds=2.0, backoff_max_seconds=20.0,
                     clock=clock)
    sub = queue.submit(ticket())
    delays = []
    for attempt in range(1, 6):
        job = queue.claim("w")
        assert job.attempts == attempt
        assert queue.fail(job.id, "w", f"vendor 503 #{attempt}") == "queued"
        info = queue.get(sub.job_id)
        delay = info.next_attempt_at.timestamp() - clock.now
        delays.append(delay)
        assert queue.claim("w") is None  # not due yet
        if attempt < 5:
            clock.advance(delay)
    # 2, 4, 8, 16 (+ up to 10% jitter), then capped at 20
    for attempt, delay in enumerate(delays[:4], start=1):
        assert 2.0 * 2 ** (attempt - 1) <= delay <= 2.0 * 2 ** (attempt - 1) * 1.1 + 1e-6
    assert delays == sorted(delays) and delays[4] == pytest.approx(20.0)
    assert queue.backoff(sub.job_id, 3) == queue.backoff(sub.job_id, 3)  # seeded: reproducible

    other = queue.submit(ticket("T-2", "k-2"))
    clock.advance(1)
    job = queue.claim("w")
    assert job.id == other.job_id
    assert queue.fail(job.id, "w", "429 Too Many Requests", retry_after=300) == "queued"
    info = queue.get(job.id)
    assert info.next_attempt_at.timestamp() - clock.now == pytest.approx(300)
    assert info.last_error == "429 Too Many Requests" and info.lease_owner is None


def test_dead_after_max_attempts_then_retry_requeues(queue, clock):
    sub = queue.submit(ticket())
    states = []
    for attempt in range(3):
        job = queue.claim("w")
        states.append(queue.fail(job.id, "w", f"boom {attempt}"))
        clock.advance(3600)
    assert states == ["queued", "queued", "dead"]
    assert queue.claim("w") is None
    info = queue.get(sub.job_id)
    assert info.state == "dead" and info.last_error == "boom 2" and info.finished_at is not None
    assert queue.depth() == {"queued": 0, "running": 0, "done": 0, "dead": 1}
    assert [j.id for j in queue.list(state="dead")] == [sub.job_id]
    assert queue.retry([]) == 0
    assert queue.retry([sub.job_id + 100]) == 0
    assert queue.retry() == 1
    info = queue.get(sub.job_id)
    assert info.state == "queued" and info.attempts == 0 and info.finished_at is None
    job = queue.claim("w")
    assert job.id == sub.job_id and job.attempts == 1
    assert queue.retry() == 0  # nothing dead any more


def test_permanent_failure_is_dead_at_once_and_errors_are_truncated(queue):
    queue.submit(ticket())
    job = queue.claim("w")
    huge = "Traceback head\n" + "x" * 20_000 + "\nValueError: the real reason"
    assert queue.fail(job.id, "w", huge, permanent=True) == "dead"
    err = queue.get(job.id).last_error
    assert len(err) <= 4096 and err.startswith("Traceback head") and err.endswith("the real reason")
    assert truncate_error("short") == "short"


def test_from_config_reads_the_queue_section(store):
    from triage_core.config import load_config

    config = load_config(env={}, overrides={"queue": {"max_attempts": 2, "lease_seconds": 30}})
    q = JobQueue.from_config(store, config["queue"])
    assert (q.max_attempts, q.lease_seconds, q.backoff_max_seconds, q.poll_interval_seconds) == (2, 30.0, 600.0, 0.5)
    assert JobQueue.from_config(store, config).max_attempts == 2


# -- records and history -------------------------------------------------------------------------------------

def test_results_writebacks_corrections_and_history(queue, store):
    assert store.ticket_history("generic", "T-1") == {}
    sub = queue.submit(ticket(ref="T-1"))
    job = queue.claim("w")
    fields = {"summary": "VPN drops", "category": "Network", "priority": "High"}
    conf = {"category": 0.93, "priority": 0.71}
    rid = store.record_result(job.id, "generic", "T-1", fields, conf,
                              {"base": "SmolLM2-135M-Instruct", "adapter": "it@3"}, 812)
    assert store.writeback_applied(job.id) is False
    stored_id, stored = store.result_for_job(job.id)
    assert stored_id == rid and stored.ticket == fields and stored.confidence == conf
    assert stored.model == {"base": "SmolLM2-135M-Instruct", "adapter": "it@3"} and stored.latency_ms == 812
    assert store.result_for_job(job.id + 1) is None
    wid = store.record_writeback(job.id, rid, "generic", "T-1", "applied", {"category": "Network"},
                                 {"priority": "High"}, True, "priority below threshold", vendor_status=200,
                                 detail="ok")
    assert store.writeback_applied(job.id) is True
    queue.complete(job.id, "w")
    cid = store.record_correction("generic", "T-1", "category", "Network", "Hardware", result_id=rid)
    with pytest.raises(ValueError):
        store.record_writeback(job.id, rid, "generic", "T-1", "exploded", {}, {}, False, None)

    h = store.ticket_history("generic", "T-1")
    assert h["connector"] == "generic" and h["ref"] == "T-1" and h["state"] == "done"
    assert h["result"]["id"] == rid and h["result"]["ticket"] == fields and h["result"]["confidence"] == conf
    assert h["result"]["model"] == {"base": "SmolLM2-135M-Instruct", "adapter": "it@3"}
    assert h["writeback"]["id"] == wid and h["writeback"]["outcome"] == "applied"
    assert h["writeback"]["fields_sent"] == {"category": "Network"} and h["writeback"]["needs_review"] is True
    assert h["writeback"]["vendor_status"] == 200 and h["writeback"]["note"] == "priority below threshold"
    assert [e["id"] for e in h["history"]["events"]] == [sub.event_id]
    assert h["history"]["events"][0]["payload"]["text"] == "VPN drops for T-1"
    assert [j["id"] for j in h["history"]["jobs"]] == [sub.job_id]
    assert [c["id"] for c in h["history"]["corrections"]] == [cid]
    assert h["history"]["corrections"][0]["new_value"] == "Hardware"
    datetime.fromisoformat(h["result"]["created_at"])  # JSON-ready
    import json
    json.dumps(h)

    counts = store.counts()
    assert counts["jobs"] == {"queued": 0, "running": 0, "done": 1, "dead": 0}
    assert counts["writebacks"] == {"applied": 1, "shadow": 0, "skipped": 0, "failed": 0, "filtered": 0}
    assert counts["results"] == 1 and counts["corrections"] == 1
    assert store.ticket_history("generic", "T-other") == {}


# -- a second process ----------------------------------------------------------------------------------------

def _child_worker(url: str, ready, go, out) -> None:
    """Runs in a spawned process: submit one job, then claim and complete jobs until none is left."""
    import time

    from triage_core.queue import JobQueue as Q
    from triage_core.store import Store as S

    store = S(url)
    queue = Q(store, lease_seconds=60)
    queue.submit(ticket("FROM-CHILD", "child-1"))
    ready.set()
    go.wait(60)
    claimed = []
    while (job := queue.claim("child")) is not None:
        claimed.append(job.id)
        time.sleep(0.005)
        queue.complete(job.id, "child")
    store.dispose()
    out.put(claimed)


def test_a_second_process_shares_the_queue(db_url):
    store = Store(db_url)
    store.upgrade()
    queue = JobQueue(store, lease_seconds=60)
    try:
        ids = {queue.submit(ticket(f"T-{i}", f"k-{i}")).job_id for i in range(30)}
        ctx = multiprocessing.get_context("spawn")
        ready, go, out = ctx.Event(), ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=_child_worker, args=(db_url, ready, go, out))
        proc.start()
        assert ready.wait(60), "the child process did not start"
        child_job = [j for j in queue.list(state="queued", limit=100) if j.ticket_ref == "FROM-CHILD"]
        assert len(child_job) == 1  # the child's write is visible here
        ids.add(child_job[0].id)
        go.set()
        mine = []
        while (job := queue.claim("parent")) is not None:
            mine.append(job.id)
            threading.Event().wait(0.005)
            queue.complete(job.id, "parent")
        theirs = out.get(timeout=60)
        proc.join(30)
        assert proc.exitcode == 0
        assert not set(mine) & set(theirs)
        assert set(mine) | set(theirs) == ids and len(mine) + len(theirs) == len(ids)
        assert theirs, "the second process claimed nothing"
        assert queue.depth()["done"] == len(ids)
        assert {j.lease_owner for j in queue.list(state="done", limit=100)} == {None}
    finally:
        store.dispose()


def test_release_hands_a_job_back_at_once_without_charging_the_attempt(queue, clock):
    """A clean stop (SIGTERM) that cannot finish a job gives it back: queued, due now, the attempt not counted."""
    sub = queue.submit(ticket())
    job = queue.claim("stopping")
    queue.release(job.id, "stopping")
    info = queue.get(sub.job_id)
    assert info.state == "queued" and info.attempts == 0 and info.lease_owner is None
    assert info.lease_expires_at is None and info.last_error is None
    again = queue.claim("fresh")
    assert again.id == sub.job_id and again.attempts == 1
    with pytest.raises(LeaseLost):
        queue.release(job.id, "stopping")  # no longer its job
    queue.complete(again.id, "fresh")
