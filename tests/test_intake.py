"""Inputs that used to break the daemon (issue 13), sent over real HTTP on 127.0.0.1 to the real app on a SQLite
file with the real model: each gets a clear 4xx or a valid result, never a 5xx, and nothing acknowledged with a 2xx
dies later for a reason that was visible when it arrived. Also: one poisoned ticket in a batch costs the others
nothing, a worker error leaves no job leased, and the generic webhook's replay window."""
from __future__ import annotations

import json
import sqlite3
import time

import pytest
import requests

from connectors.generic import signed_headers
from triage_core.schema import validate_ticket

from conftest import LiveDaemon
from test_generic_connector import Callback

SECRET = "intake-secret"
TOKEN = "intake-token"
ENV = {"TRIAGE_GENERIC_SECRET": SECRET, "TRIAGE_API_TOKEN": TOKEN}
GENERIC = {"connectors": {"enabled": ["generic"]}}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture()
def callback():
    cb = Callback()
    yield cb
    cb.close()


def post(daemon, body: bytes, now: float | None = None, **headers: str) -> requests.Response:
    """A generic webhook signed over its exact bytes (JSON escapes such as \\ud800 stay as the sender wrote them)."""
    sent = {"Content-Type": "application/json", **signed_headers(SECRET.encode(), body, now), **headers}
    return requests.post(daemon.url + "/webhooks/generic", data=body, headers=sent, timeout=60)


def triage_api(daemon, body: bytes) -> requests.Response:
    return requests.post(daemon.url + "/v1/triage", data=body, timeout=120,
                         headers={**AUTH, "Content-Type": "application/json"})


def stored_events(daemon) -> int:
    with sqlite3.connect(daemon.config["database"]["url"].removeprefix("sqlite:///")) as db:
        return db.execute("select count(*) from inbound_events").fetchone()[0]


def jobs(daemon) -> dict[str, dict]:
    return {j.ticket_ref: j.to_dict() for j in daemon.ctx.queue.list(limit=100)}


# --- invalid Unicode -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, field", [
    (rb'{"id": "BAD-\ud800", "text": "printer is broken"}', "id"),
    (rb'{"id": "\udfff", "text": "printer is broken"}', "id"),
    (rb'{"id": "OK-1", "text": "printer is broken", "callback_url": "http://127.0.0.1:9/cb\ud800"}',
     "callback_url"),
])
def test_invalid_unicode_in_an_id_is_400_and_nothing_is_stored(live_daemon, body, field):
    daemon = live_daemon(GENERIC, ENV, workers=0)
    r = post(daemon, body)
    assert r.status_code == 400, r.text
    reason = r.json()["error"]
    assert reason.startswith(f"{field}: invalid Unicode") and "lone surrogate U+D" in reason
    assert stored_events(daemon) == 0


def test_lone_surrogate_in_the_text_is_repaired_and_triaged_on_the_first_attempt(live_daemon, callback):
    daemon = live_daemon(GENERIC, ENV)
    cb = callback.url.encode()
    bodies = [rb'{"id": "S-1", "text": "vpn \ud800 down for the whole sales team", "callback_url": "' + cb + b'"}',
              rb'{"id": "S-2", "text": "printer \ud83d\ude00 jams \udc80", "project": "IT\ud800",'
              rb' "fields": {"priority": "High\udfff"}, "callback_url": "' + cb + b'"}']
    for body in bodies:
        r = post(daemon, body)
        assert r.status_code == 202, r.text
    daemon.wait_idle(done=2, timeout=180)
    state = jobs(daemon)
    assert {ref: (j["state"], j["attempts"]) for ref, j in state.items()} == {"S-1": ("done", 1), "S-2": ("done", 1)}
    assert sorted(json.loads(b)["id"] for _, b in callback.requests) == ["S-1", "S-2"]
    history = requests.get(daemon.url + "/v1/tickets/generic/S-1", headers=AUTH, timeout=10)
    assert history.status_code == 200


def test_v1_triage_with_a_lone_surrogate_is_a_valid_result(live_daemon, taxonomy):
    daemon = live_daemon(GENERIC, ENV, workers=0)
    r = triage_api(daemon, rb'{"text": "vpn \ud800 down"}')
    assert r.status_code == 200, r.text
    validate_ticket(taxonomy, r.json()["ticket"])


# --- text with nothing to triage -------------------------------------------------------------------------------

