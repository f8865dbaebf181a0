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
                              stderr=subprocess.STDOUT, cwd=tmp_path) for port, log in zip(ports, logs)]
    try:
        deadline = time.time() + 240
        ready = [False, False]
        while not all(ready) and time.time() < deadline:
            for i, (proc, port) in enumerate(zip(procs, ports)):
                assert proc.poll() is None, logs[i].read_text()[-3000:]
                try:
                    ready[i] = ready[i] or requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).ok
                except requests.ConnectionError:
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
