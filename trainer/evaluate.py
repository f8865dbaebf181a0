"""Evaluation: per-field accuracy, macro-F1, per-class precision/recall, validity, latency, and what an operator
tunes: accuracy at each confidence threshold. A TF-IDF + linear SVM baseline trained on the same records is
reported beside the model, so every figure has something to be compared with.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from triage_core.taxonomy import Taxonomy

from .calibrate import expected_calibration_error, threshold_for_precision
from .records import Record

THRESHOLDS = [round(0.05 * i, 2) for i in range(20)]


@dataclass
class Predictions:
    """What a system answered for each record: labels per field, and confidences where it has them."""

    name: str
    labels: list[dict[str, str]]
    confidence: list[dict[str, float]] = field(default_factory=list)
    valid: list[bool] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    #: What the LM alone and the lexical expert alone chose, where the adapter pools the two.
    views: dict[str, "Predictions"] = field(default_factory=dict)


def evaluated_fields(taxonomy: Taxonomy, records: Sequence[Record]) -> list[str]:
    """Enum fields that at least one record carries a label for."""
    return [f.name for f in taxonomy.enum_fields if any(f.name in r.get("labels", {}) for r in records)]


def predict_model(triager: Any, records: Sequence[Record], batch_size: int = 8, progress: bool = False
                  ) -> Predictions:
    """Run the Triager; a ticket that fails to triage counts as invalid (and wrong), never as skipped."""
    from tqdm import tqdm

    from triage_core.triager import TriageError

    results: list[Any] = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(records), desc="eval", unit="ticket", disable=not progress)
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        try:
            results += triager.triage_many([r["text"] for r in chunk], batch_size=batch_size)
        except TriageError:
            for r in chunk:
                try:
                    results.append(triager.triage(r["text"]))
                except TriageError:
                    results.append(None)
        bar.update(len(chunk))
    bar.close()
    preds = Predictions(name="model", labels=[dict(r.ticket) if r else {} for r in results],
                        confidence=[dict(r.confidence) if r else {} for r in results],
                        valid=[r is not None for r in results],
                        latency_ms=[r.latency_ms if r else float("nan") for r in results],
                        seconds=time.perf_counter() - t0)
    for view in {v for r in results if r for v in r.views}:
        preds.views[view] = Predictions(name=view, labels=[dict(r.views[view]) if r else {} for r in results],
                                        confidence=[dict(r.view_confidence[view]) if r else {} for r in results])
    return preds


def predict_baseline(train: Sequence[Record], records: Sequence[Record], fields: Sequence[str]) -> Predictions:
    """TF-IDF (word 1-2 grams + char 2-5 grams) + LinearSVC per field, trained on `train`."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.svm import LinearSVC

    preds = Predictions(name="baseline", labels=[{} for _ in records])
    t0 = time.perf_counter()
    for name in fields:
        rows = [r for r in train if name in r.get("labels", {})]
        classes = {r["labels"][name] for r in rows}
        if not rows:
            continue
        if len(classes) == 1:
            only = next(iter(classes))
            for p in preds.labels:
                p[name] = only
            continue
        features = make_union(
            TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True),
        )
        clf = _svm(make_pipeline(features, LinearSVC(C=0.5, class_weight="balanced")),
                   [r["labels"][name] for r in rows])
        clf.fit([r["text"] for r in rows], [r["labels"][name] for r in rows])
        for p, label in zip(preds.labels, clf.predict([r["text"] for r in records]), strict=True):
            p[name] = str(label)
    preds.seconds = time.perf_counter() - t0
    preds.valid = [True] * len(records)
    return preds


def _svm(pipeline: Any, labels: Sequence[str]) -> Any:
    """C chosen by 3-fold cross-validated macro-F1 on the training slice, where every class has 3 examples."""
    from collections import Counter

    from sklearn.model_selection import GridSearchCV

    if min(Counter(labels).values()) < 3:
        return pipeline
    return GridSearchCV(pipeline, {"linearsvc__C": [0.1, 0.3, 1.0, 3.0]}, cv=3, scoring="f1_macro")


