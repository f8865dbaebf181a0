"""Pooling the LM's and the lexical expert's distributions into one calibrated distribution per field.

Per field, over the values allowed at that point (a subcategory only among its category's children):

    score(v)  = a * log p_lm(v) + b * log p_lex(v) + c * log prior(v)
    p(v)      = softmax(score)                 -> the confidence that thresholds compare with
    choice    = argmax(score - tau * log prior(v))

a, b and c are fitted on held-out training tickets by likelihood (a + b is the inverse temperature, so a
threshold of 0.9 means about nine in ten such values are right); tau trades the majority label's recall for the
rare labels' (macro-F1) and is chosen on the same held-out tickets. The parameters are stored as
`combination.json` in the adapter folder, for three views: `lm` (b = 0), `lexical` (a = 0) and `combined`.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

COMBINATION_FILE = "combination.json"
VIEWS = ("lm", "lexical", "combined")
_FLOOR = 1e-6  # a value the expert never saw keeps a small probability instead of log(0)


@dataclass(frozen=True)
class FieldParams:
    a: float = 1.0  # weight of the LM's log-probabilities
    b: float = 0.0  # weight of the lexical expert's
    c: float = 0.0  # weight of the training prior
    tau: float = 0.0  # prior correction of the decision only


@dataclass
class Combination:
    """Per view, per field, the pooling parameters; plus the training prior of each field."""

    views: dict[str, dict[str, FieldParams]] = field(default_factory=dict)
    priors: dict[str, dict[str, float]] = field(default_factory=dict)
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)

    def params(self, view: str, name: str) -> FieldParams:
        default = FieldParams(a=0.0, b=1.0) if view == "lexical" else FieldParams()
        return self.views.get(view, {}).get(name, default)

    def save(self, folder: str | Path) -> None:
        data = {"views": {v: {f: asdict(p) for f, p in fields.items()} for v, fields in self.views.items()},
                "priors": self.priors, "thresholds": self.thresholds}
        (Path(folder) / COMBINATION_FILE).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n",
                                                     encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> "Combination | None":
        path = Path(folder) / COMBINATION_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            views = {v: {f: FieldParams(**p) for f, p in fields.items()} for v, fields in data["views"].items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: unreadable combination parameters ({exc})") from None
        return cls(views=views, priors=data.get("priors", {}), thresholds=data.get("thresholds", {}))


def pool(params: FieldParams, allowed: Sequence[str], lm: Mapping[str, float] | None,
         lexical: Mapping[str, float] | None, prior: Mapping[str, float] | None = None
         ) -> tuple[dict[str, float], str]:
    """The pooled distribution over `allowed` and the chosen value (see the module docstring)."""
    lex = _renormalised(lexical, allowed) if lexical is not None and params.b else None
    pri = _renormalised(prior, allowed) if prior and (params.c or params.tau) else None
    scores = []
    for v in allowed:
        s = params.a * math.log(max(lm.get(v, 0.0), _FLOOR)) if lm is not None and params.a else 0.0
        if lex is not None:
            s += params.b * math.log(lex[v])
        if pri is not None:
            s += params.c * math.log(pri[v])
        scores.append(s)
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    norm = sum(weights)
    dist = {v: w / norm for v, w in zip(allowed, weights, strict=True)}
    decision = scores if pri is None or not params.tau else \
        [s - params.tau * math.log(pri[v]) for s, v in zip(scores, allowed, strict=True)]
    return dist, allowed[max(range(len(allowed)), key=decision.__getitem__)]


def _renormalised(dist: Mapping[str, float], allowed: Sequence[str]) -> dict[str, float]:
    raw = [max(float(dist.get(v, 0.0)), _FLOOR) for v in allowed]
    total = sum(raw)
    return {v: r / total for v, r in zip(allowed, raw, strict=True)}
