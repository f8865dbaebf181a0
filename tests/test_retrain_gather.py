"""Retraining promises of the README that need no training run: drop-folder exports are gathered, a run gathers
only what closed since the last finished run, rare labels get synthetic top-up records, and `retrain --now` from
the CLI. Real SQLite files, real files in a real drop folder, the real `ticket-triage` command."""
from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from datetime import datetime, timedelta, timezone

from trainer.records import read_records
from trainer.retrain import Retrainer, top_up
from trainer.synthetic import generate
from triage_core.config import load_config
from triage_core.queue import InboundTicket, JobQueue
from triage_core.registry import ModelRegistry
from triage_core.store import Store

from test_cli import EXE


class ClosedSource:
    """A connector-like object listing closed tickets; remembers every `since` it was asked for."""

    def __init__(self, records):
        self.records = records
        self.asked: list[datetime] = []

    def closed_tickets(self, since):
        self.asked.append(since)
        return [r for r in self.records if datetime.fromisoformat(r["closed_at"]) > since]


def records(taxonomy, n, seed, prefix, start=None):
    """Closed tickets an hour apart from `start` (default: 30 days ago, inside the 90-day look-back)."""
    start = start or datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=30)
    out = []
    for i, r in enumerate(generate(taxonomy, n, seed=seed)):
        out.append({"id": f"{prefix}-{i}", "text": r["text"],
                    "labels": {k: v for k, v in r["labels"].items() if k != "summary"},
                    "source": "csv", "closed_at": (start + timedelta(hours=i)).isoformat()})
    return out


def config_for(tmp_path, **retrain):
    return load_config(env={}, overrides={
        "database": {"url": f"sqlite:///{tmp_path / 'triage.db'}"},
        "retrain": {"min_records": 10, "min_holdout": 4, "holdout_fraction": 0.25,
                    "output_dir": str(tmp_path / "runs"), "synthetic_per_label": 0, "threads": 1, **retrain}})


def store_for(config) -> Store:
    store = Store(config["database"]["url"])
    store.upgrade()
    return store


def run_files(tmp_path, report) -> list[dict]:
    folder = tmp_path / "runs" / f"run-{report.id:05d}"
    return read_records(folder / "train.jsonl") + read_records(folder / "test.jsonl")


