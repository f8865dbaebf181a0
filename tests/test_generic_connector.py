"""The generic connector: signed webhooks in, signed callbacks out to a real local HTTP server (no model)."""
from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import EntryPoint

import pytest

from connectors.base import (
    Connector,
    ConnectorConfigError,
    WebhookRejected,
    WritebackError,
    load_connectors,
    parse_retry_after,
)
from connectors.generic import GenericConnector, from_config, sign, signed_headers, verify
from triage_core.policy import Policy
from triage_core.queue import InboundTicket
from triage_core.triager import TriageResult

SECRET = "s3cret-for-tests"
ENV = {"TRIAGE_GENERIC_SECRET": SECRET}


@pytest.fixture()
def conn() -> GenericConnector:
    return from_config({"timeout": 2}, ENV)


def signed(payload, secret: str = SECRET, now: float | None = None) -> tuple[bytes, dict[str, str]]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
    headers = {**signed_headers(secret.encode(), body, now), "Content-Type": "application/json"}
    return body, {k.lower(): v for k, v in headers.items()}  # lower case: headers are looked up case-blind


def rejected(conn, body, headers) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as err:
        conn.parse_webhook(body, headers, {})
    return err.value


# --- webhooks -------------------------------------------------------------------------------------------------

def test_valid_webhook_is_parsed(conn):
    payload = {"id": "INC-7", "text": "VPN drops every 5 minutes", "callback_url": "http://127.0.0.1:9/cb",
               "project": "IT", "type": "Incident", "fields": {"priority": "High", "category": None, "x": " "}}
    body, headers = signed(payload)
    [t] = conn.parse_webhook(body, headers, {})
    assert t == InboundTicket(connector="generic", ref="INC-7", event_key=hashlib.sha256(body).hexdigest(),
                              text="VPN drops every 5 minutes",
                              project="IT", ticket_type="Incident", current={"priority": "High"},
                              callback_url="http://127.0.0.1:9/cb")
    [t] = conn.parse_webhook(*signed({"id": "INC-8", "text": "printer jam"}), {})
    assert t.event_key == hashlib.sha256(json.dumps({"id": "INC-8", "text": "printer jam"}).encode()).hexdigest()
    assert t.project is None and t.current == {} and t.callback_url is None
    assert isinstance(conn, Connector)


def test_signature_is_required_and_checked(conn):
    body, headers = signed({"id": "1", "text": "hello"})
    assert rejected(conn, body, {"Content-Type": "application/json"}).status == 401
    ts = headers["x-triage-timestamp"]
    assert rejected(conn, body, {**headers, "x-triage-signature": sign(b"wrong", ts, body)}).status == 401
    assert rejected(conn, body, {**headers, "x-triage-signature": sign(SECRET.encode(), int(ts) + 1, body)}
                    ).status == 401  # the timestamp is signed: moving it breaks the signature
    assert rejected(conn, body, {**headers, "x-triage-signature": "sha256=zz\u00e9"}).status == 401
    tampered = body.replace(b"hello", b"HELLO")
    assert rejected(conn, tampered, headers).status == 401
    # authenticity comes first: garbage with no signature is a 401, not a 400
    assert rejected(conn, b"\xff{not json", {}).status == 401


@pytest.mark.parametrize("body, fragment", [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (json.dumps({"id": "1"}).encode(), "text: missing"),
    (json.dumps({"id": "1", "text": "   "}).encode(), "text: empty"),
    (json.dumps({"id": 1, "text": "x"}).encode(), "id: expected a string"),
    (json.dumps({"id": "1", "text": "x", "fields": {"priority": 3}}).encode(), "fields.priority"),
    (json.dumps({"id": "1", "text": "x", "callback": "http://127.0.0.1/"}).encode(), "unknown key 'callback'"),
    ("{\"id\": \"1\", \"text\": \"caf\u00e9\"}".encode("latin-1"), "not UTF-8"),
])
def test_malformed_bodies_are_400(conn, body, fragment):
    err = rejected(conn, *signed(body))
    assert err.status == 400 and fragment in err.reason


def test_wrong_content_type_is_415(conn):
    body, headers = signed({"id": "1", "text": "x"})
    assert rejected(conn, body, {**headers, "Content-Type": "text/plain"}).status == 415


@pytest.mark.parametrize("url", ["http://evil.example/cb", "http://127.0.0.1@evil.example/cb",
                                 "file:///etc/passwd", "http://evil.example\\@127.0.0.1/", "http://0x7f000001/"])
def test_disallowed_callback_host_is_422(conn, url):
    err = rejected(conn, *signed({"id": "1", "text": "x", "callback_url": url}))
    assert err.status == 422 and "callback_url" in err.reason


