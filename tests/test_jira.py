"""The Jira connector against a strict local fake of the Jira Cloud REST API (tests/fake_jira.py), over real HTTP.

Webhook fixtures under tests/fixtures/jira/ are in Atlassian's documented payload shape. The last test runs the
whole daemon with the real model.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import hmac
import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from connectors.base import ConnectorConfigError, FieldChange, WebhookRejected
from connectors.http import VendorError
from connectors.jira import adf_to_text, from_config
from triage_core.policy import Policy
from triage_core.queue import InboundTicket
from triage_core.taxonomy import load_taxonomy
from triage_core.triager import TriageResult

from fake_jira import NOTIFY_FORBIDDEN, FakeJira, Select

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "jira"
SECRET = "jira-webhook-secret"
BOT = "5c0ffee0000000000000b0t"
FIELD_MAP = {"category": "same", "subcategory": "same",
             "priority": {"Low": "Low", "Medium": "Medium", "High": "High", "Critical": "Highest"},
             "assignment_group": "same", "request_type": {"Incident": "Incident", "Service Request": "Service request"}}
TARGETS = {"category": "customfield_10050", "subcategory": "child", "assignment_group": "customfield_10060",
           "request_type": "customfield_10070"}
ENV = {"TRIAGE_JIRA_API_TOKEN": "api-token", "TRIAGE_JIRA_WEBHOOK_SECRET": SECRET}


@pytest.fixture(scope="module")
def taxonomy():
    return load_taxonomy(ROOT / "config" / "taxonomy.yaml")  # no model needed for contract tests


def site_fields(taxonomy) -> dict[str, Select]:
    """The Jira site's field configuration, set up by its admin to match the taxonomy and FIELD_MAP."""
    return {"customfield_10050": Select.cascade(taxonomy["subcategory"].children),
            "customfield_10060": Select(list(taxonomy["assignment_group"].values)),
            "customfield_10070": Select(["Incident", "Service request", "Change"])}


@pytest.fixture(scope="module")
def server(taxonomy):
    fake = FakeJira(fields=site_fields(taxonomy))
    yield fake
    fake.close()


@pytest.fixture()
def fake(server):
    server.reset()
    yield server
    assert not server.problems, server.problems  # the connector never sent what a real Jira site refuses


def settings(fake: FakeJira, **extra) -> dict:
    return {"base_url": fake.url, "email": "bot@example.com", "bot_account_id": BOT, "field_map": FIELD_MAP,
            "targets": TARGETS, **extra}


@pytest.fixture()
def conn(fake, taxonomy):
    connector = from_config(settings(fake), ENV)
    connector.check_taxonomy(taxonomy)
    connector.client.backoff = 0.05
    return connector


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def signed(payload, identifier: str | None = "wh-1", secret: str = SECRET, retry: int | None = None):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json",
               "X-Hub-Signature": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}
    if identifier:
        headers["X-Atlassian-Webhook-Identifier"] = identifier
    if retry is not None:
        headers["X-Atlassian-Webhook-Retry"] = str(retry)
    return body, headers


def rejected(conn, body, headers, query=None) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as err:
        conn.parse_webhook(body, headers, query or {})
    return err.value


# --- webhooks -------------------------------------------------------------------------------------------------

def test_issue_created_with_adf_description_becomes_a_ticket(conn):
    [t] = conn.parse_webhook(*signed(fixture("issue_created.json"), identifier="a1b2"), {})
    assert isinstance(t, InboundTicket)
    assert (t.connector, t.ref, t.event_key, t.project, t.ticket_type) == ("jira", "IT-42", "a1b2", "IT", "Incident")
    assert t.text == ("VPN drops every few minutes\n\nWhat happens\n\n"
                      "Since this morning the VPN disconnects, @Ravi Patel sees it too.\nClient version:\n\n"
                      "- Windows 11\n- GlobalProtect 6.1\n\n1. Connect\n2. Wait five minutes\n\n"
                      "error 0x80070005: tunnel closed")
    # Only the custom fields a human filled count as set; Jira's always-present priority does not.
    assert t.current == {"assignment_group": "Network Operations"}
    assert t.extra == {"id": "10042"}


def test_plain_text_description_and_nested_adf():
    doc = {"type": "doc", "version": 1, "content": [
        {"type": "bulletList", "content": [{"type": "listItem", "content": [
            {"type": "paragraph", "content": [{"type": "text", "text": "outer"}]},
            {"type": "orderedList", "attrs": {"order": 3}, "content": [{"type": "listItem", "content": [
                {"type": "paragraph", "content": [{"type": "text", "text": "in"}]}]}]}]}]},
        {"type": "blockquote", "content": [{"type": "paragraph", "content": [
            {"type": "emoji", "attrs": {"shortName": ":fire:", "text": "🔥"}}, {"type": "text", "text": " hot"}]}]}]}
    assert adf_to_text(doc) == "- outer\n  3. in\n\n🔥 hot"
    deep: dict = {"type": "text", "text": "x"}
    for _ in range(200):
        deep = {"type": "paragraph", "content": [deep]}
    assert adf_to_text(deep) == ""  # bounded depth, no RecursionError


def test_plain_description_string(conn):
    payload = fixture("issue_created.json")
    payload["issue"]["fields"]["description"] = "Printer on floor 3 jams"
    [t] = conn.parse_webhook(*signed(payload), {})
    assert t.text == "VPN drops every few minutes\n\nPrinter on floor 3 jams"


