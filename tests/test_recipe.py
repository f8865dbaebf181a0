"""The accuracy recipe: restricted loss, lexical expert, calibrated pooling, and adapters without them."""
from __future__ import annotations

import json
import math
import random

import pytest

from trainer.calibrate import HeldOut, expected_calibration_error, fit_view, threshold_for_precision
from trainer.recipe import calibration_split, train_adapter
from trainer.train import IGNORE, TrainSettings, build_examples, data_hash, train
from triage_core import Triager, load_config, parse_taxonomy
from triage_core.combine import Combination, FieldParams, pool
from triage_core.lexical import ExpertError, LexicalExpert
from triage_core.model import ModelError, builtin_base_dir, load_model
from triage_core.prompt import PromptCodec

#: A small routing taxonomy with opaque, prefix-sharing group names (GRP_1 is a prefix of GRP_12).
TAXONOMY = parse_taxonomy({"name": "routing", "fields": {
    "assignment_group": {"values": ["GRP_1", "GRP_12", "GRP_7"]},
    "priority": {"values": ["High", "Low"]},
}})
TOPICS = {
    "GRP_1": ["vpn tunnel drops on the firewall", "router port flapping in the data centre",
              "wifi access point down on floor two", "switch uplink lost packets"],
    "GRP_12": ["invoice total is wrong for march", "refund for duplicate payment", "billing address on the invoice",
               "credit card charged twice"],
    "GRP_7": ["laptop screen cracked after a fall", "printer toner empty again", "docking station no display",
              "keyboard keys stuck on new laptop"],
}


def records(n_per: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for group, texts in TOPICS.items():
        for _ in range(n_per):
            text = f"{rng.choice(texts)} ticket {rng.randint(1, 999)} {rng.choice(['please help', 'asap', ''])}"
            out.append({"text": text, "labels": {"assignment_group": group,
                                                 "priority": "High" if "down" in text or "twice" in text else "Low"}})
    rng.shuffle(out)
    return out


@pytest.fixture(scope="module")
def cfg():
    return load_config(env={})


def tokenizer(cfg):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(builtin_base_dir(cfg["model"]["cache_dir"])), local_files_only=True)


def test_restricted_loss_branches_among_the_allowed_values_only(cfg):
    tok = tokenizer(cfg)
    settings = TrainSettings.from_mapping(cfg["train"])
    examples, skipped = build_examples(records(2), tok, TAXONOMY, settings)
    assert skipped == 0
    for e in examples:
        # Only text fields carry token-level targets: enum values are trained among their allowed values.
        assert all(t == IGNORE for t in e.labels)  # no text field here: nothing is trained token by token
        for c in e.choices:
            assert len(c.tokens) == len(set(c.tokens)) >= 2  # a real choice between distinct continuations
            assert e.input_ids[c.position + 1] == c.tokens[c.gold]  # teacher-forced: the gold path is the input
            # logit adjustment: each branch's offset is tau * log of its prior mass, which sums to one
            assert math.isclose(sum(math.exp(o) for o in c.offsets), 1.0, rel_tol=1e-6)
        assert len(e.choices) >= 2  # both fields are chosen somewhere along their gold values
    with_summary = parse_taxonomy({"name": "s", "fields": {"summary": {"type": "text"},
                                                           "assignment_group": {"values": list(TOPICS)}}})
    labelled = [{"text": r["text"], "labels": {"summary": "Network trouble", **r["labels"]}} for r in records(1)]
    for e in build_examples(labelled, tok, with_summary, settings)[0]:
        assert tok.decode([t for t in e.labels if t != IGNORE]) == "Network trouble"  # the text field's tokens
        assert len(e.choices) >= 1
    # GRP_1 vs GRP_12 share their leading tokens: they part where GRP_1 closes and GRP_12 goes on.
    codec = PromptCodec(tok, TAXONOMY)
    close = codec.encode(codec.punctuation(1))[0]
    by_group = {r["labels"]["assignment_group"]: e for e, r in zip(examples, records(2), strict=True)}
    assert any(c.tokens[c.gold] == close for c in by_group["GRP_1"].choices)
    assert any(close in c.tokens and c.tokens[c.gold] != close for c in by_group["GRP_12"].choices)
    assert not any(close in c.tokens for c in by_group["GRP_7"].choices[:-1])  # GRP_7 parts at its digit


