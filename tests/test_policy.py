"""The write-back policy, on hand-built TriageResults (no model)."""
from __future__ import annotations

import pytest

from triage_core.policy import FieldRule, Policy, PolicyError, TicketFilter, WritebackPlan
from triage_core.queue import InboundTicket
from triage_core.taxonomy import parse_taxonomy
from triage_core.triager import TriageResult

TAXONOMY = parse_taxonomy({
    "name": "mini",
    "fields": {
        "summary": {"type": "text"},
        "category": {"values": ["Network", "Hardware"]},
        "subcategory": {"parent": "category", "values": {"Network": ["VPN", "Wi-Fi"], "Hardware": ["Laptop"]}},
        "priority": {"values": ["Low", "High"]},
        "assignment_group": {"values": ["Network Operations", "Desktop Support"]},
    },
})
BODY = "VPN drops every 5 minutes for the sales team, secret project Falcon"


def result(**confidence: float) -> TriageResult:
    conf = {"category": 0.93, "subcategory": 0.71, "priority": 0.88, "assignment_group": 0.9}
    conf.update(confidence)
    return TriageResult(
        ticket={"summary": "VPN keeps dropping", "category": "Network", "subcategory": "VPN", "priority": "High",
                "assignment_group": "Network Operations"},
        confidence=conf, model={"base": "SmolLM2-135M-Instruct", "adapter": "default-it@1"}, latency_ms=5)


def ticket(**kw) -> InboundTicket:
    return InboundTicket(**{"connector": "generic", "ref": "INC-1", "event_key": "e1", "text": BODY, **kw})


def policy(**section) -> Policy:
    return Policy.from_config(section, TAXONOMY)


def test_defaults_apply_everything_above_threshold():
    plan = policy().plan(result(), ticket())
    assert plan.apply == result().ticket
    assert plan.suggest == {} and plan.held == {}
    assert not plan.needs_review and plan.review_marker is None
    assert plan.writes_anything and not plan.shadow
    assert plan.to_dict()["apply"]["category"] == "Network"


def test_modes_per_field():
    p = policy(fields={"priority": {"mode": "suggest"}, "assignment_group": {"mode": "off"},
                       "summary": {"mode": "suggest"}})
    plan = p.plan(result(), ticket())
    assert set(plan.apply) == {"category", "subcategory"}
    assert plan.suggest == {"priority": "High", "summary": "VPN keeps dropping"}
    assert "assignment_group" not in plan.note and "Network Operations" not in plan.note
    assert 'Suggested: summary "VPN keeps dropping", priority High (88%).' in plan.note


def test_below_threshold_is_held_and_marks_review():
    p = policy(fields={"priority": {"threshold": 0.5}}, review_marker="needs-a-human")
    plan = p.plan(result(priority=0.41), ticket())
    assert "priority" not in plan.apply and "priority" not in plan.suggest
    assert plan.held["priority"] == "below threshold 0.50 (0.41)"
    assert plan.needs_review and plan.review_marker == "needs-a-human"
    assert "Needs review: priority High (41%) below 50%." in plan.note
    # a suggested field below its threshold is not offered either
    plan = policy(fields={"priority": {"mode": "suggest", "threshold": 0.9}}).plan(result(), ticket())
    assert plan.suggest == {} and plan.needs_review


def test_text_fields_have_no_confidence_and_follow_their_mode():
    plan = policy(default_threshold=1.0).plan(result(), ticket())
    assert plan.apply == {"summary": "VPN keeps dropping"}
    assert plan.needs_review


def test_subcategory_waits_for_its_category():
    plan = policy().plan(result(category=0.2), ticket())
    assert "category" in plan.held and "subcategory" not in plan.apply
    assert "category Network" in plan.held["subcategory"]
    # the human set the same category: the subcategory fits, so it is written
    plan = policy().plan(result(), ticket(current={"category": "Network"}))
    assert plan.apply["subcategory"] == "VPN" and plan.held == {"category": "set by a human"}


def test_shadow_plans_but_writes_nothing():
    plan = policy(shadow=True).plan(result(), ticket())
    assert plan.shadow and not plan.writes_anything
    assert plan.apply == result().ticket  # what would have been written, for evaluation
    assert "shadow mode" in plan.note


def test_human_set_fields_are_kept_unless_overwrite_human():
    t = ticket(current={"priority": "Low", "summary": "  ", "category": ""})
    plan = policy().plan(result(), t)
    assert plan.held == {"priority": "set by a human"}
    assert plan.apply["summary"] == "VPN keeps dropping" and plan.apply["category"] == "Network"  # blank = unset
    assert "Kept the human's value: priority Low (model: High, 88%)." in plan.note
    assert not plan.needs_review
    plan = policy(overwrite_human=True).plan(result(), t)
    assert plan.apply["priority"] == "High" and plan.held == {}