def test_signature_is_required_and_checked(conn):
    body, headers = signed(fixture("issue_created.json"))
    forged = rejected(conn, body, {**headers, "X-Hub-Signature": signed(body, secret="guess")[1]["X-Hub-Signature"]})
    assert forged.status == 401 and "does not match" in forged.reason
    assert rejected(conn, body.replace(b"VPN drops", b"VPN DROPS"), headers).status == 401
    missing = rejected(conn, body, {"Content-Type": "application/json"}, {"secret": SECRET})
    assert missing.status == 401 and "missing X-Hub-Signature" in missing.reason
    assert rejected(conn, b"{not json", {}).status == 401  # authenticity before parsing


def test_unsigned_webhooks_only_with_the_url_secret_mode(fake, taxonomy):
    env = {"TRIAGE_JIRA_API_TOKEN": "api-token", "TRIAGE_JIRA_URL_SECRET": "url-s3cret"}
    conn = from_config(settings(fake, allow_unsigned_with_url_secret=True), env)
    body = json.dumps(fixture("issue_created.json")).encode()
    headers = {"Content-Type": "application/json", "X-Atlassian-Webhook-Identifier": "u-1"}
    [t] = conn.parse_webhook(body, headers, {"secret": "url-s3cret"})
    assert t.ref == "IT-42" and t.event_key == "u-1"
    assert rejected(conn, body, headers, {"secret": "url-s3cre"}).status == 401
    assert rejected(conn, body, headers).status == 401
    # a signature is still checked when present, and without a webhook secret it cannot be trusted
    assert rejected(conn, *signed(body)).status == 401


def test_redelivery_keeps_the_idempotency_key(conn):
    payload = fixture("issue_created.json")
    [first] = conn.parse_webhook(*signed(payload, identifier="ident-7"), {})
    [again] = conn.parse_webhook(*signed(payload, identifier="ident-7", retry=1), {})
    assert first.event_key == again.event_key == "ident-7"
    body, headers = signed(payload, identifier=None)
    [t] = conn.parse_webhook(body, headers, {})
    assert t.event_key == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("body, status, fragment", [
    (b"{not json", 400, "malformed JSON"),
    (b"[1]", 400, "expected a JSON object"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "malformed JSON"),
    (json.dumps({"webhookEvent": "jira:issue_created"}).encode(), 400, "issue"),
    (json.dumps({"webhookEvent": "jira:issue_created", "issue": {"key": "../x", "fields": {}}}).encode(), 400,
     "issue.key"),
    (json.dumps({"webhookEvent": "jira:issue_updated", "issue": {"key": "IT-1", "fields": {}},
                 "changelog": {"items": "x"}}).encode(), 400, "changelog.items"),
    ("{\"x\": \"caf\u00e9\"}".encode("latin-1"), 400, "not UTF-8"),
])
def test_malformed_webhooks_are_refused(conn, body, status, fragment):
    err = rejected(conn, *signed(body))
    assert err.status == status and fragment in err.reason


def test_other_events_and_wrong_content_type(conn):
    assert conn.parse_webhook(*signed({"webhookEvent": "comment_created", "comment": {}}), {}) == []
    body, headers = signed(fixture("issue_created.json"))
    assert rejected(conn, body, {**headers, "Content-Type": "text/plain"}).status == 415


def test_issue_updated_by_a_human_gives_field_changes(conn):
    events = conn.parse_webhook(*signed(fixture("issue_updated.json")), {})
    actor = "5b10a2844c20165700ede21g"
    assert sorted(events, key=lambda e: e.field) == [
        FieldChange("jira", "IT-42", "category", "Software", "Network", actor),
        FieldChange("jira", "IT-42", "priority", "Medium", "Critical", actor),
        FieldChange("jira", "IT-42", "subcategory", "Other", "VPN", actor),
    ]  # status is not a field we write; an update never queues a new triage


def test_updates_without_changelog_and_odd_field_values(conn):
    commented = fixture("issue_updated.json")
    del commented["changelog"]
    commented["issue_event_type_name"] = "issue_commented"
    commented["comment"] = {"id": "10100", "body": "seen"}
    assert conn.parse_webhook(*signed(commented), {}) == []
    created = fixture("issue_created.json")
    created["issue"]["fields"].update(customfield_10060="Network Operations", customfield_10050=["x"], labels="a b",
                                      project=None, description={"type": "doc", "content": "not a list"})
    [t] = conn.parse_webhook(*signed(created), {})
    assert (t.text, t.current, t.project) == ("VPN drops every few minutes", {}, None)


def test_issue_updated_by_the_bot_is_ignored(conn):
    payload = fixture("issue_updated.json")
    payload["user"]["accountId"] = BOT
    assert conn.parse_webhook(*signed(payload), {}) == []


