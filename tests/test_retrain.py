"""Retraining: gathering and redaction, the time-ordered hold-out, the decision, the lock, and a real tiny run
(child process training + evaluation of both models) that a live daemon hot-reloads without losing a job."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests

from trainer.records import read_records
from trainer.retrain import Retrainer, clean, corrected_records, decide, holdout_split
from trainer.synthetic import generate
from triage_core.config import load_config
from triage_core.queue import InboundTicket, JobQueue
from triage_core.registry import DbLock, LockHeld, ModelRegistry
from triage_core.store import Store

from fake_jira import FakeJira
from test_jira import ENV as JIRA_ENV, FIELD_MAP, settings as jira_settings


class ClosedSource:
    """A connector-like object listing closed tickets (the vendor connectors' ClosedTicketSource shape)."""

    def __init__(self, records):
        self.records = records
        self.asked = []

    def closed_tickets(self, since):
        self.asked.append(since)
        return list(self.records)


def closed(taxonomy, n=24, seed=5):
    # Relative to now: the fake Jira applies the look-back window (retrain.lookback_days, 90) as Jira would.
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=30)
    out = []
    for i, r in enumerate(generate(taxonomy, n, seed=seed)):
        labels = {k: v for k, v in r["labels"].items() if k != "summary"}
        out.append({"id": f"J-{i}", "text": r["text"], "labels": labels, "source": "jira",
                    "closed_at": (start + timedelta(hours=i)).isoformat()})
    out[0]["text"] += "\nCall me at +1 (415) 555-0100 or mail jane.doe@example.com, my PC is 10.20.30.40"
    out[1]["labels"]["category"] = "Plumbing"  # outside the taxonomy
    out[2] = {**out[3], "id": "J-dup"}  # a duplicate text
    return out


def settings(tmp_path, url=None, **retrain):
    return load_config(env={}, overrides={
        "database": {"url": url or f"sqlite:///{tmp_path / 'triage.db'}"},
        "train": {"batch_size": 2, "max_length": 256},
        "retrain": {"max_steps": 2, "min_records": 10, "min_holdout": 4, "holdout_fraction": 0.25,
                    "output_dir": str(tmp_path / "runs"), "synthetic_per_label": 0, "threads": 1, **retrain}})


def test_clean_redacts_drops_and_counts(taxonomy):
    got = clean(closed(taxonomy), taxonomy)
    assert got.counts["dropped"] == {"category label outside the taxonomy": 1, "duplicate": 1,
                                     "subcategory without its category": 1}
    text = next(r["text"] for r in got.records if r["id"] == "J-0")
    assert "555-0100" not in text and "jane.doe" not in text and "10.20.30.40" not in text
    assert "[phone]" in text and "[email]" in text and "[ip]" in text
    assert all(got.counts["redacted"][k] >= 1 for k in ("email", "phone", "ip"))
    assert not any("@example.com" in r["text"] for r in got.records)
    bad = next(r for r in got.records if r["id"] == "J-1")["labels"]
    assert "category" not in bad  # the bad label is dropped, the others kept
    for r in got.records:
        for name, value in r["labels"].items():
            assert value in taxonomy[name].values


def test_holdout_is_the_newest_tickets():
    records = [{"text": str(i), "labels": {"x": "y"}, "closed_at": f"2026-10-{i + 1:02d}"} for i in range(20)]
    train, test = holdout_split(list(reversed(records)), 0.25, 4)
    assert len(test) == 5 and max(r["closed_at"] for r in train) < min(r["closed_at"] for r in test)


def test_decide_keeps_a_worse_challenger():
    champ = {"validity_pct": 100.0, "fields": {"category": {"macro_f1": 0.60}, "priority": {"macro_f1": 0.40}}}
    better = {"validity_pct": 100.0, "fields": {"category": {"macro_f1": 0.65}, "priority": {"macro_f1": 0.39}}}
    worse = {"validity_pct": 100.0, "fields": {"category": {"macro_f1": 0.70}, "priority": {"macro_f1": 0.30}}}
    invalid = {"validity_pct": 98.0, "fields": better["fields"]}
    assert decide(champ, better, 0.02)[0]
    ok, why = decide(champ, worse, 0.02)
    assert not ok and "priority macro-F1 0.300 < champion 0.400" in why
    assert not decide(champ, invalid, 0.02)[0]