def test_drop_folder_exports_are_gathered_redacted_and_counted(tmp_path, taxonomy):
    drop = tmp_path / "drop"
    drop.mkdir()
    exported = records(taxonomy, 14, seed=3, prefix="X")
    exported[0]["text"] += " -- reach me at bob.smith@example.org"
    exported[1]["labels"]["category"] = "Plumbing"  # outside the taxonomy: the label is dropped and counted
    (drop / "export-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in exported[:8]))
    (drop / "export-2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in exported[8:]))
    (drop / "notes.txt").write_text("not an export")  # other files are left alone
    config = config_for(tmp_path, drop_folder=str(drop))
    report = Retrainer(config, store_for(config), {}).run(dry_run=True)
    assert report.state == "dry-run"
    assert report.counts["sources"] == {"corrections": 0, "drop_folder": 14}
    assert report.counts["gathered"] == 14 and report.counts["kept"] == 14
    assert report.counts["dropped"]["category label outside the taxonomy"] == 1
    assert report.counts["redacted"]["email"] >= 1
    stored = run_files(tmp_path, report)
    assert sorted(r["id"] for r in stored) == sorted(r["id"] for r in exported)
    assert not any("bob.smith" in r["text"] for r in stored)
    assert next(r for r in stored if r["id"] == "X-0")["labels"] == exported[0]["labels"]


def test_drop_folder_csv_goes_through_the_drop_map(tmp_path, taxonomy):
    drop = tmp_path / "drop"
    drop.mkdir()
    rows = ["title,body,topic_group,ticket_type"]
    for i in range(12):
        rows.append(f"printer {i} jams,paper stuck in tray {i},Hardware,1")
    rows.append("lunch order,who wants pizza,Miscellaneous,1")  # no IT counterpart: its category is dropped
    (drop / "endava.csv").write_text("\n".join(rows) + "\n")
    config = config_for(tmp_path, drop_folder=str(drop), drop_map="maps/endava.yaml")
    report = Retrainer(config, store_for(config), {}).run(dry_run=True)
    assert report.counts["sources"]["drop_folder"] == 13
    stored = run_files(tmp_path, report)
    printers = [r for r in stored if r["text"].startswith("printer")]
    assert len(printers) == 12
    assert all(r["labels"] == {"category": "Hardware", "request_type": "Service Request"} for r in printers)


def test_a_run_gathers_only_what_closed_since_the_last_promotion(tmp_path, taxonomy):
    """The window starts at the last run that promoted a challenger (a kept, failed or dry run consumes
    nothing), else `lookback_days` back."""
    from triage_core.store import RetrainRun

    config = config_for(tmp_path, min_records=1000, lookback_days=30)  # never enough: no training, run is kept
    store = store_for(config)
    now = datetime.now(timezone.utc)
    old = records(taxonomy, 6, seed=1, prefix="OLD", start=now - timedelta(days=3))
    source = ClosedSource(old)

    t0 = datetime.now(timezone.utc)
    dry = Retrainer(config, store, {"jira": source}).run(dry_run=True)
    first = Retrainer(config, store, {"jira": source}).run()
    again = Retrainer(config, store, {"jira": source}).run()
    assert first.state == again.state == "kept" and "not enough data" in first.decision
    # No promotion yet: every run looks back 30 days, so the kept run's tickets are gathered again.
    assert len(source.asked) == 3
    for asked in source.asked:
        assert abs((t0 - timedelta(days=30)) - asked) < timedelta(minutes=1)
    assert dry.counts["sources"]["jira"] == first.counts["sources"]["jira"] == again.counts["sources"]["jira"] == 6

    # A run that promoted its challenger an hour ago, then a correction and a ticket closed since.
    promoted_at = now - timedelta(hours=1)
    with store.session() as s:
        s.add(RetrainRun(state="promoted", owner="instance-2", started_at=promoted_at, finished_at=now,
                         since=now - timedelta(days=30), counts={}, metrics={}, decision="promoted"))
    job = JobQueue(store).submit(InboundTicket(connector="jira", ref="IT-5", event_key="e5",
                                               text="The projector in room 4 shows no picture")).job_id
    rid = store.record_result(job, "jira", "IT-5", {"category": "Hardware", "subcategory": "Monitor / Peripherals"},
                              {}, {"base": "b", "adapter": "a"}, 10)
    store.record_correction("jira", "IT-5", "category", "Hardware", "Workplace", result_id=rid)
    source.records = old + records(taxonomy, 2, seed=9, prefix="NEW", start=datetime.now(timezone.utc))
    second = Retrainer(config, store, {"jira": source}).run()
    assert abs(source.asked[-1] - promoted_at) < timedelta(milliseconds=1)  # since the last promotion
    assert second.counts["since"] == source.asked[-1].isoformat()
    assert second.counts["sources"] == {"jira": 2, "corrections": 1}
    assert sorted(r["id"] for r in run_files(tmp_path, second)) == ["NEW-0", "NEW-1", "jira:IT-5"]


def test_rare_labels_get_synthetic_top_up(taxonomy):
    # Real tickets only about the network: every other category and priority is rare.
    network = [r for r in records(taxonomy, 300, seed=4, prefix="N") if r["labels"]["category"] == "Network"][:20]
    assert len(network) == 20
    train = [{**r, "labels": {k: r["labels"][k] for k in ("category", "priority")}} for r in network]
    extra = top_up(train, taxonomy, per_label=3, minimum=5, seed=1)
    got = Counter((name, value) for r in extra for name, value in r["labels"].items())
    real = Counter((name, value) for r in train for name, value in r["labels"].items())
    for value in taxonomy["category"].values:
        if value != "Network":
            assert got[("category", value)] >= 3, value  # each rare category is topped up...
    rare = [(n, v) for n in ("category", "priority") for v in taxonomy[n].values if real[(n, v)] < 5]
    assert rare
    for key in rare:
        assert got[key] >= 3
    assert all(set(r["labels"]) <= {"category", "priority"} for r in extra)  # only the fields the data labels
    assert all(r["labels"] and r["text"].strip() for r in extra)
    assert top_up(train, taxonomy, per_label=0, minimum=5, seed=1) == []
    assert all(set(r["labels"].items()) & set(rare) for r in extra)  # each extra record is there for a rare label


def test_retrain_now_from_the_cli_records_a_run(tmp_path, taxonomy):
    """`ticket-triage retrain --now` as a user runs it, with too little data: it gathers, reports and keeps the
    champion (the training path itself is test_retrain.py, through the same Retrainer)."""
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records(taxonomy, 5, seed=2, prefix="D")))
    env = {**os.environ, "TRIAGE_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
           "TRIAGE_RETRAIN_OUTPUT_DIR": str(tmp_path / "runs"), "TRIAGE_RETRAIN_DROP_FOLDER": str(drop),
           "TRIAGE_CONNECTORS_ENABLED": "[]"}
    proc = subprocess.run([EXE, "retrain", "--now"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "run 1: kept" in proc.stdout and "not enough data: 5 records" in proc.stdout
    assert "gathered 5 ({'corrections': 0, 'drop_folder': 5})" in proc.stdout
    assert "retrain" in proc.stderr and "stage" in proc.stderr  # the progress bar
    proc = subprocess.run([EXE, "retrain", "--now", "--json"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["id"] == 2 and report["state"] == "kept" and report["counts"]["sources"]["drop_folder"] == 5
    store = Store(env["TRIAGE_DATABASE_URL"])
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql("select id, state from retrain_runs order by id").fetchall()
    assert rows == [(1, "kept"), (2, "kept")]
    assert ModelRegistry(store).champion() is None