def test_unmapped_values_and_label_targets_in_changelog(fake, taxonomy):
    conn = from_config(settings(fake, targets={"category": "labels", "subcategory": None, "assignment_group": None,
                                               "request_type": None},
                                field_map={"category": {c: c.lower().replace(" & ", "-").replace(" ", "-")
                                                        for c in taxonomy["category"].values},
                                           "priority": FIELD_MAP["priority"]}), ENV)
    conn.check_taxonomy(taxonomy)
    payload = fixture("issue_updated.json")
    payload["changelog"]["items"] = [
        {"field": "labels", "fieldtype": "jira", "fieldId": "labels", "from": None, "fromString": "remote-work",
         "to": None, "toString": "network remote-work"},
        {"field": "priority", "fieldtype": "jira", "fieldId": "priority", "from": "3", "fromString": "Medium",
         "to": "10007", "toString": "Blocker"}]
    events = conn.parse_webhook(*signed(payload), {})
    assert sorted(events, key=lambda e: e.field) == [
        FieldChange("jira", "IT-42", "category", None, "Network", "5b10a2844c20165700ede21g"),
        FieldChange("jira", "IT-42", "priority", "Medium", None, "5b10a2844c20165700ede21g")]


# --- write-back -----------------------------------------------------------------------------------------------

RESULT = TriageResult(
    ticket={"summary": "VPN drops", "category": "Network", "subcategory": "VPN", "priority": "High",
            "assignment_group": "Network Operations", "request_type": "Incident"},
    confidence={"category": 0.91, "subcategory": 0.8, "priority": 0.42, "assignment_group": 0.9,
                "request_type": 0.97},
    model={"base": "SmolLM2-135M-Instruct", "adapter": "default-it@1"}, latency_ms=9)


def plan_for(ticket: InboundTicket, result: TriageResult = RESULT, **policy):
    return Policy.from_config(policy).plan(result, ticket)


def ticket(current: dict | None = None) -> InboundTicket:
    return InboundTicket("jira", "IT-42", "wh-1", "VPN drops\n\nprivate body text", project="IT",
                         ticket_type="Incident", current=current or {})


def test_write_back_sends_one_put_and_one_internal_comment(conn, fake):
    fake.add_issue("IT-42", summary="VPN drops")
    t = ticket({"assignment_group": "Service Desk"})
    outcome = conn.write_back(t, plan_for(t), RESULT)
    assert (outcome.outcome, outcome.status) == ("applied", 201)
    [put] = fake.calls("PUT")
    [post] = fake.calls("POST")
    assert put.path == "/rest/api/3/issue/IT-42" and post.path == "/rest/api/3/issue/IT-42/comment"
    for req in (put, post):
        assert req.header("Authorization") == fake.authorization
        assert req.header("Content-Type") == "application/json" and req.header("Accept") == "application/json"
    # priority is below the 0.5 threshold and assignment group was set by a human: neither is written
    assert put.json() == {"fields": {"customfield_10050": {"value": "Network", "child": {"value": "VPN"}},
                                     "customfield_10070": {"value": "Incident"}},
                          "update": {"labels": [{"add": "triage-needs-review"}]}}
    comment = post.json()
    assert comment["properties"] == [{"key": "sd.public.comment", "value": {"internal": True}}]
    note = " ".join(n["text"] for p in comment["body"]["content"] for n in p["content"])
    assert "SmolLM2" in note and "Needs review: priority High (42%)" in note and "private body" not in note
    assert fake.comments["IT-42"][0]["jsdPublic"] is False
    assert fake.issues["IT-42"]["fields"]["labels"] == ["triage-needs-review"]
    assert fake.problems == []


@pytest.mark.parametrize("current, result, cascade", [
    ({"category": "Network"}, {}, {"value": "Network", "child": {"value": "VPN"}}),  # the child under the human's
    ({}, {"category": "Access", "subcategory": "Password Reset"},
     {"value": "Access", "child": {"value": "Password Reset"}}),
])
def test_cascade_child_is_written_under_its_parent(conn, fake, current, result, cascade):
    fake.add_issue("IT-42")
    triaged = dataclasses.replace(RESULT, ticket={**RESULT.ticket, **result})
    t = ticket(current)
    conn.write_back(t, plan_for(t, triaged), triaged)
    [put] = fake.calls("PUT")
    assert put.json()["fields"]["customfield_10050"] == cascade
    assert fake.issues["IT-42"]["fields"]["customfield_10050"] == cascade


def nested_subcategories(taxonomy, category: str, label: str, vendor: str) -> dict:
    return {c: ({v: (vendor if v == label else v) for v in children} if c == category else "same")
            for c, children in taxonomy["subcategory"].children.items()}


@pytest.mark.parametrize("field_map, jira_field, message", [
    ({"priority": {**FIELD_MAP["priority"], "High": "Urgent"}}, "priority", "The priority selected is invalid."),
    ({"request_type": {"Incident": "Incidents", "Service Request": "Service request"}}, "customfield_10070",
     "Option value 'Incidents' is not valid"),
    ("subcategory", "customfield_10050", "Option value 'VPN access' is not valid for parent option 'Network'"),
])
def test_values_outside_the_site_configuration_are_refused_as_jira_does(fake, taxonomy, field_map, jira_field,
                                                                        message):
    """Edit issue answers 400 with the field's error for an option, priority or cascade child the site lacks."""
    if field_map == "subcategory":
        field_map = {"subcategory": nested_subcategories(taxonomy, "Network", "VPN", "VPN access")}
    conn = from_config(settings(fake, field_map={**FIELD_MAP, **field_map}), ENV)
    conn.check_taxonomy(taxonomy)  # the map covers every label: only the site can tell it is wrong
    fake.add_issue("IT-42")
    t = ticket()
    with pytest.raises(VendorError) as err:
        conn.write_back(t, plan_for(t, default_threshold=0.4), RESULT)
    assert err.value.status == 400 and not err.value.retryable and f"{jira_field}: {message}" in str(err.value)
    assert fake.issues["IT-42"]["fields"]["labels"] == [] and "IT-42" not in fake.comments
    assert fake.problems == [f"PUT /rest/api/3/issue/IT-42: Jira refuses {jira_field}: {message}"]
    fake.problems.clear()  # recorded, as the fixture needs: the refusal was the point