@pytest.mark.slow
def test_restricted_loss_moves_mass_toward_the_gold_value(cfg, tmp_path):
    data = records(4)
    settings = TrainSettings.from_mapping(cfg["train"], max_steps=16, batch_size=4, learning_rate=5e-3)
    train(data, TAXONOMY, cfg["model"], settings, tmp_path / "ad", progress=False, tensorboard=False)
    base = Triager(load_model(cfg["model"], adapter=None), TAXONOMY)
    tuned = Triager(load_model(cfg["model"], adapter=tmp_path / "ad", taxonomy_hash=TAXONOMY.label_hash), TAXONOMY)
    texts = [r["text"] for r in data]
    before = base.triage_many(texts)
    after = tuned.triage_many(texts)
    gold = [r["labels"]["assignment_group"] for r in data]
    p_before = [b.distributions["assignment_group"][g] for b, g in zip(before, gold, strict=True)]
    p_after = [a.distributions["assignment_group"][g] for a, g in zip(after, gold, strict=True)]
    mean_before, mean_after = sum(p_before) / len(p_before), sum(p_after) / len(p_after)
    assert mean_after > mean_before + 0.08, (p_before, p_after)
    assert mean_after > 0.4  # above the 1/3 of three equally likely groups: the mass went to the gold one


def test_lexical_expert_round_trips_and_refuses_another_taxonomy(tmp_path):
    data = records(6)
    expert = LexicalExpert.fit([r["text"] for r in data], [r["labels"] for r in data],
                               ["assignment_group", "priority"], TAXONOMY.label_hash)
    expert.save(tmp_path)
    assert not list(tmp_path.glob("*.pkl")) and json.loads((tmp_path / "lexical.json").read_text())
    loaded = LexicalExpert.load(tmp_path, TAXONOMY.label_hash)
    probe = ["the vpn tunnel is down", "refund the duplicate payment on this invoice", "printer toner empty"]
    a, b = expert.predict(probe), loaded.predict(probe)
    for x, y in zip(a, b, strict=True):
        for name in x:
            assert x[name] == pytest.approx(y[name], abs=1e-6)
    assert [max(d["assignment_group"], key=d["assignment_group"].get) for d in b] == ["GRP_1", "GRP_12", "GRP_7"]
    with pytest.raises(ExpertError, match="fitted for taxonomy"):
        LexicalExpert.load(tmp_path, "another-hash")
    assert LexicalExpert.load(tmp_path / "nothing-here", TAXONOMY.label_hash) is None


def test_pooling_restricts_to_allowed_values_and_corrects_for_the_prior():
    lm = {"A": 0.5, "B": 0.3, "C": 0.2}
    lex = {"A": 0.2, "B": 0.7, "C": 0.1}
    prior = {"A": 0.8, "B": 0.1, "C": 0.1}
    dist, choice = pool(FieldParams(a=1.0, b=0.0), ["A", "B"], lm, lex, prior)
    assert set(dist) == {"A", "B"} and choice == "A" and dist["A"] == pytest.approx(0.625)
    dist, choice = pool(FieldParams(a=1.0, b=1.0), ["A", "B", "C"], lm, lex, prior)
    assert choice == "B" and sum(dist.values()) == pytest.approx(1.0)
    # The decision correction changes the choice, never the reported distribution.
    d0, c0 = pool(FieldParams(a=1.0, c=1.0), ["A", "B"], lm, lex, prior)
    d1, c1 = pool(FieldParams(a=1.0, c=1.0, tau=2.0), ["A", "B"], lm, lex, prior)
    assert (c0, c1) == ("A", "B") and d0 == d1


