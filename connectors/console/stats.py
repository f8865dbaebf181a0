"""The dashboard's figures, read from the store over the last `console.dashboard_days` days.

* triaged per day: triage results by the day they were stored (UTC);
* outcomes: of the tickets triaged, the share written back without review (auto-applied), held for review
  (a field under its threshold, or shadow mode) and corrected by a human (in the console, or in the ITSM after a
  write-back);
* accuracy per field over time, from the console's accept / correct decisions (a field kept as the model had it
  counts as right), and from the held-out closed tickets of each retraining run (the champion's accuracy then);
* coverage: the share of results whose confidence reaches each field's configured threshold.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import select

from triage_core.policy import Policy
from triage_core.store import Correction, RetrainRun, Store, TriageResultRow, Writeback, utcnow
from triage_core.taxonomy import Taxonomy


@dataclass
class FieldAccuracy:
    reviewed: int = 0
    right: int = 0
    itsm_edits: int = 0
    written: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.right / self.reviewed if self.reviewed else None

    @property
    def kept(self) -> float | None:
        """Share of the values written back that no human changed in the ITSM afterwards."""
        return 1 - min(self.itsm_edits, self.written) / self.written if self.written else None


@dataclass
class Dashboard:
    days: list[date]
    triaged: list[int]
    outcomes: dict[str, int]
    review_days: list[date]
    accuracy_by_day: dict[str, list[float | None]]
    fields: dict[str, FieldAccuracy]
    coverage: dict[str, dict[str, Any]]
    runs: list[dict[str, Any]] = field(default_factory=list)
    decisions: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.triaged)


def _day(at: datetime) -> date:
    return at.date()


def build(store: Store, policy: Policy, taxonomy: Taxonomy, days: int = 30) -> Dashboard:
    since = utcnow() - timedelta(days=days)
    first = (utcnow() - timedelta(days=days - 1)).date()
    day_list = [first + timedelta(days=i) for i in range(days)]
    enum = [f.name for f in taxonomy.enum_fields]
    with store.session(readonly=True) as s:
        results = s.execute(select(TriageResultRow.id, TriageResultRow.created_at, TriageResultRow.confidence)
                            .where(TriageResultRow.created_at >= since)).all()
        ids = {r.id for r in results}
        writebacks = s.execute(select(Writeback.result_id, Writeback.outcome, Writeback.needs_review,
                                      Writeback.fields_sent, Writeback.job_id)
                               .where(Writeback.created_at >= since)).all()
        corrections = s.execute(select(Correction.result_id, Correction.field, Correction.old_value,
                                       Correction.new_value, Correction.decision, Correction.created_at)
                                .where(Correction.created_at >= since)).all()
        runs = s.scalars(select(RetrainRun).order_by(RetrainRun.id.desc()).limit(20)).all()
        run_rows = [{"id": r.id, "state": r.state, "started_at": r.started_at, "decision": r.decision,
                     "metrics": r.metrics or {}, "counts": r.counts or {}} for r in runs]

    per_day = Counter(_day(r.created_at) for r in results)
    triaged = [per_day.get(d, 0) for d in day_list]

    applied, held = set(), set()
    fields = {name: FieldAccuracy() for name in enum}
    for w in writebacks:
        if w.result_id not in ids:
            continue
        if w.needs_review or w.outcome == "shadow":
            held.add(w.result_id)
        elif w.outcome == "applied" and w.job_id is not None:
            applied.add(w.result_id)
        if w.outcome == "applied" and w.job_id is not None:  # the worker's write-backs (not the console's)
            for name in (w.fields_sent or {}):
                if name in fields:
                    fields[name].written += 1
    corrected = set()
    decisions: Counter = Counter()
    review_by_day: dict[str, dict[date, list[int]]] = {name: defaultdict(lambda: [0, 0]) for name in enum}
    for c in corrections:
        if c.decision is None:  # a human changed a field we wrote, in the ITSM
            if c.field in fields:
                fields[c.field].itsm_edits += 1
            corrected.add(c.result_id)
            continue
        if c.decision == "dismiss" or c.field not in fields:
            continue
        right = c.old_value == c.new_value
        fields[c.field].reviewed += 1
        fields[c.field].right += int(right)
        cell = review_by_day[c.field][_day(c.created_at)]
        cell[0] += 1
        cell[1] += int(right)
        if not right:
            corrected.add(c.result_id)
    decisions.update({c.result_id: c.decision for c in corrections if c.decision}.values())
    corrected &= ids
    outcomes = {"auto-applied": len(applied - held - corrected), "sent to review": len(held - corrected),
                "corrected": len(corrected)}
    outcomes["other"] = max(0, len(ids) - sum(outcomes.values()))

    review_days = sorted({d for per in review_by_day.values() for d in per})
    accuracy_by_day = {name: [(per[d][1] / per[d][0]) if per.get(d) and per[d][0] else None for d in review_days]
                       for name, per in review_by_day.items() if per}

    coverage = {}
    for name in enum:
        rule = policy.rule(name)
        values = [r.confidence.get(name) for r in results if isinstance((r.confidence or {}).get(name), (int, float))]
        reached = sum(1 for v in values if v >= rule.threshold)
        coverage[name] = {"threshold": rule.threshold, "mode": rule.mode, "n": len(values),
                          "share": reached / len(values) if values else None}
    return Dashboard(day_list, triaged, outcomes, review_days, accuracy_by_day, fields, coverage, run_rows,
                     decisions)


def run_accuracy(run: dict[str, Any], who: str = "champion") -> dict[str, float]:
    """Per-field accuracy of one retraining run's champion (or challenger) on its held-out closed tickets."""
    fields = ((run.get("metrics") or {}).get(who) or {}).get("fields") or {}
    return {name: f.get("accuracy") for name, f in fields.items() if isinstance(f, dict)}