def test_the_fake_resolves_option_ids_per_parent_and_knows_no_other_field(fake):
    fake.add_issue("IT-42")
    network, vpn = fake.option_id("customfield_10050", "Network"), fake.option_id("customfield_10050", "VPN",
                                                                                     parent="Network")
    other_under_hardware = fake.option_id("customfield_10050", "Other", parent="Hardware")
    headers = {"Authorization": fake.authorization, "Accept": "application/json",
               "Content-Type": "application/json"}

    def put(fields: dict) -> requests.Response:
        return requests.put(fake.url + "/rest/api/3/issue/IT-42", json={"fields": fields}, headers=headers,
                            timeout=5)

    assert put({"customfield_10050": {"id": network, "child": {"id": vpn}}, "priority": {"id": "2"}}).status_code \
        == 204
    cases = [({"customfield_10050": {"id": network, "child": {"id": other_under_hardware}}},
              f"Option id '{other_under_hardware}' is not valid for parent option 'Network'"),
             ({"priority": {"id": "9"}}, "The priority selected is invalid."),
             ({"components": [{"name": "Network"}]}, "Component name 'Network' is not valid"),
             ({"customfield_99999": {"value": "x"}}, "Field 'customfield_99999' cannot be set.")]
    for fields, message in cases:
        r = put(fields)
        assert r.status_code == 400 and message in json.dumps(r.json()["errors"]), r.text
    assert len(fake.problems) == len(cases)
    assert fake.issues["IT-42"]["fields"]["customfield_10050"] == {"id": network, "child": {"id": vpn}}
    fake.problems.clear()


def test_write_back_by_id_plain_comment_and_nothing_to_apply(fake, taxonomy):
    ids = {"Low": "4", "Medium": "3", "High": "2", "Critical": "1"}
    conn = from_config(settings(fake, priority_by="id", field_map={"priority": ids}, targets={"category": None},
                                internal_comment="plain",
                                comment_visibility={"type": "role", "value": "Service Desk Team"}), ENV)
    conn.check_taxonomy(taxonomy)
    fake.add_issue("IT-42")
    t = ticket()
    conn.write_back(t, plan_for(t, default_threshold=0.4), RESULT)
    [put] = fake.calls("PUT")
    assert put.json() == {"fields": {"priority": {"id": "2"}}}
    [post] = fake.calls("POST")
    assert post.json()["visibility"] == {"type": "role", "value": "Service Desk Team"}
    assert "properties" not in post.json()
    # nothing to apply and nothing to review (every field only suggested): no PUT at all, only the note
    t2 = InboundTicket("jira", "IT-42", "wh-2", "x")
    assert conn.write_back(t2, plan_for(t2, default_mode="suggest", default_threshold=0.0), RESULT).outcome == "applied"
    assert len(fake.calls("PUT")) == 1 and len(fake.calls("POST", "/comment$")) == 2 and fake.problems == []


def test_shadow_mode_writes_nothing(conn, fake):
    t = ticket()
    assert conn.write_back(t, plan_for(t, shadow=True), RESULT).outcome == "shadow"
    assert fake.requests == []


def test_retry_after_a_failed_comment_does_not_edit_again(conn, fake):
    fake.add_issue("IT-42")
    fake.fail_next("POST", "/comment$", 400, {"errorMessages": ["Comment body is not valid!"], "errors": {}})
    t = ticket()
    plan = plan_for(t)
    with pytest.raises(VendorError) as err:
        conn.write_back(t, plan, RESULT)
    assert not err.value.retryable and "Comment body is not valid!" in str(err.value)
    conn.write_back(t, plan, RESULT)
    assert len(fake.calls("PUT")) == 1 and len(fake.comments["IT-42"]) == 1


RATE_LIMITED = {"errorMessages": ["Rate limit exceeded."]}


def put_gaps(fake: FakeJira) -> list[float]:
    """Seconds between successive PUTs as the fake received them (the 429 and the retry after it)."""
    times = [r.at for r in fake.calls("PUT")]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_429_with_retry_after_is_retried(conn, fake):
    fake.add_issue("IT-42")
    fake.fail_next("PUT", r"/issue/IT-42$", 429, RATE_LIMITED, headers={"Retry-After": "1"})
    t = ticket()
    assert conn.write_back(t, plan_for(t), RESULT).outcome == "applied"
    [gap] = put_gaps(fake)
    assert 0.95 <= gap < 1.5  # Retry-After, not the 0.05 s general backoff nor the 5 s rate-limit one
    assert len(fake.calls("PUT")) == 2 and len(fake.calls("POST")) == 1


