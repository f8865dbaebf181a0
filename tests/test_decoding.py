"""The decoder's scores are the model's own probabilities: checked against plain teacher-forced forward passes."""
from __future__ import annotations

import math

import pytest
import torch

from triage_core import Triager, load_config, load_taxonomy, parse_taxonomy


pytestmark = pytest.mark.slow  # a float32 copy of the real model


@pytest.fixture(scope="module")
def fp32_triager():
    """float32, so batched tree scores and the reference agree to rounding error; the summary comes last, so
    every token before an enum value is canonical (re-tokenizing a generated summary may differ)."""
    config = load_config(env={"TRIAGE_MODEL_DTYPE": "float32"})
    base = Triager.from_config(config)
    labels = load_taxonomy(config.taxonomy_path).labels()
    reordered = {k: v for k, v in labels.items() if k != "summary"}
    reordered["summary"] = {"type": "text"}
    return Triager(base.loaded, parse_taxonomy({"fields": reordered}), base.settings)


def reference_distribution(triager, text, ticket, field):
    """P(value + closing token | everything before the value), normalised over the allowed values."""
    codec, tax = triager.codec, triager.taxonomy
    index = tax.field_names.index(field)
    before = list(codec.prefix_ids) + codec.user_ids(codec.encode_ticket(text, 768).ids)
    for i, name in enumerate(tax.field_names[:index]):
        before += codec.encode(codec.punctuation(i)) + codec.encode(ticket[name])
    before += codec.encode(codec.punctuation(index))
    close = codec.encode(codec.punctuation(index + 1))[0]
    scores = {}
    model = triager.loaded.model
    for value in tax[field].allowed(ticket):
        cand = codec.encode(value) + [close]
        ids = torch.tensor([before + cand])
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        start = len(before)
        scores[value] = sum(float(logp[start + j - 1, tok]) for j, tok in enumerate(cand))
    top = max(scores.values())
    norm = sum(math.exp(s - top) for s in scores.values())
    return {v: math.exp(s - top) / norm for v, s in scores.items()}


@pytest.mark.parametrize("text", [
    "The printer on floor 3 jams on every page, finance cannot print invoices today.",
    "necesito instalar Visio en mi portatil por favor",
])
def test_scores_match_teacher_forcing(fp32_triager, text):
    result = fp32_triager.triage(text)
    for field in ("category", "subcategory", "priority", "request_type"):
        ref = reference_distribution(fp32_triager, text, result.ticket, field)
        got = result.distributions[field]
        assert set(ref) == set(got)
        for value in ref:
            assert got[value] == pytest.approx(ref[value], abs=2e-3), (field, value)


def test_batched_decoding_matches_one_by_one(fp32_triager):
    texts = ["Outlook keeps asking for my password", "Wi-Fi in meeting room B is down",
             "please create an account for the new starter Ana Ruiz, she starts Monday in Sales"]
    batched = fp32_triager.triage_many(texts, batch_size=3)
    for text, b in zip(texts, batched):
        s = fp32_triager.triage(text)
        assert s.ticket == b.ticket
        for field, dist in s.distributions.items():
            for value, p in dist.items():
                assert b.distributions[field][value] == pytest.approx(p, abs=2e-3)


def test_summary_generation_is_greedy(fp32_triager):
    """Prompt-lookup drafting only speeds up the summary: it equals plain greedy decoding."""
    text = "Cannot open the finance share \\\\fs01\\finance since the password change this morning."
    with_lookup = fp32_triager.triage(text).ticket["summary"]
    decoder = fp32_triager.decoder
    saved = decoder.lookup_tokens
    decoder.lookup_tokens = 0
    try:
        plain = fp32_triager.triage(text).ticket["summary"]
    finally:
        decoder.lookup_tokens = saved
    assert with_lookup == plain
