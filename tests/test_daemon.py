"""The daemon as it runs: a real `ticket-triage serve` process, real HTTP on 127.0.0.1, a real SQLite file, the
real model, and a local callback server standing in for the ticketing system."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from test_cli import EXE

pytestmark = pytest.mark.slow  # every test starts a real daemon process, which loads the model

SECRET = "test-webhook-secret"
TOKEN = "test-api-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HANG = "hang"  # a script entry: hold the request until `release()`, then drop it unanswered
HOLD = "hold"  # a script entry: hold the request until `release()`, then answer 200


class Callback:
    """A local stand-in for the ITSM. Records every write-back attempt (raw body, headers, the status it answered,
    when it arrived), whatever it answered; answers from a script of (status, headers[, body]) entries or HANG,
    then 200."""

    def __init__(self, script: list | None = None):
        self.attempts: list[dict] = []
        self.script = list(script or [])
        self.lock = threading.Lock()
        self.hung = threading.Event()  # set when a HANG entry is reached
        self._release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                at = time.monotonic()
                with outer.lock:
                    entry = outer.script.pop(0) if outer.script else (200, {})
                    status = None if entry == HANG else 200 if entry == HOLD else entry[0]
                    outer.attempts.append({"body": json.loads(raw), "raw": raw, "headers": dict(self.headers),
                                           "status": status, "at": at})
                if entry in (HANG, HOLD):
                    outer.hung.set()
                    outer._release.wait(600)
                    if entry == HANG:
                        self.close_connection = True
                        return
                    entry = (200, {})
                reply = entry[2].encode() if len(entry) > 2 else b""
                self.send_response(status)
                for k, v in entry[1].items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/writeback"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def received(self) -> list[dict]:
        """The write-backs it accepted (answered 200)."""
        with self.lock:
            return [a for a in self.attempts if a["status"] == 200]

    def ids(self) -> list[str]:
        """Ticket ids of the accepted write-backs, in arrival order, repeats included."""
        return [r["body"]["id"] for r in self.received]

    def release(self) -> None:
        self._release.set()

    def close(self):
        self.release()
        self.server.shutdown()


def verify(attempt: dict) -> None:
    """Check a callback's signature (timestamp and body) as a receiver would, with the generic connector's own
    check; raises WebhookRejected when it does not verify."""
    from connectors.generic import verify as verify_signed

    verify_signed(SECRET.encode(), attempt["raw"], attempt["headers"])


class Daemon:
    def __init__(self, tmp: Path, cli_args: tuple[str, ...] = (), **env: str):
        self.cli_args = cli_args
        self.port = free_port()
        self.db = tmp / "triage.db"
        self.env = {**os.environ, "TRIAGE_GENERIC_SECRET": SECRET, "TRIAGE_API_TOKEN": TOKEN,
                    "TRIAGE_DATABASE_URL": f"sqlite:///{self.db}", "TRIAGE_QUEUE_POLL_INTERVAL_SECONDS": "0.1",
                    "TRIAGE_QUEUE_BACKOFF_BASE_SECONDS": "0.2", "TRIAGE_QUEUE_BACKOFF_MAX_SECONDS": "1",
                    "TRIAGE_QUEUE_LEASE_SECONDS": "30", **env}  # leases outlast a batch on a busy CPU
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"daemon-{self.port}.log"
        self.proc = None

    def start(self) -> "Daemon":
        self.proc = subprocess.Popen([EXE, *self.cli_args, "serve", "--port", str(self.port)], env=self.env,
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.log.read_text()[-2000:]}")
            try:
                if requests.get(self.base + "/readyz", timeout=1).status_code == 200:
                    return self
            except (requests.ConnectionError, requests.Timeout):  # gunicorn queues connections while it loads
                pass
            time.sleep(0.3)
        raise RuntimeError("daemon not ready in time")

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def webhook(self, payload: dict | bytes, secret: str = SECRET, delivery: str | None = None, **headers):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        ts = str(int(time.time()))  # the wire format, written out: HMAC-SHA256 of "<timestamp>.<body>"
        sig = "sha256=" + hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
        h = {"Content-Type": "application/json", "X-Triage-Signature": sig, "X-Triage-Timestamp": ts, **headers}
        if delivery:
            h["X-Triage-Delivery"] = delivery
        return requests.post(self.base + "/webhooks/generic", data=body, headers=h, timeout=30)

    def api(self, path: str):
        return requests.get(self.base + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)

    def wait_depth(self, done: int, dead: int = 0, timeout: float = 240) -> dict:
        deadline = time.time() + timeout
        depth = {}
        while time.time() < deadline:
            depth = self.api("/v1/jobs").json()["depth"]
            if depth.get("done", 0) >= done and depth.get("dead", 0) >= dead and not depth.get("queued") \
                    and not depth.get("running"):
                return depth
            time.sleep(0.3)
        raise AssertionError(f"jobs not finished: {depth}")


@pytest.fixture
def callback():
    cb = Callback()
    yield cb
    cb.close()


def ticket(ref: str, cb: Callback, text: str = "The VPN drops every few minutes for the whole sales team") -> dict:
    return {"id": ref, "text": text, "callback_url": cb.url}


def test_signed_webhook_is_written_back_exactly_once(tmp_path, callback):
    d = Daemon(tmp_path).start()
    try:
        r = d.webhook(ticket("T-1", callback), delivery="d-1")
        assert r.status_code == 202, r.text
        assert r.json()["accepted"][0]["duplicate"] is False
        again = d.webhook(ticket("T-1", callback), delivery="d-1")
        assert again.status_code == 202 and again.json()["accepted"][0]["duplicate"] is True
        d.wait_depth(done=1)
        time.sleep(0.5)
        assert len(callback.attempts) == 1 and callback.ids() == ["T-1"]
        sent = callback.received[0]
        verify(sent)
        from connectors.base import WebhookRejected

        with pytest.raises(WebhookRejected):
            verify({**sent, "raw": sent["raw"].replace(b'"T-1"', b'"T-2"')})  # the signature covers the body
        with pytest.raises(WebhookRejected):
            verify({**sent, "headers": {**sent["headers"], "X-Triage-Timestamp": "1700000000"}})  # and the time
        # the receiver can drop repeats by X-Triage-Delivery: the webhook's idempotency key
        assert sent["headers"]["X-Triage-Delivery"] == hashlib.sha256(json.dumps(ticket("T-1", callback)).encode()
                                                                      ).hexdigest()
        assert set(sent["body"]["ticket"]) <= {"summary", "category", "subcategory", "priority",
                                               "assignment_group", "request_type"}
        assert "SmolLM2" in sent["body"]["note"]

        history = d.api("/v1/tickets/generic/T-1").json()
        assert history["state"] == "done"
        events, results, writebacks = (history["history"][k] for k in ("events", "results", "writebacks"))
        assert len(events) == 1 and len(results) == 1 and len(writebacks) == 1
        assert writebacks[0]["outcome"] == "applied" and writebacks[0]["vendor_status"] == 200
        assert writebacks[0]["fields_sent"] == sent["body"]["ticket"]  # what was recorded is what was sent
        assert writebacks[0]["note"] == sent["body"]["note"]
        assert history["result"]["ticket"] == results[0]["fields"]
        assert {k: v for k, v in results[0]["fields"].items() if k in sent["body"]["ticket"]} == sent["body"]["ticket"]
        assert requests.get(d.base + "/webhooks/generic", timeout=10).json() == {"connector": "generic", "ok": True}
        metrics = requests.get(d.base + "/metrics", timeout=10).text
        assert 'triage_webhooks_duplicate_total{connector="generic"} 1.0' in metrics
        assert 'triage_writebacks_total{connector="generic",outcome="applied"} 1.0' in metrics
        assert "triage_latency_seconds_bucket" in metrics and "triage_model_info" in metrics
    finally:
        d.stop()


def test_bad_requests_are_refused_and_nothing_is_stored(tmp_path, callback):
    d = Daemon(tmp_path, TRIAGE_SERVER_MAX_BODY_BYTES="4096").start()
    try:
        forged = d.webhook(ticket("F-1", callback), secret="wrong")
        assert forged.status_code == 401
        unsigned = requests.post(d.base + "/webhooks/generic", json=ticket("F-2", callback), timeout=10)
        assert unsigned.status_code == 401
        assert d.webhook(b'{"id": "M-1", "text": ').status_code == 400
        assert d.webhook('{"id": "N-1", "text": "caf\xe9"}'.encode("cp1252")).status_code == 400
        assert d.webhook({"id": "E-1", "text": ""}).status_code == 400
        big = d.webhook({"id": "B-1", "text": "x" * 10000, "callback_url": callback.url})
        assert big.status_code == 413
        assert d.webhook({"id": "H-1", "text": "vpn", "callback_url": "http://example.com/hook"}).status_code == 422
        assert requests.post(d.base + "/webhooks/nope", data=b"{}", timeout=10).status_code == 404
        assert d.api("/v1/tickets/generic/F-1").status_code == 404
        assert requests.get(d.base + "/v1/jobs", timeout=10).status_code == 401
        assert requests.get(d.base + "/v1/jobs", headers={"Authorization": "Bearer nope"},
                            timeout=10).status_code == 401
        assert d.api("/v1/jobs").json()["depth"].get("queued", 0) == 0
        metrics = requests.get(d.base + "/metrics", timeout=10).text
        assert 'triage_webhooks_refused_total{connector="generic",status="401"} 2.0' in metrics
    finally:
        d.stop()
    with sqlite3.connect(d.db) as db:
        assert db.execute("select count(*) from inbound_events").fetchone()[0] == 0


def test_sync_triage_api(tmp_path):
    d = Daemon(tmp_path, TRIAGE_SERVER_WORKERS="0").start()
    try:
        r = requests.post(d.base + "/v1/triage", json={"text": "Outlook crashes on start"},
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert r.status_code == 200
        assert set(r.json()) >= {"ticket", "confidence", "model", "latency_ms"}
        assert requests.post(d.base + "/v1/triage", json={"text": "x"}, timeout=10).status_code == 401
        bad = requests.post(d.base + "/v1/triage", data=b"nope", headers={"Authorization": f"Bearer {TOKEN}"},
                            timeout=10)
        assert bad.status_code == 400
        assert requests.get(d.base + "/healthz", timeout=10).json() == {"status": "ok"}
    finally:
        d.stop()


def test_sigkill_mid_queue_then_restart_finishes_every_job_once(tmp_path):
    # The third write-back hangs: the daemon is killed while it waits for the answer, so no write-back is in the
    # window between "the receiver accepted it" and "the daemon recorded it".
    callback = Callback(script=[(200, {}), (200, {}), HANG])
    # One worker per run, so a short lease (the killed run's jobs come back 5 s after the restart) is never
    # taken over from a live worker in the middle of a slow batch.
    single = {"TRIAGE_SERVER_WORKERS": "1", "TRIAGE_QUEUE_LEASE_SECONDS": "5"}
    d = Daemon(tmp_path, **single).start()
    n = 12
    try:
        for i in range(n):
            assert d.webhook(ticket(f"K-{i}", callback, f"Printer {i} on floor {i % 4} jams"), delivery=f"k{i}"
                             ).status_code == 202
        assert callback.hung.wait(240), "the daemon never reached the third write-back"
        d.stop(signal.SIGKILL)
        callback.release()
        before = callback.ids()
        hung = callback.attempts[2]["body"]["id"]
        assert len(before) == 2 and hung not in before
        d2 = Daemon(tmp_path, **single)
        d2.port, d2.base = d.port, d.base
        d2.start()
    except BaseException:
        d.stop(signal.SIGKILL)
        callback.close()
        raise
    try:
        d2.wait_depth(done=n)
        delivered = Counter(callback.ids())
        assert delivered == Counter(f"K-{i}" for i in range(n)), delivered  # each accepted exactly once
        again = [a for a in callback.attempts if a["body"]["id"] == hung]
        assert len(again) == 2 and again[0]["headers"]["X-Triage-Delivery"] == again[1]["headers"]["X-Triage-Delivery"]
        for a in callback.received:
            verify(a)
        with sqlite3.connect(d.db) as db:
            applied = db.execute("select ticket_ref, count(*) from writebacks where outcome='applied' "
                                 "group by ticket_ref").fetchall()
            results = db.execute("select ticket_ref, count(*) from triage_results group by ticket_ref").fetchall()
        assert len(applied) == n and all(c == 1 for _, c in applied)
        assert len(results) == n and all(c == 1 for _, c in results)  # the hung ticket's result was reused
    finally:
        d2.stop()
        callback.close()


def test_vendor_429_then_500_is_retried_until_it_succeeds(tmp_path):
    # Retry-After 3 s is well above the queue's own backoff here (0.2 s base, 1 s at most).
    cb = Callback(script=[(429, {"Retry-After": "3"}), (500, {}), (200, {})])
    d = Daemon(tmp_path).start()
    try:
        assert d.webhook(ticket("R-1", cb), delivery="r1").status_code == 202
        d.wait_depth(done=1)
        assert [a["status"] for a in cb.attempts] == [429, 500, 200] and cb.ids() == ["R-1"]
        gap = cb.attempts[1]["at"] - cb.attempts[0]["at"]
        assert gap >= 2.9, f"the attempt after the 429 came {gap:.2f} s later, before its Retry-After of 3 s"
        bodies = [a["raw"] for a in cb.attempts]
        assert bodies[0] == bodies[1] == bodies[2]  # every attempt writes back the same stored triage
        for a in cb.attempts:
            verify(a)
        jobs = d.api("/v1/jobs?state=done").json()["jobs"]
        assert jobs[0]["attempts"] == 3
        history = d.api("/v1/tickets/generic/R-1").json()["history"]
        assert len(history["results"]) == 1  # triaged once: the retries reused the stored result
        assert [w["outcome"] for w in history["writebacks"]] == ["failed", "failed", "applied"]
        assert [w["vendor_status"] for w in history["writebacks"]] == [429, 500, 200]
    finally:
        d.stop()
        cb.close()


def test_vendor_down_parks_the_job_dead_and_retry_requeues_it(tmp_path):
    cb = Callback(script=[(500, {})] * 3)
    d = Daemon(tmp_path, TRIAGE_QUEUE_MAX_ATTEMPTS="3").start()
    try:
        assert d.webhook(ticket("D-1", cb), delivery="dd1").status_code == 202
        d.wait_depth(done=0, dead=1)
        dead = d.api("/v1/jobs?state=dead").json()["jobs"]
        assert len(dead) == 1 and "500" in dead[0]["last_error"]
        assert 'triage_queue_jobs{state="dead"} 1.0' in requests.get(d.base + "/metrics", timeout=10).text
        listed = subprocess.run([EXE, "jobs", "list", "--state", "dead", "--json"], env=d.env, capture_output=True,
                                timeout=120)
        assert listed.returncode == 0, listed.stderr
        listed = json.loads(listed.stdout)
        assert [(j["ticket_ref"], j["state"], j["attempts"]) for j in listed["jobs"]] == [("D-1", "dead", 3)]
        assert "500" in listed["jobs"][0]["last_error"] and listed["depth"]["dead"] == 1
        code = subprocess.run([EXE, "jobs", "retry", "--all"], env=d.env, capture_output=True, timeout=120)
        assert code.returncode == 0 and b"1 job(s) re-queued" in code.stdout
        d.wait_depth(done=1)
        assert cb.ids() == ["D-1"]  # the callback recovered (its script ran out): nothing was lost
        assert len(cb.attempts) == 4
        history = d.api("/v1/tickets/generic/D-1").json()["history"]
        assert len(history["results"]) == 1  # the re-queued job reused its stored triage
    finally:
        d.stop()
        cb.close()


def test_shadow_mode_writes_nothing(tmp_path, callback):
    d = Daemon(tmp_path, TRIAGE_POLICY_SHADOW="true").start()
    try:
        assert d.webhook(ticket("S-1", callback), delivery="s1").status_code == 202
        d.wait_depth(done=1)
        time.sleep(0.5)
        assert callback.attempts == []  # not even tried
        history = d.api("/v1/tickets/generic/S-1").json()
        assert history["state"] == "done"
        writebacks = history["history"]["writebacks"]
        assert len(writebacks) == 1 and writebacks[0]["outcome"] == "shadow"
        assert writebacks[0]["vendor_status"] is None
        # what would have been written is stored for evaluation
        sent, triaged = writebacks[0]["fields_sent"], history["result"]["ticket"]
        assert sent and "summary" in sent and all(triaged[k] == v for k, v in sent.items())
        assert "shadow mode" in writebacks[0]["note"]
        metrics = requests.get(d.base + "/metrics", timeout=10).text
        assert 'triage_writebacks_total{connector="generic",outcome="shadow"} 1.0' in metrics
        assert 'outcome="applied"' not in metrics
    finally:
        d.stop()


def test_field_below_threshold_is_not_written(tmp_path, callback):
    d = Daemon(tmp_path, TRIAGE_POLICY_FIELDS="{priority: {threshold: 1.0}, summary: {mode: 'off'}}",
               TRIAGE_POLICY_REVIEW_MARKER="needs-a-human").start()
    try:
        assert d.webhook(ticket("L-1", callback), delivery="l1").status_code == 202
        d.wait_depth(done=1)
        body = callback.received[0]["body"]
        assert "priority" not in body["ticket"] and "summary" not in body["ticket"]
        assert "category" in body["ticket"]
        assert body["needs_review"] is True
        assert body["review_marker"] == "needs-a-human"  # policy.review_marker, for the ticket to carry
        assert "Needs review: priority" in body["note"] and "below 100%" in body["note"]
    finally:
        d.stop()


def test_a_slow_batch_keeps_its_lease_and_is_never_taken_over(tmp_path):
    """A write-back slower than several leases: the worker's heartbeat keeps the job, so a second worker polling
    the same database never claims it, and the ticket is triaged and written back once."""
    from triage_core.queue import JobQueue
    from triage_core.store import Store

    itsm = Callback(script=[HOLD])  # the ticketing system takes its time to answer the first write-back
    lease = 2
    d = Daemon(tmp_path, TRIAGE_QUEUE_LEASE_SECONDS=str(lease), TRIAGE_SERVER_WORKERS="1").start()
    store = Store(f"sqlite:///{d.db}")
    try:
        assert d.webhook(ticket("T-slow", itsm)).status_code == 202
        assert itsm.hung.wait(180), "no write-back started"
        intruder = JobQueue(store, lease_seconds=lease)
        deadline = time.time() + 4 * lease  # the job's first lease ran out long before this
        while time.time() < deadline:
            assert intruder.claim("intruder") is None  # still the daemon's worker's job: its lease was extended
            time.sleep(0.25)
        itsm.release()
        d.wait_depth(done=1)
        assert len(itsm.attempts) == 1  # one write-back: nobody took the job over and wrote it again
        with sqlite3.connect(d.db) as conn:
            assert conn.execute("SELECT count(*) FROM triage_results").fetchone()[0] == 1
            assert conn.execute("SELECT attempts FROM jobs").fetchone()[0] == 1
    finally:
        itsm.close()
        store.dispose()
        d.stop()