def test_429_without_retry_after_backs_off_about_five_seconds(fake, taxonomy):
    """Atlassian's "Rate limiting" page: without Retry-After, back off from about 5 s with 0.7-1.3x jitter."""
    conn = from_config(settings(fake), ENV)  # the shipped defaults, nothing scaled down
    conn.check_taxonomy(taxonomy)
    fake.add_issue("IT-42")
    fake.fail_next("PUT", r"/issue/IT-42$", 429, RATE_LIMITED)
    t = ticket()
    assert conn.write_back(t, plan_for(t), RESULT).outcome == "applied"
    [gap] = put_gaps(fake)
    assert 5.0 * 0.7 - 0.05 <= gap <= 5.0 * 1.3 + 0.3


def test_429_backoff_doubles_with_jitter(conn, fake, monkeypatch):
    import connectors.http as http

    ranges: list[tuple[float, float]] = []

    def top_of_range(lo: float, hi: float) -> float:
        ranges.append((lo, hi))
        return hi

    monkeypatch.setattr(http.random, "uniform", top_of_range)
    conn.client.rate_limit_backoff = 0.2  # scaled down from 5 s; the doubling and the jitter are the same
    fake.add_issue("IT-42")
    fake.fail_next("PUT", r"/issue/IT-42$", 429, RATE_LIMITED, times=3)
    t = ticket()
    assert conn.write_back(t, plan_for(t), RESULT).outcome == "applied"
    gaps = put_gaps(fake)
    assert len(gaps) == 3 and ranges == [(0.7, 1.3)] * 3
    for gap, expected in zip(gaps, (0.26, 0.52, 1.04), strict=True):  # 0.2 s, 0.4 s, 0.8 s, each at 1.3x
        assert expected - 0.01 <= gap <= expected + 0.25, gaps


def test_429_waits_until_x_ratelimit_reset(conn, fake):
    fake.add_issue("IT-42")
    reset = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    fake.fail_next("PUT", r"/issue/IT-42$", 429, RATE_LIMITED,
                   headers={"X-RateLimit-Reset": reset.isoformat(timespec="milliseconds").replace("+00:00", "Z")})
    t = ticket()
    assert conn.write_back(t, plan_for(t), RESULT).outcome == "applied"
    [gap] = put_gaps(fake)
    assert 1.3 <= gap <= 2.2  # until the reset, not the 5 s rate-limit backoff