def test_config_errors():
    with pytest.raises(ConnectorConfigError, match="TRIAGE_GENERIC_SECRET is not set") as err:
        from_config({}, {})
    assert "connectors.settings.generic.secret_env" in str(err.value)
    with pytest.raises(ConnectorConfigError, match=r"connectors\.settings\.generic\.timeout"):
        from_config({"timeout": 0}, ENV)
    with pytest.raises(ConnectorConfigError, match=r"connectors\.settings\.generic\.callback_url: host"):
        from_config({"callback_url": "http://evil.example/"}, ENV)
    with pytest.raises(ConnectorConfigError, match=r"connectors\.settings\.generic\.hosts: unknown"):
        from_config({"hosts": []}, ENV)
    assert SECRET not in repr(from_config({}, ENV))


def test_load_connectors(monkeypatch):
    ep = EntryPoint(name="generic", value="connectors.generic:from_config", group="ticket_triage.connectors")
    monkeypatch.setattr("connectors.base.entry_points", lambda group: [ep] if group == ep.group else [])
    cfg = {"connectors": {"enabled": ["generic"], "settings": {"generic": {"timeout": 3}}}}
    loaded = load_connectors(cfg, ENV)
    assert list(loaded) == ["generic"] and loaded["generic"].timeout == 3.0
    with pytest.raises(ConnectorConfigError, match=r"connectors\.enabled: no connector named 'nope'"):
        load_connectors({"connectors": {"enabled": ["nope"], "settings": {}}}, ENV)
    with pytest.raises(ConnectorConfigError, match=r"connectors\.settings\.generic\.secret_env"):
        load_connectors(cfg, {})
    with pytest.raises(ConnectorConfigError, match=r"connectors\.settings\.generic: expected a mapping"):
        load_connectors({"connectors": {"enabled": ["generic"], "settings": {"generic": [1]}}}, ENV)


def test_parse_retry_after():
    assert parse_retry_after("7") == 7.0
    now = time.time()
    assert 25 <= parse_retry_after(formatdate(now + 30, usegmt=True), now=now) <= 30
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


# --- write-back -----------------------------------------------------------------------------------------------

class Callback:
    """A tiny local receiver: records each POST and answers with the status/headers it is told to."""

    def __init__(self):
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status, self.headers, self.delay, self.body = 200, {}, 0.0, b""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append((dict(self.headers), body))
                time.sleep(outer.delay)
                self.send_response(outer.status)
                for k, v in outer.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/triaged"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def callback():
    cb = Callback()
    yield cb
    cb.close()


RESULT = TriageResult(ticket={"summary": "VPN keeps dropping", "category": "Network", "priority": "High"},
                      confidence={"category": 0.93, "priority": 0.41},
                      model={"base": "SmolLM2-135M-Instruct", "adapter": "default-it@1"}, latency_ms=5)


def job(url: str | None, shadow: bool = False):
    t = InboundTicket(connector="generic", ref="INC-7", event_key="d-1", text="VPN drops, body stays private",
                      callback_url=url)
    return t, Policy.from_config({"shadow": shadow}).plan(RESULT, t), RESULT


def test_write_back_posts_signed_json(conn, callback):
    outcome = conn.write_back(*job(callback.url))
    assert (outcome.outcome, outcome.status) == ("applied", 200)
    [(headers, body)] = callback.requests
    assert abs(verify(SECRET.encode(), body, headers) - time.time()) < 60  # signed like a webhook: timestamp.body
    assert headers["X-Triage-Signature"] == sign(SECRET.encode(), headers["X-Triage-Timestamp"], body)
    assert headers["X-Triage-Delivery"] == "d-1"
    sent = json.loads(body)
    assert sent["id"] == "INC-7"
    assert sent["ticket"] == {"summary": "VPN keeps dropping", "category": "Network"}
    assert sent["suggested"] == {} and sent["needs_review"] is True
    assert sent["review_marker"] == "triage-needs-review"
    assert sent["confidence"] == {"category": 0.93, "priority": 0.41}
    assert sent["model"] == {"base": "SmolLM2-135M-Instruct", "adapter": "default-it@1"}
    assert "Needs review: priority High (41%)" in sent["note"] and b"body stays private" not in body


def test_default_callback_url_and_shadow(callback):
    conn = from_config({"callback_url": callback.url}, ENV)
    assert conn.write_back(*job(None)).outcome == "applied"
    assert conn.write_back(*job(None, shadow=True)).outcome == "shadow"
    assert len(callback.requests) == 1
    assert from_config({}, ENV).write_back(*job(None)).outcome == "skipped"


@pytest.mark.parametrize("status, headers, retryable, retry_after", [
    (429, {"Retry-After": "12"}, True, 12.0),
    (503, {}, True, None),
    (500, {}, True, None),
    (404, {}, False, None),
    (302, {"Location": "http://evil.example/"}, False, None),
])
def test_write_back_errors(conn, callback, status, headers, retryable, retry_after):
    callback.status, callback.headers = status, headers
    with pytest.raises(WritebackError) as err:
        conn.write_back(*job(callback.url))
    assert (err.value.status, err.value.retryable, err.value.retry_after) == (status, retryable, retry_after)
    assert str(status) in str(err.value)


