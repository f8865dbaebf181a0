"""Fitting the pooling of triage_core.combine on held-out tickets, and the figures that say whether a confidence
means precision: expected calibration error and coverage at a target precision.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from triage_core.combine import FieldParams, pool

#: Decision prior corrections tried; the held-out macro-F1 picks one (ties: the smallest correction).
TAUS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Standard deviation of the prior on the pooling weights (in units of log-probability weight).
PRIOR_SCALE = 1.0


@dataclass
class HeldOut:
    """One field's held-out evidence: per ticket the allowed values, both distributions and the gold value."""

    allowed: list[Sequence[str]]
    lm: list[Mapping[str, float] | None]
    lexical: list[Mapping[str, float] | None]
    gold: list[str]


def fit_view(data: HeldOut, prior: Mapping[str, float], view: str) -> FieldParams:
    """Weights by held-out likelihood (convex in a, b, c), then the decision correction by macro-F1."""
    from scipy.optimize import minimize

    feats, gold_idx = _features(data, prior)
    free = {"lm": (0, 2), "lexical": (1, 2), "combined": (0, 1, 2)}[view]
    start = np.array([1.0, 1.0, 0.0])[list(free)] if view != "combined" else np.array([0.5, 0.5, 0.0])
    bounds = [(0.0, 10.0) if i < 2 else (-3.0, 3.0) for i in free]

    def nll(x: np.ndarray) -> float:
        w = np.zeros(3)
        w[list(free)] = x
        total = 0.0
        for f, g in zip(feats, gold_idx, strict=True):
            s = f @ w
            m = s.max()
            total -= s[g] - m - np.log(np.exp(s - m).sum())
        # A weak Gaussian prior around "trust each calibrated source as it is" (MAP, not ML): a small fold
        # the sources happen to get all right would otherwise push the weights to the bound (overconfidence).
        return (total + float(((x - start) ** 2).sum()) / (2 * PRIOR_SCALE ** 2)) / max(1, len(feats))

    x = minimize(nll, start, method="L-BFGS-B", bounds=bounds).x
    w = np.zeros(3)
    w[list(free)] = x
    params = FieldParams(a=float(w[0]), b=float(w[1]), c=float(w[2]))
    best = max(TAUS, key=lambda tau: (round(_macro_f1(data, prior, _with_tau(params, tau)), 4), -tau))
    return _with_tau(params, best)


def _with_tau(p: FieldParams, tau: float) -> FieldParams:
    return FieldParams(a=p.a, b=p.b, c=p.c, tau=tau)


def _features(data: HeldOut, prior: Mapping[str, float]) -> tuple[list[np.ndarray], list[int]]:
    """Per ticket a [values, 3] matrix of log p_lm, log p_lex and log prior over its allowed values."""
    feats, gold = [], []
    for allowed, lm, lex, g in zip(data.allowed, data.lm, data.lexical, data.gold, strict=True):
        if g not in allowed:
            continue
        cols = []
        for dist in (lm, lex, prior):
            raw = np.array([max(float((dist or {}).get(v, 0.0)), 1e-6) for v in allowed])
            cols.append(np.log(raw / raw.sum()))
        feats.append(np.stack(cols, axis=1))
        gold.append(list(allowed).index(g))
    return feats, gold


def predict(data: HeldOut, prior: Mapping[str, float], params: FieldParams) -> tuple[list[str], list[float]]:
    out, conf = [], []
    for allowed, lm, lex in zip(data.allowed, data.lm, data.lexical, strict=True):
        dist, value = pool(params, list(allowed), lm, lex, prior)
        out.append(value)
        conf.append(dist[value])
    return out, conf


def _macro_f1(data: HeldOut, prior: Mapping[str, float], params: FieldParams) -> float:
    from sklearn.metrics import f1_score

    got, _ = predict(data, prior, params)
    return float(f1_score(data.gold, got, labels=sorted(set(data.gold)), average="macro", zero_division=0))


def expected_calibration_error(correct: Sequence[bool], confidence: Sequence[float], bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by their share of tickets."""
    if not correct:
        return 0.0
    c = np.asarray(correct, dtype=float)
    p = np.asarray(confidence, dtype=float)
    edges = np.minimum((p * bins).astype(int), bins - 1)
    return float(sum(abs(c[edges == b].mean() - p[edges == b].mean()) * (edges == b).mean()
                     for b in range(bins) if (edges == b).any()))


def threshold_for_precision(correct: Sequence[bool], confidence: Sequence[float], precision: float
                            ) -> tuple[float | None, float]:
    """The lowest confidence threshold whose kept tickets are at least `precision` right, and its coverage.

    None when no threshold reaches it. Thresholds are the observed confidences, so the coverage is exact on
    these tickets (ServiceNow's precision/coverage view).
    """
    pairs = sorted(zip(confidence, correct, strict=True), reverse=True)
    best: tuple[float | None, float] = (None, 0.0)
    right = 0
    for k, (conf, ok) in enumerate(pairs, start=1):
        right += bool(ok)
        if right / k >= precision and (k == len(pairs) or pairs[k][0] < conf):
            best = (round(float(conf), 4), k / len(pairs))
    return best