def test_fit_view_learns_to_trust_the_informative_source():
    rng = random.Random(3)
    allowed, lm, lex, gold = [], [], [], []
    for _ in range(200):
        g = rng.choice("ABC")
        good = {v: (0.8 if v == g else 0.1) for v in "ABC"}
        noise = {v: rng.random() + 0.01 for v in "ABC"}
        allowed.append("ABC")
        lm.append(noise)
        lex.append(good)
        gold.append(g)
    params = fit_view(HeldOut(allowed, lm, lex, gold), {v: 1 / 3 for v in "ABC"}, "combined")
    assert params.b > 3 * params.a
    only_lm = fit_view(HeldOut(allowed, lm, lex, gold), {v: 1 / 3 for v in "ABC"}, "lm")
    assert only_lm.b == 0.0 and only_lm.a < 0.5  # an uninformative source is flattened toward the prior


def test_calibration_figures():
    assert expected_calibration_error([True] * 9 + [False], [0.9] * 10) == pytest.approx(0.0)
    assert expected_calibration_error([True, False], [0.95, 0.95]) == pytest.approx(0.45)
    correct = [True, True, True, True, False, True, False, False]
    conf = [0.99, 0.97, 0.95, 0.9, 0.85, 0.8, 0.6, 0.5]
    assert threshold_for_precision(correct, conf, 0.95) == (0.9, 0.5)
    assert threshold_for_precision([False, False], [0.9, 0.8], 0.9) == (None, 0.0)


def test_calibration_split_holds_out_a_bounded_share():
    fit, cal = calibration_split(1000, seed=1)
    assert len(cal) == 150 and not set(fit) & set(cal) and sorted(fit + cal) == list(range(1000))
    assert calibration_split(50, seed=1) == (list(range(50)), [])
    assert len(calibration_split(5000, seed=1)[1]) == 300


@pytest.mark.slow
def test_pooling_is_fitted_on_the_held_out_fold_of_the_training_records_only(cfg, tmp_path):
    data = records(30, seed=5)  # 90 records: 30 held out
    test = records(5, seed=99)
    settings = TrainSettings.from_mapping(cfg["train"], max_steps=2, batch_size=4)
    result = train_adapter(data, TAXONOMY, cfg["model"], settings, tmp_path / "ad", progress=False,
                           tensorboard=False)
    fit_idx, cal_idx = calibration_split(len(data), settings.seed)
    assert result.calibration_ids == cal_idx and len(cal_idx) == 30
    meta = json.loads((tmp_path / "ad" / "triage_adapter.json").read_text())
    # The LM learnt from the fit part only; the calibration fold never reached its training.
    assert meta["data"]["hash"] == data_hash([data[i] for i in fit_idx])
    assert meta["data"]["records"] == len(fit_idx)
    assert meta["recipe"]["calibration_records"] == 30 and meta["recipe"]["lexical_expert"]
    # The stored pooling is exactly what fitting on that fold gives: refit it by hand and compare.
    lm_only = Triager(load_model(cfg["model"], adapter=tmp_path / "ad", taxonomy_hash=TAXONOMY.label_hash),
                      TAXONOMY, use_expert=False)
    cal = [data[i] for i in cal_idx]
    fitted_expert = LexicalExpert.fit([data[i]["text"] for i in fit_idx], [data[i]["labels"] for i in fit_idx],
                                      ["assignment_group", "priority"], TAXONOMY.label_hash)
    lm = lm_only.triage_many([r["text"] for r in cal])
    lex = fitted_expert.predict([r["text"] for r in cal])
    stored = Combination.load(tmp_path / "ad")
    held = HeldOut([TAXONOMY["assignment_group"].values] * len(cal), [x.distributions["assignment_group"] for x in lm],
                   [x["assignment_group"] for x in lex], [r["labels"]["assignment_group"] for r in cal])
    refit = fit_view(held, stored.priors["assignment_group"], "combined")
    got = stored.views["combined"]["assignment_group"]
    # Equal up to the optimiser's tolerance (the two scorings batch the fold alike, but floats differ a little).
    assert (got.a, got.b, got.c, got.tau) == pytest.approx((refit.a, refit.b, refit.c, refit.tau), abs=1e-3)
    # And the pooled model triages the unseen test tickets with calibrated distributions over allowed values.
    full = Triager(load_model(cfg["model"], adapter=tmp_path / "ad", taxonomy_hash=TAXONOMY.label_hash), TAXONOMY)
    assert full.expert is not None
    for res in full.triage_many([r["text"] for r in test]):
        assert set(res.distributions["assignment_group"]) == set(TAXONOMY["assignment_group"].values)
        assert set(res.views) == {"lm", "lexical"}
        assert res.confidence["assignment_group"] == res.distributions["assignment_group"][
            res.ticket["assignment_group"]]