def test_connection_refused_and_timeout_are_retryable(conn, callback):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(WritebackError) as err:
        conn.write_back(*job(f"http://127.0.0.1:{port}/cb"))
    assert err.value.retryable and err.value.status is None
    callback.delay = 0.5
    slow = from_config({"timeout": 0.1}, ENV)
    with pytest.raises(WritebackError) as err:
        slow.write_back(*job(callback.url))
    assert err.value.retryable


def test_callback_host_rechecked_at_write_back(conn):
    with pytest.raises(WritebackError) as err:
        conn.write_back(*job("http://evil.example/cb"))
    assert not err.value.retryable


def test_callback_4xx_keeps_the_receivers_message(conn, callback):
    callback.status, callback.body = 400, json.dumps({"error": "unknown ticket INC-7 in project OPS"}).encode()
    with pytest.raises(WritebackError) as err:
        conn.write_back(*job(callback.url))
    assert (err.value.status, err.value.retryable) == (400, False)
    assert "unknown ticket INC-7 in project OPS" in str(err.value)
    callback.status, callback.body = 422, b"priority High is not allowed here"
    with pytest.raises(WritebackError, match="priority High is not allowed here"):
        conn.write_back(*job(callback.url))


def test_callback_goes_through_the_shared_vendor_layer(conn, callback, monkeypatch):
    from connectors import http

    calls = []
    real = http.VendorClient.request
    monkeypatch.setattr(http.VendorClient, "request", lambda self, *a, **kw: calls.append(a) or real(self, *a, **kw))
    conn.write_back(*job(callback.url + "?tenant=7"))
    assert calls == [("POST", "/triaged?tenant=7")]
    assert len(callback.requests) == 1


# --- timestamp, tolerance window and replays ------------------------------------------------------------------

def test_timestamp_is_required_and_checked(conn):
    body, headers = signed({"id": "1", "text": "printer jam"})
    no_ts = {k: v for k, v in headers.items() if k != "x-triage-timestamp"}
    assert "missing X-Triage-Timestamp" in rejected(conn, body, no_ts).reason
    for bad in ("soon", "-5", "1e9", "\u0661\u0662", "9" * 40):
        err = rejected(conn, body, {**headers, "x-triage-timestamp": bad})
        assert err.status == 401 and "X-Triage-Timestamp" in err.reason
    # the old body-only signature is refused: it does not cover the timestamp
    import hmac as hmac_

    body_only = "sha256=" + hmac_.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert rejected(conn, body, {**headers, "x-triage-signature": body_only}).status == 401


@pytest.mark.parametrize("offset, accepted", [(-299, True), (299, True), (-301, False), (301, False),
                                               (-86400, False), (3600, False)])
def test_requests_outside_the_tolerance_window_are_refused(conn, offset, accepted):
    body, headers = signed({"id": "W-1", "text": "printer jam"}, now=time.time() + offset)
    if accepted:
        assert conn.parse_webhook(body, headers, {})[0].ref == "W-1"
    else:
        err = rejected(conn, body, headers)
        assert err.status == 401 and "tolerance 300 s" in err.reason
        assert ("future" if offset > 0 else "past") in err.reason


def test_tolerance_is_a_setting():
    strict = from_config({"tolerance_seconds": 10}, ENV)
    body, headers = signed({"id": "W-2", "text": "printer jam"}, now=time.time() - 30)
    assert "tolerance 10 s" in rejected(strict, body, headers).reason
    assert from_config({"tolerance_seconds": 60}, ENV).parse_webhook(body, headers, {})[0].ref == "W-2"
    for bad in (0, -1, "300", True):
        with pytest.raises(ConnectorConfigError, match=r"generic\.tolerance_seconds"):
            from_config({"tolerance_seconds": bad}, ENV)


def test_replay_and_resigned_retry_share_one_idempotency_key(conn):
    payload = {"id": "INC-9", "text": "VPN drops"}
    body, headers = signed(payload)
    [first] = conn.parse_webhook(body, headers, {})
    # the same captured request again, with any unsigned delivery header an attacker likes
    [replay] = conn.parse_webhook(body, {**headers, "X-Triage-Delivery": "fresh-id"}, {})
    # the sender's own retry, signed again a minute later
    [retry] = conn.parse_webhook(*signed(payload, now=time.time() + 60), {})
    assert first.event_key == replay.event_key == retry.event_key
    [other] = conn.parse_webhook(*signed({"id": "INC-9", "text": "VPN drops again"}), {})
    assert other.event_key != first.event_key
