"""The review console (issue 12).

The first part drives the console through Flask's test client with a stand-in triager (no model: fast), on a real
SQLite file and the real generic connector writing back to a local receiver over HTTP. The second part
(`slow`, end of the file) drives the real page in headless Chromium (Debian's chromium and chromium-driver, through
Selenium, nothing downloaded) against the daemon with the real model and the fake Jira, and takes the screenshots
in docs/.
"""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from werkzeug.security import generate_password_hash

from triage_core.config import load_config
from triage_core.queue import InboundTicket, JobQueue
from triage_core.store import Correction, Store, TriageResultRow, Writeback
from triage_core.taxonomy import load_taxonomy
from triage_core.triager import DecodingSettings, TriageResult

from conftest import ROOT

TOKEN = "console-admin-token-for-tests"
SECRET = "console-test-generic-secret"
ALICE_PASSWORD = "correct horse battery staple"


# --- a stand-in triager and a local receiver for the generic connector's callbacks ------------------------------

class StubTriager:
    """What the app factory and the console need of a Triager, with fixed, valid distributions."""

    def __init__(self, taxonomy):
        self.taxonomy = taxonomy
        self.settings = DecodingSettings()
        self.model_info = {"base": "stub-base", "adapter": "stub-it@1"}
        self.calls: list[str] = []

    def triage(self, text: str) -> TriageResult:
        self.calls.append(text)
        tax = self.taxonomy
        dist = {}
        for f in tax.enum_fields:
            values = f.children["Network"] if f.parent else f.values
            first = "Network" if f.name == "category" else values[0]
            rest = [v for v in values if v != first]
            dist[f.name] = {first: 0.55, **{v: 0.45 / len(rest) for v in rest}}
        ticket = {"summary": text[:40]}
        ticket.update({name: max(d, key=d.get) for name, d in dist.items()})
        return TriageResult(ticket=ticket, confidence={n: d[ticket[n]] for n, d in dist.items()},
                            model=dict(self.model_info), latency_ms=1, distributions=dist)

    def triage_many(self, texts, batch_size=None):
        return [self.triage(t) for t in texts]


class Receiver:
    """A local stand-in for the ITSM behind the generic connector: records every callback body."""

    def __init__(self):
        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.bodies.append(json.loads(raw))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/itsm"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def taxonomy():
    return load_taxonomy(ROOT / "config" / "taxonomy.yaml")


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def make_app(tmp_path, taxonomy, *, console=None, policy=None, env=None):
    from connectors.app import create_app, stop_workers
    from connectors.generic import from_config as generic

    overrides = {"database": {"url": f"sqlite:///{tmp_path / 'triage.db'}"},
                 "console": {"users": {"alice": generate_password_hash(ALICE_PASSWORD)}, **(console or {})},
                 "policy": policy or {}}
    config = load_config(env={}, overrides=overrides)
    env = {"TRIAGE_CONSOLE_TOKEN": TOKEN, "TRIAGE_GENERIC_SECRET": SECRET, **(env or {})}
    store = Store(config["database"]["url"])
    conns = {"generic": generic({}, env)}
    app = create_app(config, triager=StubTriager(taxonomy), store=store, connectors=conns, env=env, workers=0)
    app.config["TESTING"] = True
    return app, lambda: (stop_workers(app), store.dispose())


@pytest.fixture
def console(tmp_path, taxonomy):
    app, close = make_app(tmp_path, taxonomy)
    yield app
    close()


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF field on the page"
    return m.group(1)


def login(client, username="admin", password=TOKEN):
    page = client.get("/console/login")
    return client.post("/console/login", data={"username": username, "password": password,
                                               "csrf_token": csrf_of(page.get_data(as_text=True)), "next": ""})


# --- 1. log-in ------------------------------------------------------------------------------------------------