@pytest.mark.slow
def test_adapter_without_an_expert_triages_with_the_lm_alone(cfg, tmp_path):
    import shutil

    # An adapter from before the recipe: the LoRA weights and metadata only, no lexical.*, no combination.json.
    adapter = tmp_path / "old"
    adapter.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors", "triage_adapter.json"):
        shutil.copy(cfg.path(cfg["model"]["adapter"]) / name, adapter / name)
    old = Triager.from_config(cfg, adapter=adapter)
    assert old.expert is None and old.combination.views == {}
    res = old.triage("The VPN drops every few minutes since this morning")
    assert res.views == {}
    for name, dist in res.distributions.items():
        assert sum(dist.values()) == pytest.approx(1.0)
        assert res.ticket[name] == max(dist, key=dist.get)  # the LM's own choice, uncorrected
        assert res.confidence[name] == dist[res.ticket[name]]


@pytest.mark.slow
def test_an_expert_for_another_taxonomy_is_refused_with_the_adapter(cfg, tmp_path):
    import shutil

    adapter = tmp_path / "ad"
    shutil.copytree(cfg.path(cfg["model"]["adapter"]), adapter)
    data = records(4)
    LexicalExpert.fit([r["text"] for r in data], [r["labels"] for r in data], ["assignment_group"],
                      "not-this-taxonomy").save(adapter)
    from triage_core.taxonomy import load_taxonomy

    taxonomy = load_taxonomy(cfg.taxonomy_path)
    loaded = load_model(cfg["model"], adapter=adapter, taxonomy_hash=taxonomy.label_hash)
    with pytest.raises(ModelError, match="lexical expert was fitted for taxonomy"):
        Triager(loaded, taxonomy)


