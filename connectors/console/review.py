"""The review queue and the decisions made on it.

A ticket is in the queue when its latest triage result was held for a human: a field under its threshold (the
write-back carried the review marker) or shadow mode, and nobody decided on it in the console yet. A decision is
accept (the model's values), correct (values picked from the taxonomy, only valid combinations) or dismiss. Accept
and correct write the fields the ticket does not carry yet through the ticket's connector, as an ordinary update
(so the ITSM's own automations fire); every decision is stored as one correction per enum field with who made it,
which nightly retraining gathers (a dismissed ticket's fields are cleared, so it trains nothing).
"""
from __future__ import annotations

import dataclasses
import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Mapping

from sqlalchemy import and_, func, or_, select

from triage_core.policy import Policy, WritebackPlan
from triage_core.queue import InboundTicket
from triage_core.registry import DbLock, LockHeld
from triage_core.store import Correction, InboundEvent, Job, Store, TriageResultRow, Writeback
from triage_core.taxonomy import Taxonomy
from triage_core.triager import TriageResult

from ..base import WritebackError

log = logging.getLogger(__name__)

DECISIONS = ("accept", "correct", "dismiss")
#: Ranked alternatives kept per field.
TOP_ALTERNATIVES = 5


class DecisionError(ValueError):
    """The decision cannot be recorded as asked (already decided, a value outside the taxonomy, ...)."""


def model_tag(base: str | None, adapter: str | None) -> str:
    """How a model version is named in the console: the adapter tag (name@version), else the base model."""
    return adapter or base or "unknown"


def low_fields(confidence: Mapping[str, Any], policy: Policy, taxonomy: Taxonomy) -> list[str]:
    """Enum fields whose confidence is under the field's configured threshold (fields in mode off excluded)."""
    out = []
    for f in taxonomy.enum_fields:
        rule = policy.rule(f.name)
        c = confidence.get(f.name)
        if rule.mode != "off" and isinstance(c, (int, float)) and c < rule.threshold:
            out.append(f.name)
    return out


@dataclass
class QueueItem:
    result_id: int
    connector: str
    ref: str
    created_at: datetime
    model: str
    fields: dict[str, str]
    confidence: dict[str, float]
    low: list[str]
    shadow: bool
    snippet: str
    decision: str | None = None


@dataclass
class QueuePage:
    items: list[QueueItem]
    has_more: bool
    offset: int
    limit: int


def _latest_results():
    return select(func.max(TriageResultRow.id)).group_by(TriageResultRow.connector, TriageResultRow.ticket_ref)


def _held(result_id_col):
    return select(Writeback.id).where(Writeback.result_id == result_id_col,
                                      or_(Writeback.needs_review.is_(True), Writeback.outcome == "shadow")).exists()


def _decided(result_id_col):
    return select(Correction.id).where(Correction.result_id == result_id_col, Correction.decision.is_not(None)).exists()


def _model_filter(stmt, model: str | None):
    if not model:
        return stmt
    return stmt.where(or_(TriageResultRow.model_adapter == model,
                          and_(TriageResultRow.model_adapter.is_(None), TriageResultRow.model_base == model)))


def _payloads(s, rows: Iterable[TriageResultRow]) -> dict[int, dict]:
    """Each result's inbound event payload (through its job; the ticket's latest event when it has no job)."""
    rows = list(rows)
    job_ids = [r.job_id for r in rows if r.job_id is not None]
    by_job: dict[int, dict] = {}
    if job_ids:
        for job_id, payload in s.execute(select(Job.id, InboundEvent.payload).join(
                InboundEvent, InboundEvent.id == Job.event_id).where(Job.id.in_(job_ids))):
            by_job[job_id] = payload or {}
    out: dict[int, dict] = {}
    for r in rows:
        payload = by_job.get(r.job_id) if r.job_id is not None else None
        if payload is None:
            payload = s.scalar(select(InboundEvent.payload).where(
                InboundEvent.connector == r.connector, InboundEvent.ticket_ref == r.ticket_ref)
                .order_by(InboundEvent.id.desc()).limit(1)) or {}
        out[r.id] = payload
    return out