def score(records: Sequence[Record], preds: Predictions, fields: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall per field, over records carrying that label."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    out: dict[str, Any] = {"n": len(records), "fields": {}}
    if preds.valid:
        out["validity_pct"] = round(100.0 * sum(preds.valid) / max(1, len(preds.valid)), 2)
    lat = [x for x in preds.latency_ms if not math.isnan(x)]
    if lat:
        lat.sort()
        out["latency_ms"] = {"p50": round(_quantile(lat, 0.5), 1), "p95": round(_quantile(lat, 0.95), 1)}
        out["tickets_per_second"] = round(len(records) / preds.seconds, 3) if preds.seconds else None
    for name in fields:
        idx, gold, got = _gold_and_predicted(records, preds, name)
        if not idx:
            continue
        labels = sorted(set(gold) | (set(got) - {"<invalid>"}))
        p, r, f, s = precision_recall_fscore_support(gold, got, labels=labels, zero_division=0)
        out["fields"][name] = {
            "n": len(idx),
            "accuracy": round(float(accuracy_score(gold, got)), 4),
            # Macro-F1 over the classes present in the gold labels: a class never seen cannot be averaged in.
            "macro_f1": round(float(f1_score(gold, got, labels=sorted(set(gold)), average="macro",
                                             zero_division=0)), 4),
            "per_class": {lab: {"precision": round(float(p[k]), 4), "recall": round(float(r[k]), 4),
                                "f1": round(float(f[k]), 4), "support": int(s[k])}
                          for k, lab in enumerate(labels)},
        }
        if preds.confidence:
            conf = [preds.confidence[i].get(name, 0.0) for i in idx]
            correct = [g == o for g, o in zip(gold, got, strict=True)]
            out["fields"][name]["coverage_curve"] = coverage_curve(correct, conf)
            out["fields"][name]["ece"] = round(expected_calibration_error(correct, conf), 4)
            for target in (0.9, 0.95):
                t, cov = threshold_for_precision(correct, conf, target)
                out["fields"][name][f"coverage_at_{int(target * 100)}"] = {"threshold": t, "coverage": round(cov, 4)}
    return out


def _gold_and_predicted(records: Sequence[Record], preds: Predictions, name: str
                        ) -> tuple[list[int], list[str], list[str]]:
    """Indices of the records labelled for `name`, their gold labels and the predictions ("<invalid>" if none)."""
    idx = [i for i, r in enumerate(records) if name in r.get("labels", {})]
    return idx, [records[i]["labels"][name] for i in idx], [preds.labels[i].get(name, "<invalid>") for i in idx]


def coverage_curve(correct: Sequence[bool], confidence: Sequence[float]) -> list[dict[str, float]]:
    """For each threshold: the share of tickets at or above it (coverage) and their accuracy."""
    rows = []
    n = len(correct)
    for t in THRESHOLDS:
        kept = [c for c, p in zip(correct, confidence, strict=True) if p >= t]
        rows.append({"threshold": t, "coverage": round(len(kept) / n, 4) if n else 0.0,
                     "accuracy": round(sum(kept) / len(kept), 4) if kept else None})
    return rows


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


#: Columns of the summary: the model as it triages, each of its sources alone, and the baseline.
SYSTEMS = (("model", "model"), ("lm", "LM alone"), ("lexical", "lexical alone"), ("baseline", "TF-IDF+SVM"))


def model_line(info: Mapping[str, Any]) -> str:
    """`base + adapter` as a reader writes it, not a Python dict."""
    return f"{info.get('base')} + {info['adapter']}" if info.get("adapter") else f"{info.get('base')} (no adapter)"


def summary_table(metrics: Mapping[str, Any]) -> str:
    """Markdown table: per field, accuracy / macro-F1 of every system evaluated, and the model's calibration."""
    shown = [(key, title) for key, title in SYSTEMS if metrics.get(key, {}).get("fields")]
    lines = ["| field | n | " + " | ".join(f"{t} acc / F1" for _, t in shown)
             + " | ECE | coverage at 95% precision |", "|---|---|" + "---|" * (len(shown) + 2)]
    for name, m in metrics.get("model", {}).get("fields", {}).items():
        cells = []
        for key, _ in shown:
            f = metrics[key]["fields"].get(name, {})
            cells.append(f"{_fmt(f.get('accuracy'))} / {_fmt(f.get('macro_f1'))}")
        cov = m.get("coverage_at_95", {})
        at = f"{cov.get('coverage', 0):.2f} (t={cov['threshold']})" if cov.get("threshold") is not None else "-"
        lines.append(f"| {name} | {m['n']} | " + " | ".join(cells) + f" | {_fmt(m.get('ece'))} | {at} |")
    return "\n".join(lines)


def policy_snippet(metrics: Mapping[str, Any]) -> str:
    """The `policy.fields` YAML that applies each field only at the confidence that was 95% right here."""
    lines = ["policy:", "  fields:"]
    for name, m in metrics.get("model", {}).get("fields", {}).items():
        t = m.get("coverage_at_95", {}).get("threshold")
        if t is None:
            lines.append(f"    {name}: {{mode: suggest}}  # never 95% right on these tickets")
        else:
            lines.append(f"    {name}: {{threshold: {t}}}  # auto-applies {m['coverage_at_95']['coverage']:.0%}")
    return "\n".join(lines)


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else "-"


def write_report(out_dir: str | Path, metrics: Mapping[str, Any], records: Sequence[Record],
                 model_preds: Predictions, fields: Sequence[str]) -> list[Path]:
    """metrics.json, report.md, a confusion-matrix PNG per field and the coverage/accuracy curve PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    written.append(out / "metrics.json")
    for name in fields:
        idx, gold, got = _gold_and_predicted(records, model_preds, name)
        if not idx:
            continue
        labels = sorted(set(gold) | set(got))
        cm = confusion_matrix(gold, got, labels=labels)
        size = max(4.0, 0.45 * len(labels) + 2)
        fig, ax = plt.subplots(figsize=(size + 1, size))
        ax.imshow(cm, cmap="Blues")
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name}: confusion matrix (n={len(idx)})")
        for (i, j), v in __import__("numpy").ndenumerate(cm):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                        color="white" if v > cm.max() / 2 else "black")
        fig.tight_layout()
        path = out / f"confusion_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, m in metrics.get("model", {}).get("fields", {}).items():
        curve = [c for c in m.get("coverage_curve", []) if c["accuracy"] is not None]
        if curve:
            ax.plot([c["coverage"] for c in curve], [c["accuracy"] for c in curve], marker=".", label=name)
    ax.set_xlabel("coverage (share of tickets at or above the threshold)")
    ax.set_ylabel("accuracy of those tickets")
    ax.set_title("Confidence threshold: coverage vs accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "coverage_accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    model = metrics.get("model", {})
    md = ["# Evaluation report", "", f"Data: {metrics.get('data')} ({model.get('n')} tickets)",
          f"Model: {model_line(metrics.get('model_info') or {})}", "",
          f"Schema validity: {model.get('validity_pct')}%  ",
          f"Latency per ticket (amortised over batches): p50 {model.get('latency_ms', {}).get('p50')} ms, "
          f"p95 {model.get('latency_ms', {}).get('p95')} ms; {model.get('tickets_per_second')} tickets/s", "",
          "## Model vs baseline (TF-IDF + linear SVM trained on the same records)", "", summary_table(metrics), "",
          "## Accuracy at each confidence threshold", ""]
    for name, m in model.get("fields", {}).items():
        pts = [c for c in m.get("coverage_curve", []) if c["threshold"] in (0.0, 0.5, 0.7, 0.9)]
        md.append(f"- {name}: " + ", ".join(
            f"t={c['threshold']}: coverage {c['coverage']:.2f}, accuracy {_fmt(c['accuracy'])}" for c in pts))
    md += ["", "![coverage vs accuracy](coverage_accuracy.png)", ""]
    md += [f"![{name}](confusion_{name}.png)" for name in fields]
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    written.append(out / "report.md")
    return written


def evaluate(triager: Any, records: Sequence[Record], train: Sequence[Record] | None = None,
             batch_size: int = 8, progress: bool = False, data_name: str = "") -> tuple[dict[str, Any], Predictions]:
    """Model metrics (and baseline metrics when training records are given) for `records`."""
    fields = evaluated_fields(triager.taxonomy, records)
    model_preds = predict_model(triager, records, batch_size=batch_size, progress=progress)
    metrics: dict[str, Any] = {"data": data_name, "model_info": triager.model_info,
                               "model": score(records, model_preds, fields)}
    for view, preds in model_preds.views.items():
        metrics[view] = score(records, preds, fields)
    if train:
        metrics["baseline"] = score(records, predict_baseline(train, records, fields), fields)
        metrics["baseline"]["trained_on"] = len(train)
    return metrics, model_preds


def headline(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Mean accuracy and mean macro-F1 over fields: one number each for comparisons and adapter metadata."""
    fields = metrics.get("fields", {})
    if not fields:
        return {}
    return {"mean_accuracy": round(statistics.mean(f["accuracy"] for f in fields.values()), 4),
            "mean_macro_f1": round(statistics.mean(f["macro_f1"] for f in fields.values()), 4)}
