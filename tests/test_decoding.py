"""The decoder's scores are the model's own probabilities: checked against plain teacher-forced forward passes."""
from __future__ import annotations

import math

import pytest
import torch

from triage_core import Triager, load_config, load_taxonomy, parse_taxonomy
from triage_core.decoding import clip_text

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
    for text, b in zip(texts, batched, strict=True):
        s = fp32_triager.triage(text)
        assert s.ticket == b.ticket
        for field, dist in s.distributions.items():
            for value, p in dist.items():
                assert b.distributions[field][value] == pytest.approx(p, abs=2e-3)


def reference_greedy_summary(triager, text, ticket):
    """Plain greedy decoding of the summary, written independently of the decoder: one sequence, one token per
    forward pass on the model's own KV cache (no drafts, no batching, no masking tricks), the arg-max among the
    tokens that may stand inside a JSON string (no quote, backslash or control character, no special token) or the
    closing token, which is not allowed before the first visible character; at most summary_max_tokens tokens."""
    codec, tax, tok = triager.codec, triager.taxonomy, triager.loaded.tokenizer
    index = tax.field_names.index("summary")
    ids = list(codec.prefix_ids) + codec.user_ids(codec.encode_ticket(text, triager.settings.max_ticket_tokens).ids)
    for i, name in enumerate(tax.field_names[:index]):
        ids += codec.encode(codec.punctuation(i)) + codec.encode(ticket[name])
    ids += codec.encode(codec.punctuation(index))
    close = codec.encode(codec.punctuation(index + 1))[0]
    special = set(tok.all_special_ids)
    vocab = triager.loaded.model.get_output_embeddings().weight.shape[0]
    allowed = torch.zeros(vocab, dtype=torch.bool)
    visible = torch.zeros(vocab, dtype=torch.bool)
    for i in range(min(vocab, len(tok))):
        piece = tok.decode([i])
        if i not in special and piece and not any(c in '"\\' or ord(c) < 32 or c in "\u2028\u2029" for c in piece):
            allowed[i] = True
            visible[i] = bool(piece.strip()) and piece.strip() != "\ufffd"
    generated: list[int] = []
    seen_text = False
    model = triager.loaded.model
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), use_cache=True)
    for _ in range(triager.settings.summary_max_tokens):
        logits = out.logits[0, -1].float()
        scores = logits.masked_fill(~allowed, float("-inf"))
        scores[close] = logits[close] if seen_text else float("-inf")
        nxt = int(scores.argmax())
        if nxt == close:
            break
        generated.append(nxt)
        seen_text = seen_text or bool(visible[nxt])
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([[nxt]]), cache=out.cache, use_cache=True)
    return clip_text(tok.decode(generated, skip_special_tokens=True), tax["summary"].max_length)


@pytest.mark.parametrize("text", [
    "Cannot open the finance share \\\\fs01\\finance since the password change this morning.",
    "VPN keeps disconnecting every 5 minutes for the whole sales team, client demo at 3pm!!",
])
def test_summary_generation_is_greedy(fp32_triager, text):
    """Prompt-lookup drafting only speeds up the summary: it equals plain greedy decoding over the same model."""
    result = fp32_triager.triage(text)
    assert result.ticket["summary"] == reference_greedy_summary(fp32_triager, text, result.ticket)
