"""The Zoho Desk connector against a local fake of Zoho (JWKS, accounts server, Desk API) over real HTTP."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from connectors import oauth
from connectors.base import Connector, ConnectorConfigError, FieldChange, TicketReader, WebhookRejected, load_connectors
from connectors.http import VendorError
from connectors.zoho import from_config, html_to_text
from triage_core.policy import WritebackPlan
from triage_core.queue import InboundTicket
from triage_core.taxonomy import load_taxonomy
from triage_core.triager import TriageResult

from fake_zoho import (
    CLIENT_ID,
    CLIENT_SECRET,
    DEPARTMENT_ID,
    ORG_ID,
    REFRESH_TOKEN,
    WEBHOOK_ID,
    FakeZoho,
    rsa_key,
    zoho_time,
)

ROOT = Path(__file__).resolve().parent.parent
ENV = {"TRIAGE_ZOHO_CLIENT_ID": CLIENT_ID, "TRIAGE_ZOHO_CLIENT_SECRET": CLIENT_SECRET,
       "TRIAGE_ZOHO_REFRESH_TOKEN": REFRESH_TOKEN}
GROUPS = ["Service Desk", "Desktop Support", "Hardware Support", "End User Applications", "Network Operations",
          "Email / Messaging", "Security / Access", "Infrastructure", "Facilities"]
TEAMS = {label: str(4000000010001 + i) for i, label in enumerate(GROUPS)}
FIELD_MAP = {"category": "same", "subcategory": "same",
             "priority": {"Low": "Low", "Medium": "Medium", "High": "High", "Critical": "Urgent"},
             "request_type": {"Incident": "Problem", "Service Request": "Question"},
             "assignment_group": TEAMS}
FACILITIES_DEPT = "4000000009999"
TAXONOMY = load_taxonomy(ROOT / "config" / "taxonomy.yaml")


def settings(fake: FakeZoho, **over) -> dict:
    return {"org_id": ORG_ID, "desk_url": fake.url, "accounts_url": fake.url, "webhook_ids": [WEBHOOK_ID],
            "field_map": FIELD_MAP, "team_departments": {"Facilities": FACILITIES_DEPT}, **over}


@pytest.fixture()
def fake():
    """A portal laid out for FIELD_MAP: the taxonomy's categories, one team per group (Facilities in its own
    department)."""
    f = FakeZoho()
    f.set_categories(TAXONOMY["subcategory"].children)
    for label, team in TEAMS.items():
        f.add_team(team, FACILITIES_DEPT if label == "Facilities" else DEPARTMENT_ID)
    yield f
    assert not f.problems, f.problems  # the connector never broke Zoho's documented contract
    f.close()


@pytest.fixture()
def conn(fake):
    return from_config(settings(fake, jwks_refetch_seconds=0.5), ENV)


def ticket_add(ticket_id: str = "1892000000143237", subject: str = "Printer jams", event_time: str = "1700000000000",
               **fields) -> dict:
    payload = {"id": ticket_id, "ticketNumber": "101", "subject": subject,
               "description": "<div>The printer on floor 3 <b>jams</b>&nbsp;on every page.</div><br><p>Thanks</p>",
               "departmentId": "4000000007043", "status": "Open", **fields}
    return {"eventType": "Ticket_Add", "orgId": ORG_ID, "eventTime": event_time, "payload": payload}


def rejected(conn, body: bytes, headers: dict) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as err:
        conn.parse_webhook(body, headers, {})
    return err.value


def plan(**kw) -> WritebackPlan:
    return WritebackPlan(**{"note": "Triaged by ticket-triage (test model): priority High (91%).", **kw})


def result(**ticket) -> TriageResult:
    return TriageResult(ticket=ticket, confidence={}, model={"base": "test"}, latency_ms=1)


# --- webhooks -------------------------------------------------------------------------------------------------

def test_valid_ticket_add_delivery(conn, fake):
    ignored = {"eventType": "Ticket_Thread_Add", "orgId": ORG_ID, "eventTime": "1700000000001",
               "payload": {"id": "1", "ticketId": "1892000000143237"}}
    [t] = conn.parse_webhook(*fake.delivery(ticket_add(priority="High", teamId="4000000077777"), ignored), {})
    assert t == InboundTicket(
        connector="zoho", ref="1892000000143237", event_key="1892000000143237:Ticket_Add:1700000000000",
        text="Printer jams\n\nThe printer on floor 3 jams on every page.\n\nThanks", project="4000000007043",
        current={"priority": "High", "assignment_group": "4000000077777"},  # an unmapped team still counts as set
        extra={"ticketNumber": "101", "departmentId": "4000000007043", "status": "Open"})
    conn.parse_webhook(*fake.delivery(ticket_add(event_time="1700000000500")), {})
    assert len(fake.calls("GET", "/.well-known/jwks.json")) == 1  # keys are cached
    assert isinstance(conn, Connector) and isinstance(conn, TicketReader)
    # Zoho documents the token times in milliseconds (its example shows seconds): both are accepted.
    now_ms = int(time.time() * 1000)
    assert conn.parse_webhook(*fake.delivery(ticket_add(), token=fake.token(iat=now_ms, exp=now_ms + 60_000)), {})


def test_redelivery_has_the_same_event_key(conn, fake):
    [a] = conn.parse_webhook(*fake.delivery(ticket_add()), {})
    [b] = conn.parse_webhook(*fake.delivery(ticket_add(), token=fake.token(jti="another-token")), {})
    [c] = conn.parse_webhook(*fake.delivery(ticket_add(event_time="1700000009999")), {})
    assert a.event_key == b.event_key != c.event_key


@pytest.mark.parametrize("make, fragment", [
    (lambda f: f.token(key=rsa_key()), "signature does not verify"),       # right kid, another key
    (lambda f: f.token(iss="orgId:99999"), "issuer"),
    (lambda f: f.token(aud="webhookId:111"), "audience"),
    (lambda f: f.token(exp=int(time.time()) - 3600, iat=int(time.time()) - 3700), "expired"),
    (lambda f: f.token(iat=int(time.time()) + 3600, exp=int(time.time()) + 3900), "future"),
    (lambda f: f.token(exp=None), "exp and iat"),
    (lambda f: f.token(alg="none"), "algorithm 'none'"),
    (lambda f: f.token(alg="HS256", key="a-shared-secret-long-enough-for-hmac-sha256"), "algorithm 'HS256'"),
    (lambda f: "not.a.jwt", "not a JWT"),
    (lambda f: "", "missing X-ZDesk-JWT"),
])
def test_forged_or_missing_tokens_are_401(conn, fake, make, fragment):
    body, headers = fake.delivery(ticket_add(), token=make(fake))
    err = rejected(conn, body, headers)
    assert err.status == 401 and fragment in err.reason
    # authenticity first: a malformed body with a bad token is still a 401
    assert rejected(conn, b"{garbage", headers).status == 401
    assert rejected(conn, body, {"Content-Type": "application/json"}).status == 401


def test_unknown_kid_refetches_the_jwks_once(conn, fake):
    conn.parse_webhook(*fake.delivery(ticket_add()), {})
    jwks = lambda: len(fake.calls("GET", "/.well-known/jwks.json"))
    assert jwks() == 1
    time.sleep(0.6)
    fake.keys["k2"] = rsa_key()  # Zoho rotates its signing key
    assert conn.parse_webhook(*fake.delivery(ticket_add(), token=fake.token(kid="k2")), {})
    assert jwks() == 2
    for _ in range(5):  # a flood of made-up key ids within the refetch interval does not reach Zoho
        err = rejected(conn, *fake.delivery(ticket_add(), token=fake.token(kid="bogus", key=fake.keys["k2"])))
        assert err.status == 401 and "not one of Zoho's signing keys" in err.reason
    assert jwks() == 2
    time.sleep(0.6)
    assert rejected(conn, *fake.delivery(ticket_add(), token=fake.token(kid="bogus", key=fake.keys["k2"]))).status \
        == 401
    assert jwks() == 3


def test_jwks_unreachable_is_503_so_zoho_retries(conn, fake):
    fake.fail_next("GET", "/.well-known/jwks.json", 503, {})
    assert rejected(conn, *fake.delivery(ticket_add())).status == 503


@pytest.mark.parametrize("events, fragment", [
    (b"{not json", "malformed JSON"),
    (b'{"eventType": "Ticket_Add"}', "non-empty JSON array"),
    (b"[]", "non-empty JSON array"),
    (b"[1]", "expected an object with eventType"),
    (json.dumps([{"eventType": "Ticket_Add", "orgId": ORG_ID, "eventTime": "1"}]).encode(), "payload"),
    (json.dumps([ticket_add(ticket_id="../../admin")]).encode(), "payload.id"),
    (json.dumps([{**ticket_add(), "orgId": "123"}]).encode(), "orgId does not match"),
    (json.dumps([{**ticket_add(), "eventTime": None}]).encode(), "eventTime"),
    (json.dumps([{**ticket_add(), "eventType": "Ticket_Update", "prevState": []}]).encode(), "prevState"),
    ("[{\"eventType\": \"caf\u00e9\"}]".encode("latin-1"), "not UTF-8"),
])
def test_malformed_deliveries_are_400(conn, fake, events, fragment):
    err = rejected(conn, events, fake.delivery()[1])
    assert err.status == 400 and fragment in err.reason


def test_ticket_update_with_prev_state_reports_field_changes(conn, fake):
    update = {"eventType": "Ticket_Update", "orgId": ORG_ID, "eventTime": "1700000001000",
              "payload": {"id": "1892000000143237", "category": "Network", "subCategory": "VPN", "priority": "Urgent",
                          "teamId": TEAMS["Network Operations"], "status": "Open", "modifiedBy": "1892000000042001"},
              "prevState": {"category": "Hardware", "subCategory": "Other", "priority": "Urgent",
                            "teamId": TEAMS["Desktop Support"], "status": "On Hold"}}
    changes = conn.parse_webhook(*fake.delivery(update), {})
    assert changes == [
        FieldChange("zoho", "1892000000143237", "category", "Hardware", "Network", "1892000000042001"),
        FieldChange("zoho", "1892000000143237", "subcategory", "Other", "VPN", "1892000000042001"),
        FieldChange("zoho", "1892000000143237", "assignment_group", "Desktop Support", "Network Operations",
                    "1892000000042001")]
    # without prevState (not subscribed with includePrevState) an update is not re-triaged, and says nothing
    assert conn.parse_webhook(*fake.delivery({**update, "prevState": None}), {}) == []


# --- the Desk API ---------------------------------------------------------------------------------------------

def test_read_ticket_uses_what_the_api_returns(conn, fake):
    fake.add_ticket("1892000000143237", "VPN keeps dropping", "<p>Since this morning &amp; only on Wi-Fi</p>",
                    category="Network", priority="Low", departmentId="4000000007100")
    [hint] = conn.parse_webhook(*fake.delivery(ticket_add()), {})
    t = conn.read_ticket(hint)
    assert t.text == "VPN keeps dropping\n\nSince this morning & only on Wi-Fi"
    assert t.current == {"category": "Network", "priority": "Low"} and t.project == "4000000007100"
    assert t.event_key == hint.event_key and t.ref == hint.ref
    [get] = fake.calls("GET", "/api/v1/tickets/1892000000143237")
    assert get.header("orgId") == ORG_ID and get.header("Authorization").startswith("Zoho-oauthtoken 1000.access")


def test_expired_access_token_is_refreshed_exactly_once(conn, fake):
    fake.add_ticket("11", "Outlook crashes")
    conn.read_ticket(InboundTicket("zoho", "11", "k", "x"))
    conn.client.auth._fetched_at -= 60  # the token is not brand new any more
    fake.expire_tokens()
    assert conn.read_ticket(InboundTicket("zoho", "11", "k", "x")).text == "Outlook crashes"
    assert len(fake.calls("POST", "/oauth/v2/token")) == 2
    gets = fake.calls("GET", "/api/v1/tickets/11")
    assert len(gets) == 3 and gets[1].header("Authorization") != gets[2].header("Authorization")
    assert CLIENT_SECRET not in repr(conn) and REFRESH_TOKEN not in repr(conn.client.auth)


def test_invalid_refresh_token_is_a_clear_final_error(fake):
    conn = from_config(settings(fake), {**ENV, "TRIAGE_ZOHO_REFRESH_TOKEN": "1000.revoked"})
    fake.add_ticket("11", "Outlook crashes")
    with pytest.raises(VendorError) as err:
        conn.read_ticket(InboundTicket("zoho", "11", "k", "x"))
    assert "invalid_code" in str(err.value) and not err.value.retryable
    assert not fake.calls("GET", "/api/v1/tickets/11")


@pytest.mark.parametrize("legacy", [False, True], ids=["expires_in", "expires_in_sec beside expires_in in ms"])
def test_access_tokens_expire_and_are_renewed_before_zoho_refuses_them(conn, fake, legacy):
    fake.accounts.lifetime, fake.accounts.legacy_expiry = 1.0, legacy  # Zoho's hour, shrunk
    fake.add_ticket("11", "Outlook crashes")
    conn.read_ticket(InboundTicket("zoho", "11", "k", "x"))
    time.sleep(1.05)  # the first token is dead now; Zoho would answer 401 INVALID_OAUTH to it
    assert conn.read_ticket(InboundTicket("zoho", "11", "k", "x")).text == "Outlook crashes"
    first, second = fake.calls("GET", "/api/v1/tickets/11")  # no 401 and no second try: renewed beforehand
    assert first.header("Authorization") != second.header("Authorization")
    assert second.header("Authorization") == f"Zoho-oauthtoken {fake.accounts.order[-1]}"
    assert len(fake.calls("POST", "/oauth/v2/token")) == 2


def test_token_generation_limit_is_temporary_and_retried_with_backoff(conn, fake, monkeypatch):
    monkeypatch.setattr(oauth, "DENIED_BACKOFF", 0.4)
    fake.accounts.limit, fake.accounts.window = 1, 1.0  # one token per second instead of ten per ten minutes
    fake.add_ticket("11", "Outlook crashes")
    conn.read_ticket(InboundTicket("zoho", "11", "k", "x"))
    fake.expire_tokens()  # revoked on Zoho's side: the next call needs a new token, inside the limit's window
    conn.client.auth._fetched_at -= 60
    t0 = time.monotonic()
    assert conn.read_ticket(InboundTicket("zoho", "11", "k", "x")).text == "Outlook crashes"
    assert time.monotonic() - t0 >= 0.4 + 0.8  # Access Denied twice, waiting 0.4 s then 0.8 s
    assert fake.accounts.denied == 2 and len(fake.accounts.order) == 2
    assert len(fake.calls("POST", "/oauth/v2/token")) == 4  # never asked again inside a wait


def test_values_outside_the_portal_layout_are_refused_with_what_was_sent(fake):
    fake.add_ticket("41", "Printer jams")
    wrong = {**FIELD_MAP, "priority": {"Low": "Low", "Medium": "Medium", "High": "High", "Critical": "Critical"}}
    conn = from_config(settings(fake, field_map=wrong), ENV)
    with pytest.raises(VendorError) as err:  # Zoho's priorities are Low, Medium, High, Urgent
        conn.write_back(InboundTicket("zoho", "41", "k", "x"), plan(apply={"priority": "Critical"}),
                        result(priority="Critical"))
    assert err.value.status == 422 and not err.value.retryable
    assert "INVALID_DATA" in str(err.value) and "'priority': 'Critical'" in str(err.value)
    assert fake.tickets["41"]["priority"] is None and "41" not in fake.comments  # nothing half-written
    # a team belongs to one department: Desktop Support cannot take a ticket of the Facilities department
    fake.add_ticket("42", "Broken chair", departmentId=FACILITIES_DEPT)
    conn = from_config(settings(fake), ENV)
    with pytest.raises(VendorError, match="INVALID_DATA"):
        conn.write_back(InboundTicket("zoho", "42", "k", "x"), plan(apply={"assignment_group": "Desktop Support"}),
                        result(assignment_group="Desktop Support"))
    [refused] = fake.calls("PATCH", "/api/v1/tickets/42")
    assert refused.json() == {"teamId": TEAMS["Desktop Support"]} and fake.tickets["42"]["teamId"] is None
    # the same portal takes the values it has
    conn.write_back(InboundTicket("zoho", "42", "k", "x"), plan(apply={"assignment_group": "Facilities"}),
                    result(assignment_group="Facilities"))
    assert fake.tickets["42"]["teamId"] == TEAMS["Facilities"]


def test_429_is_retried_after_retry_after(conn, fake):
    fake.add_ticket("11", "Outlook crashes")
    fake.fail_next("GET", "/api/v1/tickets/11", 429, {"errorCode": "TOO_MANY_REQUESTS", "message": "slow down"},
                   {"Retry-After": "1"})
    t0 = time.monotonic()
    assert conn.read_ticket(InboundTicket("zoho", "11", "k", "x")).text == "Outlook crashes"
    assert time.monotonic() - t0 >= 1.0 and len(fake.calls("GET", "/api/v1/tickets/11")) == 2


def test_deleted_ticket_is_a_permanent_error(conn, fake):
    for call in (lambda: conn.read_ticket(InboundTicket("zoho", "404404", "k", "x")),
                 lambda: conn.write_back(InboundTicket("zoho", "404404", "k", "x"), plan(apply={"priority": "High"}),
                                         result(priority="High"))):
        with pytest.raises(VendorError) as err:
            call()
        assert not err.value.retryable and err.value.status == 404 and "does not exist" in str(err.value)
    assert len(fake.calls("PATCH", "/api/v1/tickets/404404")) == 1  # 4xx is not retried
    assert not fake.calls("POST", "/comments")


def test_write_back_one_patch_a_tag_and_one_private_comment(conn, fake):
    fake.add_ticket("21", "Desk phone dead")
    applied = {"category": "Workplace", "subcategory": "Telephony", "priority": "Critical",
               "assignment_group": "Facilities", "request_type": "Incident", "summary": "Desk phone dead"}
    p = plan(apply=applied, needs_review=True, review_marker="triage-needs-review")
    outcome = conn.write_back(InboundTicket("zoho", "21", "k", "x"), p, result(**applied))
    assert outcome.outcome == "applied" and outcome.status == 200
    [patch] = fake.calls("PATCH", "/api/v1/tickets/21")
    assert patch.json() == {"category": "Workplace", "subCategory": "Telephony", "priority": "Urgent",
                            "teamId": TEAMS["Facilities"], "departmentId": FACILITIES_DEPT,
                            "classification": "Problem"}  # summary is not a Zoho field: not written
    assert fake.tags["21"] == ["triage-needs-review"]
    [comment] = fake.comments["21"]
    assert comment["isPublic"] is False and comment["contentType"] == "plainText" and comment["content"] == p.note
    # nothing to apply, no review: no PATCH and no tag, only the note
    fake.add_ticket("22", "Question")
    conn.write_back(InboundTicket("zoho", "22", "k", "x"), plan(suggest={"priority": "Low"}), result(priority="Low"))
    assert not fake.calls("PATCH", "/api/v1/tickets/22") and "22" not in fake.tags and len(fake.comments["22"]) == 1
    # shadow mode writes nothing at all
    before = len(fake.requests)
    assert conn.write_back(InboundTicket("zoho", "22", "k", "x"), plan(shadow=True), result()).outcome == "shadow"
    assert len(fake.requests) == before


def test_closed_tickets_are_paginated_and_mapped_back(fake):
    conn = from_config(settings(fake, page_size=2), ENV)
    for i in range(5):
        fake.add_ticket(f"30{i}", f"Closed ticket {i}", "<p>body</p>", status="Closed", category="Network",
                        subCategory="VPN", priority="Urgent" if i else "Someday", classification="Problem",
                        teamId=TEAMS["Network Operations"] if i != 2 else "999", closedTime=zoho_time(1.7e9 + i),
                        modifiedTime=zoho_time(1.7e9 + i))
    fake.add_ticket("399", "Still open", status="Open")
    records = list(conn.closed_tickets(None))
    assert [r["id"] for r in records] == ["300", "301", "302", "303", "304"]
    assert records[1] == {"id": "301", "text": "Closed ticket 1\n\nbody", "source": "zoho",
                          "closed_at": "2023-11-14T22:13:21Z",
                          "labels": {"category": "Network", "subcategory": "VPN", "priority": "Critical",
                                     "request_type": "Incident", "assignment_group": "Network Operations"}}
    assert "priority" not in records[0]["labels"] and "assignment_group" not in records[2]["labels"]  # unmapped
    pages = fake.calls("GET", "/api/v1/tickets/search")
    assert [p.query["from"] for p in pages] == [["0"], ["2"], ["4"]]
    assert all(p.query["status"] == ["Closed"] and p.query["limit"] == ["2"] for p in pages)
    since = list(conn.closed_tickets("2023-11-14T22:13:22Z"))
    assert [r["id"] for r in since] == ["302", "303", "304"]
    assert "modifiedTimeRange" in fake.calls("GET", "/api/v1/tickets/search")[-1].query


# --- start-up -------------------------------------------------------------------------------------------------

def test_settings_are_checked_at_start_up(fake):
    taxonomy = load_taxonomy(ROOT / "config" / "taxonomy.yaml")
    from_config(settings(fake), ENV).check_taxonomy(taxonomy)
    partial = {**FIELD_MAP, "priority": {"Low": "Low", "Medium": "Medium", "High": "High"}}
    with pytest.raises(ConnectorConfigError, match="field_map.priority: no vendor value for label 'Critical'"):
        from_config(settings(fake, field_map=partial), ENV).check_taxonomy(taxonomy)
    config = {"connectors": {"enabled": ["zoho"], "settings": {"zoho": settings(fake, field_map=partial)}}}
    with pytest.raises(ConnectorConfigError, match="Critical"):
        load_connectors(config, ENV, taxonomy)
    with pytest.raises(ConnectorConfigError, match="team_departments: not assignment_group labels: 'Plumbing'"):
        from_config(settings(fake, team_departments={"Plumbing": "1"}), ENV).check_taxonomy(taxonomy)
    for bad, fragment in [({"org": "1"}, "zoho.org: unknown setting"), ({"org_id": "acme"}, "org_id"),
                          ({"desk_url": "http://desk.zoho.com"}, "desk_url: expected an https"),
                          ({"field_map": {"summary": "same"}}, "field_map.summary"),
                          ({"page_size": 500}, "page_size"), ({"webhook_ids": ["x"]}, "webhook_ids")]:
        with pytest.raises(ConnectorConfigError, match=fragment):
            from_config(settings(fake, **bad), ENV)
    with pytest.raises(ConnectorConfigError, match="TRIAGE_ZOHO_REFRESH_TOKEN is not set"):
        from_config(settings(fake), {k: v for k, v in ENV.items() if "REFRESH" not in k})


def test_html_descriptions_become_text():
    assert html_to_text("<div>Hi&nbsp;there,<br>line two<script>alert(1)</script></div><p>a &lt; b</p>") == \
        "Hi there,\nline two\n\na < b"


# --- end to end -----------------------------------------------------------------------------------------------

def test_end_to_end_webhook_read_back_triage_and_write_back(fake, live_daemon, triager):
    api_text = ("VPN disconnects every few minutes for the whole sales team",
                "<p>Since this morning nobody in sales can stay on the VPN from home; calls drop.</p>")
    fake.add_ticket("1892000000555001", *api_text)
    daemon = live_daemon({"connectors": {"enabled": ["zoho"], "settings": {"zoho": settings(fake)}},
                          "policy": {"default_threshold": 0.0}}, env=ENV)
    # The delivery's payload says something else: only the API's ticket may be triaged.
    event = ticket_add("1892000000555001", subject="Please order a new office chair")
    first = fake.deliver(daemon.url + "/webhooks/zoho", event)
    assert (first.status, first.ok) == (200, True), first  # Zoho counts anything but 200 OK as a failed delivery
    again = fake.deliver(daemon.url + "/webhooks/zoho", event)  # a redelivery, with a fresh token
    assert again.ok and json.loads(again.body)["accepted"][0]["duplicate"] is True
    assert not fake.failed_deliveries and fake.subscribed
    body, _ = fake.delivery(event)
    assert requests.post(daemon.url + "/webhooks/zoho", data=body, timeout=10).status_code == 401
    daemon.wait_idle(done=1)

    [get] = fake.calls("GET", "/api/v1/tickets/1892000000555001")
    [patch] = fake.calls("PATCH", "/api/v1/tickets/1892000000555001")
    assert fake.requests.index(get) < fake.requests.index(patch)
    stored = daemon.store.ticket_history("zoho", "1892000000555001")["result"]["ticket"]
    assert stored == triager.triage(api_text[0] + "\n\n" + html_to_text(api_text[1])).ticket
    sent = patch.json()
    allowed = {"category": set(triager.taxonomy["category"].values),
               "subCategory": set(triager.taxonomy["subcategory"].values),
               "priority": set(FIELD_MAP["priority"].values()),
               "classification": set(FIELD_MAP["request_type"].values()), "teamId": set(TEAMS.values()),
               "departmentId": {FACILITIES_DEPT}}
    assert sent and all(value in allowed[attr] for attr, value in sent.items()), sent
    [comment] = fake.comments["1892000000555001"]
    assert comment["isPublic"] is False and comment["content"].startswith("Triaged by ticket-triage")
