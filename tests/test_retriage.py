"""Re-triage when a ticket gains information (issue 13), for Jira, Zoho Desk and ServiceDesk Plus.

One daemon for the module (the real model, SQLite, `retriage: all`, every threshold 0) with real HTTP to the three
fake vendors, and one short ticket per connector. Each ticket is triaged, a human sets two fields (one the vendor
reports, which is a correction, one changed on the vendor only), then the ticket gains information: only the fields
no human set are written, in one write per event that changed something; a redelivered event writes nothing more,
an event after which the model says the same writes nothing, the daemon's own write-backs queue nothing, and
`retriage: off` queues nothing. The first tests need no model: the policy's re-triage plan and the settings.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import hmac
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from connectors.base import RETRIAGE, ConnectorConfigError, RetriageSettings, retriage_settings
from connectors.jira import from_config as jira_from_config
from triage_core.policy import HUMAN_SET, Policy, TicketFilter
from triage_core.taxonomy import load_taxonomy
from triage_core.triager import TriageResult

from conftest import LiveDaemon
from fake_jira import FakeJira, Select
from fake_servicedesk import FakeServiceDesk
from fake_zoho import CLIENT_ID, CLIENT_SECRET, DEPARTMENT_ID, ORG_ID, REFRESH_TOKEN, WEBHOOK_ID, FakeZoho

ROOT = Path(__file__).resolve().parent.parent
TAXONOMY = load_taxonomy(ROOT / "config" / "taxonomy.yaml")
ENUMS = [f.name for f in TAXONOMY.enum_fields]
# The model says Medium for the first text and High once the requester's reply is read (checked in the tests).
SUBJECT = "Laptop will not boot"
BODY = "My laptop shows a black screen after the Windows update."
REPLY = "The whole finance team has the same problem since the update, we cannot work at all."

SECRET, BOT, REQUESTER, AGENT = "jira-webhook-secret", "bot-0001", "requester-0002", "agent-0003"
JIRA_MAP = {"category": "same", "subcategory": "same",
            "priority": {"Low": "Low", "Medium": "Medium", "High": "High", "Critical": "Highest"},
            "assignment_group": "same", "request_type": {"Incident": "Incident", "Service Request": "Service request"}}
JIRA_TARGETS = {"category": "customfield_10050", "subcategory": "child", "assignment_group": "customfield_10060",
                "request_type": "customfield_10070"}
TEAMS = {label: str(4000000010001 + i) for i, label in enumerate(TAXONOMY["assignment_group"].values)}
ZOHO_MAP = {"category": "same", "subcategory": "same",
            "priority": {"Low": "Low", "Medium": "Medium", "High": "High", "Critical": "Urgent"},
            "request_type": {"Incident": "Problem", "Service Request": "Question"}, "assignment_group": TEAMS}
SDP_MAP = {f: "same" for f in ENUMS}
ENV = {"TRIAGE_JIRA_API_TOKEN": "api-token", "TRIAGE_JIRA_WEBHOOK_SECRET": SECRET,
       "TRIAGE_ZOHO_CLIENT_ID": CLIENT_ID, "TRIAGE_ZOHO_CLIENT_SECRET": CLIENT_SECRET,
       "TRIAGE_ZOHO_REFRESH_TOKEN": REFRESH_TOKEN, "TRIAGE_SERVICEDESK_API_KEY": "tech-key"}


# --- the plan and the settings (no model) ---------------------------------------------------------------------

def result(**confidence: float) -> TriageResult:
    ticket = {"summary": "VPN drops", "category": "Network", "subcategory": "VPN", "priority": "High",
              "assignment_group": "Network Operations", "request_type": "Incident"}
    conf = {"category": 0.9, "subcategory": 0.9, "priority": 0.93, "assignment_group": 0.9, "request_type": 0.9}
    return TriageResult(ticket=ticket, confidence={**conf, **confidence}, model={"base": "m", "adapter": "a@1"},
                        latency_ms=1)


BEFORE = {"category": "Network", "subcategory": "VPN", "priority": "Medium", "assignment_group": "Service Desk",
          "request_type": "Incident"}


def test_plan_writes_only_changed_untouched_values_that_clear_their_thresholds():
    policy = Policy.from_config({"fields": {"assignment_group": {"threshold": 0.95}}}, TAXONOMY)
    plan = policy.retriage_plan(result(), before=BEFORE, human=set(), allowed=lambda n: True,
                                why="the requester's reply")
    assert plan.apply == {"priority": "High"} and not plan.suggest and not plan.needs_review
    assert plan.held == {"assignment_group": "below threshold 0.95 (0.90)"}
    assert plan.note == ("Re-triaged by ticket-triage (m + a@1) after the requester's reply: priority Medium -> High "
                         "(confidence 0.93). Not changed, below threshold: assignment_group Network Operations "
                         "(0.90 < 0.95).")
    # a human's value is kept whatever overwrite_human says; `fields` mode leaves the other fields alone
    plan = Policy.from_config({"overwrite_human": True}, TAXONOMY).retriage_plan(
        result(), before=BEFORE, human={"priority"}, allowed=lambda n: True, why="x")
    assert plan.apply == {"assignment_group": "Network Operations"} and plan.held["priority"] == HUMAN_SET
    assert "Kept the human's value: priority Medium (model: High, 0.93)." in plan.note
    only = RetriageSettings("fields", ("category",))
    assert not policy.retriage_plan(result(), before=BEFORE, human=set(), allowed=only.allows, why="x").apply
    # nothing changed: nothing to write, and the note says so
    same = {**BEFORE, "priority": "High", "assignment_group": "Network Operations"}
    plan = policy.retriage_plan(result(), before=same, human=set(), allowed=lambda n: True, why="x")
    assert not plan.apply and not plan.suggest and plan.note.endswith("after x: no field changed.")


def test_plan_sends_a_dependent_field_with_its_rewritten_parent_only_under_it():
    policy = Policy.from_config({}, TAXONOMY)
    moved = {**BEFORE, "category": "Hardware", "priority": "High", "assignment_group": "Network Operations"}
    plan = policy.retriage_plan(result(), before=moved, human=set(), allowed=lambda n: True, why="x")
    assert plan.apply == {"category": "Network", "subcategory": "VPN"}  # VPN again, now under Network
    assert "subcategory VPN under the new category" in plan.note
    # the parent is a human's (Hardware): a subcategory chosen under Network is not written beneath it
    plan = policy.retriage_plan(result(), before={**moved, "subcategory": "Wi-Fi"}, human={"category"},
                                allowed=lambda n: True, why="x")
    assert "subcategory" not in plan.apply and plan.held["subcategory"].startswith("chosen under category Network")


def test_retriage_settings_are_checked():
    assert retriage_settings({}, "k") == RetriageSettings("off")
    assert retriage_settings({"retriage": False}, "k").mode == "off"  # YAML reads a bare `off` as false
    assert retriage_settings({"retriage": "fields", "retriage_fields": "priority"}, "k").fields == ("priority",)
    for bad, fragment in [({"retriage": "some"}, r"k\.retriage: expected one of off, fields, all"),
                          ({"retriage": "fields"}, r"k\.retriage_fields: retriage is 'fields'"),
                          ({"retriage": "all", "retriage_fields": [1]}, r"k\.retriage_fields: expected a list")]:
        with pytest.raises(ConnectorConfigError, match=fragment):
            retriage_settings(bad, "k")
    with pytest.raises(ConnectorConfigError, match=r"retriage_fields: not enum fields .*'summary'"):
        RetriageSettings("fields", ("priority", "summary")).check(TAXONOMY, "k")
    conn = jira_from_config({"base_url": "http://127.0.0.1:9", "email": "bot@example.com", "field_map": JIRA_MAP,
                             "targets": JIRA_TARGETS, "retriage": "fields", "retriage_fields": ["colour"]}, ENV)
    with pytest.raises(ConnectorConfigError, match=r"connectors\.settings\.jira\.retriage_fields.*'colour'"):
        conn.check_taxonomy(TAXONOMY)


# --- the daemon -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vendors():
    jira = FakeJira(fields={"customfield_10050": Select.cascade(TAXONOMY["subcategory"].children),
                            "customfield_10060": Select(list(TAXONOMY["assignment_group"].values)),
                            "customfield_10070": Select(["Incident", "Service request"])})
    zoho = FakeZoho()
    zoho.set_categories(TAXONOMY["subcategory"].children)
    for team in TEAMS.values():
        zoho.add_team(team, DEPARTMENT_ID)
    sdp = FakeServiceDesk()
    yield SimpleNamespace(jira=jira, zoho=zoho, sdp=sdp)
    for fake in (jira, zoho, sdp):
        fake.close()
        assert not fake.problems, fake.problems  # nothing a real vendor would refuse


@pytest.fixture(scope="module")
def daemon(vendors, triager, tmp_path_factory):
    settings = {
        "jira": {"base_url": vendors.jira.url, "email": "bot@example.com", "bot_account_id": BOT,
                 "field_map": JIRA_MAP, "targets": JIRA_TARGETS, "retriage": "all"},
        "zoho": {"org_id": ORG_ID, "desk_url": vendors.zoho.url, "accounts_url": vendors.zoho.url,
                 "webhook_ids": [WEBHOOK_ID], "field_map": ZOHO_MAP, "retriage": "all"},
        "servicedesk": {"base_url": vendors.sdp.url, "field_map": SDP_MAP, "timeout": 5, "poll_interval": 3600,
                        "retriage": "all"}}
    live = LiveDaemon(tmp_path_factory.mktemp("retriage"), triager,
                      {"connectors": {"enabled": list(settings), "settings": settings},
                       "policy": {"default_threshold": 0.0}}, ENV)
    yield live
    live.close()


def settle(daemon) -> None:
    daemon.wait_idle(done=0, timeout=300)


def writebacks(daemon, connector: str, ref: str) -> list[dict]:
    return daemon.store.ticket_history(connector, ref)["history"]["writebacks"]


def results(daemon, connector: str, ref: str) -> list[dict]:
    return [r["fields"] for r in daemon.store.ticket_history(connector, ref)["history"]["results"]]


def expected_changes(before: dict, after: dict, human: set[str]) -> dict:
    """What a re-triage must write: every enum field no human set whose value moved (a subcategory with its
    rewritten category too)."""
    changed = {f: after[f] for f in ENUMS if f not in human and after[f] != before[f]}
    if "category" in changed and "subcategory" not in human:
        changed["subcategory"] = after["subcategory"]
    return changed


def assert_retriaged(daemon, connector: str, ref: str, human: set[str], why: str) -> dict:
    """The last write-back was the re-triage: exactly the changed fields no human set, with a note saying so."""
    first, last = results(daemon, connector, ref)[0], results(daemon, connector, ref)[-1]
    changed = expected_changes(first, last, human)
    assert changed, f"the model should change its mind on the new information: {first} -> {last}"
    wb = writebacks(daemon, connector, ref)[-1]
    assert (wb["outcome"], wb["fields_sent"]) == ("applied", changed), wb
    assert wb["note"].startswith("Re-triaged by ticket-triage (") and f"after {why}: " in wb["note"]
    for name, value in changed.items():
        assert f"{name} {first[name]} -> {value} (confidence " in wb["note"] or name == "subcategory"
    return changed


def assert_skipped(daemon, connector: str, ref: str, why: str) -> None:
    wb = writebacks(daemon, connector, ref)[-1]
    assert (wb["outcome"], wb["detail"], wb["fields_sent"]) == ("skipped", f"re-triage: {why}", {}), wb


# --- Jira -----------------------------------------------------------------------------------------------------

def jira_post(daemon, payload: dict, identifier: str) -> dict:
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "X-Atlassian-Webhook-Identifier": identifier,
               "X-Hub-Signature": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}
    r = requests.post(daemon.url + "/webhooks/jira", data=body, headers=headers, timeout=10)
    assert r.status_code == 202, r.text
    return r.json()["accepted"]


def jira_event(fake: FakeJira, key: str, event: str, actor: str = AGENT, **more) -> dict:
    issue = fake.issues[key]
    return {"timestamp": int(time.time() * 1000), "webhookEvent": event, "user": {"accountId": actor},
            "issue": {"id": issue["id"], "key": key, "fields": copy.deepcopy(issue["fields"])}, **more}


def jira_comment(fake: FakeJira, key: str, text: str, author: str, **more) -> dict:
    comment = {"id": str(int(time.time() * 1e6)), "author": {"accountId": author, "accountType": "atlassian"},
               "body": {"type": "doc", "version": 1,
                        "content": [{"type": "paragraph", "content": [{"type": "text", "text": text}]}]},
               "jsdPublic": True, **more}
    return jira_event(fake, key, "comment_created", author, comment=comment)


def test_jira(daemon, vendors):
    fake, key = vendors.jira, "IT-1"
    fake.add_issue(key, summary=SUBJECT, project={"key": "IT"}, issuetype={"name": "Incident"},
                   description={"type": "doc", "version": 1,
                                "content": [{"type": "paragraph", "content": [{"type": "text", "text": BODY}]}]},
                   priority={"name": "Medium", "id": "3"}, status={"name": "To Do"}, reporter={"accountId": REQUESTER},
                   customfield_10050=None, customfield_10060=None, customfield_10070=None)
    jira_post(daemon, jira_event(fake, key, "jira:issue_created", REQUESTER), "j-created")
    settle(daemon)
    [written] = [w["fields_sent"] for w in writebacks(daemon, "jira", key)]
    assert written["priority"] == "Medium" and written["assignment_group"] != "Service Desk"
    puts, comments = (lambda: len(fake.calls("PUT", f"/issue/{key}$"))), (lambda: len(fake.comments[key]))
    assert (puts(), comments()) == (1, 1)

    # a human: corrects the assignment group (Jira reports it: a correction), sets the request type quietly
    fake.issues[key]["fields"]["customfield_10060"] = {"value": "Service Desk"}
    item = {"field": "Assignment group", "fieldtype": "custom", "fieldId": "customfield_10060", "from": None,
            "fromString": written["assignment_group"], "to": None, "toString": "Service Desk"}
    assert jira_post(daemon, jira_event(fake, key, "jira:issue_updated", changelog={"items": [item]}), "j-human") \
        == [{"ref": key, "field": "assignment_group", "correction": True}]
    fake.issues[key]["fields"]["customfield_10070"] = {"value": "Service request"}
    # the daemon's own edit and note come back as webhooks: nothing is queued
    bot_edit = {"field": "priority", "fieldtype": "jira", "fieldId": "priority", "from": "3", "fromString": "Medium",
                "to": "2", "toString": "High"}
    assert jira_post(daemon, jira_event(fake, key, "jira:issue_updated", BOT, changelog={"items": [bot_edit]}),
                     "j-bot-edit") == []
    assert jira_post(daemon, jira_comment(fake, key, "Triaged by ticket-triage", BOT, jsdPublic=False), "j-bot") == []
    assert jira_post(daemon, jira_comment(fake, key, "Checking the BIOS", AGENT), "j-agent") == []  # not the requester

    # the requester's reply: one write, priority Medium -> High, the human's fields untouched
    reply = jira_comment(fake, key, REPLY, REQUESTER)
    [accepted] = jira_post(daemon, reply, "j-reply")
    assert accepted["duplicate"] is False
    settle(daemon)
    changed = assert_retriaged(daemon, "jira", key, {"assignment_group", "request_type"}, "the requester's reply")
    assert changed.get("priority") == "High"
    assert (puts(), comments()) == (2, 2)
    put = fake.calls("PUT", f"/issue/{key}$")[-1].json()
    assert not {"customfield_10060", "customfield_10070"} & set(put.get("fields", {}))
    fields = fake.issues[key]["fields"]
    assert (fields["customfield_10060"], fields["customfield_10070"], fields["priority"]["name"]) == (
        {"value": "Service Desk"}, {"value": "Service request"}, "High")
    [get] = fake.calls("GET", f"/issue/{key}$")  # the issue was read back: the comment webhook has no description
    assert "description" in get.query["fields"][0]
    note = " ".join(n["text"] for p in fake.comments[key][-1]["body"]["content"] for n in p["content"])
    assert "priority Medium -> High" in note and "after the requester's reply" in note

    # Jira delivers the same comment again: acknowledged as a duplicate, nothing written
    [again] = jira_post(daemon, reply, "j-reply")
    assert again["duplicate"] is True and again["job_id"] == accepted["job_id"]
    settle(daemon)
    # reopened: the summary, description and the reply give the same answer, so nothing is written
    reopen = {"field": "status", "fieldtype": "jira", "fieldId": "status", "from": "10002", "fromString": "Done",
              "to": "10001", "toString": "To Do"}
    assert len(jira_post(daemon, jira_event(fake, key, "jira:issue_updated", changelog={"items": [reopen]}),
                         "j-reopen")) == 1
    settle(daemon)
    assert_skipped(daemon, "jira", key, "nothing changed")
    assert (puts(), comments()) == (2, 2) and len(results(daemon, "jira", key)) == 3

    # retriage: off: a changed description queues nothing
    conn = daemon.ctx.connectors["jira"]
    conn.opt = dataclasses.replace(conn.opt, retriage=RetriageSettings("off"))
    try:
        edit = {"field": "description", "fieldtype": "jira", "fieldId": "description", "fromString": BODY,
                "toString": "It boots now but the screen flickers."}
        assert jira_post(daemon, jira_event(fake, key, "jira:issue_updated", changelog={"items": [edit]}),
                         "j-off") == []
        assert jira_post(daemon, jira_comment(fake, key, "Still broken", REQUESTER), "j-off-reply") == []
    finally:
        conn.opt = dataclasses.replace(conn.opt, retriage=RetriageSettings("all"))
    assert (puts(), comments()) == (2, 2) and len(writebacks(daemon, "jira", key)) == 3


# --- Zoho Desk ------------------------------------------------------------------------------------------------

def zoho_deliver(daemon, fake: FakeZoho, *events: dict) -> list[dict]:
    delivery = fake.deliver(daemon.url + "/webhooks/zoho", *events)
    assert delivery.ok, delivery
    return json.loads(delivery.body)["accepted"]


def zoho_update(fake: FakeZoho, ref: str, prev: dict, **now) -> dict:
    fake.tickets[ref].update(now)
    return {"eventType": "Ticket_Update", "orgId": ORG_ID, "eventTime": str(int(time.time() * 1e6)),
            "payload": copy.deepcopy(fake.tickets[ref]), "prevState": prev}


def test_zoho(daemon, vendors):
    fake, ref = vendors.zoho, "1892000000700001"
    fake.add_ticket(ref, SUBJECT, f"<div>{BODY}</div>")
    add = {"eventType": "Ticket_Add", "orgId": ORG_ID, "eventTime": "1700000000000",
           "payload": {"id": ref, "subject": SUBJECT, "departmentId": DEPARTMENT_ID, "status": "Open"}}
    zoho_deliver(daemon, fake, add)
    settle(daemon)
    [written] = [w["fields_sent"] for w in writebacks(daemon, "zoho", ref)]
    patches, comments = (lambda: len(fake.calls("PATCH", f"/tickets/{ref}$"))), (lambda: len(fake.comments[ref]))
    assert (patches(), comments()) == (1, 1) and written["priority"] == "Medium"

    # a human: another team (Zoho reports it with prevState: a correction), and the classification quietly
    old_team = fake.tickets[ref]["teamId"]
    assert zoho_deliver(daemon, fake, zoho_update(fake, ref, {"teamId": old_team}, teamId=TEAMS["Service Desk"])) \
        == [{"ref": ref, "field": "assignment_group", "correction": True}]
    fake.tickets[ref]["classification"] = "Question"
    # the daemon's own PATCH echoed by Zoho: its values are the daemon's, no correction and no re-triage
    echo = zoho_update(fake, ref, {"priority": None, "category": None})
    assert all("job_id" not in e and not e["correction"] for e in zoho_deliver(daemon, fake, echo))
    # an agent's reply is no information from the requester
    assert zoho_deliver(daemon, fake, fake.thread_event(ref, fake.add_thread(ref, "<p>Try safe mode</p>",
                                                                             direction="out"))) == []

    # the customer's reply: one write, without the team or the classification
    thread = fake.thread_event(ref, fake.add_thread(ref, f"<p>{REPLY}</p>"))
    [accepted] = zoho_deliver(daemon, fake, thread)
    settle(daemon)
    changed = assert_retriaged(daemon, "zoho", ref, {"assignment_group", "request_type"}, "the requester's reply")
    assert changed.get("priority") == "High" and (patches(), comments()) == (2, 2)
    patch = fake.calls("PATCH", f"/tickets/{ref}$")[-1].json()
    assert not {"teamId", "classification", "departmentId"} & set(patch) and patch["priority"] == "High"
    assert (fake.tickets[ref]["teamId"], fake.tickets[ref]["classification"]) == (TEAMS["Service Desk"], "Question")
    assert len(fake.calls("GET", f"/tickets/{ref}/threads/")) == 1  # the reply, read back (the agent's: never)

    # redelivered: a duplicate; reopened with nothing new: nothing written
    [again] = zoho_deliver(daemon, fake, thread)
    assert again["duplicate"] is True and again["job_id"] == accepted["job_id"]
    [reopened] = zoho_deliver(daemon, fake, zoho_update(fake, ref, {"status": "Closed", "statusType": "Closed"},
                                                        status="Open", statusType="Open"))
    assert reopened["duplicate"] is False
    settle(daemon)
    assert_skipped(daemon, "zoho", ref, "nothing changed")
    assert (patches(), comments()) == (2, 2)

    # a thread names no department: the worker filters it once the ticket is read back (policy.filter.projects)
    policy = daemon.ctx.policy
    policy.filter = TicketFilter(projects=("4000000000000",))
    try:
        [hint] = zoho_deliver(daemon, fake, fake.thread_event(ref, fake.add_thread(ref, "<p>Any news?</p>")))
        assert hint["duplicate"] is False
        settle(daemon)
    finally:
        policy.filter = TicketFilter()
    assert_skipped(daemon, "zoho", ref, "the ticket is not one policy.filter admits")
    assert (patches(), comments()) == (2, 2) and len(results(daemon, "zoho", ref)) == 3

    # retriage: off
    conn = daemon.ctx.connectors["zoho"]
    conn.retriage = RetriageSettings("off")
    try:
        assert zoho_deliver(daemon, fake, fake.thread_event(ref, fake.add_thread(ref, "<p>Still broken</p>"))) == []
        described = zoho_update(fake, ref, {"description": f"<div>{BODY}</div>"}, description="<div>Fixed?</div>")
        assert zoho_deliver(daemon, fake, described) == []
    finally:
        conn.retriage = RetriageSettings("all")
    assert (patches(), comments()) == (2, 2) and len(writebacks(daemon, "zoho", ref)) == 4


# --- ServiceDesk Plus -----------------------------------------------------------------------------------------

def sdp_poll(daemon) -> object:
    runner = daemon.app.extensions["triage"].pollers["servicedesk"]
    while runner._lock.locked():  # the start-up poll may still run
        time.sleep(0.05)
    runner.run()
    settle(daemon)
    return runner.stats


def test_servicedesk(daemon, vendors):
    fake = vendors.sdp
    rid = fake.add(SUBJECT, f"<p>{BODY}</p>")
    stats = sdp_poll(daemon)
    [written] = [w["fields_sent"] for w in writebacks(daemon, "servicedesk", rid)]
    puts, notes = (lambda: len(fake.calls("PUT", f"/requests/{rid}$"))), (lambda: len(fake.notes[rid]))
    assert (puts(), notes()) == (1, 1) and written["priority"] == "Medium"
    # the daemon's own write moved last_updated_time: read once more, nothing queued
    queued = stats.queued
    assert sdp_poll(daemon).queued == queued

    # a human changes the group in SDP (the poller sees no event: the value differs from the daemon's) and the
    # requester's description
    fake.human_edit(rid, group="Service Desk", description=f"<p>{BODY} {REPLY}</p>")
    store, cursor = daemon.store, daemon.store.cursor("servicedesk")
    stats = sdp_poll(daemon)
    assert stats.retriage == 1
    changed = assert_retriaged(daemon, "servicedesk", rid, {"assignment_group"}, "the changed description")
    assert changed.get("priority") == "High" and (puts(), notes()) == (2, 2)
    assert "group" not in fake.form_inputs("PUT", f"/requests/{rid}$")[-1]["request"]
    assert fake.tickets[rid]["group"] == {"name": "Service Desk"}

    # a crash before the cursor was saved repeats the poll: the update is not queued (or written) again
    store.save_cursor("servicedesk", cursor)
    queued = stats.queued
    assert sdp_poll(daemon).queued == queued and (puts(), notes()) == (2, 2)

    # closed (remembered without a job), then reopened with nothing new: nothing written
    fake.human_edit(rid, status="Closed")
    assert sdp_poll(daemon).seen == 1
    fake.human_edit(rid, status="Open")
    assert sdp_poll(daemon).retriage == 2
    assert_skipped(daemon, "servicedesk", rid, "nothing changed")
    last = store.ticket_history("servicedesk", rid)["history"]["events"][-1]["payload"]
    assert last["extra"][RETRIAGE]["reasons"] == ["reopened"]
    assert (puts(), notes()) == (2, 2)

    # retriage: off
    conn = daemon.ctx.connectors["servicedesk"]
    conn.retriage = RetriageSettings("off")
    try:
        fake.human_edit(rid, description="<p>It boots again.</p>")
        assert sdp_poll(daemon).retriage == 2
    finally:
        conn.retriage = RetriageSettings("all")
    assert (puts(), notes()) == (2, 2) and len(writebacks(daemon, "servicedesk", rid)) == 3
