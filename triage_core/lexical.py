"""The lexical expert: TF-IDF word and character n-grams with a linear SVM per enum field.

A small LM fine-tuned for minutes knows less about a team's own vocabulary (host names, product codes, opaque
group names) than a bag of n-grams fitted to its history does; the expert gives a distribution over each field's
allowed values that `combine.py` pools with the LM's. It is fitted with every adapter and travels in the adapter
folder, stored as plain arrays and JSON (`lexical.npz`, `lexical.json`), never as a pickle: an adapter folder is
copied between machines and loading it must not run code.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .prompt import clean_ticket_text

EXPERT_JSON = "lexical.json"
EXPERT_ARRAYS = "lexical.npz"
#: Word 1-2 grams and character 2-5 grams within word boundaries (what the TF-IDF + SVM baseline uses).
_VECTORIZERS = {
    "word": {"analyzer": "word", "ngram_range": (1, 2), "min_df": 1, "sublinear_tf": True, "max_features": 60000},
    "char": {"analyzer": "char_wb", "ngram_range": (2, 5), "min_df": 2, "sublinear_tf": True,
             "max_features": 120000},
}


class ExpertError(ValueError):
    """The lexical expert cannot be fitted or loaded; the message says why."""


@dataclass
class FieldModel:
    """One field's linear model over the shared features: scores = X @ coef.T + intercept."""

    classes: list[str]
    coef: np.ndarray  # [K, D]  (K == 1 for a field with a single value seen: it always wins)
    intercept: np.ndarray  # [K]
    prior: dict[str, float]
    scale: float = 1.0  # inverse temperature of the softmax over the scores, fitted out of fold


