"""Tiny real training runs (a few steps, a handful of records) on the real bundled model."""
from __future__ import annotations

import json
import math

import pytest
from safetensors.torch import load_file

from trainer.evaluate import evaluate, write_report
from trainer.train import TrainSettings, build_examples, length_grouped_batches, train
from triage_core import Triager, load_config, parse_taxonomy, validate_ticket
from triage_core.model import ModelError, check_adapter

RECORDS = [
    {"text": "VPN drops every 5 minutes for the sales team",
     "labels": {"summary": "VPN connection drops", "category": "Network", "subcategory": "VPN", "priority": "High",
                "assignment_group": "Network Operations", "request_type": "Incident"}},
    {"text": "please install visio on my laptop",
     "labels": {"summary": "Install Visio", "category": "Software", "subcategory": "Installation / Upgrade",
                "priority": "Low", "assignment_group": "Desktop Support", "request_type": "Service Request"}},
    {"text": "printer on floor 3 jams on every page",
     "labels": {"summary": "Printer jams on floor 3", "category": "Hardware", "subcategory": "Printer / Scanner",
                "priority": "Medium", "assignment_group": "Hardware Support", "request_type": "Incident"}},
    {"text": "olvide mi contrasena y no puedo entrar",
     "labels": {"summary": "Password reset", "category": "Access", "subcategory": "Password Reset",
                "priority": "Medium", "assignment_group": "Service Desk", "request_type": "Service Request"}},
    {"text": "incomplete record", "labels": {"category": "Network"}},
    {"text": "label outside the taxonomy", "labels": {**{"summary": "x", "category": "Pizza", "subcategory": "VPN",
                                                         "priority": "Low", "assignment_group": "Facilities",
                                                         "request_type": "Incident"}}},
]
INSTRUCTIONS = ("Classify this IT ticket and answer in JSON.", "Route the following service desk ticket.")


@pytest.fixture(scope="module")
def cfg():
    return load_config(env={})


def settings(cfg, **over):
    """Tiny-run settings; records missing a field are skipped unless a test asks for partial labels."""
    return TrainSettings.from_mapping(cfg["train"], **{"max_steps": 3, "batch_size": 2, "learning_rate": 2e-3,
                                                       "save_every": 2, "partial_labels": False, **over})


def test_examples_mask_the_prompt_and_skip_bad_records(triager, cfg):
    # The token-level layout (restricted_loss off): every answer token is a target, the prompt none.
    examples, skipped = build_examples(RECORDS, triager.loaded.tokenizer, triager.taxonomy,
                                       settings(cfg, restricted_loss=False), INSTRUCTIONS)
    assert skipped == 2 and len(examples) == 4
    for e, r in zip(examples, RECORDS, strict=False):
        answer = [t for t in e.labels if t != -100]
        assert answer == triager.codec.encode_answer(r["labels"])
        assert e.input_ids[-len(answer):] == answer
        after_system = len(e.input_ids) - len(triager.codec.prefix_ids)
        assert after_system <= settings(cfg).max_length  # no instruction is longer than the explicit prompt
    partial, skipped = build_examples(RECORDS, triager.loaded.tokenizer, triager.taxonomy,
                                      settings(cfg, partial_labels=True, restricted_loss=False))
    assert skipped == 1 and len(partial) == 5  # the record labelling only a category is trained on...
    trained = triager.loaded.tokenizer.decode([t for t in partial[4].labels if t != -100])
    assert "Network" in trained and "summary" in trained and "Incident" not in trained  # ...its category only
    batches = length_grouped_batches(examples, 2, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(4))
    assert batches == length_grouped_batches(examples, 2, seed=1)


def test_tiny_lora_run_changes_the_adapter_and_writes_metadata(tmp_path, cfg, triager):
    out = tmp_path / "adapter"
    result = train(RECORDS, triager.taxonomy, cfg["model"], settings(cfg), out, name="tiny", version="1",
                   instructions=INSTRUCTIONS, progress=False)
    assert result.steps == 3 and result.examples == 4 and result.skipped == 2
    weights = load_file(str(out / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().max()) > 0 for v in lora_b)  # LoRA B starts at zero: training moved it
    meta = json.loads((out / "triage_adapter.json").read_text())
    assert meta["taxonomy_hash"] == triager.taxonomy.label_hash
    assert meta["base"] == "smollm2-135m-instruct"
    assert meta["data"]["records"] == 6 and meta["data"]["examples"] == 4 and len(meta["data"]["hash"]) == 16
    assert meta["hyperparameters"]["rank"] == cfg["train"]["rank"]
    assert meta["training"]["steps"] == 3 and math.isfinite(meta["training"]["final_loss"])
    assert (out / "checkpoints" / "step-2" / "trainer_state.pt").is_file()
    assert list((out / "tensorboard").iterdir())

    tuned = Triager.from_config(cfg, adapter=str(out))
    assert tuned.model_info["adapter"] == "tiny@1"
    result = tuned.triage("The VPN keeps dropping")
    validate_ticket(tuned.taxonomy, result.ticket)
    # Three steps on four tickets moved probability mass toward their gold labels, compared with the base model
    # the run started from (no adapter).
    def gold_mass(t):
        out = t.triage_many([r["text"] for r in RECORDS[:4]])
        return sum(res.distributions[name][r["labels"][name]] for res, r in zip(out, RECORDS[:4], strict=True)
                   for name in ("category", "priority", "assignment_group", "request_type"))
    base = Triager.from_config(load_config(env={}, overrides={"model": {"adapter": None}}))
    assert base.model_info["adapter"] is None
    before, after = gold_mass(base), gold_mass(tuned)
    assert after > before, (before, after)
    del base

    # Resume from the step-2 checkpoint to a longer run: it continues instead of starting over.
    resumed = train(RECORDS, triager.taxonomy, cfg["model"], settings(cfg, max_steps=4), out, name="tiny",
                    version="2", instructions=INSTRUCTIONS, progress=False, resume=True)
    assert resumed.steps == 4


