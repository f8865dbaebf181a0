"""Nightly retraining: gather what humans decided, train a challenger, promote it only if it is not worse.

One run, start to finish:
1. take the `retrain` lock in the database (one run across all instances; it expires if the holder dies);
2. gather closed tickets since the last promoting run (a run that trains nothing or keeps the champion
   consumes nothing) from every connector that lists them, the corrections the
   daemon recorded (the ticket's text with our fields, overridden by what the human chose), and exports dropped in
   `retrain.drop_folder`; drop labels outside the taxonomy (counted), redact e-mail/phone/IP, deduplicate;
3. hold out the newest tickets as the test slice (time-ordered, so the test is the future of the training data);
4. train the challenger from the champion in a child process with few threads and low priority (serving keeps
   its latency), topping up labels with few real examples with synthetic tickets;
5. evaluate champion and challenger on the same held-out slice; promote when every field's macro-F1 is within
   `margin` of the champion's and validity is 100%, otherwise keep the champion and record why.
Everything is recorded in `retrain_runs`; the promotion is a registry row that running daemons hot-reload.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from triage_core.capabilities import ClosedTicketSource
from triage_core.config import Config
from triage_core.registry import DbLock, LockHeld, ModelRegistry
from triage_core.store import Store, utcnow
from triage_core.taxonomy import Taxonomy, load_taxonomy

from .records import Record, iter_jsonl, read_records
from .redact import RedactionCounts, redact
from .splits import normalize_text

log = logging.getLogger(__name__)

LOCK_NAME = "retrain"


@dataclass(frozen=True)
class RetrainSettings:
    """The `retrain` config section."""

    enabled: bool = False
    cron: str = "0 2 * * *"
    lookback_days: int = 90
    drop_folder: str | None = None
    drop_map: str | None = None
    holdout_fraction: float = 0.2
    min_holdout: int = 10
    min_records: int = 30
    margin: float = 0.02
    min_per_label: int = 5
    synthetic_per_label: int = 5
    max_steps: int = 0
    epochs: float = 1.0
    threads: int = 1
    nice: int = 10
    output_dir: str = "~/.cache/ticket-triage/challengers"
    lock_hours: float = 6.0

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "RetrainSettings":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class RunCounts(Mapping[str, Any]):
    """What a run gathered, dropped and trained on: the `retrain_runs.counts` record.

    Each step of a run fills its own fields (`clean`, then `gather`, then the run); a field no step filled is left
    out of the record. It reads as that record too (`counts["sources"]`), which the CLI and the console print."""

    gathered: int | None = None
    sources: dict[str, int | str] | None = None  # per source: records listed, or "error: ..." when it failed
    kept: int | None = None
    by_source: dict[str, int] | None = None
    dropped: dict[str, int] | None = None  # why, and how many
    redacted: dict[str, int] | None = None  # e-mail, phone and IP replacements
    problems: list[str] | None = None  # drop-folder files that could not be read
    since: str | None = None  # ISO-8601: the start of the window gathered
    train: int | None = None
    test: int | None = None
    synthetic: int | None = None
    child: dict[str, Any] | None = None  # what the training process ran with (torch threads, nice)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass
class Gathered:
    records: list[Record] = field(default_factory=list)
    counts: RunCounts = field(default_factory=RunCounts)


@dataclass(frozen=True)
class TrainJob:
    """Everything the training child needs besides the config: picklable, so it crosses the spawn line as is."""

    train_path: str
    test_path: str
    out_dir: str
    champion_path: str | None  # the adapter the challenger starts from (None: the bare base model)
    name: str
    version: str
    max_steps: int  # 0: as many as `epochs` take
    epochs: float
    threads: int  # torch threads in the child
    nice: int  # added to the child's niceness


@dataclass(frozen=True)
class TrainOutcome:
    """What the training child wrote back: both models' metrics on the held-out slice and how it ran."""

    champion: dict[str, Any]
    challenger: dict[str, Any]
    child: dict[str, Any]


class RetrainError(RuntimeError):
    """The run cannot go on; recorded as a failed run with this message."""


# --- gathering --------------------------------------------------------------------------------------------------