def test_corrections_become_training_records(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    store.upgrade()
    queue = JobQueue(store)
    job = queue.submit(InboundTicket(connector="jira", ref="IT-7", event_key="e1",
                                     text="Printer on floor 2 jams on every page")).job_id
    rid = store.record_result(job, "jira", "IT-7", {"summary": "Printer jams", "category": "Hardware",
                                                     "subcategory": "Printer / Scanner", "priority": "Low"},
                              {}, {"base": "b", "adapter": "a"}, 10)
    store.record_correction("jira", "IT-7", "priority", "Low", "High", result_id=rid)
    records = corrected_records(store, None)
    assert records == [{"id": "jira:IT-7", "text": "Printer on floor 2 jams on every page",
                        "labels": {"category": "Hardware", "subcategory": "Printer / Scanner", "priority": "High"},
                        "source": "correction", "closed_at": records[0]["closed_at"]}]
    assert corrected_records(store, datetime.now(timezone.utc) + timedelta(seconds=5)) == []


def test_dry_run_reports_and_stores_redacted_data_and_the_lock_stops_a_second_run(tmp_path, taxonomy, db_url):
    config = settings(tmp_path, url=db_url)
    store = Store(config["database"]["url"])
    store.upgrade()
    source = ClosedSource(closed(taxonomy))
    report = Retrainer(config, store, {"jira": source}).run(dry_run=True)
    assert report.state == "dry-run" and report.counts["sources"] == {"jira": 24, "corrections": 0}
    assert report.counts["kept"] == 23 and report.counts["train"] + report.counts["test"] == 23
    stored = (tmp_path / "runs" / f"run-{report.id:05d}" / "train.jsonl").read_text() + \
        (tmp_path / "runs" / f"run-{report.id:05d}" / "test.jsonl").read_text()
    assert "jane.doe@example.com" not in stored and "[email]" in stored
    other = DbLock(Store(config["database"]["url"]), "retrain", "instance-2")
    assert other.acquire()  # instance 2 is running a retrain...
    with pytest.raises(LockHeld, match="instance-2"):
        Retrainer(config, store, {"jira": source}, owner="instance-1").run(dry_run=True)
    other.release()


def jira_issue(record: dict, n: int) -> dict:
    """A closed Jira issue (search/jql shape) carrying a synthetic ticket and its labels as Jira values."""
    first, _, rest = record["text"].partition("\n")
    labels = record["labels"]
    return {"id": str(30000 + n), "key": f"IT-{n}", "fields": {
        "summary": first[:200], "description": {"type": "doc", "version": 1, "content": [
            {"type": "paragraph", "content": [{"type": "text", "text": rest or first}]}]},
        "resolutiondate": record["closed_at"].replace("+00:00", ".000+0000"),
        "priority": {"name": FIELD_MAP["priority"][labels["priority"]], "id": "3"},
        "customfield_10050": {"value": labels["category"], "id": str(100 + n),
                              "child": {"value": labels["subcategory"], "id": str(200 + n)}},
        "customfield_10060": {"value": labels["assignment_group"], "id": "7"},
        "customfield_10070": {"value": FIELD_MAP["request_type"][labels["request_type"]], "id": "9"},
        "labels": [], "components": [], "status": {"name": "Done"}}}


@pytest.fixture
def jira(taxonomy):
    """A fake Jira holding closed tickets (one with personal data in it) and the connector pointed at it."""
    from connectors.jira import from_config

    fake = FakeJira(custom_fields=("customfield_10050", "customfield_10060", "customfield_10070"))
    records = closed(taxonomy)
    fake.closed = [jira_issue(r, i) for i, r in enumerate(records) if r["labels"]["category"] in
                   taxonomy["category"].values]
    conn = from_config(jira_settings(fake, page_size=10), JIRA_ENV)
    conn.check_taxonomy(taxonomy)
    yield fake, conn
    fake.close()


def record_correction(store: Store) -> None:
    """A ticket the daemon triaged and a human corrected: a training record with the human's value."""
    job = JobQueue(store).submit(InboundTicket(connector="jira", ref="IT-900", event_key="e900",
                                               text="The projector in room 4 shows no picture")).job_id
    rid = store.record_result(job, "jira", "IT-900", {"summary": "Projector", "category": "Hardware",
                                                      "subcategory": "Monitor / Peripherals", "priority": "Low"},
                              {}, {"base": "b", "adapter": "a"}, 10)
    store.record_correction("jira", "IT-900", "category", "Hardware", "Workplace", result_id=rid)
    store.record_correction("jira", "IT-900", "subcategory", "Monitor / Peripherals", "Meeting Room",
                            result_id=rid)


SECRET = "s3cret"


def post(daemon, ref, text, callback_url=None):
    payload = {"id": ref, "text": text, **({"callback_url": callback_url} if callback_url else {})}
    body = json.dumps(payload).encode()
    ts = str(int(time.time()))
    sig = "sha256=" + hmac.new(SECRET.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    r = requests.post(daemon.url + "/webhooks/generic", data=body, timeout=30,
                      headers={"X-Triage-Signature": sig, "X-Triage-Timestamp": ts,
                               "Content-Type": "application/json"})
    assert r.status_code == 202, r.text


def wait_serving(daemon, model_id, timeout=120):
    deadline = time.time() + timeout
    while daemon.app.extensions["triage"].watcher.serving != model_id:
        assert time.time() < deadline, f"the daemon did not reload model {model_id}"
        time.sleep(0.05)


@pytest.mark.slow
def test_run_trains_a_challenger_promotes_it_and_a_live_daemon_reloads_without_losing_a_job(
        tmp_path, taxonomy, live_daemon):
    from test_daemon import HOLD, Callback

    config = settings(tmp_path, margin=1.0, synthetic_per_label=2)  # any challenger with 100% validity passes
    # The write-back of ticket A is held open while the new champion is swapped in: A is in flight (triaged by
    # the old model, its write-back not answered) and B and C wait in the queue behind it during the swap.
    callback = Callback(script=[(200, {})] * 3 + [HOLD])
    daemon = live_daemon({"model": {"reload_seconds": 0.2},
                          "connectors": {"enabled": ["generic"], "settings": {"generic": {"timeout": 300}}}},
                         {"TRIAGE_GENERIC_SECRET": SECRET})
    texts = ["VPN drops every few minutes", "Please install Visio on my laptop", "Outlook cannot send mail",
             "Badge reader at the main door is broken", "Need access to the finance share", "Printer jams",
             "The projector in room 2 flickers"]
    try:
        for i, t in enumerate(texts[:3]):
            post(daemon, f"T-{i}", t, callback.url)

        def stage(name):
            if name == "decide":  # training is over; the promotion comes next
                post(daemon, "T-3", texts[3], callback.url)
                assert callback.hung.wait(120), "ticket A's write-back never started"
                post(daemon, "T-4", texts[4], callback.url)
                post(daemon, "T-5", texts[5], callback.url)

        source = ClosedSource(closed(taxonomy))
        report = Retrainer(config, daemon.store, {"jira": source}, stage=stage).run(timeout=900)
        assert report.state == "promoted", report.decision
        assert set(report.metrics) == {"champion", "challenger"}
        assert report.metrics["challenger"]["validity_pct"] == 100.0
        registry = ModelRegistry(daemon.store)
        champion = registry.champion()
        assert champion.tag == report.challenger == f"{taxonomy.name}@r{report.id}"
        statuses = {m.tag: m.status for m in registry.list()}
        assert statuses == {champion.tag: "champion", "default-it@2": "retired"}  # the configured adapter, recorded
        wait_serving(daemon, champion.id)
        depth = daemon.ctx.queue.depth()
        assert depth["running"] == 1 and depth["queued"] == 2, depth  # A in flight, B and C queued: swapped now
        callback.release()
        daemon.wait_idle(done=6)
        adapters = {}
        for i in range(6):
            history = daemon.store.ticket_history("generic", f"T-{i}")["history"]
            assert len(history["results"]) == 1, i  # triaged exactly once
            assert [w["outcome"] for w in history["writebacks"]] == ["applied"], i  # written back exactly once
            adapters[i] = history["results"][0]["model_adapter"]
        assert adapters[3] == "default-it@2"  # A finished on the model its batch started with
        assert {adapters[4], adapters[5]} == {champion.tag}  # the jobs queued during the swap: the new champion
        assert sorted(callback.ids()) == [f"T-{i}" for i in range(6)]

        # The synthetic top-up for rare labels ran and its records went into the training file.
        run = read_records(tmp_path / "runs" / f"run-{report.id:05d}" / "train.jsonl")
        assert report.counts["synthetic"] > 0
        assert sum(r.get("source") == "synthetic" for r in run) == report.counts["synthetic"]
        assert all("jane.doe" not in r["text"] for r in run)
        # The child trained with retrain.threads torch threads, at retrain.nice below the caller's priority.
        child = report.counts["child"]
        assert child["threads"] == config["retrain"]["threads"] == 1
        assert child["nice"] == min(19, os.nice(0) + config["retrain"]["nice"])

        # Rollback returns to the previous champion (the configured adapter), and the daemon follows.
        back = registry.rollback()
        assert back.tag == "default-it@2" and registry.champion().id == back.id
        assert {m.tag: m.status for m in registry.list()}[champion.tag] == "retired"
        wait_serving(daemon, back.id)
        post(daemon, "T-6", texts[6], callback.url)
        daemon.wait_idle(done=7)
        history = daemon.store.ticket_history("generic", "T-6")["history"]
        assert [r["model_adapter"] for r in history["results"]] == ["default-it@2"]
    finally:
        callback.close()


@pytest.mark.slow
def test_a_challenger_that_must_beat_the_champion_by_a_mile_is_kept(tmp_path, taxonomy, jira):
    fake, conn = jira
    config = settings(tmp_path, margin=-1.0)  # must gain a full point of macro-F1 on every field: impossible
    store = Store(config["database"]["url"])
    store.upgrade()
    record_correction(store)
    report = Retrainer(config, store, {"jira": conn}).run(timeout=900)
    assert report.counts["sources"] == {"jira": len(fake.closed), "corrections": 1}
    assert len(fake.calls("POST", "/search/jql$")) == 3  # paged through the fake Jira
    assert report.state == "kept" and "macro-F1" in report.decision
    assert set(report.metrics) == {"champion", "challenger"}
    stored = (tmp_path / "runs" / f"run-{report.id:05d}" / "train.jsonl").read_text() + \
        (tmp_path / "runs" / f"run-{report.id:05d}" / "test.jsonl").read_text()
    assert "jane.doe@example.com" not in stored and "[email]" in stored
    corrected = [json.loads(line) for line in stored.splitlines() if "projector in room 4" in line]
    assert corrected[0]["labels"]["category"] == "Workplace" and corrected[0]["source"] == "correction"
    registry = ModelRegistry(store)
    assert registry.champion() is None  # the configured adapter keeps serving
    assert [m.status for m in registry.list()] == ["challenger"]


def test_nightly_job_is_scheduled_only_when_enabled(tmp_path):
    from apscheduler.schedulers.background import BackgroundScheduler

    from connectors.daemon import schedule_retraining

    store = Store(f"sqlite:///{tmp_path / 'n.db'}")
    scheduler = BackgroundScheduler()
    assert schedule_retraining(scheduler, settings(tmp_path), store, {}) is None
    assert scheduler.get_jobs() == []
    scheduler.start()
    try:
        job = schedule_retraining(scheduler, settings(tmp_path, enabled=True, cron="30 3 * * 1-5"), store, {})
        assert scheduler.get_job("retrain") is job
        assert job.max_instances == 1 and job.coalesce
        assert str(job.trigger) == "cron[month='*', day='*', day_of_week='1-5', hour='3', minute='30']"
        assert job.next_run_time.hour == 3 and job.next_run_time.minute == 30
    finally:
        scheduler.shutdown(wait=False)
