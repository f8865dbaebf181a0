"""Similar past tickets: nearest neighbours by TF-IDF cosine over triaged and closed tickets, with their final
labels (the "why" next to a prediction).

The corpus is every ticket the daemon triaged (its text from the stored event; its labels the latest result's,
overridden by the humans' corrections, as retraining reads them) plus the closed tickets the latest retraining run
gathered (its train/test files, synthetic ones left out). The index is rebuilt at most every
`console.similar_refresh_seconds`, when a query finds it stale; nothing here calls a vendor.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import select

from triage_core.store import Correction, InboundEvent, Job, RetrainRun, Store, TriageResultRow

log = logging.getLogger(__name__)

#: Newest tickets indexed at most (the oldest beyond that are left out).
MAX_DOCS = 50_000
#: Characters of a ticket's text that are indexed.
MAX_CHARS = 4_000


@dataclass(frozen=True)
class Doc:
    key: tuple[str, str]  # (connector, ref), or ("closed", record id)
    text: str
    labels: dict[str, str]
    status: str  # reviewed | corrected | triaged | dismissed | closed
    result_id: int | None = None


@dataclass(frozen=True)
class Neighbour:
    doc: Doc
    score: float


def triaged_docs(store: Store, limit: int = MAX_DOCS) -> list[Doc]:
    """The newest triaged tickets with their final labels."""
    with store.session(readonly=True) as s:
        latest = select(TriageResultRow).order_by(TriageResultRow.id.desc()).limit(limit * 2)
        rows: dict[tuple[str, str], TriageResultRow] = {}
        for r in s.scalars(latest):
            rows.setdefault((r.connector, r.ticket_ref), r)
            if len(rows) >= limit:
                break
        if not rows:
            return []
        texts: dict[tuple[str, str], str] = {}
        job_ids = [r.job_id for r in rows.values() if r.job_id is not None]
        for i in range(0, len(job_ids), 500):
            for conn, ref, payload in s.execute(
                    select(InboundEvent.connector, InboundEvent.ticket_ref, InboundEvent.payload)
                    .join(Job, Job.event_id == InboundEvent.id).where(Job.id.in_(job_ids[i:i + 500]))):
                text = (payload or {}).get("text")
                if isinstance(text, str) and text.strip():
                    texts[(conn, ref)] = text
        labels = {key: {k: v for k, v in (r.fields or {}).items() if k != "summary"} for key, r in rows.items()}
        status = {key: "triaged" for key in rows}
        for c in s.scalars(select(Correction).order_by(Correction.id)):
            key = (c.connector, c.ticket_ref)
            if key not in labels:
                continue
            if c.new_value is None:
                labels[key].pop(c.field, None)
            else:
                labels[key][c.field] = c.new_value
            if c.decision == "dismiss":
                status[key] = "dismissed"
            elif c.decision in ("accept", "correct"):
                status[key] = "reviewed"
            elif status[key] == "triaged":
                status[key] = "corrected"
    return [Doc(key, texts[key], labels[key], status[key], rows[key].id) for key in rows
            if key in texts and status[key] != "dismissed"]


def closed_docs(store: Store, output_dir: Path | None) -> list[Doc]:
    """Closed tickets the latest retraining run gathered (its train.jsonl and test.jsonl; not synthetic ones)."""
    if output_dir is None:
        return []
    with store.session(readonly=True) as s:
        runs = list(s.scalars(select(RetrainRun.id).order_by(RetrainRun.id.desc()).limit(5)))
    for run_id in runs:
        folder = output_dir / f"run-{run_id:05d}"
        files = [folder / "train.jsonl", folder / "test.jsonl"]
        if not any(f.is_file() for f in files):
            continue
        docs = []
        for path in files:
            for record in _read_jsonl(path):
                if record.get("source") in ("synthetic", "correction"):
                    continue  # corrections are in the database already, with their tickets
                text, labels = record.get("text"), record.get("labels")
                if isinstance(text, str) and text.strip() and isinstance(labels, dict):
                    docs.append(Doc(("closed", str(record.get("id") or len(docs))), text,
                                    {k: str(v) for k, v in labels.items()}, "closed"))
        return docs
    return []


def _read_jsonl(path: Path) -> Iterable[dict]:
    if not path.is_file():
        return []
    out = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
    return out


class SimilarIndex:
    """A TF-IDF index of the corpus, rebuilt lazily when older than `refresh_seconds`."""

    def __init__(self, store: Store, output_dir: Path | None = None, refresh_seconds: float = 60.0):
        self.store = store
        self.output_dir = output_dir
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._built_at = -1e18
        self._docs: list[Doc] = []
        self._vectorizer: Any = None
        self._matrix: Any = None

    def invalidate(self) -> None:
        with self._lock:
            self._built_at = -1e18

    def _build(self) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        docs = triaged_docs(self.store) + closed_docs(self.store, self.output_dir)
        self._docs = docs
        if not docs:
            self._vectorizer = self._matrix = None
            return
        vectorizer = TfidfVectorizer(lowercase=True, strip_accents="unicode", sublinear_tf=True,
                                     ngram_range=(1, 2), min_df=1, max_features=200_000)
        try:
            self._matrix = vectorizer.fit_transform([d.text[:MAX_CHARS] for d in docs])
            self._vectorizer = vectorizer
        except ValueError:  # nothing but stop words and punctuation
            self._vectorizer = self._matrix = None

    def _fresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._built_at >= self.refresh_seconds:
                t0 = time.perf_counter()
                self._build()
                self._built_at = time.monotonic()
                log.debug("console: similar-ticket index of %d tickets built in %.2f s", len(self._docs),
                          time.perf_counter() - t0)

    def query(self, text: str, k: int = 5, exclude: tuple[str, str] | None = None) -> list[Neighbour]:
        """The `k` most similar tickets to `text` (a score above zero), leaving out the ticket `exclude`."""
        if k <= 0 or not text.strip():
            return []
        self._fresh()
        with self._lock:
            vectorizer, matrix, docs = self._vectorizer, self._matrix, self._docs
        if vectorizer is None or matrix is None:
            return []
        scores = (matrix @ vectorizer.transform([text[:MAX_CHARS]]).T).toarray().ravel()
        order = scores.argsort()[::-1]
        out = []
        for i in order:
            if scores[i] <= 0 or len(out) >= k:
                break
            if exclude is not None and docs[i].key == exclude:
                continue
            out.append(Neighbour(docs[i], round(float(scores[i]), 3)))
        return out


def retrain_output_dir(config: Any) -> Path | None:
    try:
        value = config["retrain"]["output_dir"]
    except (KeyError, TypeError):
        return None
    path = config.path(value)
    return Path(os.path.expanduser(str(path))) if path is not None else None
