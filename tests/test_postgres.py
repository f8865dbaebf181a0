"""PostgreSQL as the shared database of several processes: the migration advisory lock.

Runs against conftest.py's PostgreSQL (a throwaway cluster, or $TRIAGE_TEST_POSTGRES_URL); skipped without one
locally, failing in CI.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from triage_core.store import Store, alembic_config

pytestmark = pytest.mark.postgres

EXE = shutil.which("ticket-triage", path=str(Path(sys.executable).parent)) or "ticket-triage"


def revisions() -> list[str]:
    """Every migration revision, oldest first."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def _upgrade_child(url: str, barrier, out) -> None:
    """In a spawned process: wait for the other one, upgrade, report which revisions this process ran."""
    ran: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found = re.search(r"Running upgrade .*-> (\w+)", record.getMessage())
            if found:
                ran.append(found.group(1))

    logger = logging.getLogger("alembic.runtime.migration")
    logger.setLevel(logging.INFO)
    logger.addHandler(Catch())
    store = Store(url)
    barrier.wait(60)
    store.upgrade()
    store.dispose()
    out.put((os.getpid(), ran))


def test_two_processes_upgrading_an_empty_database_at_once_migrate_it_once(postgres_url):
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_upgrade_child, args=(postgres_url, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    ran = sorted(results.values(), key=len)
    assert ran == [[], revisions()]  # one process ran every migration once, the other found the schema at head
    store = Store(postgres_url)
    try:
        assert store.current_revision() == revisions()[-1]
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
    finally:
        store.dispose()


@pytest.mark.slow
def test_two_daemons_started_at_once_on_an_empty_database_migrate_it_once_and_both_serve(postgres_url, tmp_path):
    """Two `ticket-triage serve` processes, started together on an empty PostgreSQL database: the advisory lock
    lets one run the migrations (alembic logs each step at info level, -v) and both answer /readyz."""
    from test_daemon import free_port

    env = {**os.environ, "TRIAGE_DATABASE_URL": postgres_url, "TRIAGE_GENERIC_SECRET": "s",
           "TRIAGE_API_TOKEN": "t", "TRIAGE_SERVER_WORKERS": "1"}
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"daemon-{i}.log" for i in range(2)]
    procs = [subprocess.Popen([EXE, "-v", "serve", "--port", str(port)], env=env, stdout=log.open("wb"),
                              stderr=subprocess.STDOUT, cwd=tmp_path) for port, log in zip(ports, logs, strict=True)]
    try:
        deadline = time.time() + 240
        ready = [False, False]
        while not all(ready) and time.time() < deadline:
            for i, (proc, port) in enumerate(zip(procs, ports, strict=True)):
                assert proc.poll() is None, logs[i].read_text()[-3000:]
                try:
                    ready[i] = ready[i] or requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).ok
                except (requests.ConnectionError, requests.Timeout):
                    pass
            time.sleep(0.5)
        assert all(ready), [log.read_text()[-2000:] for log in logs]
        upgrades = [re.findall(r"Running upgrade .*-> (\w+)", log.read_text()) for log in logs]
        assert sorted(upgrades, key=len) == [[], revisions()], upgrades
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.slow
def test_two_worker_processes_share_one_queue_and_one_finishes_the_jobs_of_the_other_killed_mid_run(
        postgres_url, tmp_path):
    """One ingest process (`serve --workers 0`) and two `ticket-triage worker` processes on one PostgreSQL
    database; signed webhooks with 10% redeliveries; one worker is SIGKILLed mid-run. Every unique ticket is
    triaged exactly once and written back at least once (a repeat only for a job cut between the callback's 200
    and its record: counted), none is lost or dead, and the survivor finishes the killed worker's jobs once their
    leases expire. TRIAGE_TEST_SCALE_TICKETS sets the number of unique tickets (40 by default; the issue: 300)."""
    from test_daemon import Callback, Daemon, ticket

    unique = int(os.environ.get("TRIAGE_TEST_SCALE_TICKETS", "40"))
    callback = Callback()
    # Leases outlast a batch of 2 on a busy CPU (the worker does not extend them mid-batch), so no live worker's
    # job is taken over; only the victim's, 30 s after the kill.
    env = {"TRIAGE_DATABASE_URL": postgres_url, "TRIAGE_SERVER_WORKERS": "0", "TRIAGE_QUEUE_LEASE_SECONDS": "30",
           "TRIAGE_MODEL_THREADS": "1", "TRIAGE_DECODING_BATCH_SIZE": "2"}
    ingest = Daemon(tmp_path, **env)
    workers: list[subprocess.Popen] = []
    store = Store(postgres_url)
    try:
        ingest.start()
        for i in range(2):
            log = (tmp_path / f"worker-{i}.log").open("wb")
            workers.append(subprocess.Popen([EXE, "worker", "--threads", "1"], env=ingest.env, stdout=log,
                                            stderr=subprocess.STDOUT))
        refs = [f"S-{i}" for i in range(unique)]
        duplicates = 0
        for i, ref in enumerate(refs):
            payload = ticket(ref, callback, text=f"Ticket {i}: the VPN drops every few minutes on floor {i % 7}")
            assert ingest.webhook(payload).status_code == 202
            if i % 10 == 3:  # a redelivery of the same event: acknowledged, not queued again
                again = ingest.webhook(payload)
                assert again.status_code == 202 and again.json()["accepted"][0]["duplicate"] is True
                duplicates += 1
        assert duplicates == unique // 10

        def jobs() -> list[tuple]:
            with store.engine.connect() as conn:
                return conn.exec_driver_sql("SELECT id, state, lease_owner, attempts FROM jobs").all()

        victim, survivor = workers
        mark = f":{victim.pid}:"
        deadline = time.time() + 600
        while True:  # the victim has done some work and holds a lease right now
            rows = jobs()
            held = [r[0] for r in rows if r[1] == "running" and r[2] and mark in r[2]]
            if held and sum(r[1] == "done" for r in rows) >= unique // 4:
                break
            assert time.time() < deadline and victim.poll() is None and survivor.poll() is None, rows
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        # What it still held when it died (a job it finished in the last milliseconds is not among them).
        held = [r[0] for r in jobs() if r[1] == "running" and r[2] and mark in r[2]]
        assert held, "the victim finished its batch just before the kill: nothing to take over"

        deadline = time.time() + 900
        while True:
            rows = jobs()
            if all(r[1] in ("done", "dead") for r in rows):
                break
            assert time.time() < deadline and survivor.poll() is None, f"not finished: {rows}"
            time.sleep(0.3)
        assert len(rows) == unique and {r[1] for r in rows} == {"done"}  # none lost, none dead
        taken_over = [r for r in rows if r[0] in held]
        assert taken_over and all(r[3] >= 2 for r in taken_over)  # claimed again after the victim's lease
        with store.engine.connect() as conn:
            results = dict(conn.exec_driver_sql(
                "SELECT ticket_ref, count(*) FROM triage_results GROUP BY ticket_ref").all())
            recorded = dict(conn.exec_driver_sql(
                "SELECT ticket_ref, count(*) FROM writebacks WHERE outcome = 'applied' GROUP BY ticket_ref").all())
        assert {r: n for r, n in results.items() if n != 1} == {} and set(results) == set(refs)  # once each
        assert {r: n for r, n in recorded.items() if n != 1} == {} and set(recorded) == set(refs)
        received = {ref: callback.ids().count(ref) for ref in refs}
        assert all(n >= 1 for n in received.values())  # written back at least once
        repeats = {ref: n - 1 for ref, n in received.items() if n > 1}
        assert sum(repeats.values()) <= len(held)  # only jobs cut between the 200 and its record
        print(f"\n{unique} tickets (+{duplicates} redeliveries), 2 workers, one SIGKILLed holding {len(held)} "
              f"job(s): all done, {len(taken_over)} taken over after their lease, write-back repeats {repeats}")
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in workers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        ingest.stop()
        callback.close()
        store.dispose()