EMPTY_TEXTS = [r"\u0000\u0001\u0002\u001f\u007f", r"\ud800", r"\ud800\udbff  \u0085", "!!! ??? ...",
               r"\u200b \u00a0 \t\n", r"\u0000vpn\u0000".replace("vpn", "--")]


@pytest.mark.parametrize("text", EMPTY_TEXTS)
def test_text_without_letters_or_digits_is_400_at_intake_and_on_the_api(live_daemon, text):
    daemon = live_daemon(GENERIC, ENV, workers=0)
    body = b'{"id": "E-1", "text": "' + text.encode() + b'"}'
    r = post(daemon, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "text: empty (no letters or digits), nothing to triage"
    api = triage_api(daemon, b'{"text": "' + text.encode() + b'"}')
    assert api.status_code == 400 and "nothing to triage" in api.json()["error"], api.text
    assert stored_events(daemon) == 0


def test_control_characters_around_real_text_are_dropped_not_fatal(live_daemon, callback):
    daemon = live_daemon(GENERIC, ENV)
    body = (rb'{"id": "C-1", "text": "\u0000\u0007Outlook\u001f cannot send mail\u007f", "callback_url": "'
            + callback.url.encode() + b'"}')
    assert post(daemon, body).status_code == 202
    daemon.wait_idle(done=1, timeout=120)
    assert jobs(daemon)["C-1"]["attempts"] == 1


# --- body size -------------------------------------------------------------------------------------------------

def chunked(body: bytes, size: int = 1000):
    """A generator body: requests sends it with Transfer-Encoding: chunked and no Content-Length."""
    for i in range(0, len(body), size):
        yield body[i:i + size]


def test_chunked_signed_body_over_the_limit_is_413(live_daemon):
    daemon = live_daemon({**GENERIC, "server": {"max_body_bytes": 4096}}, ENV, workers=0)

    def body_of(size: int) -> bytes:
        head = b'{"id": "B-%d", "text": "' % size
        return head + b"x" * (size - len(head) - 2) + b'"}'

    for size, status in ((10_000, 413), (4097, 413), (4096, 202), (3000, 202)):
        body = body_of(size)
        assert len(body) == size
        headers = {"Content-Type": "application/json", **signed_headers(SECRET.encode(), body)}
        r = requests.post(daemon.url + "/webhooks/generic", data=chunked(body), headers=headers, timeout=30)
        assert r.status_code == status, (size, r.text)
        if status == 413:
            assert "4096" in r.json()["error"]
        plain = requests.post(daemon.url + "/webhooks/generic", data=body, headers=headers, timeout=30)
        assert plain.status_code == status, (size, plain.text)  # the same answer with a Content-Length
    api = requests.post(daemon.url + "/v1/triage", data=chunked(b'{"text": "' + b"x" * 9000 + b'"}'),
                        headers={**AUTH, "Content-Type": "application/json"}, timeout=30)
    assert api.status_code == 413
    assert stored_events(daemon) == 2


# --- the replay window -----------------------------------------------------------------------------------------

def test_replays_inside_the_window_are_duplicates_and_outside_it_refused(live_daemon):
    daemon = live_daemon(GENERIC, ENV, workers=0)
    body = json.dumps({"id": "R-1", "text": "VPN drops every five minutes"}).encode()
    headers = {"Content-Type": "application/json", **signed_headers(SECRET.encode(), body)}
    first = requests.post(daemon.url + "/webhooks/generic", data=body, headers=headers, timeout=30)
    assert first.status_code == 202 and first.json()["accepted"][0]["duplicate"] is False
    for extra in ({}, {"X-Triage-Delivery": "a-new-id"}):  # the captured request, as is or with a new header
        again = requests.post(daemon.url + "/webhooks/generic", data=body, headers={**headers, **extra}, timeout=30)
        assert again.status_code == 202 and again.json()["accepted"][0]["duplicate"] is True
    retry = post(daemon, body, now=time.time() + 30)  # the sender's own retry, signed again
    assert retry.status_code == 202 and retry.json()["accepted"][0]["duplicate"] is True
    for offset in (-360, -3600, 360):
        late = post(daemon, json.dumps({"id": "R-2", "text": "printer jam"}).encode(), now=time.time() + offset)
        assert late.status_code == 401 and "tolerance 300 s" in late.json()["error"], late.text
    assert stored_events(daemon) == 1
    metrics = requests.get(daemon.url + "/metrics", timeout=10).text
    assert 'triage_webhooks_duplicate_total{connector="generic"} 3.0' in metrics


# --- failure isolation in the worker ---------------------------------------------------------------------------

class PoisonedTriager:
    """The real triager, except that a ticket containing POISON makes the model code raise a TypeError (as the
    tokenizer did on a lone surrogate): in a batch, the whole batch fails."""

    def __init__(self, real):
        self.real = real
        self.batches: list[int] = []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def triage_many(self, texts, batch_size=None):
        texts = list(texts)
        self.batches.append(len(texts))
        if any("POISON" in t for t in texts):
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]")
        return self.real.triage_many(texts, batch_size)

    def triage(self, text):
        return self.triage_many([text])[0]


