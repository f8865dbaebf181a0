"""README promises about the daemon that no other test checked: the /v1 API without a token, /readyz, the webhook
URL check, a 4xx write-back, `jobs list --state dead`, `db upgrade`, and what the logs never show. Real HTTP on
127.0.0.1, real SQLite files, the real model (in-process `live_daemon`, or a real `ticket-triage serve`)."""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import time

import pytest
import requests

from triage_core.queue import InboundTicket, JobQueue
from triage_core.store import Store

from test_cli import EXE
from test_daemon import SECRET, TOKEN, Callback, Daemon, verify

GENERIC = {"connectors": {"enabled": ["generic"]}}


def signed(url: str, payload: dict, secret: str = SECRET) -> requests.Response:
    from connectors.generic import signed_headers

    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **signed_headers(secret.encode(), body)}
    return requests.post(url + "/webhooks/generic", data=body, headers=headers, timeout=30)


def test_v1_answers_503_when_the_api_token_is_unset(live_daemon):
    daemon = live_daemon(GENERIC, {"TRIAGE_GENERIC_SECRET": SECRET}, workers=0)
    auth = {"Authorization": "Bearer anything"}
    for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/triage"), ("GET", "/v1/tickets/generic/X-1")):
        for headers in ({}, auth):
            r = requests.request(method, daemon.url + path, json={"text": "vpn down"}, headers=headers, timeout=30)
            assert r.status_code == 503, (method, path, r.status_code)
            assert r.json() == {"error": "the API is disabled: set TRIAGE_API_TOKEN"}
    # the rest of the daemon works: webhooks are taken, health and readiness answer
    assert signed(daemon.url, {"id": "X-1", "text": "VPN drops"}).status_code == 202
    assert requests.get(daemon.url + "/healthz", timeout=10).status_code == 200
    assert requests.get(daemon.url + "/readyz", timeout=10).status_code == 200