def snippet(text: str, limit: int = 160) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def review_queue(store: Store, policy: Policy, taxonomy: Taxonomy, *, connector: str | None = None,
                 field_name: str | None = None, model: str | None = None, decided: bool = False, offset: int = 0,
                 limit: int = 50) -> QueuePage:
    """Held tickets, newest first, filtered by connector, by a field under its threshold and by model version;
    `decided=True` lists the ones already decided instead."""
    stmt = select(TriageResultRow).where(TriageResultRow.id.in_(_latest_results()), _held(TriageResultRow.id))
    stmt = stmt.where(_decided(TriageResultRow.id) if decided else ~_decided(TriageResultRow.id))
    if connector:
        stmt = stmt.where(TriageResultRow.connector == connector)
    stmt = _model_filter(stmt, model).order_by(TriageResultRow.id.desc())
    items: list[QueueItem] = []
    skipped = 0
    chunk, start = 200, 0
    has_more = False
    with store.session(readonly=True) as s:
        while True:
            rows = s.scalars(stmt.offset(start).limit(chunk)).all()
            start += len(rows)
            matched = []
            for r in rows:
                low = low_fields(r.confidence or {}, policy, taxonomy)
                if field_name and field_name not in low:
                    continue
                matched.append((r, low))
            for r, low in matched:
                if skipped < offset:
                    skipped += 1
                    continue
                if len(items) == limit:
                    has_more = True
                    break
                items.append(QueueItem(r.id, r.connector, r.ticket_ref, r.created_at,
                                       model_tag(r.model_base, r.model_adapter), dict(r.fields or {}),
                                       dict(r.confidence or {}), low, False, ""))
            if has_more or len(rows) < chunk:
                break
        if items:
            ids = [i.result_id for i in items]
            shadow = set(s.scalars(select(Writeback.result_id).where(Writeback.result_id.in_(ids),
                                                                     Writeback.outcome == "shadow")))
            decisions = dict(s.execute(select(Correction.result_id, Correction.decision).where(
                Correction.result_id.in_(ids), Correction.decision.is_not(None))).all())
            rows_by_id = {r.id: r for r in s.scalars(select(TriageResultRow).where(TriageResultRow.id.in_(ids)))}
            payloads = _payloads(s, rows_by_id.values())
            for item in items:
                item.shadow = item.result_id in shadow
                item.decision = decisions.get(item.result_id)
                item.snippet = snippet(str(payloads.get(item.result_id, {}).get("text") or ""))
    return QueuePage(items, has_more, offset, limit)


def filter_choices(store: Store) -> dict[str, list[str]]:
    """The connectors and model versions that appear in stored results (for the queue's filters)."""
    with store.session(readonly=True) as s:
        connectors = sorted(s.scalars(select(TriageResultRow.connector).distinct()))
        models = sorted({model_tag(b, a) for b, a in s.execute(
            select(TriageResultRow.model_base, TriageResultRow.model_adapter).distinct())})
    return {"connectors": connectors, "models": models}


@dataclass
class TicketView:
    result: TriageResultRow
    payload: dict[str, Any]
    text: str
    writebacks: list[Writeback]
    decisions: list[Correction]
    other_results: int
    known: dict[str, str] = field(default_factory=dict)  # what the ticket carries, to our knowledge

    @property
    def decided(self) -> str | None:
        return next((c.decision for c in self.decisions if c.result_id == self.result.id and c.decision), None)

    @property
    def human(self) -> dict[str, str]:
        current = self.payload.get("current") or {}
        return {k: v.strip() for k, v in current.items() if isinstance(v, str) and v.strip()}


def load_ticket(store: Store, result_id: int) -> TicketView | None:
    with store.session(readonly=True) as s:
        row = s.get(TriageResultRow, result_id)
        if row is None:
            return None
        payload = _payloads(s, [row])[row.id]
        writebacks = list(s.scalars(select(Writeback).where(Writeback.connector == row.connector,
                                                            Writeback.ticket_ref == row.ticket_ref)
                                    .order_by(Writeback.id)))
        decisions = list(s.scalars(select(Correction).where(Correction.connector == row.connector,
                                                            Correction.ticket_ref == row.ticket_ref)
                                   .order_by(Correction.id)))
        others = s.scalar(select(func.count()).select_from(TriageResultRow).where(
            TriageResultRow.connector == row.connector, TriageResultRow.ticket_ref == row.ticket_ref)) or 0
    view = TicketView(row, payload, str(payload.get("text") or ""), writebacks, decisions, int(others) - 1)
    known = dict(view.human)
    for w in writebacks:  # what we wrote, oldest first, then what humans changed in the ITSM after it
        if w.outcome == "applied":
            known.update({k: str(v) for k, v in (w.fields_sent or {}).items()})
    for c in decisions:
        if c.decision is None and c.new_value is not None:
            known[c.field] = c.new_value
    view.known = known
    return view


def ranked(distributions: Mapping[str, Mapping[str, float]], taxonomy: Taxonomy,
           top: int = TOP_ALTERNATIVES) -> dict[str, list[list[Any]]]:
    """Each enum field's values, most probable first: [[value, probability], ...]."""
    out = {}
    for f in taxonomy.enum_fields:
        dist = distributions.get(f.name) or {}
        out[f.name] = [[v, round(float(p), 6)] for v, p in sorted(dist.items(), key=lambda kv: -kv[1])[:top]]
    return out