def corrected_records(store: Store, since: datetime | None) -> list[Record]:
    """One record per corrected ticket: its text, our last fields, overridden by the humans' corrections."""
    out: dict[tuple[str, str], Record] = {}
    for c in store.corrections(since):
        key = (c.connector, c.ticket_ref)
        if key not in out:
            payload = store.last_event(c.connector, c.ticket_ref) or {}
            if not payload.get("text"):
                continue
            fields_ = store.last_fields(c.connector, c.ticket_ref) or {}
            out[key] = {"id": f"{c.connector}:{c.ticket_ref}", "text": payload["text"],
                        "labels": {k: v for k, v in fields_.items() if k != "summary"},
                        "source": "correction", "closed_at": c.created_at.isoformat()}
        if c.new_value is None:
            out[key]["labels"].pop(c.field, None)
        else:
            out[key]["labels"][c.field] = c.new_value
            out[key]["closed_at"] = c.created_at.isoformat()
    return list(out.values())


def dropped_files(folder: Path, taxonomy: Taxonomy, map_file: str | None) -> tuple[list[Record], list[str]]:
    """Records from *.jsonl files in the record shape, and CSV/JSONL exports through `map_file` if given."""
    records: list[Record] = []
    problems: list[str] = []
    for path in sorted(folder.glob("*")):
        if path.suffix.lower() == ".jsonl" and map_file is None:
            try:
                records += read_records(path)
            except ValueError as exc:
                problems.append(str(exc))
        elif path.suffix.lower() in (".csv", ".jsonl") and map_file is not None:
            from .importer import import_tickets, load_map_file

            try:
                spec = load_map_file(map_file)
                records += import_tickets(path, spec.columns, taxonomy, label_map=spec.labels, source="csv").records
            except ValueError as exc:
                problems.append(f"{path.name}: {exc}")
    return records, problems


def clean(records: Iterable[Record], taxonomy: Taxonomy) -> Gathered:
    """Keep taxonomy labels only (others dropped and counted), redact PII, drop empty and duplicate texts."""
    out = Gathered()
    dropped: Counter = Counter()
    seen: set[str] = set()
    redacted = RedactionCounts()
    by_source: Counter = Counter()
    for r in records:
        text = (r.get("text") or "").strip()
        if not text:
            dropped["empty text"] += 1
            continue
        labels = {}
        for name, value in (r.get("labels") or {}).items():
            if name not in taxonomy or not taxonomy[name].is_enum:
                continue  # summaries and unknown fields are not trained on from closed tickets
            if value in taxonomy[name].values:
                labels[name] = value
            else:
                dropped[f"{name} label outside the taxonomy"] += 1
        for name, value in list(labels.items()):
            parent = taxonomy[name].parent
            if parent and parent not in labels:
                del labels[name]
                dropped[f"{name} without its {parent}"] += 1
            elif parent and value not in taxonomy[name].children[labels[parent]]:
                del labels[name]
                dropped[f"{name} not under its {parent}"] += 1
        if not labels:
            dropped["no label left"] += 1
            continue
        text = redact(text, redacted)
        key = normalize_text(text)
        if key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        by_source[r.get("source") or "unknown"] += 1
        out.records.append({**{k: v for k, v in r.items() if k not in ("text", "labels")}, "text": text,
                            "labels": labels})
    out.counts = RunCounts(kept=len(out.records), by_source=dict(by_source), dropped=dict(dropped),
                           redacted={"email": redacted.email, "phone": redacted.phone, "ip": redacted.ip})
    return out