def test_v1_with_a_token_answers_401_then_200(live_daemon):
    """The contrast to the test above: the same routes with TRIAGE_API_TOKEN set."""
    daemon = live_daemon(GENERIC, {"TRIAGE_GENERIC_SECRET": SECRET, "TRIAGE_API_TOKEN": TOKEN}, workers=0)
    assert requests.get(daemon.url + "/v1/jobs", timeout=10).status_code == 401
    r = requests.get(daemon.url + "/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 200 and r.json()["jobs"] == []


def test_readyz_answers_503_while_the_database_is_unreachable(tmp_path, live_daemon):
    folder = tmp_path / "db"
    folder.mkdir()
    daemon = live_daemon({**GENERIC, "database": {"url": f"sqlite:///{folder / 'triage.db'}"}},
                         {"TRIAGE_GENERIC_SECRET": SECRET}, workers=0)
    ready = requests.get(daemon.url + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["database"] is True
    folder.rename(tmp_path / "db-away")  # the database file is gone from its path...
    daemon.store.engine.dispose()  # ...and no pooled connection still holds it open
    try:
        gone = requests.get(daemon.url + "/readyz", timeout=10)
        assert gone.status_code == 503
        assert gone.json()["ready"] is False and gone.json()["database"] is False
        assert gone.json()["workers"] is True and gone.json()["model"] is True
    finally:
        (tmp_path / "db-away").rename(folder)
    back = requests.get(daemon.url + "/readyz", timeout=10)
    assert back.status_code == 200 and back.json()["ready"] is True


def test_readyz_answers_503_when_the_workers_are_dead(live_daemon):
    daemon = live_daemon(GENERIC, {"TRIAGE_GENERIC_SECRET": SECRET}, workers=2)
    ready = requests.get(daemon.url + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["workers"] is True
    threads, stop = daemon.ctx.threads, daemon.ctx.stopping
    assert len(threads) == 2
    stop.set()
    threads[0].join(30)  # one of two workers gone is already not ready
    assert not threads[0].is_alive()
    dead = requests.get(daemon.url + "/readyz", timeout=10)
    assert dead.status_code == 503
    assert dead.json()["workers"] is False and dead.json()["database"] is True


def test_get_on_a_webhook_url_answers_200(live_daemon):
    daemon = live_daemon(GENERIC, {"TRIAGE_GENERIC_SECRET": SECRET}, workers=0)
    r = requests.get(daemon.url + "/webhooks/generic", timeout=10)
    assert r.status_code == 200 and r.json() == {"connector": "generic", "ok": True}
    assert requests.get(daemon.url + "/webhooks/nope", timeout=10).status_code == 404


@pytest.mark.parametrize("status, message", [(404, "Ticket INC-9 was deleted"),
                                             (403, "The bot account may not edit tickets in project HR")])
def test_a_4xx_on_write_back_parks_the_job_at_once_with_the_vendors_message(live_daemon, status, message):
    callback = Callback(script=[(status, {"Content-Type": "application/json"}, json.dumps({"error": message}))])
    try:
        daemon = live_daemon({**GENERIC, "queue": {"max_attempts": 6}}, {"TRIAGE_GENERIC_SECRET": SECRET})
        assert signed(daemon.url, {"id": "INC-9", "text": "Outlook cannot send mail",
                                   "callback_url": callback.url}).status_code == 202
        daemon.wait_idle(done=0, dead=1)
        time.sleep(1.5)  # longer than the backoff this daemon would use for a retry (0.2 s, at most 1 s)
        assert len(callback.attempts) == 1  # not retried
        verify(callback.attempts[0])
        [job] = daemon.ctx.queue.list(state="dead")
        assert job.attempts == 1
        assert f"{status}" in job.last_error and message in job.last_error
        history = daemon.store.ticket_history("generic", "INC-9")
        assert history["state"] == "dead"
        [wb] = history["history"]["writebacks"]
        assert wb["outcome"] == "failed" and wb["vendor_status"] == status and message in wb["detail"]
    finally:
        callback.close()


def test_jobs_list_state_dead(tmp_path):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    store = Store(url)
    store.upgrade()
    queue = JobQueue(store)
    for ref in ("A-1", "A-2", "A-3"):
        queue.submit(InboundTicket(connector="generic", ref=ref, event_key=ref, text=f"ticket {ref}"))
    job = queue.claim("w")
    queue.fail(job.id, "w", "write-back failed: callback answered 404 Not Found: ticket deleted", permanent=True)
    store.dispose()
    env = {**os.environ, "TRIAGE_DATABASE_URL": url}
    proc = subprocess.run([EXE, "jobs", "list", "--state", "dead", "--json"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [(j["id"], j["state"], j["attempts"]) for j in data["jobs"]] == [(job.id, "dead", 1)]
    assert data["jobs"][0]["ticket_ref"] == job.ticket.ref
    assert data["depth"] == {"queued": 2, "running": 0, "done": 0, "dead": 1}
    proc = subprocess.run([EXE, "jobs", "list", "--state", "dead"], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "depth: queued 2, running 0, done 0, dead 1"
    assert len(lines) == 2 and re.search(rf"\b{job.id}\s+dead\s+generic:{job.ticket.ref} attempts 1 "
                                         r"write-back failed: callback answered 404", lines[1]), lines
    proc = subprocess.run([EXE, "jobs", "list", "--state", "gone"], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode != 0


def test_db_upgrade_creates_the_schema_and_a_rerun_is_a_noop(tmp_path):
    path = tmp_path / "fresh.db"
    env = {**os.environ, "TRIAGE_DATABASE_URL": f"sqlite:///{path}"}
    for _ in range(2):
        proc = subprocess.run([EXE, "db", "upgrade"], capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr
        assert f"database sqlite:///{path} is at the newest version" in proc.stdout
        with sqlite3.connect(path) as db:
            assert db.execute("select version_num from alembic_version").fetchall() == [("0004",)]
            tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
        assert {"inbound_events", "jobs", "triage_results", "writebacks", "corrections", "model_versions",
                "retrain_runs", "connector_cursors"} <= tables
    bad = {**os.environ, "TRIAGE_DATABASE_URL": f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'x.db'}"}
    proc = subprocess.run([EXE, "db", "upgrade"], capture_output=True, text=True, timeout=120, env=bad)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: database.url: cannot upgrade")


@pytest.mark.slow
def test_info_logs_never_show_secrets_or_ticket_bodies(tmp_path):
    """A real `ticket-triage -v serve` (INFO logging) through accepted, duplicate, forged, malformed and over-long
    webhooks, a refused write-back, the sync API with a good and a bad token: its whole log is searched."""
    body_words = ["Quetzalcoatl", "zanzibar-7731", "Wakanda"]  # words that only the ticket bodies contain
    callback = Callback(script=[(403, {}, '{"error": "no permission on this project"}')])
    d = Daemon(tmp_path, cli_args=("-v",), TRIAGE_DECODING_MAX_TICKET_TOKENS="48",
               TRIAGE_QUEUE_MAX_ATTEMPTS="2")
    d.start()
    try:
        text = f"The {body_words[0]} printer prints only {body_words[1]} pages; badge of {body_words[2]} fails"
        first = {"id": "LOG-1", "text": text, "callback_url": callback.url}
        assert d.webhook(first).status_code == 202
        assert d.webhook(first).status_code == 202  # a duplicate
        assert d.webhook({"id": "LOG-2", "text": text * 40}).status_code == 202  # cut: warned
        assert d.webhook({"id": "LOG-3", "text": text}, secret="wrong").status_code == 401
        assert d.webhook(f'{{"id": "LOG-4", "text": "{text}"'.encode()).status_code == 400
        assert d.webhook({"id": "LOG-5", "text": text, "callback_url": "http://evil.example/x"}).status_code == 422
        assert d.webhook({"id": "LOG-6", "text": text, "admin": True}).status_code == 400
        r = requests.post(d.base + "/v1/triage", json={"text": text}, headers={"Authorization": f"Bearer {TOKEN}"},
                          timeout=120)
        assert r.status_code == 200
        r = requests.post(d.base + "/v1/triage", json={"text": text}, timeout=30,
                          headers={"Authorization": f"Bearer {TOKEN}-wrong"})
        assert r.status_code == 401
        d.wait_depth(done=1, dead=1)
    finally:
        d.stop()
        callback.close()
    log = d.log.read_text(errors="replace")
    assert "INFO" in log and "webhook generic refused: 401" in log  # INFO lines were logged...
    assert re.search(r"attempt 1: write-back failed: .*403.*no permission on this project", log)  # and failures
    for secret in (SECRET, TOKEN):
        assert secret not in log
    for word in body_words:
        assert word not in log, word