class LexicalExpert:
    """Shared TF-IDF features and one linear model per field (scores -> softmax)."""

    def __init__(self, vectorizers: Mapping[str, Any], fields: Mapping[str, FieldModel], taxonomy_hash: str):
        self.vectorizers = dict(vectorizers)
        self.fields = dict(fields)
        self.taxonomy_hash = taxonomy_hash

    # --- fitting ---------------------------------------------------------------------------------------

    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[Mapping[str, str]], fields: Sequence[str],
            taxonomy_hash: str) -> "LexicalExpert":
        """Fit on `texts` and their labels; each field learns from the records that carry it.

        Per field a class-balanced linear SVM, C chosen by 3-fold cross-validated macro-F1 (on a desk where one
        group takes half the tickets an unweighted model routes the rare groups to it, and macro-F1 is what
        routing quality means). Its scores become a distribution by a softmax whose temperature the pooling
        fits on held-out tickets (triage_core.combine), which is Platt-style calibration of the same scores.
        """
        from sklearn.feature_extraction.text import TfidfVectorizer

        cleaned = [clean_ticket_text(t) for t in texts]
        vecs = {name: TfidfVectorizer(dtype=np.float32, **params) for name, params in _VECTORIZERS.items()}
        try:
            for vec in vecs.values():
                vec.fit(cleaned)
        except ValueError as exc:  # e.g. no n-gram survives min_df on a handful of records
            raise ExpertError(f"lexical expert: {exc}") from None
        expert = cls(vecs, {}, taxonomy_hash)
        features = expert._features(cleaned, clean=False)
        for name in fields:
            rows = [i for i, lab in enumerate(labels) if name in lab]
            if rows:
                expert.fields[name] = _fit_field(features[rows], [labels[i][name] for i in rows])
        return expert

    # --- use ---------------------------------------------------------------------------------------------

    def _features(self, texts: Sequence[str], clean: bool = True):
        from scipy.sparse import hstack

        docs = [clean_ticket_text(t) for t in texts] if clean else list(texts)
        return hstack([self.vectorizers[name].transform(docs) for name in _VECTORIZERS]).tocsr()

    def predict(self, texts: Sequence[str]) -> list[dict[str, dict[str, float]]]:
        """Per text, per field, the probability of each value the expert has seen."""
        if not texts:
            return []
        x = self._features(texts)
        out: list[dict[str, dict[str, float]]] = [{} for _ in texts]
        for name, fm in self.fields.items():
            probs = _softmax(fm.scale * (np.asarray(x @ fm.coef.T) + fm.intercept))
            for row, p in zip(out, probs, strict=True):
                row[name] = {v: float(q) for v, q in zip(fm.classes, p, strict=True)}
        return out

    def distinctive_terms(self, name: str, k: int = 6) -> dict[str, list[str]]:
        """The word n-grams that weigh most for each value of `name`: a description of an opaque label."""
        fm = self.fields.get(name)
        if fm is None or len(fm.classes) < 2:
            return {}
        vocab = self.vectorizers["word"].get_feature_names_out()
        words = fm.coef[:, : len(vocab)]
        lead = words - words.mean(axis=0, keepdims=True)  # what sets this value apart from the others
        return {v: [str(vocab[j]) for j in np.argsort(-lead[i])[:k] if lead[i, j] > 0]
                for i, v in enumerate(fm.classes)}

    # --- storage -----------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"taxonomy_hash": self.taxonomy_hash, "vectorizers": {}, "fields": {}}
        for name, vec in self.vectorizers.items():
            terms = vec.get_feature_names_out()
            meta["vectorizers"][name] = {"params": _json_params(_VECTORIZERS[name]), "terms": [str(t) for t in terms]}
            arrays[f"idf.{name}"] = vec.idf_.astype(np.float32)
        for name, fm in self.fields.items():
            meta["fields"][name] = {"classes": fm.classes, "prior": fm.prior, "scale": fm.scale}
            arrays[f"coef.{name}"] = fm.coef
            arrays[f"intercept.{name}"] = fm.intercept
        np.savez_compressed(folder / EXPERT_ARRAYS, **arrays)
        (folder / EXPERT_JSON).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path, taxonomy_hash: str | None) -> "LexicalExpert | None":
        """The expert stored in an adapter folder; None when the folder has none (older adapters)."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        folder = Path(folder)
        if not (folder / EXPERT_JSON).is_file():
            return None
        try:
            meta = json.loads((folder / EXPERT_JSON).read_text(encoding="utf-8"))
            arrays = np.load(folder / EXPERT_ARRAYS, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ExpertError(f"{folder}: unreadable lexical expert ({exc})") from None
        if taxonomy_hash and meta.get("taxonomy_hash") != taxonomy_hash:
            raise ExpertError(f"{folder}: the lexical expert was fitted for taxonomy {meta.get('taxonomy_hash')}, "
                              f"but the current taxonomy is {taxonomy_hash}; retrain the adapter")
        vecs = {}
        for name, spec in meta["vectorizers"].items():
            params = dict(spec["params"], ngram_range=tuple(spec["params"]["ngram_range"]))
            vec = TfidfVectorizer(dtype=np.float32, vocabulary={t: i for i, t in enumerate(spec["terms"])},
                                  **{k: v for k, v in params.items() if k not in ("min_df", "max_features")})
            vec.fit([" ".join(spec["terms"][:1]) or "x"])  # binds the fixed vocabulary; idf_ is set next
            vec.idf_ = arrays[f"idf.{name}"]
            vecs[name] = vec
        fields = {name: FieldModel(list(spec["classes"]), arrays[f"coef.{name}"], arrays[f"intercept.{name}"],
                                   dict(spec["prior"]), float(spec.get("scale", 1.0)))
                  for name, spec in meta["fields"].items()}
        return cls(vecs, fields, meta["taxonomy_hash"])


def _fit_field(x: Any, y: list[str]) -> FieldModel:
    from collections import Counter

    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import LinearSVC

    counts = Counter(y)
    classes = sorted(counts)
    prior = {v: counts[v] / len(y) for v in classes}
    if len(classes) == 1:
        return FieldModel(classes, np.zeros((1, x.shape[1]), np.float32), np.zeros(1, np.float32), prior)
    svm = LinearSVC(C=0.5, class_weight="balanced")
    if min(counts.values()) >= 3:
        svm = GridSearchCV(svm, {"C": [0.1, 0.3, 1.0, 3.0]}, cv=3, scoring="f1_macro").fit(x, y).best_estimator_
    else:
        svm.fit(x, y)
    coef, intercept = svm.coef_, svm.intercept_
    if len(classes) == 2:  # one row for two classes: score(c1) - score(c0), split evenly
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    scale = _oof_scale(svm, x, y) if min(counts.values()) >= 3 else 1.0
    return FieldModel([str(v) for v in svm.classes_], coef.astype(np.float32), intercept.astype(np.float32), prior,
                      scale)


def _oof_scale(svm: Any, x: Any, y: list[str]) -> float:
    """The softmax inverse temperature that makes the SVM's scores likely on tickets it did not see (3-fold
    out-of-fold scores over all its training records: far more of them than the pooling's held-out fold)."""
    from scipy.optimize import minimize_scalar
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_predict

    scores = cross_val_predict(clone(svm), x, y, cv=3, method="decision_function")
    if scores.ndim == 1:
        scores = np.stack([-scores / 2, scores / 2], axis=1)
    gold = np.searchsorted(np.array(sorted(set(y))), y)

    def nll(k: float) -> float:
        p = _softmax(k * scores)
        return float(-np.log(np.maximum(p[np.arange(len(y)), gold], 1e-12)).mean())

    return float(minimize_scalar(nll, bounds=(0.1, 50.0), method="bounded").x)


def _softmax(scores: np.ndarray) -> np.ndarray:
    scores = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=1, keepdims=True)


def _json_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}