@pytest.mark.slow
def test_tiny_qlora_run_on_cpu_saves_an_adapter_that_triages(tmp_path, cfg):
    out = tmp_path / "qlora"
    train(RECORDS, parse_taxonomy_default(cfg), cfg["model"], settings(cfg, qlora=True, max_steps=2), out,
          instructions=INSTRUCTIONS, progress=False)
    meta = json.loads((out / "triage_adapter.json").read_text())
    assert meta["hyperparameters"]["qlora"] is True
    for load_in_4bit in (True, False):  # served 4-bit, or merged into the bf16 base
        c = load_config(env={"TRIAGE_MODEL_LOAD_IN_4BIT": str(load_in_4bit).lower()})
        tuned = Triager.from_config(c, adapter=str(out))
        validate_ticket(tuned.taxonomy, tuned.triage("Outlook will not open my shared mailbox").ticket)


def parse_taxonomy_default(cfg):
    from triage_core import load_taxonomy

    return load_taxonomy(cfg.taxonomy_path)


def test_adapter_for_another_taxonomy_is_refused(tmp_path, cfg, triager):
    out = tmp_path / "other"
    other = parse_taxonomy({"fields": {"assignment_group": {"values": ["Team A", "Team B"]}}})
    recs = [{"text": "vpn down", "labels": {"assignment_group": "Team A"}},
            {"text": "printer", "labels": {"assignment_group": "Team B"}}]
    train(recs, other, cfg["model"], settings(cfg, max_steps=1), out, instructions=INSTRUCTIONS, progress=False)
    check_adapter(out, other.label_hash)  # fine for its own taxonomy
    with pytest.raises(ModelError, match="trained for taxonomy"):
        Triager.from_config(cfg, adapter=str(out))


def test_eval_on_a_small_file_writes_metrics_and_pngs(tmp_path, triager):
    records = [r for r in RECORDS[:4]]
    metrics, preds = evaluate(triager, records, train=records, batch_size=2, data_name="tiny")
    fields = list(metrics["model"]["fields"])
    assert fields == ["category", "subcategory", "priority", "assignment_group", "request_type"]
    assert metrics["model"]["validity_pct"] == 100.0
    # the predictions scored are the model's, in order (same batches of two as evaluate, so bit-identical)
    direct = [d for i in range(0, 4, 2) for d in triager.triage_many([r["text"] for r in records[i:i + 2]])]
    assert preds.labels == [d.ticket for d in direct]
    assert preds.confidence == [d.confidence for d in direct]
    for name in fields:
        m = metrics["model"]["fields"][name]
        gold = [r["labels"][name] for r in records]
        got = [p[name] for p in preds.labels]
        right = [g == o for g, o in zip(gold, got, strict=True)]
        assert m["accuracy"] == pytest.approx(sum(right) / len(right), abs=1e-4)
        f1s = []  # macro-F1 by hand, over the classes in the gold labels
        for c in sorted(set(gold)):
            tp = sum(g == c and o == c for g, o in zip(gold, got, strict=True))
            fp = sum(g != c and o == c for g, o in zip(gold, got, strict=True))
            fn = sum(g == c and o != c for g, o in zip(gold, got, strict=True))
            f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
        assert m["macro_f1"] == pytest.approx(sum(f1s) / len(f1s), abs=1e-4)
        conf = [d.confidence[name] for d in direct]
        for point in m["coverage_curve"]:
            kept = [ok for ok, p in zip(right, conf, strict=True) if p >= point["threshold"]]
            assert point["coverage"] == pytest.approx(len(kept) / len(right), abs=1e-4)
            assert point["accuracy"] == (pytest.approx(sum(kept) / len(kept), abs=1e-4) if kept else None)
        assert m["coverage_curve"][0]["coverage"] == 1.0
        assert metrics["baseline"]["fields"][name]["accuracy"] == 1.0  # trained on the same four records
    paths = write_report(tmp_path / "report", metrics, records, preds, fields)
    names = {p.name for p in paths}
    assert {"metrics.json", "report.md", "coverage_accuracy.png", "confusion_category.png"} <= names
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "baseline" in (tmp_path / "report" / "report.md").read_text()