def holdout_split(records: Sequence[Record], fraction: float, minimum: int) -> tuple[list[Record], list[Record]]:
    """(train, test): the newest tickets by closed_at are the test slice."""
    ordered = sorted(records, key=lambda r: r.get("closed_at") or "")
    n_test = min(len(ordered) // 2, max(minimum, round(len(ordered) * fraction)))
    return ordered[:len(ordered) - n_test], ordered[len(ordered) - n_test:]


def top_up(train: list[Record], taxonomy: Taxonomy, per_label: int, minimum: int, seed: int) -> list[Record]:
    """Synthetic records for labels with fewer than `minimum` real examples, `per_label` each at most."""
    from .synthetic import generate

    counts = Counter((name, value) for r in train for name, value in r["labels"].items())
    # Only fields the real data labels: a synthetic record keeps just those, so one drawn for another field's
    # label would add nothing rare.
    fields_seen = {name for r in train for name in r["labels"]}
    wanted = {(f.name, v) for f in taxonomy.enum_fields if f.parent is None and f.name in fields_seen
              for v in f.values if counts[(f.name, v)] < minimum}
    if not wanted or per_label <= 0:
        return []
    pool = generate(taxonomy, n=max(200, 8 * per_label * len(wanted)), seed=seed)
    extra, taken = [], Counter()
    for r in pool:
        hits = [(n, v) for n, v in r["labels"].items() if (n, v) in wanted and taken[(n, v)] < per_label]
        if hits:
            for h in hits:
                taken[h] += 1
            extra.append({**r, "labels": {k: v for k, v in r["labels"].items() if k in fields_seen}})
    return extra


# --- deciding ---------------------------------------------------------------------------------------------------

def decide(champion: Mapping[str, Any], challenger: Mapping[str, Any], margin: float) -> tuple[bool, str]:
    """Promote when validity is 100% and no field's macro-F1 drops by more than `margin`; say why either way."""
    validity = challenger.get("validity_pct")
    if validity is not None and validity < 100.0:
        return False, f"challenger validity {validity}% < 100%"
    worse = []
    for name, ch in challenger.get("fields", {}).items():
        base = champion.get("fields", {}).get(name)
        if base is None:
            continue
        if ch["macro_f1"] < base["macro_f1"] - margin:
            worse.append(f"{name} macro-F1 {ch['macro_f1']:.3f} < champion {base['macro_f1']:.3f} - {margin}")
    if worse:
        return False, "; ".join(worse)
    gains = {n: round(ch["macro_f1"] - champion["fields"][n]["macro_f1"], 4)
             for n, ch in challenger.get("fields", {}).items() if n in champion.get("fields", {})}
    return True, f"no field worse by more than {margin} macro-F1 (change: {gains})"


# --- the child process ------------------------------------------------------------------------------------------

def _child(config_data: dict, base_dir: str, source: str, job: TrainJob, result_path: str) -> None:
    """Train the challenger and evaluate both models; runs in a spawned process with few threads, niced."""
    try:
        os.nice(int(job.nice))
    except (OSError, AttributeError):
        pass
    import torch

    threads = max(1, int(job.threads))
    torch.set_num_threads(threads)
    # Loading a model sets torch threads from model.threads: the child's loads must keep retrain.threads.
    config_data = {**config_data, "model": {**config_data["model"], "threads": threads}}
    from triage_core.triager import DecodingSettings, Triager

    from .evaluate import evaluate
    from .recipe import train_adapter
    from .synthetic import INSTRUCTIONS
    from .train import TrainSettings

    config = Config(data=config_data, base_dir=Path(base_dir), source=source)
    taxonomy = load_taxonomy(config.taxonomy_path)
    train_records = read_records(job.train_path)
    test_records = read_records(job.test_path)
    settings = TrainSettings.from_mapping(config["train"], max_steps=job.max_steps or None,
                                          epochs=job.epochs, eval_limit=0, partial_labels=True)
    # The whole recipe, so the challenger carries its own lexical expert and calibration, fitted on this
    # run's training records only (the held-out test slice never reaches them).
    train_adapter(train_records, taxonomy, config["model"], settings, job.out_dir,
                  decoding=DecodingSettings.from_mapping(config["decoding"]), name=job.name,
                  version=job.version, init_adapter=job.champion_path, instructions=INSTRUCTIONS,
                  progress=False, tensorboard=False)
    out = {}
    for who, adapter in (("champion", job.champion_path), ("challenger", job.out_dir)):
        triager = Triager.from_config(config, adapter=adapter) if adapter else Triager.from_config(config)
        metrics, _ = evaluate(triager, test_records)
        out[who] = metrics["model"]
        del triager
    # What the child actually ran with, for the run record (and to check the settings took effect).
    child = {"threads": torch.get_num_threads(), "nice": os.nice(0) if hasattr(os, "nice") else None}
    outcome = TrainOutcome(champion=out["champion"], challenger=out["challenger"], child=child)
    Path(result_path).write_text(json.dumps(asdict(outcome)), encoding="utf-8")


def train_and_evaluate(config: Config, job: TrainJob, timeout: float | None = None) -> TrainOutcome:
    """Run `_child` in a spawned process (its own torch threads and priority) and read its result."""
    result_path = Path(job.out_dir).parent / f"{Path(job.out_dir).name}.result.json"
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_child, args=(dict(config.data), str(config.base_dir), config.source, job,
                                            str(result_path)), name="retrain-child")
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        raise RetrainError(f"training did not finish within {timeout:.0f} s")
    if proc.exitcode != 0 or not result_path.exists():
        raise RetrainError(f"the training process failed (exit code {proc.exitcode}); see the daemon's log")
    return TrainOutcome(**json.loads(result_path.read_text(encoding="utf-8")))