def ensure_alternatives(store: Store, triager: Any, view: TicketView) -> dict[str, Any] | None:
    """The result's ranked alternatives; scored once by the serving model and stored when not stored yet.

    A worker that calls `Store.record_alternatives` at triage time has stored them already; otherwise the
    distributions behind the stored values are scored again here, the first time someone opens the ticket, and
    kept in triage_results.alternatives with the model that scored them (the page says so when that is not the
    model that triaged the ticket)."""
    if view.result.alternatives:
        return view.result.alternatives
    if not view.text.strip() or triager is None:
        return None
    try:
        result = triager.triage(view.text)
    except Exception as exc:  # the page still shows the stored result
        log.warning("console: scoring alternatives of result %d failed: %s", view.result.id, exc)
        return None
    enum = {f.name for f in triager.taxonomy.enum_fields}
    store.record_alternatives(view.result.id, {k: v for k, v in result.distributions.items() if k in enum},
                              result.model, scored="console", top=TOP_ALTERNATIVES)
    with store.session(readonly=True) as s:
        row = s.get(TriageResultRow, view.result.id)
        view.result.alternatives = row.alternatives if row is not None else None
    return view.result.alternatives


def baseline(view: TicketView, taxonomy: Taxonomy, policy: Policy) -> dict[str, str]:
    """The values a reviewer starts from: the model's, except where a human set the field on the ticket (kept,
    as the policy keeps it, unless policy.overwrite_human)."""
    values = {f.name: view.result.fields.get(f.name) for f in taxonomy.enum_fields if view.result.fields.get(f.name)}
    if not policy.overwrite_human:
        for name, value in view.human.items():
            if name in values:
                values[name] = value
    return values


def check_values(values: Mapping[str, str], taxonomy: Taxonomy) -> list[str]:
    """Problems with a set of enum values: unknown fields, values outside the taxonomy, a subcategory not under
    its category."""
    problems = []
    for name, value in values.items():
        if name not in taxonomy or not taxonomy[name].is_enum:
            problems.append(f"{name}: not an enum field of the taxonomy")
            continue
        f = taxonomy[name]
        if f.parent:
            parent = values.get(f.parent)
            if parent not in f.children:
                problems.append(f"{name}: needs a valid {f.parent}")
            elif value not in f.children[parent]:
                problems.append(f"{name}: {value!r} is not under {f.parent} {parent!r}")
        elif value not in f.values:
            problems.append(f"{name}: {value!r} is not an allowed value")
    return problems


@dataclass
class DecisionOutcome:
    decision: str
    written: dict[str, str]
    writeback: str | None  # applied | shadow | skipped | None (nothing to write)
    changed: list[str]
    detail: str = ""


def decide(ctx: Any, result_id: int, actor: str, decision: str, chosen: Mapping[str, str] | None = None
           ) -> DecisionOutcome:
    """Record one console decision on a held result; accept and correct write the new fields back first.

    Raises DecisionError (nothing stored) for an unknown decision, a result decided already, values outside the
    taxonomy, or a write-back the ITSM refused (the ticket stays in the queue for another try)."""
    if decision not in DECISIONS:
        raise DecisionError(f"unknown decision {decision!r}")
    # One decision per ticket at a time, across every process on the database: the ticket is written once.
    lock = DbLock(ctx.store, f"console-decision:{result_id}", f"{actor}:{secrets.token_hex(4)}", ttl_seconds=120)
    try:
        with lock:
            return _decide(ctx, result_id, actor, decision, chosen)
    except LockHeld:
        raise DecisionError("someone else is deciding on this ticket right now; reload the page") from None


def _decide(ctx: Any, result_id: int, actor: str, decision: str, chosen: Mapping[str, str] | None
            ) -> DecisionOutcome:
    store: Store = ctx.store
    taxonomy: Taxonomy = ctx.triager.taxonomy
    policy: Policy = ctx.policy
    view = load_ticket(store, result_id)
    if view is None:
        raise DecisionError(f"no triage result {result_id}")
    if view.decided:
        raise DecisionError(f"{view.result.connector} {view.result.ticket_ref} was already decided "
                            f"({view.decided})")
    model_values = {f.name: view.result.fields.get(f.name) for f in taxonomy.enum_fields}
    if decision == "dismiss":
        _store_decisions(store, view, actor, decision, {name: (old, None) for name, old in model_values.items()})
        return DecisionOutcome(decision, {}, None, [])
    final = baseline(view, taxonomy, policy)
    if decision == "correct":
        final.update({k: v for k, v in (chosen or {}).items() if v})
    problems = check_values(final, taxonomy)
    if problems:
        raise DecisionError("; ".join(problems))
    to_write = _to_write(final, view.known, taxonomy, policy)
    outcome, detail = None, ""
    if to_write:
        outcome, detail = _write_back(ctx, view, actor, decision, final, to_write, model_values)
    changed = [n for n, v in final.items() if model_values.get(n) != v]
    _store_decisions(store, view, actor, decision, {n: (model_values.get(n), v) for n, v in final.items()})
    for name in changed:
        ctx.metrics.corrections.labels(view.result.connector, name).inc()
    return DecisionOutcome(decision, to_write if outcome == "applied" else {}, outcome, changed, detail)