def test_filter_by_connector_project_and_type():
    f = policy(filter={"connectors": ["jira"], "projects": ["IT"], "ticket_types": ["Incident"]}).filter
    assert f.accepts(ticket(connector="jira", project="it", ticket_type="incident"))
    assert not f.accepts(ticket(connector="generic", project="IT", ticket_type="Incident"))
    assert not f.accepts(ticket(connector="jira", project="HR", ticket_type="Incident"))
    assert not f.accepts(ticket(connector="jira", project=None, ticket_type="Incident"))
    assert not f.accepts(ticket(connector="jira", project="IT", ticket_type="Change"))
    assert TicketFilter().accepts(ticket())
    assert policy(filter={"projects": ["IT"]}).accepts(ticket(connector="zoho", project="IT"))


def test_note_names_model_and_confidences_never_the_body():
    plan = policy(fields={"assignment_group": {"threshold": 0.95}}).plan(result(), ticket())
    note = plan.note
    assert note.startswith("Triaged by ticket-triage (SmolLM2-135M-Instruct + default-it@1): ")
    for part in ("category Network (93%)", "subcategory VPN (71%)", "priority High (88%)",
                 "assignment_group Network Operations (90%) below 95%"):
        assert part in note
    assert BODY not in note and "Falcon" not in note
    no_adapter = TriageResult(ticket={"category": "Network"}, confidence={"category": 0.5},
                              model={"base": "SmolLM2-135M-Instruct", "adapter": None}, latency_ms=1)
    assert policy().plan(no_adapter, ticket()).note == "Triaged by ticket-triage (SmolLM2-135M-Instruct): " \
                                                      "category Network (50%)."


@pytest.mark.parametrize("section, key", [
    ({"fields": {"priority": {"mode": "aply"}}},
     "policy.fields.priority.mode: 'aply' is not one of apply, suggest, off"),
    ({"fields": {"priority": {"threshold": 1.5}}}, "policy.fields.priority.threshold:"),
    ({"fields": {"priority": {"threshold": True}}}, "policy.fields.priority.threshold:"),
    ({"fields": {"prioirty": {"mode": "off"}}}, "policy.fields.prioirty: not a field of taxonomy 'mini'"),
    ({"fields": {"priority": {"mode": "off", "treshold": 0.2}}}, "policy.fields.priority.treshold: unknown"),
    ({"fields": {"summary": {"threshold": 0.2}}}, "policy.fields.summary.threshold: summary is a text field"),
    ({"fields": {"priority": "suggest"}}, "policy.fields.priority: expected a mapping"),
    ({"default_mode": "write"}, "policy.default_mode: 'write'"),
    ({"default_threshold": -0.1}, "policy.default_threshold:"),
    ({"shadow": "yes"}, "policy.shadow:"),
    ({"review_marker": ""}, "policy.review_marker:"),
    ({"filter": {"queues": ["IT"]}}, "policy.filter.queues: unknown"),
    ({"filter": {"projects": ["IT", 3]}}, "policy.filter.projects[1]:"),
    ({"shaddow": True}, "policy.shaddow: unknown setting"),
])
def test_config_errors_name_the_key(section, key):
    with pytest.raises(PolicyError) as err:
        Policy.from_config(section, TAXONOMY)
    assert str(err.value).startswith(key)


def test_without_taxonomy_any_field_name_is_accepted():
    p = Policy.from_config({"fields": {"impact": {"mode": "suggest", "threshold": 0.7}}})
    assert p.rule("impact") == FieldRule("suggest", 0.7) and p.rule("priority") == FieldRule("apply", 0.5)
    plan = p.plan(result(), ticket())  # no taxonomy: every field of the result follows its rule
    assert isinstance(plan, WritebackPlan)
    assert plan.apply == result().ticket and plan.suggest == {} and plan.held == {}
    custom = TriageResult(ticket={"impact": "Wide", "category": "Network", "urgency": "Now"},
                          confidence={"impact": 0.8, "category": 0.4, "urgency": 0.9},
                          model={"base": "SmolLM2-135M-Instruct", "adapter": None}, latency_ms=1)
    plan = p.plan(custom, ticket())
    assert plan.suggest == {"impact": "Wide"}  # its own rule: suggested, above its 0.7
    assert plan.apply == {"urgency": "Now"}  # an unnamed field gets the default rule (apply, 0.5)
    assert plan.held == {"category": "below threshold 0.50 (0.40)"} and plan.needs_review
    low = TriageResult(ticket={"impact": "Wide"}, confidence={"impact": 0.6},
                       model={"base": "SmolLM2-135M-Instruct", "adapter": None}, latency_ms=1)
    plan = p.plan(low, ticket())
    assert plan.suggest == {} and plan.held == {"impact": "below threshold 0.70 (0.60)"}