# --- the run ----------------------------------------------------------------------------------------------------

@dataclass
class RunReport:
    id: int | None
    state: str
    counts: RunCounts
    metrics: dict[str, Any]
    decision: str
    seconds: float
    challenger: str | None = None
    challenger_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "counts": self.counts.to_dict(), "metrics": self.metrics,
                "decision": self.decision, "seconds": round(self.seconds, 1), "challenger": self.challenger}


class Retrainer:
    """One retraining run against a store and the enabled connectors. `stage` reports progress (CLI bar)."""

    def __init__(self, config: Config, store: Store, connectors: Mapping[str, Any] | None = None,
                 owner: str | None = None, stage: Callable[[str], None] | None = None):
        self.config = config
        self.store = store
        self.connectors = dict(connectors or {})
        self.settings = RetrainSettings.from_mapping(config["retrain"])
        self.taxonomy = load_taxonomy(config.taxonomy_path)
        self.registry = ModelRegistry(store)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.stage = stage or (lambda name: None)
        self.lock = DbLock(store, LOCK_NAME, self.owner, ttl_seconds=self.settings.lock_hours * 3600)

    def since(self) -> datetime:
        """The start of the last run whose challenger was promoted, else `lookback_days` ago.

        The window moves only when a champion has learnt from it: a run that found too little data, kept the
        champion, failed or was a dry run consumes nothing, so the next run gathers its tickets again."""
        last = self.store.last_promotion_start()
        return last or utcnow() - timedelta(days=self.settings.lookback_days)

    def gather(self, since: datetime) -> Gathered:
        self.stage("gather")
        raw: list[Record] = []
        sources: dict[str, Any] = {}
        for name, conn in self.connectors.items():
            if not isinstance(conn, ClosedTicketSource):
                continue
            try:
                got = list(conn.closed_tickets(since))
            except NotImplementedError:
                continue
            except Exception as exc:  # a vendor outage must not kill the run: the other sources still count
                sources[name] = f"error: {str(exc)[:300]}"
                log.warning("retrain: closed tickets from %s failed: %s", name, exc)
                continue
            sources[name] = len(got)
            raw += got
        corrections = corrected_records(self.store, since)
        sources["corrections"] = len(corrections)
        raw += corrections
        problems: list[str] = []
        if self.settings.drop_folder:
            folder = self.config.path(self.settings.drop_folder)
            if folder is not None and folder.is_dir():
                dropped, problems = dropped_files(folder, self.taxonomy,
                                                  str(self.config.path(self.settings.drop_map))
                                                  if self.settings.drop_map else None)
                sources["drop_folder"] = len(dropped)
                raw += dropped
        gathered = clean(raw, self.taxonomy)
        gathered.counts = replace(gathered.counts, gathered=len(raw), sources=sources, problems=problems or None)
        return gathered

    def run(self, dry_run: bool = False, timeout: float | None = None) -> RunReport:
        """One run; raises `LockHeld` when another instance is running one."""
        t0 = time.monotonic()
        with self.lock:
            since = self.since()
            run_id = self._start(since)
            try:
                report = self._run(run_id, since, dry_run, timeout, t0)
            except Exception as exc:
                report = RunReport(run_id, "failed", RunCounts(), {}, f"{type(exc).__name__}: {exc}"[:2000],
                                   time.monotonic() - t0)
                self._finish(report)
                raise
            self._finish(report)
            return report

    def _run(self, run_id: int, since: datetime, dry_run: bool, timeout: float | None, t0: float) -> RunReport:
        s = self.settings
        gathered = self.gather(since)
        train_records, test_records = holdout_split(gathered.records, s.holdout_fraction, s.min_holdout)
        counts = replace(gathered.counts, since=since.isoformat(), train=len(train_records),
                         test=len(test_records))
        run_dir = Path(os.path.expanduser(str(self.config.path(s.output_dir)))) / f"run-{run_id:05d}"
        run_dir.mkdir(parents=True, exist_ok=True)
        enough = len(gathered.records) >= s.min_records
        synthetic: list[Record] = []
        if enough and not dry_run:
            synthetic = top_up(train_records, self.taxonomy, s.synthetic_per_label, s.min_per_label, seed=run_id)
            counts = replace(counts, synthetic=len(synthetic))
        (run_dir / "train.jsonl").write_text("".join(iter_jsonl(train_records + synthetic)), encoding="utf-8")
        (run_dir / "test.jsonl").write_text("".join(iter_jsonl(test_records)), encoding="utf-8")
        if dry_run:
            return RunReport(run_id, "dry-run", counts, {}, "dry run: gathered and reported only",
                             time.monotonic() - t0)
        if not enough:
            return RunReport(run_id, "kept", counts, {}, f"not enough data: {len(gathered.records)} records "
                             f"(retrain.min_records {s.min_records})", time.monotonic() - t0)
        champion = self.registry.champion()
        champion_path = champion.adapter_path if champion else (
            str(self.config.path(self.config["model"].get("adapter"))) if self.config["model"].get("adapter")
            else None)
        name = self.taxonomy.name
        version = f"r{run_id}"
        job = TrainJob(train_path=str(run_dir / "train.jsonl"), test_path=str(run_dir / "test.jsonl"),
                       out_dir=str(run_dir / "adapter"), champion_path=champion_path, name=name, version=version,
                       max_steps=s.max_steps, epochs=s.epochs, threads=s.threads, nice=s.nice)
        self.stage("train")
        outcome = train_and_evaluate(self.config, job, timeout)
        counts = replace(counts, child=outcome.child)
        metrics = {"champion": _compact(outcome.champion), "challenger": _compact(outcome.challenger)}
        self.stage("decide")
        promote, why = decide(metrics["champion"], metrics["challenger"], s.margin)
        info = self.registry.register(name, version, str(self.config["model"]["base"]), job.out_dir,
                                      self.taxonomy.label_hash, {"heldout": metrics["challenger"]})
        if promote:
            if champion is None and champion_path:  # record the configured adapter so rollback can return to it
                self._register_configured(champion_path, metrics["champion"])
            self.registry.promote(info.id)
        return RunReport(run_id, "promoted" if promote else "kept", counts, metrics, why,
                         time.monotonic() - t0, challenger=info.tag, challenger_id=info.id)

    def _register_configured(self, path: str, metrics: dict[str, Any]) -> None:
        meta_file = Path(path) / "triage_adapter.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        name, version = meta.get("name") or Path(path).name, str(meta.get("version") or "configured")
        try:
            info = self.registry.register(name, version, str(self.config["model"]["base"]), path,
                                          self.taxonomy.label_hash, {"heldout": metrics})
        except ValueError:
            info = self.registry.get(f"{name}@{version}")
        self.registry.promote(info.id)

    def _start(self, since: datetime) -> int:
        return self.store.open_retrain_run(self.owner, since)

    def _finish(self, report: RunReport) -> None:
        self.store.close_retrain_run(report.id, report.state,
                                     {**report.counts.to_dict(), "seconds": round(report.seconds, 1)},
                                     report.metrics, report.decision, report.challenger_id)
        log.info("retrain run %s: %s (%s)", report.id, report.state, report.decision[:200])


def _compact(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Per-field accuracy and macro-F1, validity and n: what the run record and the decision need."""
    return {"n": metrics.get("n"), "validity_pct": metrics.get("validity_pct"),
            "fields": {name: {"accuracy": f["accuracy"], "macro_f1": f["macro_f1"], "n": f["n"]}
                       for name, f in metrics.get("fields", {}).items()}}


__all__ = ["Retrainer", "RetrainSettings", "RunReport", "RunCounts", "TrainJob", "TrainOutcome", "RetrainError",
           "LockHeld", "decide", "clean", "holdout_split", "corrected_records"]