def _to_write(final: Mapping[str, str], known: Mapping[str, str], taxonomy: Taxonomy,
              policy: Policy) -> dict[str, str]:
    """The final values the ticket does not carry yet (fields in mode off excluded); a dependent field and its
    parent travel together, so the ITSM never pairs a subcategory with another category."""
    out = {n: v for n, v in final.items() if known.get(n) != v and policy.rule(n).mode != "off"}
    for f in taxonomy.enum_fields:
        if f.parent and f.parent in final and f.name in final:
            if (f.name in out or f.parent in out) and policy.rule(f.name).mode != "off" \
                    and policy.rule(f.parent).mode != "off":
                out[f.name], out[f.parent] = final[f.name], final[f.parent]
    return {f.name: out[f.name] for f in taxonomy.enum_fields if f.name in out}


def _write_back(ctx: Any, view: TicketView, actor: str, decision: str, final: Mapping[str, str],
                to_write: dict[str, str], model_values: Mapping[str, str | None]) -> tuple[str, str]:
    row = view.result
    store: Store = ctx.store
    verb = "accepted" if decision == "accept" else "corrected"
    note = (f"Reviewed in the ticket-triage console by {actor} ({verb}): "
            + ", ".join(f"{n} {v}" + (f" (model: {model_values.get(n)})" if model_values.get(n) != v else "")
                        for n, v in to_write.items()) + ".")
    plan = WritebackPlan(apply=dict(to_write), note=note, shadow=ctx.policy.shadow)
    common = dict(fields_sent=dict(to_write), suggested={}, needs_review=False, note=note)
    if plan.shadow:
        store.record_writeback(None, row.id, row.connector, row.ticket_ref, "shadow", **common)
        ctx.metrics.writebacks.labels(row.connector, "shadow").inc()
        return "shadow", "shadow mode: the decision is stored, nothing is written to the ticket"
    connector = ctx.connectors.get(row.connector)
    if connector is None:
        raise DecisionError(f"connector {row.connector!r} is not enabled: nothing can be written to the ticket")
    try:
        ticket = InboundTicket.from_dict({**view.payload, "connector": row.connector, "ref": row.ticket_ref,
                                          "event_key": view.payload.get("event_key") or row.ticket_ref,
                                          "text": view.text})
    except (KeyError, TypeError) as exc:
        raise DecisionError(f"the ticket's stored event cannot be read back: {exc}") from None
    # A new event key per decision: connectors remember what they wrote per event, and this is a new edit.
    ticket = dataclasses.replace(ticket, event_key=f"console:{row.id}:{secrets.token_hex(6)}")
    result = TriageResult(ticket={**{k: v for k, v in row.fields.items()}, **dict(final)},
                          confidence={n: 1.0 for n in to_write}, model=dict({"base": row.model_base,
                                                                             "adapter": row.model_adapter}),
                          latency_ms=0)
    try:
        out = connector.write_back(ticket, plan, result)
    except WritebackError as exc:
        store.record_writeback(None, row.id, row.connector, row.ticket_ref, "failed", vendor_status=exc.status,
                               detail=str(exc)[:2000], **common)
        ctx.metrics.writebacks.labels(row.connector, "failed").inc()
        raise DecisionError(f"the ITSM refused the update ({exc}); nothing was stored, try again") from None
    store.record_writeback(None, row.id, row.connector, row.ticket_ref, out.outcome, vendor_status=out.status,
                           detail=out.detail, **common)
    ctx.metrics.writebacks.labels(row.connector, out.outcome).inc()
    return out.outcome, out.detail


def _store_decisions(store: Store, view: TicketView, actor: str, decision: str,
                     values: Mapping[str, tuple[str | None, str | None]]) -> None:
    with store.session() as s:
        for name, (old, new) in values.items():
            s.add(Correction(connector=view.result.connector, ticket_ref=view.result.ticket_ref, field=name,
                             old_value=old, new_value=new, result_id=view.result.id, actor=actor,
                             decision=decision))