def test_opaque_labels_are_described_by_their_own_tickets_in_the_prompt(cfg, tmp_path):
    import shutil

    from trainer.recipe import describe_labels, fit_expert

    more = {**TOPICS, "GRP_3": ["password reset for my account", "account locked after login attempts",
                                "cannot log in to the portal", "mfa token lost"],
            "GRP_9": ["new starter needs a laptop", "order a monitor for the new hire",
                      "request software licence for visio", "purchase a headset"]}
    taxonomy = parse_taxonomy({"name": "five", "fields": {"assignment_group": {"values": list(more)},
                                                          "priority": {"values": ["High", "Low"]}}})
    data = [{"text": f"{t} please", "labels": {"assignment_group": g, "priority": "Low"}}
            for g, texts in more.items() for t in texts for _ in range(3)]
    learnt = describe_labels(fit_expert(data, taxonomy), taxonomy)
    # Only the long field is described (priority's two values speak for themselves), each value by its own words.
    assert set(learnt) == {"assignment_group"} and set(learnt["assignment_group"]) == set(more)
    for group, note in learnt["assignment_group"].items():
        words = set(" ".join(more[group]).split())
        assert note and all(set(term.split()) <= words | {"please"} for term in note.split(", "))
    # Training and inference show them alike: build_examples' explicit prompt and the Triager's (read from the
    # adapter folder), while an adapter without the file keeps its names-only prompt.
    tok = tokenizer(cfg)
    examples, _ = build_examples(data[:2], tok, taxonomy, TrainSettings.from_mapping(cfg["train"],
                                                                                   explicit_fraction=1.0),
                                 learnt=learnt)
    codec = PromptCodec(tok, taxonomy, learnt=learnt)
    assert learnt["assignment_group"]["GRP_12"] in codec.system
    assert examples[0].input_ids[:len(codec.prefix_ids)] == codec.prefix_ids
    adapter = tmp_path / "ad"
    shutil.copytree(cfg.path(cfg["model"]["adapter"]), adapter)
    meta = json.loads((adapter / "triage_adapter.json").read_text())
    (adapter / "triage_adapter.json").write_text(json.dumps({**meta, "taxonomy_hash": taxonomy.label_hash}))
    plain = Triager(load_model(cfg["model"], adapter=adapter, taxonomy_hash=None), taxonomy, use_expert=False)
    assert "GRP_12:" not in plain.codec.system
    from triage_core.descriptions import save_descriptions

    save_descriptions(adapter, learnt)
    described = Triager(load_model(cfg["model"], adapter=adapter, taxonomy_hash=None), taxonomy, use_expert=False)
    assert described.codec.system == codec.system
    # Pointed at another taxonomy (zero-shot), the adapter's own descriptions do not apply.
    other = Triager(load_model(cfg["model"], adapter=adapter, taxonomy_hash=None), TAXONOMY, use_expert=False)
    assert other.codec.system == PromptCodec(tok, TAXONOMY).system


@pytest.mark.slow
def test_pooling_fits_a_dependent_field_where_the_lm_chose_another_parent(cfg, tmp_path):
    """The default taxonomy's subcategory hangs under its category: on a held-out ticket whose category the LM
    got wrong, the LM's subcategory distribution covers the wrong parent's children. The fit must not fail on it
    (it did: a KeyError in the pooling), and the subcategory is fitted on the tickets triaged under the gold parent."""
    import shutil

    from trainer.recipe import MIN_DEPENDENT_ROWS, fit_pooling
    from trainer.synthetic import generate
    from triage_core.taxonomy import load_taxonomy

    taxonomy = load_taxonomy(cfg.taxonomy_path)
    adapter = tmp_path / "shipped"
    for name in ("adapter_config.json", "adapter_model.safetensors", "triage_adapter.json"):
        adapter.mkdir(exist_ok=True)
        shutil.copy(cfg.path(cfg["model"]["adapter"]) / name, adapter / name)
    data = [{"text": r["text"], "labels": r["labels"]} for r in generate(taxonomy, 120, seed=77)]
    fit, cal = data[:80], data[80:]
    lm_only = Triager(load_model(cfg["model"], adapter=adapter, taxonomy_hash=taxonomy.label_hash), taxonomy,
                      use_expert=False)
    chosen = [res.ticket["category"] for res in lm_only.triage_many([r["text"] for r in cal])]
    wrong = sum(c != r["labels"]["category"] for c, r in zip(chosen, cal, strict=True))
    assert wrong > 0 and len(cal) - wrong >= MIN_DEPENDENT_ROWS  # the case this test is about, and enough rows
    result = fit_pooling(adapter, taxonomy, cfg["model"], fit, cal, data)
    params = result.combination.views["combined"]["subcategory"]
    assert params.a >= 0 and params.b >= 0
    assert set(result.combination.thresholds) >= {"category", "subcategory"}
    # The pooling itself gives a value the LM did not score the floor probability instead of failing.
    dist, choice = pool(params, ["A", "B"], {"C": 1.0}, {"A": 0.9, "B": 0.1}, None)
    assert choice == "A" and sum(dist.values()) == pytest.approx(1.0)