def test_anonymous_requests_are_sent_to_the_login_page(console):
    client = console.test_client()
    for path in ("/console/", "/console/queue", "/console/queue?connector=generic"):
        r = client.get(path)
        assert r.status_code == 302, path
        assert r.headers["Location"].startswith("/console/login")
    assert "next=/console/queue?connector%3Dgeneric" in client.get("/console/queue?connector=generic"
                                                                  ).headers["Location"].replace("%2F", "/")
    page = client.get("/console/login")
    assert page.status_code == 200 and b"Log in" in page.data
    # the API and the webhooks are untouched by the console
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_login_with_the_admin_token_or_a_user_then_logout(console):
    client = console.test_client()
    r = login(client)
    assert r.status_code == 302 and r.headers["Location"] == "/console/queue"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # console.secure_cookie is off by default (no TLS in tests)
    page = client.get("/console/queue")
    assert page.status_code == 200 and b"admin" in page.data
    # pages are not cached and allow no inline script or other origin
    assert page.headers["Cache-Control"] == "no-store"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    out = client.post("/console/logout", data={"csrf_token": csrf_of(page.get_data(as_text=True))})
    assert out.status_code == 302 and out.headers["Location"] == "/console/login"
    assert client.get("/console/queue").status_code == 302

    other = console.test_client()
    assert login(other, "alice", ALICE_PASSWORD).status_code == 302
    assert b"alice" in other.get("/console/queue").data


@pytest.mark.parametrize("username, password", [("admin", "wrong-token-xxxx"), ("alice", "wrong"),
                                                ("nobody", ALICE_PASSWORD), ("alice", TOKEN), ("", "")])
def test_a_wrong_login_gets_one_generic_page(console, username, password):
    client = console.test_client()
    r = login(client, username, password)
    assert r.status_code == 401
    html = r.get_data(as_text=True)
    assert "Wrong user name or password." in html
    assert "unknown user" not in html.lower() and "wrong token" not in html.lower()
    assert client.get("/console/queue").status_code == 302


def test_a_login_goes_back_where_it_was_going_but_never_off_site(console):
    client = console.test_client()
    page = client.get("/console/login?next=/console/queue?connector=generic")
    token = csrf_of(page.get_data(as_text=True))
    r = client.post("/console/login", data={"username": "admin", "password": TOKEN, "csrf_token": token,
                                            "next": "/console/queue?connector=generic"})
    assert r.headers["Location"] == "/console/queue?connector=generic"
    for evil in ("https://evil.example/console/", "//evil.example/console", "/elsewhere", "/console\\@evil"):
        client = console.test_client()
        token = csrf_of(client.get("/console/login").get_data(as_text=True))
        r = client.post("/console/login", data={"username": "admin", "password": TOKEN, "csrf_token": token,
                                                "next": evil})
        assert r.headers["Location"] == "/console/queue", evil


def test_a_post_without_the_csrf_token_is_refused(console):
    client = console.test_client()
    client.get("/console/login")
    r = client.post("/console/login", data={"username": "admin", "password": TOKEN})
    assert r.status_code == 400 and b"security token" in r.data
    r = client.post("/console/login", data={"username": "admin", "password": TOKEN, "csrf_token": "forged"})
    assert r.status_code == 400
    assert login(client).status_code == 302
    r = client.post("/console/logout", data={})
    assert r.status_code == 400
    assert client.get("/console/queue").status_code == 200  # still logged in: the forged logout did nothing


def test_secure_cookie_behind_tls_and_a_brake_on_guessing(tmp_path, taxonomy):
    app, close = make_app(tmp_path, taxonomy, console={"secure_cookie": True})
    try:
        client = app.test_client()
        r = client.get("/console/login", base_url="https://localhost")
        assert "Secure" in r.headers["Set-Cookie"]
        statuses = [login(client, "admin", f"guess-{i}-xxxxxxxx").status_code for i in range(11)]
        assert statuses[:10] == [401] * 10 and statuses[10] == 429
        assert login(client).status_code == 429  # even the right token waits for the window to pass
    finally:
        close()


def test_console_settings_are_checked_at_start(tmp_path, taxonomy):
    from connectors.console.auth import ConsoleConfigError

    with pytest.raises(ConsoleConfigError, match="console.users.bob: expected a werkzeug password hash"):
        make_app(tmp_path, taxonomy, console={"users": {"bob": "hunter2"}})
    with pytest.raises(ConsoleConfigError, match="at least 12 characters"):
        make_app(tmp_path, taxonomy, env={"TRIAGE_CONSOLE_TOKEN": "short"})
    app, close = make_app(tmp_path, taxonomy, console={"enabled": False})
    try:
        assert app.test_client().get("/console/login").status_code == 404
    finally:
        close()
