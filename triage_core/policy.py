"""The write-back policy: which triaged fields reach the ticket, which are only suggested, which wait for a human.

Connector-agnostic on purpose: the policy turns a `TriageResult` plus what is already on the ticket into a
`WritebackPlan`, and each connector only translates that plan into its vendor's API. So thresholds, shadow mode and
"never overwrite a human" behave the same on Jira, Zoho, ManageEngine and the generic webhook.

Rules, per field of the result:
  * mode `off`: the field is ignored (not written, not mentioned).
  * a field a human already set (non-empty in `InboundTicket.current`) is kept, not written nor suggested (the
    note names the model's value), unless `overwrite_human`.
  * an enum field whose confidence is below its threshold is neither written nor suggested; it is listed in the
    note and the ticket gets the review marker. Text fields (summary) have no confidence and follow their mode.
  * mode `apply` writes the value; mode `suggest` names it in the internal note for a human to click.
  * a dependent field (subcategory) is written only when the ticket will carry the parent value it was chosen
    under; otherwise it would pair a subcategory with a category it does not belong to.
In shadow mode the plan is computed the same way (so it can be stored and evaluated) but marked as writing nothing.

A re-triage (`Policy.retriage_plan`, a ticket that gained information) follows the same modes and thresholds for the
fields it may touch, but writes only values that differ from what the ticket carries, never a field a human has
set (whatever `overwrite_human` says), and no review marker; its note says what changed and why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from .config import DEFAULTS, ConfigError
from .taxonomy import Taxonomy

if TYPE_CHECKING:  # runtime import would tie the policy to the queue module's import order
    from .queue import InboundTicket
    from .triager import TriageResult

MODES = ("apply", "suggest", "off")
_SECTION_KEYS = ("shadow", "overwrite_human", "review_marker", "default_mode", "default_threshold", "fields", "filter")
_RULE_KEYS = ("mode", "threshold")
_FILTER_KEYS = ("connectors", "projects", "ticket_types")
HUMAN_SET = "set by a human"


class PolicyError(ConfigError):
    """The policy section is invalid; the message names the key (policy.fields.priority.mode, ...)."""


@dataclass(frozen=True)
class FieldRule:
    """How one field is written back: `mode` apply | suggest | off, and the confidence it needs (0..1)."""

    mode: str = "apply"
    threshold: float = 0.5


@dataclass(frozen=True)
class TicketFilter:
    """Which tickets are triaged at all, so a team can start with one queue. Empty means no restriction.

    Matching ignores case: ITSMs differ in how they spell project keys and ticket types.
    """

    connectors: tuple[str, ...] = ()
    projects: tuple[str, ...] = ()
    ticket_types: tuple[str, ...] = ()

    def accepts(self, ticket: InboundTicket) -> bool:
        return (_matches(self.connectors, ticket.connector) and _matches(self.projects, ticket.project)
                and _matches(self.ticket_types, ticket.ticket_type))


def _matches(allowed: tuple[str, ...], value: str | None) -> bool:
    if not allowed:
        return True
    return value is not None and value.casefold() in {a.casefold() for a in allowed}


@dataclass
class WritebackPlan:
    """What a connector writes for one ticket. In non-shadow mode the note is always posted."""

    apply: dict[str, str] = field(default_factory=dict)
    suggest: dict[str, str] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)  # field -> why it was not written
    needs_review: bool = False
    review_marker: str | None = None  # set only when needs_review
    note: str = ""
    shadow: bool = False

    @property
    def writes_anything(self) -> bool:
        """False only in shadow mode: otherwise at least the note (model version, confidences) is written."""
        return not self.shadow

    def to_dict(self) -> dict[str, Any]:
        return {"apply": dict(self.apply), "suggest": dict(self.suggest), "held": dict(self.held),
                "needs_review": self.needs_review, "review_marker": self.review_marker, "note": self.note,
                "shadow": self.shadow, "writes_anything": self.writes_anything}


@dataclass
class Policy:
    default: FieldRule = field(default_factory=FieldRule)
    fields: dict[str, FieldRule] = field(default_factory=dict)
    shadow: bool = False
    overwrite_human: bool = False
    review_marker: str = "triage-needs-review"
    filter: TicketFilter = field(default_factory=TicketFilter)
    #: dependent field -> its parent (subcategory -> category), from the taxonomy when one is given.
    parents: dict[str, str] = field(default_factory=dict)

    def rule(self, name: str) -> FieldRule:
        return self.fields.get(name, self.default)

    def accepts(self, ticket: InboundTicket) -> bool:
        return self.filter.accepts(ticket)

    @classmethod
    def from_config(cls, section: Mapping[str, Any], taxonomy: Taxonomy | None = None) -> "Policy":
        """Build and validate from the `policy` config section; missing keys take the embedded defaults."""
        if not isinstance(section, Mapping):
            raise PolicyError("policy: expected a mapping")
        _no_unknown(section, _SECTION_KEYS, "policy")
        defaults = DEFAULTS["policy"]

        def get(key: str) -> Any:
            return section.get(key, defaults[key])

        shadow = _bool(get("shadow"), "policy.shadow")
        overwrite_human = _bool(get("overwrite_human"), "policy.overwrite_human")
        marker = get("review_marker")
        if not isinstance(marker, str) or not marker.strip():
            raise PolicyError(f"policy.review_marker: expected a non-empty tag/label, got {marker!r}")
        default = FieldRule(_mode(get("default_mode"), "policy.default_mode"),
                            _threshold(get("default_threshold"), "policy.default_threshold"))

        raw_fields = get("fields") or {}
        if not isinstance(raw_fields, Mapping):
            raise PolicyError("policy.fields: expected a mapping of field name to {mode, threshold}")
        rules: dict[str, FieldRule] = {}
        for name, spec in raw_fields.items():
            key = f"policy.fields.{name}"
            if taxonomy is not None and name not in taxonomy:
                raise PolicyError(f"{key}: not a field of taxonomy {taxonomy.name!r} "
                                  f"({', '.join(taxonomy.field_names)})")
            if not isinstance(spec, Mapping):
                raise PolicyError(f"{key}: expected a mapping with mode and/or threshold")
            _no_unknown(spec, _RULE_KEYS, key)
            if taxonomy is not None and "threshold" in spec and not taxonomy[name].is_enum:
                raise PolicyError(f"{key}.threshold: {name} is a text field; it has no confidence to compare")
            rules[name] = FieldRule(_mode(spec.get("mode", default.mode), f"{key}.mode"),
                                    _threshold(spec.get("threshold", default.threshold), f"{key}.threshold"))

        raw_filter = get("filter") or {}
        if not isinstance(raw_filter, Mapping):
            raise PolicyError("policy.filter: expected a mapping (connectors, projects, ticket_types)")
        _no_unknown(raw_filter, _FILTER_KEYS, "policy.filter")
        ticket_filter = TicketFilter(**{k: _names(raw_filter.get(k) or [], f"policy.filter.{k}") for k in _FILTER_KEYS})

        if taxonomy is not None:
            parents = {f.name: f.parent for f in taxonomy.fields if f.parent}
        else:  # the standard pairing of DESIGN.md; a custom taxonomy passes itself to say otherwise
            parents = {"subcategory": "category"}
        return cls(default=default, fields=rules, shadow=shadow, overwrite_human=overwrite_human,
                   review_marker=marker.strip(), filter=ticket_filter, parents=parents)

    def plan(self, result: TriageResult, ticket: InboundTicket) -> WritebackPlan:
        """Decide, field by field, what is written, suggested or held back, and compose the internal note."""
        plan = WritebackPlan(shadow=self.shadow)
        below: list[str] = []
        for name, value in result.ticket.items():
            rule = self.rule(name)
            if rule.mode == "off":
                continue
            confidence = result.confidence.get(name)
            if not self.overwrite_human and _human_value(ticket, name):
                plan.held[name] = HUMAN_SET
            elif confidence is not None and confidence < rule.threshold:
                plan.held[name] = f"below threshold {rule.threshold:.2f} ({_floor(confidence, 2):.2f})"
                below.append(name)
            elif rule.mode == "suggest":
                plan.suggest[name] = value
            else:
                plan.apply[name] = value
        # A dependent field only makes sense under the parent value it was chosen for.
        for child, parent in self.parents.items():
            if child in plan.apply and parent in result.ticket:
                ticket_parent = plan.apply.get(parent, _human_value(ticket, parent))
                if ticket_parent != result.ticket[parent]:
                    del plan.apply[child]
                    plan.held[child] = f"chosen under {parent} {result.ticket[parent]}, which the ticket will not carry"
        plan.needs_review = bool(below)
        plan.review_marker = self.review_marker if below else None
        plan.note = _note(result, ticket, plan, below, self.rule)
        return plan

    def retriage_plan(self, result: TriageResult, *, before: Mapping[str, str | None], human: Iterable[str],
                      allowed: Callable[[str], bool], why: str) -> WritebackPlan:
        """The plan for triaging a ticket again after it gained information (`why`: "the requester's reply").

        Only enum fields that `allowed` lets through and that no human has set (`human`) are re-scored. A value is
        written when it differs from what the ticket carries now (`before`: label per field, None when unset) and
        clears its threshold; in suggest mode it is named in the note instead. A dependent field counts as changed
        when its parent is rewritten, and is written only under the parent value it was chosen for. When neither
        `apply` nor `suggest` has anything, nothing is to be written at all (the note then only explains why)."""
        plan = WritebackPlan(shadow=self.shadow)
        human = set(human)
        changes: dict[str, str | None] = {}  # field -> the value it replaces
        below: dict[str, float] = {}  # field -> the threshold it missed
        kept: list[str] = []
        names = sorted(result.ticket, key=lambda n: n in self.parents)  # parents before their dependent fields
        for name in names:
            value, confidence, rule = result.ticket[name], result.confidence.get(name), self.rule(name)
            if rule.mode == "off" or confidence is None or not allowed(name):
                continue  # text fields (the summary) have no confidence: re-triage leaves them alone
            old = before.get(name) or None
            if name in human:
                plan.held[name] = HUMAN_SET
                if value != old:
                    kept.append(name)
                continue
            parent = self.parents.get(name)
            if value == old and not (parent is not None and parent in plan.apply):
                continue  # unchanged (a child whose parent is rewritten is sent again with it)
            if confidence < rule.threshold:
                plan.held[name] = f"below threshold {rule.threshold:.2f} ({_floor(confidence, 2):.2f})"
                below[name] = rule.threshold
                continue
            if parent is not None and parent in result.ticket:
                carried = plan.apply.get(parent, before.get(parent) or None)
                if carried != result.ticket[parent]:
                    plan.held[name] = f"chosen under {parent} {result.ticket[parent]}, which the ticket will not carry"
                    continue
            (plan.suggest if rule.mode == "suggest" else plan.apply)[name] = value
            changes[name] = old
        plan.note = _retriage_note(result, plan, changes, below, kept, before, why, self.parents)
        return plan


def _human_value(ticket: InboundTicket, name: str) -> str:
    value = ticket.current.get(name)
    return value.strip() if isinstance(value, str) else ""


def _floor(x: float, digits: int) -> float:
    """Round down (with float fuzz), so 0.499 never reads as reaching a 0.50 threshold."""
    scale = 10 ** digits
    return math.floor(x * scale + 1e-9) / scale


def _pct(x: float) -> str:
    return f"{math.floor(x * 100 + 1e-9)}%"


def _describe(name: str, value: str, confidence: float | None, quote: bool) -> str:
    if confidence is None:
        # Text fields: applied ones are on the ticket already, suggested ones must be shown to be clickable.
        return f'{name} "{value}"' if quote else name
    return f"{name} {value} ({_pct(confidence)})"


def _note(result: TriageResult, ticket: InboundTicket, plan: WritebackPlan, below: list[str], rule_of) -> str:
    """The internal note: model version, confidences, suggestions, what was held back. Never the ticket body."""
    conf = result.confidence
    model = result.model or {}
    version = str(model.get("base") or "unknown model")
    if model.get("adapter"):
        version += f" + {model['adapter']}"
    head = f"Triaged by ticket-triage ({version})"
    if plan.shadow:
        head += " in shadow mode, nothing written"
    parts = []
    applied = [_describe(n, v, conf.get(n), quote=False) for n, v in plan.apply.items()]
    parts.append(f"{head}: {', '.join(applied)}." if applied else f"{head}: no field written.")
    if plan.suggest:
        parts.append("Suggested: " + ", ".join(_describe(n, v, conf.get(n), quote=True)
                                             for n, v in plan.suggest.items()) + ".")
    if below:
        parts.append("Needs review: " + ", ".join(
            f"{_describe(n, result.ticket[n], conf[n], quote=False)} below {rule_of(n).threshold * 100:g}%"
            for n in below) + ".")
    human = [n for n, why in plan.held.items() if why == HUMAN_SET]
    if human:
        parts.append("Kept the human's value: " + ", ".join(
            f"{n} {ticket.current[n].strip()} (model: {result.ticket[n]}, {_pct(conf[n])})"
            if conf.get(n) is not None else n for n in human) + ".")
    other = [n for n, why in plan.held.items() if n not in below and why != HUMAN_SET]
    if other:
        parts.append("Not written: " + ", ".join(
            f"{_describe(n, result.ticket[n], conf.get(n), quote=False)} ({plan.held[n]})" for n in other) + ".")
    return " ".join(parts)


def _retriage_note(result: TriageResult, plan: WritebackPlan, changes: Mapping[str, str | None],
                   below: Mapping[str, float], kept: list[str], before: Mapping[str, str | None], why: str,
                   parents: Mapping[str, str]) -> str:
    """What a re-triage changed and why: "Re-triaged by ticket-triage (model) after the requester's reply:
    priority Medium -> High (confidence 0.93)." Never the ticket body."""
    conf = result.confidence
    model = result.model or {}
    version = str(model.get("base") or "unknown model") + (f" + {model['adapter']}" if model.get("adapter") else "")
    head = f"Re-triaged by ticket-triage ({version}) after {why}"
    if plan.shadow:
        head += " in shadow mode, nothing written"

    def change(name: str) -> str:
        confidence = f"confidence {_floor(conf[name], 2):.2f}"
        if changes[name] == result.ticket[name]:  # the same label, sent again under its rewritten parent
            return f"{name} {result.ticket[name]} under the new {parents.get(name)} ({confidence})"
        return f"{name} {changes[name] or 'unset'} -> {result.ticket[name]} ({confidence})"

    parts = [f"{head}: {', '.join(change(n) for n in plan.apply)}." if plan.apply else f"{head}: no field changed."]
    if plan.suggest:
        parts.append("Suggested: " + ", ".join(change(n) for n in plan.suggest) + ".")
    if kept:
        parts.append("Kept the human's value: " + ", ".join(
            f"{n} {before.get(n) or 'unset'} (model: {result.ticket[n]}, {_floor(conf[n], 2):.2f})"
            for n in kept) + ".")
    if below:
        parts.append("Not changed, below threshold: " + ", ".join(
            f"{n} {result.ticket[n]} ({_floor(conf[n], 2):.2f} < {t:.2f})" for n, t in below.items()) + ".")
    other = [n for n, why_not in plan.held.items() if why_not.startswith("chosen under")]
    if other:
        parts.append("Not written: " + ", ".join(f"{n} {result.ticket[n]} ({plan.held[n]})" for n in other) + ".")
    return " ".join(parts)


def _no_unknown(mapping: Mapping[str, Any], allowed: Iterable[str], key: str) -> None:
    allowed = tuple(allowed)
    for name in mapping:
        if name not in allowed:
            raise PolicyError(f"{key}.{name}: unknown setting (expected {', '.join(allowed)})")


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(f"{key}: expected true or false, got {value!r}")
    return value


def _mode(value: Any, key: str) -> str:
    if value not in MODES:
        raise PolicyError(f"{key}: {value!r} is not one of {', '.join(MODES)}")
    return value


def _threshold(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise PolicyError(f"{key}: expected a number between 0 and 1, got {value!r}")
    return float(value)


def _names(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str):  # a single name is a common slip in YAML; accept it rather than iterate letters
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise PolicyError(f"{key}: expected a list of names")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise PolicyError(f"{key}[{i}]: expected a non-empty name, got {item!r}")
    return tuple(item.strip() for item in value)
