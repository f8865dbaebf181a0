"""The daemon's processes as they run in production: `serve` on gunicorn, `serve --workers 0` (ingest and API
only), `ticket-triage worker` (jobs, no HTTP), and a clean stop on SIGTERM. Real processes, real HTTP on
127.0.0.1, a real SQLite file, the real model, a local callback server standing in for the ticketing system."""
from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from test_daemon import EXE, HANG, Callback, Daemon, ticket

pytestmark = pytest.mark.slow  # every test starts real daemon processes, which load the model

SHUTDOWN = 8  # server.shutdown_seconds for these tests: short, so a cut batch is visible


@pytest.fixture
def callback():
    cb = Callback()
    yield cb
    cb.close()


def states(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())


def start_worker(daemon: Daemon, log: Path) -> subprocess.Popen:
    """`ticket-triage worker` on the daemon's database, with the daemon's settings."""
    return subprocess.Popen([EXE, "worker"], env=daemon.env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_states(db: Path, done: int, timeout: float = 300) -> dict[str, int]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        now = states(db)
        if now.get("done", 0) >= done and not now.get("queued") and not now.get("running"):
            return now
        time.sleep(0.3)
    raise AssertionError(f"jobs not finished: {states(db)}")


def stop(proc: subprocess.Popen) -> tuple[int, float]:
    """SIGTERM; (exit code, seconds to exit)."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(SHUTDOWN + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("did not exit after SIGTERM") from None
    return code, time.monotonic() - t0


def test_sigterm_to_a_busy_daemon_exits_0_in_time_and_a_fresh_worker_does_every_accepted_job(tmp_path):
    # The first write-back hangs (the ticketing system never answers): the batch in hand cannot finish in time.
    itsm = Callback(script=[HANG])
    env = {"TRIAGE_SERVER_SHUTDOWN_SECONDS": str(SHUTDOWN), "TRIAGE_SERVER_WORKERS": "1",
           "TRIAGE_CONNECTORS_SETTINGS": "{generic: {timeout: 120}}"}
    daemon = Daemon(tmp_path, **env)
    worker = None
    try:
        daemon.start()
        refs = [f"T-{i}" for i in range(5)]
        for ref in refs:
            r = daemon.webhook(ticket(ref, itsm))
            assert r.status_code == 202, r.text
        assert itsm.hung.wait(180), "no write-back started"
        code, seconds = stop(daemon.proc)
        assert code == 0, daemon.log.read_text()[-3000:]
        assert seconds <= SHUTDOWN + 2, seconds  # within server.shutdown_seconds (and the interpreter's exit)
        left = states(daemon.db)
        assert "running" not in left and "dead" not in left, left  # the cut batch was handed back, not leased
        assert sum(left.values()) == len(refs)
        assert "handed back to the queue" in daemon.log.read_text()
        itsm.release()  # the hung write-back is dropped unanswered

        worker = start_worker(daemon, tmp_path / "worker.log")
        assert wait_states(daemon.db, done=len(refs)) == {"done": len(refs)}
        assert sorted(itsm.ids()) == refs  # every accepted ticket written back, the cut one included
        with sqlite3.connect(daemon.db) as conn:
            results = dict(conn.execute("SELECT ticket_ref, count(*) FROM triage_results GROUP BY ticket_ref"))
            owners = {r[0] for r in conn.execute("SELECT DISTINCT lease_owner FROM jobs")}
        assert all(n >= 1 for n in results.values()) and set(results) == set(refs)
        assert owners == {None}
        code, seconds = stop(worker)
        assert code == 0 and seconds <= SHUTDOWN + 2, (code, seconds)
        assert "ticket-triage worker stopped" in (tmp_path / "worker.log").read_text()
    finally:
        itsm.close()
        daemon.stop()
        if worker is not None and worker.poll() is None:
            worker.kill()


def test_an_ingest_only_server_queues_and_a_worker_process_does_the_work(tmp_path, callback):
    """`serve --workers 0` accepts webhooks and answers the API with no worker thread; a `ticket-triage worker`
    process on the same database triages and writes back."""
    daemon = Daemon(tmp_path, TRIAGE_SERVER_WORKERS="0")
    worker = None
    try:
        daemon.start()
        ready = daemon.api("/readyz").json()
        assert ready["ready"] and ready["workers"]
        for ref in ("W-1", "W-2"):
            assert daemon.webhook(ticket(ref, callback)).status_code == 202
        assert daemon.api("/v1/jobs").json()["depth"]["queued"] == 2  # nobody here to claim them
        worker = start_worker(daemon, tmp_path / "worker.log")
        depth = daemon.wait_depth(done=2)
        assert depth["dead"] == 0 and sorted(callback.ids()) == ["W-1", "W-2"]
        assert stop(worker)[0] == 0
        assert stop(daemon.proc)[0] == 0
    finally:
        daemon.stop()
        if worker is not None and worker.poll() is None:
            worker.kill()
