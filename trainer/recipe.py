"""The training recipe: LoRA adapter, lexical expert and calibrated pooling, fitted together into one folder.

    1. hold out a slice of the training records (the calibration fold; never the caller's test records);
    2. fit the lexical expert on the rest, and describe each value of a long enum field by its heaviest terms
       (triage_core.descriptions: what an opaque group name stands for);
    3. train the LoRA adapter on the same rest, those descriptions in its prompt (trainer.train, restricted
       logit-adjusted loss);
    4. score the calibration fold with the LM alone and the expert alone, and fit the pooling weights, the
       temperature and the decision correction of each view on it (trainer.calibrate);
    5. refit the expert on every training record, and record the thresholds that gave 90% and 95% precision
       on the calibration fold in the adapter's metadata.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from triage_core.combine import VIEWS, Combination, FieldParams
from triage_core.descriptions import LONG_LIST, LONG_TERMS, TERMS
from triage_core.lexical import ExpertError, LexicalExpert
from triage_core.model import load_model, read_adapter_meta
from triage_core.prompt import VALUE_DESCRIPTION_LIMIT
from triage_core.taxonomy import Taxonomy
from triage_core.triager import DecodingSettings, Triager

from .calibrate import HeldOut, fit_view, predict, threshold_for_precision
from .records import Record
from .train import TrainResult, TrainSettings, label_priors, train, write_meta

log = logging.getLogger(__name__)

#: Calibration fold: this share of the training records, within these bounds; none below MIN_RECORDS.
HOLDOUT_FRACTION = 0.15
HOLDOUT_BOUNDS = (30, 300)
MIN_RECORDS = 80
#: Fewest held-out tickets whose parent the LM got right for a dependent field to be fitted on those alone.
MIN_DEPENDENT_ROWS = 30
#: Pooling used when there are too few records to hold any out: a geometric mean of the two.
UNFITTED = FieldParams(a=0.5, b=0.5)


@dataclass
class RecipeResult:
    train: TrainResult | None  # None when only the pooling was fitted (fit_pooling)
    calibration_ids: list[int]  # indices into the caller's records that formed the calibration fold
    combination: Combination
    seconds: dict[str, float] = field(default_factory=dict)


def calibration_split(n: int, seed: int) -> tuple[list[int], list[int]]:
    """(fit indices, calibration indices): a seeded shuffle, the calibration share bounded."""
    if n < MIN_RECORDS:
        return list(range(n)), []
    k = min(HOLDOUT_BOUNDS[1], max(HOLDOUT_BOUNDS[0], round(n * HOLDOUT_FRACTION)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[k:]), sorted(order[:k])


def train_adapter(records: Sequence[Record], taxonomy: Taxonomy, model_cfg: Mapping[str, Any],
                  settings: TrainSettings, out_dir: str | Path, *, decoding: DecodingSettings | None = None,
                  lexical: bool = True, **train_kwargs: Any) -> RecipeResult:
    """Steps 1-5 of the module docstring; `train_kwargs` go to trainer.train.train."""
    fit_idx, cal_idx = calibration_split(len(records), settings.seed)
    fit = [records[i] for i in fit_idx]
    t0 = time.perf_counter()
    expert = fit_expert(fit, taxonomy) if lexical else None
    learnt = describe_labels(expert, taxonomy) if expert is not None and settings.label_descriptions else None
    lexical_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = train(fit, taxonomy, model_cfg, settings, out_dir, learnt=learnt, **train_kwargs)
    lm_seconds = time.perf_counter() - t1
    recipe = fit_pooling(out_dir, taxonomy, model_cfg, fit, [records[i] for i in cal_idx], records,
                         decoding=decoding, lexical=lexical, expert=expert, expert_seconds=lexical_seconds)
    recipe.train, recipe.calibration_ids = result, list(cal_idx)
    recipe.seconds["lm"] = lm_seconds
    return recipe


def fit_expert(records: Sequence[Record], taxonomy: Taxonomy) -> LexicalExpert | None:
    """The lexical expert for every enum field, or None (logged) when the records cannot support one."""
    try:
        return LexicalExpert.fit([r["text"] for r in records], [r.get("labels", {}) for r in records],
                                 [f.name for f in taxonomy.enum_fields], taxonomy.label_hash)
    except ExpertError as exc:
        log.warning("no lexical expert: %s", exc)
        return None


def describe_labels(expert: LexicalExpert, taxonomy: Taxonomy) -> dict[str, dict[str, str]]:
    """Each value of a long, independent enum field described by the terms that set its tickets apart (short
    lists, up to the prompt's VALUE_DESCRIPTION_LIMIT, keep the taxonomy's own descriptions)."""
    out: dict[str, dict[str, str]] = {}
    for f in taxonomy.enum_fields:
        if f.parent or len(f.values) <= VALUE_DESCRIPTION_LIMIT:
            continue
        k = TERMS if len(f.values) <= LONG_LIST else LONG_TERMS
        terms = expert.distinctive_terms(f.name, k)
        notes = {v: ", ".join(t) for v, t in terms.items() if t and v in f.values}
        if notes:
            out[f.name] = notes
    return out


def fit_pooling(adapter_dir: str | Path, taxonomy: Taxonomy, model_cfg: Mapping[str, Any], fit: Sequence[Record],
                cal: Sequence[Record], everything: Sequence[Record], *, decoding: DecodingSettings | None = None,
                lexical: bool = True, expert: LexicalExpert | None = None,
                expert_seconds: float = 0.0) -> RecipeResult:
    """Steps 4-5 for an adapter whose LM was trained on `fit`: the pooling and the thresholds, and the expert
    (fitted on `fit` here unless given, with the `expert_seconds` that took, so the metadata counts them).

    Also how an adapter trained before the recipe (the shipped one) gains its expert and calibration.
    """
    out_dir = Path(adapter_dir)
    seconds: dict[str, float] = {"lexical": expert_seconds}
    combination = Combination(priors=label_priors(everything, taxonomy))
    fields = [f.name for f in taxonomy.enum_fields]
    if lexical and expert is None:
        t1 = time.perf_counter()
        expert = fit_expert(fit, taxonomy)
        seconds["lexical"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    if cal:
        _fit_views(combination, taxonomy, model_cfg, out_dir, decoding, cal, expert)
    elif expert is not None:
        combination.views["combined"] = {n: UNFITTED for n in fields}
    seconds["calibration"] = time.perf_counter() - t2
    if expert is not None:
        t3 = time.perf_counter()
        expert = fit_expert(everything, taxonomy) or expert
        expert.save(out_dir)
        seconds["lexical"] += time.perf_counter() - t3
    combination.save(out_dir)
    _record(out_dir, combination, len(cal), expert is not None, seconds)
    return RecipeResult(train=None, calibration_ids=[], combination=combination, seconds=seconds)


def _fit_views(combination: Combination, taxonomy: Taxonomy, model_cfg: Mapping[str, Any], out_dir: Path,
               decoding: DecodingSettings | None, cal: Sequence[Record], expert: LexicalExpert | None) -> None:
    """Score the calibration fold with each source alone and fit every view of every field on it."""
    loaded = load_model(dict(model_cfg), adapter=out_dir, taxonomy_hash=taxonomy.label_hash)
    triager = Triager(loaded, taxonomy, decoding, use_expert=False)
    lm = triager.triage_many([r["text"] for r in cal])
    lex = expert.predict([r["text"] for r in cal]) if expert else [{} for _ in cal]
    for f in taxonomy.enum_fields:
        rows = [i for i, r in enumerate(cal) if f.name in r.get("labels", {})]
        if f.parent is not None:  # as it triages: a dependent field only where the LM chose the gold parent
            chosen = [i for i in rows if lm[i].ticket.get(f.parent) == cal[i]["labels"].get(f.parent)]
            rows = chosen if len(chosen) >= MIN_DEPENDENT_ROWS else rows
        if not rows:
            continue
        labels = [cal[i]["labels"] for i in rows]
        # A dependent field is judged among the values allowed under its gold parent, as training teaches it.
        data = HeldOut(allowed=[f.allowed(lab) if f.parent is None or lab.get(f.parent) in f.children
                                else f.values for lab in labels],
                       lm=[lm[i].distributions.get(f.name) for i in rows],
                       lexical=[lex[i].get(f.name) for i in rows], gold=[lab[f.name] for lab in labels])
        prior = combination.priors.get(f.name, {})
        for view in VIEWS if expert else ("lm",):
            params = fit_view(data, prior, view)
            combination.views.setdefault(view, {})[f.name] = params
        got, conf = predict(data, prior, combination.params("combined" if expert else "lm", f.name))
        correct = [g == o for g, o in zip(data.gold, got, strict=True)]
        combination.thresholds[f.name] = {
            f"p{int(p * 100)}": threshold_for_precision(correct, conf, p)[0] for p in (0.9, 0.95)}
    del triager, loaded


def _record(out_dir: Path, combination: Combination, n_cal: int, has_expert: bool,
            seconds: Mapping[str, float]) -> None:
    meta = read_adapter_meta(out_dir)
    meta["recipe"] = {"lexical_expert": has_expert, "calibration_records": n_cal,
                      "views": {v: {f: vars(p) for f, p in fs.items()} for v, fs in combination.views.items()},
                      "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    # The confidence at or above which the calibration fold was 95% right: what `policy` may auto-apply.
    meta["suggested_thresholds"] = {f: t["p95"] for f, t in combination.thresholds.items() if t.get("p95")}
    write_meta(out_dir, meta)