def queue_then_serve(live_daemon, tmp_path, triager, callback, texts: dict[str, str]) -> LiveDaemon:
    """Acknowledge every webhook first (no workers), then start a worker on the same database, so its first
    claim takes them all in one batch."""
    intake = live_daemon(GENERIC, ENV, workers=0)
    for ref, text in texts.items():
        r = post(intake, json.dumps({"id": ref, "text": text, "callback_url": callback.url}).encode())
        assert r.status_code == 202, r.text
    return LiveDaemon(tmp_path, triager, GENERIC, ENV, workers=1)


def test_one_poisoned_ticket_costs_the_rest_of_its_batch_nothing(live_daemon, tmp_path, triager, callback):
    texts = {"P-1": "VPN drops every few minutes", "P-2": "Printer on floor 3 jams",
             "P-3": "POISON in the ticket", "P-4": "Outlook cannot send mail", "P-5": "Need Visio on my laptop"}
    poisoned = PoisonedTriager(triager)
    worker = queue_then_serve(live_daemon, tmp_path, poisoned, callback, texts)
    try:
        worker.wait_idle(done=4, dead=1, timeout=300)
        state = jobs(worker)
    finally:
        worker.close()
    assert poisoned.batches[0] == 5  # they really were one batch
    assert {ref: (j["state"], j["attempts"]) for ref, j in state.items()} == {
        "P-1": ("done", 1), "P-2": ("done", 1), "P-3": ("dead", 1), "P-4": ("done", 1), "P-5": ("done", 1)}
    assert "TypeError" in state["P-3"]["last_error"]
    assert all(state[r]["last_error"] is None for r in ("P-1", "P-2", "P-4", "P-5"))
    assert sorted(json.loads(b)["id"] for _, b in callback.requests) == ["P-1", "P-2", "P-4", "P-5"]


def test_an_error_in_the_worker_hands_its_jobs_back_at_once(live_daemon, tmp_path, triager, callback,
                                                             monkeypatch):
    from triage_core.store import Store

    real = Store.result_for_job
    calls = []

    def flaky(self, job_id):  # the database fails once, in the middle of a batch
        calls.append(job_id)
        if len(calls) == 2:
            raise RuntimeError("database went away")
        return real(self, job_id)

    monkeypatch.setattr(Store, "result_for_job", flaky)
    worker = queue_then_serve(live_daemon, tmp_path, triager, callback,
                              {"H-1": "VPN drops every few minutes", "H-2": "Printer on floor 3 jams"})
    try:
        t0 = time.time()
        worker.wait_idle(done=2, timeout=240)
        state = jobs(worker)
    finally:
        worker.close()
    assert worker.ctx.queue.lease_seconds == 120 and time.time() - t0 < 120  # nobody waited for a lease to expire
    assert {ref: (j["state"], j["attempts"]) for ref, j in state.items()} == {"H-1": ("done", 2), "H-2": ("done", 2)}
    assert sorted(json.loads(b)["id"] for _, b in callback.requests) == ["H-1", "H-2"]


# --- the CLI, the other edge -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_repairs_undecodable_argv_and_refuses_letterless_text(tmp_path):
    import subprocess

    from test_cli import EXE

    # b"\xff" in argv reaches Python as the lone surrogate U+DCFF, which the tokenizer cannot take
    ok = subprocess.run([EXE, "triage", "--json", b"\xffprinter on floor 3 jams"], capture_output=True, timeout=300)
    assert ok.returncode == 0, ok.stderr.decode(errors="replace")
    assert set(json.loads(ok.stdout)) >= {"ticket", "confidence"}
    lines = tmp_path / "t.jsonl"
    lines.write_text('{"id": "A", "text": "vpn \\ud800 down"}\n{"id": "B", "text": "\\u0001\\u0002 ?!"}\n')
    bad = subprocess.run([EXE, "triage", "--file", str(lines)], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and bad.stderr.strip() == "error: ticket B: empty text (no letters or digits), " \
                                                         "nothing to triage"