def test_a_distant_or_past_x_ratelimit_reset(conn, fake):
    """Jira's documented format is yyyy-MM-ddTHH:mmZ. Ten minutes away: the queue waits, not a worker. Already
    past: it says nothing, and the rate-limit backoff applies."""
    fake.add_issue("IT-42")
    later = (datetime.now(timezone.utc) + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%MZ")
    fake.fail_next("PUT", r"/issue/IT-42$", 429, RATE_LIMITED, headers={"X-RateLimit-Reset": later})
    t = ticket()
    with pytest.raises(VendorError) as err:
        conn.write_back(t, plan_for(t), RESULT)
    assert err.value.retryable and err.value.status == 429 and 540 <= err.value.retry_after <= 600
    assert len(fake.calls("PUT")) == 1
    fake.requests.clear()
    conn.client.rate_limit_backoff = 0.3
    past = (datetime.now(timezone.utc) - timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%MZ")
    fake.fail_next("PUT", r"/issue/IT-42$", 429, RATE_LIMITED, headers={"X-RateLimit-Reset": past})
    assert conn.write_back(t, plan_for(t), RESULT).outcome == "applied"
    [gap] = put_gaps(fake)
    assert 0.3 * 0.7 - 0.01 <= gap <= 0.3 * 1.3 + 0.25


def quiet_conn(fake, taxonomy):
    conn = from_config(settings(fake, notify_users=False), ENV)
    conn.check_taxonomy(taxonomy)
    return conn


def test_notify_users_false_edits_without_mailing_watchers(fake, taxonomy):
    conn = quiet_conn(fake, taxonomy)
    fake.add_issue("IT-42")
    t = ticket()
    assert conn.write_back(t, plan_for(t), RESULT).outcome == "applied"
    [put] = fake.calls("PUT")
    assert put.query == {"notifyUsers": ["false"]} and fake.notified == []
    assert fake.issues["IT-42"]["fields"]["customfield_10050"] == {"value": "Network", "child": {"value": "VPN"}}
    default = from_config(settings(fake), ENV)  # the default notifies, as Jira does
    default.check_taxonomy(taxonomy)
    default.write_back(InboundTicket("jira", "IT-42", "wh-2", "x"), plan_for(t), RESULT)
    assert fake.calls("PUT")[1].query == {} and fake.notified == ["IT-42"]


def test_notify_users_refused_without_project_admin_falls_back_once(fake, taxonomy, caplog):
    conn = quiet_conn(fake, taxonomy)
    fake.project_admin = False
    fake.add_issue("IT-42")
    fake.add_issue("IT-43")
    caplog.set_level(logging.WARNING, logger="connectors.jira")
    for n, key in enumerate(("IT-42", "IT-43", "IT-42")):
        t = InboundTicket("jira", key, f"wh-{n}", "VPN drops")
        assert conn.write_back(t, plan_for(t), RESULT).outcome == "applied"
    queries = [r.query for r in fake.calls("PUT")]
    # refused once (403), sent again without it; from then on edits are plain ones
    assert queries == [{"notifyUsers": ["false"]}, {}, {}, {}]
    assert fake.notified == ["IT-42", "IT-43", "IT-42"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Administer Projects" in warnings[0] and NOTIFY_FORBIDDEN in warnings[0]
    assert len(fake.comments["IT-42"]) == 2 and len(fake.comments["IT-43"]) == 1


def test_a_400_for_another_reason_is_not_taken_for_a_notify_refusal(fake, taxonomy, caplog):
    conn = quiet_conn(fake, taxonomy)
    fake.add_issue("IT-42")
    caplog.set_level(logging.WARNING, logger="connectors.jira")
    bad = dataclasses.replace(RESULT, ticket={**RESULT.ticket, "subcategory": "Password Reset"})
    t = ticket()
    plan = plan_for(t, bad)
    plan.apply["subcategory"] = "Password Reset"  # as a buggy policy would: a child outside its parent
    with pytest.raises(VendorError) as err:
        conn.write_back(t, plan, bad)
    assert err.value.status == 400 and "is not valid" in str(err.value)
    assert [r.query for r in fake.calls("PUT")] == [{"notifyUsers": ["false"]}, {}]  # one retry, then final
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    fake.problems.clear()  # the two refusals were the point
    conn.write_back(InboundTicket("jira", "IT-42", "wh-2", "x"), plan_for(t), RESULT)
    assert fake.calls("PUT")[-1].query == {"notifyUsers": ["false"]}  # still asked for: it was never refused


def test_deleted_issue_is_a_permanent_error_with_jiras_message(conn, fake):
    t = ticket()
    with pytest.raises(VendorError) as err:
        conn.write_back(t, plan_for(t), RESULT)
    assert err.value.status == 404 and not err.value.retryable
    assert "Issue does not exist or you do not have permission to see it." in str(err.value)
    assert len(fake.calls("PUT")) == 1 and fake.calls("POST") == []


def test_expired_oauth_token_is_final(taxonomy):
    fake = FakeJira(bearer="fresh-token", fields=site_fields(taxonomy))
    try:
        conn = from_config({**settings(fake), "email": None, "oauth_token_env": "JIRA_OAUTH"},
                           {"JIRA_OAUTH": "expired-token", "TRIAGE_JIRA_WEBHOOK_SECRET": SECRET})
        conn.check_taxonomy(taxonomy)
        t = ticket()
        with pytest.raises(VendorError) as err:
            conn.write_back(t, plan_for(t), RESULT)
        # a bearer token cannot be refreshed by the connector: one request, parked, not retried
        assert err.value.status == 401 and not err.value.retryable
        assert "Client must be authenticated" in str(err.value)
        assert len(fake.requests) == 1 and fake.requests[0].header("Authorization") == "Bearer expired-token"
    finally:
        fake.close()


# --- closed tickets -------------------------------------------------------------------------------------------

def jira_time(when: datetime) -> str:
    """A timestamp as Jira writes resolutiondate: 2024-05-01T09:30:00.000+0000."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def closed_issue(n: int, category: str | None, sub: str | None, priority: str, resolved: datetime | None = None,
                 project: str = "IT") -> dict:
    cascade = None if category is None else {"value": category, "id": str(100 + n),
                                             **({"child": {"value": sub, "id": str(200 + n)}} if sub else {})}
    resolved = resolved or datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=10 - n)
    return {"id": str(20000 + n), "key": f"{project}-{n}", "fields": {
        "summary": f"Ticket {n}", "description": {"type": "doc", "version": 1, "content": [
            {"type": "paragraph", "content": [{"type": "text", "text": f"body {n}"}]}]},
        "resolutiondate": jira_time(resolved), "priority": {"name": priority, "id": "3"},
        "customfield_10050": cascade, "customfield_10060": {"value": "Infrastructure", "id": "7"},
        "customfield_10070": {"value": "Service request", "id": "9"}, "labels": [], "components": [],
        "status": {"name": "Done"}}}


def test_closed_tickets_page_through_search_jql(fake, conn):
    fake.closed = [closed_issue(1, "Network", "VPN", "Highest"), closed_issue(2, "Hardware", "VPN", "Trivial"),
                   closed_issue(3, "Bogus", None, "Low"), closed_issue(4, None, None, "Medium"),
                   closed_issue(5, "Access", "Password Reset", "High"),
                   closed_issue(6, "Network", "VPN", "High", resolved=datetime.now(timezone.utc) - timedelta(days=91))]
    conn.opt = dataclasses.replace(conn.opt, page_size=2)
    records = list(conn.closed_tickets(since=None))
    calls = fake.calls("POST", "/search/jql$")
    assert len(calls) == 3 and fake.calls("POST", "/search$") == []
    first, second = calls[0].json(), calls[1].json()
    assert first["jql"] == "resolved >= -90d ORDER BY resolved ASC" and "nextPageToken" not in first
    assert first["maxResults"] == 2 and second["nextPageToken"] == "tok-1"
    assert {"summary", "description", "resolutiondate", "priority", "customfield_10050"} <= set(first["fields"])
    assert [r["id"] for r in records] == ["IT-1", "IT-2", "IT-3", "IT-4", "IT-5"]  # IT-6: 91 days ago
    resolved = datetime.strptime(fake.closed[0]["fields"]["resolutiondate"], "%Y-%m-%dT%H:%M:%S.000%z")
    assert records[0] == {"id": "IT-1", "text": "Ticket 1\n\nbody 1", "source": "jira",
                          "closed_at": resolved.isoformat(),
                          "labels": {"category": "Network", "subcategory": "VPN", "priority": "Critical",
                                     "assignment_group": "Infrastructure", "request_type": "Service Request"}}
    # values outside the taxonomy are dropped, never kept: a subcategory of another category, an unknown
    # category, an unmapped priority
    assert records[1]["labels"] == {"category": "Hardware", "assignment_group": "Infrastructure",
                                    "request_type": "Service Request"}
    assert "category" not in records[2]["labels"] and records[2]["labels"]["priority"] == "Low"
    assert records[4]["labels"]["subcategory"] == "Password Reset"


SINCE = datetime(2024, 5, 1, 8, 0, tzinfo=timezone.utc)


def resolved_around_since() -> list[dict]:
    """Closed issues on both sides of SINCE (08:00 UTC), and one of another project."""
    at = {"IT-1": "07:30", "IT-2": "08:00", "IT-3": "08:30", "HR-4": "09:00", "IT-5": "13:00"}
    return [closed_issue(int(key[3:]), "Network", "VPN", "High", project=key[:2],
                         resolved=datetime.fromisoformat(f"2024-05-01T{hhmm}+00:00")) for key, hhmm in at.items()]


@pytest.mark.parametrize("zone, literal", [("UTC", "2024-05-01 08:00"), ("America/New_York", "2024-05-01 04:00"),
                                           ("Asia/Kolkata", "2024-05-01 13:30")])
def test_closed_tickets_since_and_custom_jql(fake, conn, zone, literal):
    """JQL reads a date in the API user's zone: the instant is written in that zone, so the same issues come back
    whatever the zone (a UTC literal read in New York starts four hours late; in Kolkata five and a half early)."""
    fake.time_zone, fake.closed = zone, resolved_around_since()
    conn.opt = dataclasses.replace(conn.opt, closed_jql="project = IT")
    records = list(conn.closed_tickets(since=SINCE))
    assert [r["id"] for r in records] == ["IT-2", "IT-3", "IT-5"]  # HR-4: the custom JQL is honoured
    assert records[0]["text"] == "Ticket 2\n\nbody 2" and records[0]["labels"]["subcategory"] == "VPN"
    [search] = fake.calls("POST", "/search/jql$")
    assert search.json()["jql"] == f'(project = IT) AND resolved >= "{literal}" ORDER BY resolved ASC'
    assert len(fake.calls("GET", "/rest/api/3/myself$")) == 1


@pytest.mark.parametrize("since", ["2024-05-01T10:00+02:00", "2024-05-01T08:00:00Z", datetime(2024, 5, 1, 8, 0)])
def test_closed_tickets_since_as_string_or_naive_utc(fake, conn, since):
    fake.time_zone, fake.closed = "Asia/Kolkata", resolved_around_since()
    assert [r["id"] for r in conn.closed_tickets(since=since)] == ["IT-2", "IT-3", "HR-4", "IT-5"]


def test_closed_tickets_without_a_user_time_zone_use_minutes_before_now(fake, conn):
    """Where the profile hides its zone, JQL uses the site's: a relative date is read in no zone at all."""
    fake.time_zone, fake.site_zone = None, "Asia/Kolkata"
    now = datetime.now(timezone.utc).replace(microsecond=0)
    fake.closed = [closed_issue(n, "Network", "VPN", "High", resolved=now - timedelta(hours=h))
                   for n, h in ((1, 4), (2, 2), (3, 1))]
    records = list(conn.closed_tickets(since=now - timedelta(hours=3)))
    assert [r["id"] for r in records] == ["IT-2", "IT-3"]
    jql = fake.calls("POST", "/search/jql$")[0].json()["jql"]
    assert jql in ("resolved >= -180m ORDER BY resolved ASC", "resolved >= -181m ORDER BY resolved ASC")


# --- configuration --------------------------------------------------------------------------------------------

def test_unmapped_label_is_a_start_up_error(fake, taxonomy):
    field_map = {**FIELD_MAP, "priority": {"Low": "Low", "Medium": "Medium", "High": "High"}}
    conn = from_config(settings(fake, field_map=field_map), ENV)
    with pytest.raises(ConnectorConfigError, match=r"field_map\.priority: no vendor value for label 'Critical'"):
        conn.check_taxonomy(taxonomy)
    conn = from_config(settings(fake, targets={"assignment_group": None}), ENV)
    with pytest.raises(ConnectorConfigError, match=r"targets\.assignment_group: missing"):
        conn.check_taxonomy(taxonomy)
    conn = from_config(settings(fake, targets={**TARGETS, "category": "labels"}), ENV)
    with pytest.raises(ConnectorConfigError, match="cannot contain spaces"):
        conn.check_taxonomy(taxonomy)


@pytest.mark.parametrize("extra, env, fragment", [
    ({"colour": "blue"}, ENV, r"jira\.colour: unknown setting"),
    ({"base_url": None}, ENV, r"jira\.base_url"),
    ({"base_url": "example.atlassian.net"}, ENV, r"jira\.base_url: expected https://"),
    ({"email": None}, ENV, r"jira\.email: required"),
    ({}, {"TRIAGE_JIRA_WEBHOOK_SECRET": SECRET}, "TRIAGE_JIRA_API_TOKEN is not set"),
    ({}, {"TRIAGE_JIRA_API_TOKEN": "t"}, "TRIAGE_JIRA_WEBHOOK_SECRET is not set"),
    ({"allow_unsigned_with_url_secret": True}, {"TRIAGE_JIRA_API_TOKEN": "t"}, "TRIAGE_JIRA_URL_SECRET is not set"),
    ({"targets": {"priority": "customfield_1x"}}, ENV, r"targets\.priority"),
    ({"priority_by": "colour"}, ENV, r"priority_by: expected one of name, id"),
    ({"internal_comment": "plain"}, ENV, r"comment_visibility"),
    ({"timeout": 0}, ENV, r"jira\.timeout"),
    ({"notify_users": "no"}, ENV, r"jira\.notify_users: expected true or false"),
])
def test_config_errors(fake, extra, env, fragment):
    with pytest.raises(ConnectorConfigError, match=fragment):
        from_config(settings(fake, **extra), env)


def test_secrets_stay_out_of_repr(conn):
    assert SECRET not in repr(conn) and "api-token" not in repr(conn) and "api-token" not in repr(conn.client)


# --- end to end -----------------------------------------------------------------------------------------------

def test_end_to_end_daemon_writes_back_once_and_records_a_correction(live_daemon, fake):
    fake.add_issue("IT-77", summary="Laptop will not boot")
    daemon = live_daemon({"connectors": {"enabled": ["jira"], "settings": {"jira": settings(fake)}},
                          "policy": {"default_threshold": 0.0}}, env=ENV)
    created = fixture("issue_created.json")
    issue = created["issue"]
    issue["key"], issue["fields"]["customfield_10060"] = "IT-77", None
    issue["fields"]["summary"] = "Laptop will not boot after the update"
    issue["fields"]["description"] = {"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [
        {"type": "text", "text": "My Dell laptop shows a black screen since this morning's Windows update."}]}]}
    body, headers = signed(created, identifier="e2e-created")
    r = requests.post(daemon.url + "/webhooks/jira", data=body, headers=headers, timeout=10)
    assert r.status_code == 202, r.text
    again = requests.post(daemon.url + "/webhooks/jira", data=body, headers={**headers,
                          "X-Atlassian-Webhook-Retry": "1"}, timeout=10)
    assert again.json()["accepted"][0]["duplicate"] is True
    daemon.wait_idle(done=1)

    [put] = fake.calls("PUT", "/issue/IT-77$")
    [post] = fake.calls("POST", "/issue/IT-77/comment$")
    assert fake.problems == []
    fields = put.json()["fields"]
    priority = fields["priority"]["name"]
    assert priority in FIELD_MAP["priority"].values()
    cascade = fields["customfield_10050"]
    assert cascade["value"] in daemon.ctx.triager.taxonomy["category"].values
    assert cascade["child"]["value"] in daemon.ctx.triager.taxonomy["subcategory"].children[cascade["value"]]
    assert fields["customfield_10060"]["value"] in daemon.ctx.triager.taxonomy["assignment_group"].values
    assert fields["customfield_10070"]["value"] in FIELD_MAP["request_type"].values()
    assert post.json()["properties"] == [{"key": "sd.public.comment", "value": {"internal": True}}]

    # a human raises (or lowers) the priority the daemon wrote: a correction
    written = next(label for label, name in FIELD_MAP["priority"].items() if name == priority)
    new = "Low" if written != "Low" else "Critical"
    updated = fixture("issue_updated.json")
    updated["issue"]["key"] = "IT-77"
    updated["changelog"]["items"] = [{"field": "priority", "fieldtype": "jira", "fieldId": "priority",
                                      "from": "3", "fromString": priority, "to": "1",
                                      "toString": FIELD_MAP["priority"][new]}]
    r = requests.post(daemon.url + "/webhooks/jira", data=signed(updated, identifier="e2e-upd")[0],
                      headers=signed(updated, identifier="e2e-upd")[1], timeout=10)
    assert r.status_code == 202 and r.json()["accepted"] == [{"ref": "IT-77", "field": "priority",
                                                              "correction": True}]
    # Jira redelivers the same update: acknowledged, not recorded twice
    r = requests.post(daemon.url + "/webhooks/jira", data=signed(updated, identifier="e2e-upd")[0],
                      headers=signed(updated, identifier="e2e-upd")[1], timeout=10)
    assert r.status_code == 202 and r.json()["accepted"][0]["correction"] is False
    corrections = daemon.store.ticket_history("jira", "IT-77")["history"]["corrections"]
    assert [(c["field"], c["old_value"], c["new_value"]) for c in corrections] == [("priority", written, new)]
    # the bot's own echo is no correction and queues nothing
    bot = copy.deepcopy(updated)
    bot["user"]["accountId"] = BOT
    r = requests.post(daemon.url + "/webhooks/jira", data=signed(bot, identifier="e2e-bot")[0],
                      headers=signed(bot, identifier="e2e-bot")[1], timeout=10)
    assert r.status_code == 202 and r.json()["accepted"] == []
    assert daemon.ctx.queue.depth().get("done") == 1 and len(fake.calls("PUT")) == 1
