"""The ServiceDesk Plus connector against a local fake SDP over real HTTP (tests/fake_servicedesk.py); the
end-to-end test runs the real daemon (scheduler, queue, workers, model) against it."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from connectors.base import (
    ClosedTicketSource,
    Connector,
    ConnectorConfigError,
    Poller,
    PollNow,
    TaxonomyChecked,
    WebhookRejected,
    load_connectors,
)
from connectors.html import html_to_text
from connectors.http import VendorError
from connectors.polling import PollRunner
from connectors.servicedesk import Cursor, from_config
from triage_core.policy import Policy
from triage_core.queue import InboundTicket, JobQueue
from triage_core.store import Store
from triage_core.taxonomy import load_taxonomy
from triage_core.triager import TriageResult

from fake_servicedesk import FakeServiceDesk

ROOT = Path(__file__).resolve().parent.parent
ONPREM_ENV = {"TRIAGE_SERVICEDESK_API_KEY": "tech-key", "TRIAGE_SERVICEDESK_WEBHOOK_SECRET": "hook-secret"}
CLOUD_ENV = {"TRIAGE_SERVICEDESK_CLIENT_ID": "cid", "TRIAGE_SERVICEDESK_CLIENT_SECRET": "csecret",
             "TRIAGE_SERVICEDESK_REFRESH_TOKEN": "rtoken"}
SAME_MAP = {f: "same" for f in ("category", "subcategory", "priority", "assignment_group", "request_type")}
HOUR_MS = 3600_000


@pytest.fixture
def make():
    """(edition, **fake options) -> (fake, settings) with the fake closed at the end."""
    fakes = []

    def start(edition: str = "onprem", **options) -> tuple[FakeServiceDesk, dict]:
        fake = FakeServiceDesk(edition, **options)
        fakes.append(fake)
        settings = {"edition": edition, "base_url": fake.url, "field_map": SAME_MAP, "timeout": 5}
        if edition == "cloud":
            settings |= {"portal": fake.portal, "accounts_url": fake.url}
        return fake, settings

    yield start
    for fake in fakes:
        fake.close()
        assert not fake.problems, fake.problems


def connector(settings: dict, env: dict | None = None, **more):
    env = env if env is not None else (CLOUD_ENV if settings.get("edition") == "cloud" else ONPREM_ENV)
    return from_config({**settings, **more}, env)


def now_ms() -> int:
    return int(time.time() * 1000)


# --- polling --------------------------------------------------------------------------------------------------

def test_poll_pages_through_open_requests_in_documented_shapes(make):
    fake, settings = make()
    t0 = now_ms() - HOUR_MS // 2
    ids = [fake.add(f"Printer {i} jams", f"<div>Paper&nbsp;jam on floor {i}<br>since <b>today</b></div>",
                    created_ms=t0 + i * 1000, category="Hardware" if i == 0 else None,
                    group="Service Desk" if i == 0 else None, priority="High") for i in range(5)]
    fake.add("Closed one", "old", created_ms=t0 + 500, status="Closed")
    fake.add("Too old", "before the look-back window", created_ms=t0 - 2 * HOUR_MS)
    conn = connector(settings, page_size=2)
    assert isinstance(conn, Connector) and isinstance(conn, Poller) and isinstance(conn, ClosedTicketSource)

    result = conn.poll(None)
    assert [t.ref for t in result.tickets] == ids
    first = result.tickets[0]
    assert first.text == "Printer 0 jams\n\nPaper jam on floor 0\nsince today"
    assert first.event_key == f"created:{ids[0]}" and first.connector == "servicedesk"
    # priority is set by SDP templates, so only category/subcategory/group count as a human's (current_fields)
    assert first.current == {"category": "Hardware", "assignment_group": "Service Desk"}
    assert result.tickets[1].current == {}
    assert Cursor.parse(result.cursor) == Cursor(t0 + 4000, frozenset({ids[4]}))

    lists = fake.calls("GET", r"/requests$")
    assert [r.path for r in lists] == ["/api/v3/requests"] * 3
    assert all(r.header("authtoken") == "tech-key" and r.header("Accept") == "application/vnd.manageengine.sdp.v3+json"
               for r in fake.requests)
    infos = [i["list_info"] for i in fake.list_inputs()]
    assert [i["start_index"] for i in infos] == [1, 3, 5] and {i["row_count"] for i in infos} == {2}
    assert {(i["sort_field"], i["sort_order"]) for i in infos} == {("created_time", "asc")}
    # the documented form (getting-started/search-criteria.html): one criterion, the others as its children
    criteria = infos[0]["search_criteria"]
    assert set(criteria) == {"field", "condition", "value", "children"}
    assert criteria["field"] == "created_time" and criteria["condition"] == "greater or equal"
    assert abs(int(criteria["value"]) - (now_ms() - HOUR_MS)) < 60_000  # initial_lookback_minutes: 60
    assert criteria["children"] == [{"field": "status.name", "condition": "is", "values": ["Open"],
                                     "logical_operator": "AND"}]
    # the list omits the description: one GET per new request
    assert [r.path for r in fake.calls("GET", r"/requests/\d+$")] == [f"/api/v3/requests/{i}" for i in ids]


def test_cursor_survives_a_restart_without_repeats_or_gaps(make, tmp_path, config):
    fake, settings = make()
    t0 = now_ms() - 600_000
    a = fake.add("VPN down", "VPN fails", created_ms=t0)
    b = fake.add("Outlook crash", "crashes", created_ms=t0 + 1000)
    c = fake.add("Wi-Fi slow", "slow", created_ms=t0 + 1000)  # same millisecond as b
    url = f"sqlite:///{tmp_path / 'triage.db'}"

    def runner() -> tuple[PollRunner, JobQueue, Store]:
        store = Store(url)
        store.upgrade()
        queue = JobQueue.from_config(store, config["queue"])
        return PollRunner("servicedesk", connector(settings), store, queue, Policy.from_config({})), queue, store

    first, queue, store = runner()
    first.run()
    assert first.stats.queued == 3 and store.cursor("servicedesk") == f"{t0 + 1000}:{','.join(sorted([b, c]))}"
    store.dispose()

    d = fake.add("Laptop broken", "screen", created_ms=t0 + 1000)  # after the poll, at the cursor's millisecond
    e = fake.add("New account", "for a starter", created_ms=t0 + 2000)
    again, queue, store = runner()  # a restart: new store, connector and runner on the same database
    again.run()
    assert again.stats.queued == 2 and again.stats.duplicates == 0
    assert sorted(j.ticket_ref for j in queue.list()) == sorted([a, b, c, d, e])
    assert store.cursor("servicedesk") == f"{t0 + 2000}:{e}"
    again.run()
    assert again.stats.queued == 2 and again.stats.duplicates == 0
    store.dispose()


def test_request_deleted_between_list_and_read_is_skipped(make):
    fake, settings = make()
    gone = fake.add("Gone", "deleted", created_ms=now_ms() - 1000)
    kept = fake.add("Kept", "still here", created_ms=now_ms() - 500)
    fake.fail_next("GET", rf"/requests/{gone}$", 404, {"response_status": {"status_code": 4000, "status": "failed"}})
    result = connector(settings).poll(None)
    assert [t.ref for t in result.tickets] == [kept] and kept in result.cursor


def test_cloud_401_refreshes_the_token_once(make, monkeypatch):
    monkeypatch.setattr("connectors.oauth.MIN_REFRESH_INTERVAL", 0.0)  # the token is "old" at once
    fake, settings = make("cloud")
    fake.add("Teams call drops", "audio cuts", created_ms=now_ms() - 1000)
    conn = connector(settings)
    assert len(conn.poll(None).tickets) == 1 and fake.tokens == ["1000.access1"]
    fake.fail_next("GET", r"/requests$", 401, {"response_status": {"status_code": 4000, "status": "failed",
                                                                     "messages": [{"message": "token expired"}]}})
    assert conn.poll(None).tickets  # succeeds after one refresh
    assert fake.tokens == ["1000.access1", "1000.access2"] and len(fake.calls("POST", r"/oauth/v2/token$")) == 2
    lists = fake.calls("GET", r"/requests$")
    assert [r.header("Authorization") for r in lists] == ["Zoho-oauthtoken 1000.access1"] * 2 + [
        "Zoho-oauthtoken 1000.access2"]
    assert all(r.path == "/app/itdesk/api/v3/requests" and r.header("authtoken") is None for r in lists)


def test_429_retry_after_is_honoured(make):
    fake, settings = make()
    rid = fake.add("Monitor flickers", "flicker")
    fake.fail_next("PUT", rf"/requests/{rid}$", 429, {"response_status": {"status_code": 4000, "status": "failed"}},
                   headers={"Retry-After": "1"})
    t = time.monotonic()
    outcome = connector(settings).write_back(*job(rid))
    assert outcome.outcome == "applied" and time.monotonic() - t >= 0.9
    assert len(fake.calls("PUT", rf"/requests/{rid}$")) == 2 and len(fake.notes[rid]) == 1


# --- write-back -----------------------------------------------------------------------------------------------

RESULT = TriageResult(ticket={"summary": "Laptop screen broken", "category": "Hardware",
                              "subcategory": "Laptop / Desktop", "priority": "High",
                              "assignment_group": "Desktop Support", "request_type": "Incident"},
                      confidence={"category": 0.9, "subcategory": 0.8, "priority": 0.3, "assignment_group": 0.9,
                                  "request_type": 0.95},
                      model={"base": "SmolLM2-135M-Instruct", "adapter": "default-it@1"}, latency_ms=5)


def job(ref: str, current: dict | None = None, **policy):
    ticket = InboundTicket(connector="servicedesk", ref=ref, event_key=f"created:{ref}",
                           text="My laptop screen is broken; private body", current=current or {})
    return ticket, Policy.from_config(policy).plan(RESULT, ticket), RESULT


@pytest.mark.parametrize("edition, wrapper", [("onprem", "note"), ("cloud", "request_note")])
def test_write_back_puts_mapped_fields_then_one_internal_note(make, edition, wrapper):
    fake, settings = make(edition)
    rid = fake.add("Laptop screen broken", "cracked")
    groups = {label: f"L2 {label}" for label in load_taxonomy(ROOT / "config/taxonomy.yaml")["assignment_group"].values}
    fake.set_lookup("group", groups.values())  # this instance names its groups differently
    field_map = {**SAME_MAP, "priority": {"Low": 1, "Medium": 2, "High": 3, "Critical": 4}, "assignment_group": groups}
    field_map.pop("request_type")  # not in the map: never written
    conn = connector(settings, field_map=field_map, review_udf="udf_sline_301")
    outcome = conn.write_back(*job(rid))
    assert (outcome.outcome, outcome.status) == ("applied", 201)

    [put] = fake.calls("PUT", rf"/requests/{rid}$")
    assert put.path == f"{fake.prefix}/requests/{rid}"
    assert put.header("Content-Type") == "application/x-www-form-urlencoded"
    [sent] = fake.form_inputs("PUT", rf"/requests/{rid}$")
    # priority is below the 0.5 threshold: held back, and the marker goes to the review UDF
    assert sent == {"request": {"category": {"name": "Hardware"}, "subcategory": {"name": "Laptop / Desktop"},
                                "group": {"name": "L2 Desktop Support"},
                                "udf_fields": {"udf_sline_301": "triage-needs-review"}}}
    [note_input] = fake.form_inputs("POST", rf"/requests/{rid}/notes$")
    note = note_input[wrapper]
    assert note["show_to_requester"] is False and note["mark_first_response"] is False
    # notify_technician is a Cloud note attribute only (sdpod- vs sdpop-v3-api/requests/request_note.html)
    assert note.get("notify_technician", "absent") == (False if edition == "cloud" else "absent")
    assert "SmolLM2" in note["description"] and "Needs review: priority High" in note["description"]
    assert "private body" not in note["description"]
    assert fake.tickets[rid]["category"] == {"name": "Hardware"}

    # ids from the field map travel as {"id": ...}
    low = TriageResult(ticket={"priority": "Critical"}, confidence={"priority": 0.99}, model={}, latency_ms=1)
    ticket = InboundTicket(connector="servicedesk", ref=rid, event_key="x", text="t")
    conn.write_back(ticket, Policy.from_config({}).plan(low, ticket), low)
    assert fake.form_inputs("PUT", rf"/requests/{rid}$")[-1] == {"request": {"priority": {"id": "4"}}}
    assert fake.tickets[rid]["priority"] == {"id": "4", "name": "Critical"}


def test_nothing_to_apply_posts_only_the_note_and_shadow_writes_nothing(make):
    fake, settings = make()
    rid = fake.add("Question", "how do I")
    conn = connector(settings)
    outcome = conn.write_back(*job(rid, default_mode="suggest"))
    assert outcome.outcome == "applied" and not fake.calls("PUT") and len(fake.notes[rid]) == 1
    assert "Suggested:" in fake.notes[rid][0]["description"]
    assert conn.write_back(*job(rid, shadow=True)).outcome == "shadow"
    assert len(fake.notes[rid]) == 1 and not fake.calls("PUT")


def test_deleted_request_is_a_permanent_error(make):
    fake, settings = make()
    rid = fake.add("To be deleted", "x")
    fake.delete(rid)
    with pytest.raises(VendorError) as err:
        connector(settings).write_back(*job(rid))
    assert err.value.status == 404 and not err.value.retryable
    assert f"Request {rid} does not exist" in str(err.value)
    assert len(fake.calls("PUT")) == 1 and not fake.calls("POST")


def test_a_refused_key_and_a_refused_value_are_told_apart(make):
    fake, settings = make()
    rid = fake.add("Laptop screen broken", "cracked")
    with pytest.raises(VendorError) as bad_key:
        connector(settings, env={**ONPREM_ENV, "TRIAGE_SERVICEDESK_API_KEY": "revoked-key"}).write_back(*job(rid))
    assert bad_key.value.status == 401 and not bad_key.value.retryable
    assert "(4022)" in str(bad_key.value) and "API key or OAuth token was refused" in str(bad_key.value)
    fake.set_lookup("priority", ["P1", "P2", "P3", "P4"])  # not the taxonomy's names: "High" is unknown here
    with pytest.raises(VendorError) as bad_value:
        connector(settings).write_back(*job(rid, default_threshold=0.0))  # priority High is applied too
    assert bad_value.value.status == 400 and not bad_value.value.retryable
    assert "(4001)" in str(bad_value.value) and "priority" in str(bad_value.value)
    assert "4022" not in str(bad_value.value) and "4001" not in str(bad_key.value)
    assert fake.tickets[rid]["priority"] is None and rid not in fake.notes  # the refused PUT wrote nothing


@pytest.mark.parametrize("field, value", [("category", "Plumbing"), ("group", "Night Shift"),
                                          ("request_type", "Complaint"), ("priority", "Whenever")])
def test_lookup_values_the_instance_lacks_are_refused(make, field, value):
    fake, settings = make()
    rid = fake.add("Laptop screen broken", "cracked", category="Hardware")
    client = connector(settings).client
    with pytest.raises(VendorError, match="answered 400: 4001 Id or Name given in Input does not exist") as err:
        client.request("PUT", f"/requests/{rid}",
                       data={"input_data": json.dumps({"request": {field: {"name": value}}})})
    assert err.value.status == 400 and field in str(err.value)
    # a subcategory must belong to the request's category
    edit = {"request": {"subcategory": {"name": "VPN"}}}
    with pytest.raises(VendorError, match="subcategory"):
        client.request("PUT", f"/requests/{rid}", data={"input_data": json.dumps(edit)})
    edit = {"request": {"category": {"name": "Network"}, "subcategory": {"name": "VPN"}}}
    assert client.request("PUT", f"/requests/{rid}", data={"input_data": json.dumps(edit)}).status_code == 200


def test_cloud_tokens_expire_and_are_renewed_before_sdp_refuses_them(make):
    fake, settings = make("cloud")
    fake.accounts.lifetime = 1.0  # Zoho's hour, shrunk
    fake.add("Teams call drops", "audio cuts", created_ms=now_ms() - 1000)
    conn = connector(settings)
    assert len(conn.poll(None).tickets) == 1
    time.sleep(1.05)
    assert len(conn.poll(None).tickets) == 1  # renewed beforehand: no 401, no second try
    lists = fake.calls("GET", r"/requests$")
    assert [r.header("Authorization") for r in lists] == ["Zoho-oauthtoken 1000.access1",
                                                          "Zoho-oauthtoken 1000.access2"]


def test_portal_id_header_is_sent_on_every_call(make):
    fake, settings = make(portal_id="3")
    rid = fake.add("Badge reader broken", "door", created_ms=now_ms() - 1000)
    conn = connector(settings, portal_id=3)
    assert [t.ref for t in conn.poll(None).tickets] == [rid]
    conn.write_back(*job(rid))
    assert len(fake.requests) == 4 and all(r.header("PORTALID") == "3" for r in fake.requests)


# --- webhook, configuration -----------------------------------------------------------------------------------

def test_webhook_trigger_needs_the_shared_token(make):
    _, settings = make()
    conn = connector(settings)
    assert conn.parse_webhook(b'{"id": "1"}', {"x-triage-token": "hook-secret"}, {}) == [PollNow("servicedesk")]
    for headers in ({}, {"X-Triage-Token": "wrong"}, {"X-Triage-Token": "hook-secret-and-more"}):
        with pytest.raises(WebhookRejected) as err:
            conn.parse_webhook(b"{}", headers, {})
        assert err.value.status == 401
    with pytest.raises(WebhookRejected) as err:
        conn.parse_webhook(b"x" * 70000, {"X-Triage-Token": "hook-secret"}, {})
    assert err.value.status == 413
    disabled = connector(settings, env={"TRIAGE_SERVICEDESK_API_KEY": "tech-key"})
    with pytest.raises(WebhookRejected, match="disabled"):
        disabled.parse_webhook(b"{}", {"X-Triage-Token": ""}, {})


def test_unmapped_label_is_a_start_up_error(make, monkeypatch):
    _, settings = make()
    taxonomy = load_taxonomy(ROOT / "config/taxonomy.yaml")
    conn = connector(settings, field_map={"priority": {"Low": "P4", "Medium": "P3", "High": "P2"}})
    assert isinstance(conn, TaxonomyChecked)
    with pytest.raises(ConnectorConfigError, match=r"field_map\.priority: no vendor value for label 'Critical'"):
        conn.check_taxonomy(taxonomy)
    cfg = {"connectors": {"enabled": ["servicedesk"], "settings": {"servicedesk": {
        **settings, "field_map": {"priority": {"Low": "P4"}}}}}}
    with pytest.raises(ConnectorConfigError, match="connectors.settings.servicedesk.field_map.priority"):
        load_connectors(cfg, ONPREM_ENV, taxonomy)


def test_config_errors(make):
    _, settings = make()
    cloud = {**settings, "edition": "cloud", "portal": "itdesk", "accounts_url": "https://accounts.zoho.eu"}
    cases = [
        ({**settings, "api_key": "x"}, ONPREM_ENV, r"servicedesk\.api_key: unknown setting"),
        (settings, {}, r"api_key_env: environment variable TRIAGE_SERVICEDESK_API_KEY is not set"),
        ({**settings, "edition": "saas"}, ONPREM_ENV, r"edition: expected onprem or cloud"),
        ({**settings, "base_url": "sdp.local"}, ONPREM_ENV, r"base_url"),
        ({**cloud, "portal": None}, CLOUD_ENV, r"portal: Cloud needs"),
        (cloud, {}, r"client_id_env: environment variable"),
        ({**settings, "page_size": 500}, ONPREM_ENV, r"page_size"),
        ({**settings, "poll_interval": 0}, ONPREM_ENV, r"poll_interval"),
        ({**settings, "field_map": {"impact": "same"}}, ONPREM_ENV, r"field_map\.impact: no SDP attribute"),
    ]
    for bad, env, message in cases:
        with pytest.raises(ConnectorConfigError, match=message):
            from_config(bad, env)
    conn = from_config(cloud, CLOUD_ENV)
    assert conn.client.base_url == f"{settings['base_url']}/app/itdesk/api/v3"
    assert conn.client.auth.token_url == "https://accounts.zoho.eu/oauth/v2/token"
    assert "csecret" not in repr(conn) and "tech-key" not in repr(connector(settings))


def test_strip_html():
    assert (html_to_text("<p>Hi&amp;bye</p><style>p{}</style><ul><li>one</li><li>two</li></ul>")
            == "Hi&bye\n\none\n\ntwo")


# --- closed tickets -------------------------------------------------------------------------------------------

def test_closed_tickets_are_paginated_and_mapped_back(make):
    fake, settings = make()
    t0 = now_ms() - 10 * HOUR_MS
    since = datetime.fromtimestamp((t0 + HOUR_MS) / 1000, timezone.utc)
    fake.add("Old", "closed before since", status="Closed", completed_ms=t0)
    expected = [fake.add(f"VPN {i}", f"<p>tunnel {i}</p>", status="Closed" if i % 2 else "Resolved",
                         completed_ms=t0 + (i + 2) * HOUR_MS, category="Network", subcategory="VPN",
                         priority="Urgent" if i == 0 else "High", group="Network Operations")
                for i in range(3)]
    fake.add("Still open", "x", status="Open", completed_ms=None)
    conn = connector(settings, page_size=2, field_map={**SAME_MAP, "priority": {
        "Low": "Low", "Medium": "Medium", "High": "High", "Critical": "Critical"}})
    records = list(conn.closed_tickets(since))
    assert [r["id"] for r in records] == expected
    assert records[0] == {"id": expected[0], "text": "VPN 0\n\ntunnel 0", "source": "manageengine",
                          "labels": {"category": "Network", "subcategory": "VPN",
                                     "assignment_group": "Network Operations"},  # "Urgent" is no taxonomy label
                          "closed_at": datetime.fromtimestamp((t0 + 2 * HOUR_MS) / 1000, timezone.utc).isoformat()}
    assert records[1]["labels"]["priority"] == "High"
    infos = [i["list_info"] for i in fake.list_inputs()]
    assert [i["start_index"] for i in infos] == [1, 3] and infos[0]["sort_field"] == "completed_time"
    assert infos[0]["search_criteria"] == {
        "field": "completed_time", "condition": "greater than", "value": str(int(since.timestamp() * 1000)),
        "children": [{"field": "status.name", "condition": "is", "values": ["Closed", "Resolved"],
                      "logical_operator": "AND"}]}
    list(conn.closed_tickets(None))  # no time bound: the status criterion alone, without children
    assert fake.list_inputs()[-1]["list_info"]["search_criteria"] == {
        "field": "status.name", "condition": "is", "values": ["Closed", "Resolved"]}


# --- end to end -----------------------------------------------------------------------------------------------

def test_daemon_polls_triages_and_writes_back_once(make, live_daemon):
    fake, settings = make()
    first = fake.add("VPN keeps disconnecting", "<div>The VPN drops every few minutes for the whole sales "
                     "team since this morning.</div>", created_ms=now_ms() - 5000)
    # an hour between scheduled polls: the start-up poll finds the first request, only the webhook the second
    daemon = live_daemon({"connectors": {"enabled": ["servicedesk"],
                                         "settings": {"servicedesk": {**settings, "poll_interval": 3600}}}},
                         env=ONPREM_ENV)
    daemon.wait_idle(done=1)
    runner = daemon.app.extensions["triage"].pollers["servicedesk"]
    assert (runner.stats.polls, runner.stats.queued) == (1, 1)

    [put] = fake.form_inputs("PUT", rf"/requests/{first}$")
    taxonomy = load_taxonomy(ROOT / "config/taxonomy.yaml")
    field_of = {"category": "category", "subcategory": "subcategory", "priority": "priority",
                "group": "assignment_group", "request_type": "request_type"}
    assert put["request"] and set(put["request"]) <= set(field_of)
    for attribute, value in put["request"].items():
        assert set(value) == {"name"} and value["name"] in taxonomy[field_of[attribute]].values
    [note] = fake.notes[first]
    assert note["show_to_requester"] is False and "Triaged by ticket-triage" in note["description"]

    second = fake.add("Printer on floor 3 is jammed", "<p>Paper jam, nobody can print.</p>")
    bad = requests.post(daemon.url + "/webhooks/servicedesk", data=b"{}", headers={"X-Triage-Token": "no"}, timeout=10)
    assert bad.status_code == 401 and runner.stats.polls == 1
    r = requests.post(daemon.url + "/webhooks/servicedesk", data=json.dumps({"request": {"id": second}}),
                      headers={"Content-Type": "application/json", "X-Triage-Token": "hook-secret"}, timeout=10)
    assert r.status_code == 202 and r.json()["accepted"] == [{"poll": True}]
    daemon.wait_idle(done=2, timeout=60)
    assert runner.stats.polls == 2 and runner.stats.queued == 2 and runner.stats.duplicates == 0
    runner.run()  # one more poll: nothing new, nothing queued again
    assert runner.stats.queued == 2 and daemon.ctx.queue.depth()["done"] == 2
    assert len(fake.calls("PUT", rf"/requests/{second}$")) == 1 and len(fake.notes[second]) == 1
    assert len(fake.calls("PUT", rf"/requests/{first}$")) == 1 and len(fake.notes[first]) == 1
    assert daemon.store.cursor("servicedesk").endswith(f":{second}")
