"""The offline loop as a user runs it: generate -> train -> eval, each a real `ticket-triage` subprocess."""
from __future__ import annotations

import json

import pytest

from test_cli import run


@pytest.mark.slow
def test_generate_train_eval_loop(tmp_path):
    data = tmp_path / "data"
    code, out, err = run("generate", "--n", "60", "--seed", "5", "--out", str(data), "--json")
    assert code == 0, err
    counts = json.loads(out)
    assert sum(counts["counts"].values()) == 60

    adapter = tmp_path / "adapter"
    code, out, err = run("train", "--data", str(data / "train.jsonl"), "--val", str(data / "val.jsonl"),
                         "--out", str(adapter), "--max-steps", "2", "--batch-size", "2", "--json",
                         env={"TRIAGE_TRAIN_EVAL_LIMIT": "4"})
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["steps"] == 2
    assert summary["metrics"]["val"]["validity_pct"] == 100.0
    meta = json.loads((adapter / "triage_adapter.json").read_text())
    assert meta["metrics"]["val"]["n"] == 4
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = EventAccumulator(str(adapter / "tensorboard"))
    logs.Reload()
    tags = logs.Tags()["scalars"]
    assert {"train/loss", "train/lr", "eval/mean_accuracy", "eval/category/macro_f1"} <= set(tags)

    report = tmp_path / "report"
    code, out, err = run("eval", "--data", str(data / "test.jsonl"), "--train", str(data / "train.jsonl"),
                         "--adapter", str(adapter), "--limit", "6", "--report", str(report), "--json")
    assert code == 0, err
    metrics = json.loads(out.splitlines()[-1])
    assert metrics["model"]["validity_pct"] == 100.0
    assert set(metrics["baseline"]["fields"]) == set(metrics["model"]["fields"])
    assert (report / "metrics.json").is_file() and (report / "coverage_accuracy.png").is_file()
    assert (report / "confusion_priority.png").is_file()


def test_eval_of_a_csv_needs_a_map(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("title,topic\nvpn down,Network\n")
    code, _, err = run("eval", "--data", str(path))
    assert code != 0 and "needs --map-file" in err


def test_train_refuses_records_that_do_not_fit_the_taxonomy(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "vpn", "labels": {"category": "Pizza"}}) + "\n")
    code, _, err = run("train", "--data", str(path), "--out", str(tmp_path / "a"), "--max-steps", "1")
    assert code != 0 and "no usable training records" in err
