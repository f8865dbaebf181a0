"""Triage latency and validity: four ways to get a schema-valid ticket out of the same model, in one run.

(a) seed      schema in the prompt, unconstrained greedy generate(), JSON parsed afterwards
(b) xgrammar  the same generate() constrained by an xgrammar JSON-schema grammar (if xgrammar is installed)
(c) llama.cpp llama-cpp-python answering with its JSON-schema constraint from the same GGUF file (if installed;
              base model only: the LoRA adapter is not converted to GGUF)
(d) ours      triage_core's schema-guided decoding (Triager.triage / triage_many)

All use the same tickets (real ones from ../shared/data when present), the same system prompt and, for a, b, d,
the same transformers model (with the configured adapter). Validity is checked against the full JSON Schema,
including "subcategory only under its category". Prints p50/p95 ms per ticket at batch size 1, tickets/s at
batch sizes 1 and 8, validity %, and ours as a ratio against each other method.

    python bench/triage_latency.py [--n 50] [--methods seed,xgrammar,llamacpp,ours,ours-fp32] [--max-new-tokens 120]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from triage_core import Triager, json_schema, load_config, validate_ticket  # noqa: E402
from triage_core.model import builtin_gguf  # noqa: E402
from triage_core.schema import SchemaViolation  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
FALLBACK = [
    "My laptop screen flickers since the update, I can work with an external monitor for now.",
    "VPN disconnects every few minutes for the whole sales team, client demo at 3pm",
    "Hola, necesito acceso a la carpeta compartida de Finanzas para el cierre de mes.",
    "Printer on floor 3 jams on every page.",
    "Please install Visio on my PC, I need it for the network diagrams next week.",
]


def load_tickets(n: int) -> list[str]:
    """Half from each real set (English rows), cut to about 600 characters, in file order."""
    out: list[str] = []
    multilang = SHARED / "support_tickets_multilang.csv"
    endava = SHARED / "endava_topic_group.csv"
    if multilang.is_file():
        with multilang.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("language") == "en" and len(out) < n // 2:
                    out.append(f"{row['subject']}\n{row['body']}"[:600])
    if endava.is_file():
        with endava.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                if len(out) >= n:
                    break
                out.append(f"{row['title']}\n{row['body']}"[:600])
    while len(out) < n:
        out.append(FALLBACK[len(out) % len(FALLBACK)])
    return out[:n]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def check(taxonomy, text: str) -> bool:
    try:
        data = json.loads(text)
    except ValueError:
        return False
    try:
        validate_ticket(taxonomy, data)
    except SchemaViolation:
        return False
    return True


class HFGenerate:
    """(a) and (b): the chat prompt with the schema, then model.generate() with greedy decoding."""

    def __init__(self, triager: Triager, max_new_tokens: int, grammar=None):
        self.triager = triager
        self.tok = triager.loaded.tokenizer
        self.model = triager.loaded.model
        self.max_new_tokens = max_new_tokens
        self.grammar = grammar
        self.tok.padding_side = "left"

    def prompt(self, text: str) -> list[int]:
        codec = self.triager.codec
        return list(codec.prefix_ids) + codec.user_ids(codec.encode_ticket(text, 768).ids)

    def run(self, texts: list[str]) -> list[str]:
        prompts = [self.prompt(t) for t in texts]
        width = max(len(p) for p in prompts)
        pad = self.tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        # Stop at the first closing brace (the answer is one flat object), so (a) is not charged for rambling on.
        kwargs = {"stop_strings": ["}"], "tokenizer": self.tok}
        if self.grammar is not None:
            import xgrammar as xgr

            kwargs["logits_processor"] = [xgr.contrib.hf.LogitsProcessor(self.grammar)]
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.max_new_tokens,
                                      do_sample=False, pad_token_id=pad, **kwargs)
        return [self.tok.decode(row[width:], skip_special_tokens=True) for row in out]


def xgrammar_grammar(triager: Triager):
    import xgrammar as xgr

    tok = triager.loaded.tokenizer
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=triager.loaded.model.config.vocab_size)
    schema = json_schema(triager.taxonomy)
    schema.pop("allOf", None)  # conditionals are not expressible in its grammar; validity then tells the cost
    schema.pop("$id", None)
    return xgr.GrammarCompiler(info).compile_json_schema(json.dumps(schema), any_whitespace=False)


class LlamaCpp:
    """(c): llama.cpp on the bundled GGUF with its JSON-schema-constrained chat completion."""

    def __init__(self, triager: Triager, max_new_tokens: int, threads: int):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(builtin_gguf()), n_ctx=2048, n_threads=threads, verbose=False, seed=0)
        self.system = triager.codec.system
        schema = json_schema(triager.taxonomy)
        schema.pop("$id", None)
        self.schema = schema
        self.max_new_tokens = max_new_tokens

    def run(self, texts: list[str]) -> list[str]:
        out = []
        for text in texts:
            res = self.llm.create_chat_completion(
                messages=[{"role": "system", "content": self.system}, {"role": "user", "content": text}],
                response_format={"type": "json_object", "schema": self.schema},
                temperature=0.0, max_tokens=self.max_new_tokens)
            out.append(res["choices"][0]["message"]["content"] or "")
        return out


class Ours:
    def __init__(self, triager: Triager):
        self.triager = triager

    def run(self, texts: list[str]) -> list[str]:
        results = self.triager.triage_many(texts, batch_size=len(texts))
        return [json.dumps(r.ticket, ensure_ascii=False) for r in results]


def measure(name: str, method, texts: list[str], taxonomy, batch8: bool) -> dict:
    method.run(texts[:1])  # warm-up (prefix cache, grammar compilation, first-call allocations)
    per_ticket, valid = [], 0
    t0 = time.perf_counter()
    for text in texts:
        t = time.perf_counter()
        answer = method.run([text])[0]
        per_ticket.append((time.perf_counter() - t) * 1000)
        valid += check(taxonomy, answer)
    wall1 = time.perf_counter() - t0
    row = {"method": name, "n": len(texts), "p50_ms": pct(per_ticket, 0.5), "p95_ms": pct(per_ticket, 0.95),
           "tps_b1": len(texts) / wall1, "valid_pct": 100.0 * valid / len(texts), "tps_b8": None}
    if batch8:
        t0 = time.perf_counter()
        valid8 = 0
        for i in range(0, len(texts), 8):
            valid8 += sum(check(taxonomy, a) for a in method.run(texts[i : i + 8]))
        row["tps_b8"] = len(texts) / (time.perf_counter() - t0)
        row["valid_pct_b8"] = 100.0 * valid8 / len(texts)
    print(f"  {name}: p50 {row['p50_ms']:.0f} ms, valid {row['valid_pct']:.0f}%", file=sys.stderr, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--methods", default="seed,xgrammar,llamacpp,ours,ours-fp32")
    ap.add_argument("--max-new-tokens", type=int, default=120)
    ap.add_argument("--config")
    ap.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = ap.parse_args()

    config = load_config(args.config)
    triager = Triager.from_config(config)
    texts = load_tickets(args.n)
    taxonomy = triager.taxonomy
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows = []
    print(f"model: {triager.model_info}, dtype {config['model']['dtype']}, threads {torch.get_num_threads()}, "
          f"{len(texts)} tickets", flush=True)
    for name in methods:
        try:
            if name == "seed":
                rows.append(measure(name, HFGenerate(triager, args.max_new_tokens), texts, taxonomy, True))
            elif name == "xgrammar":
                grammar = xgrammar_grammar(triager)
                rows.append(measure(name, HFGenerate(triager, args.max_new_tokens, grammar), texts, taxonomy,
                                    True))
            elif name == "llamacpp":
                rows.append(measure(name, LlamaCpp(triager, args.max_new_tokens, config["model"]["threads"]),
                                    texts, taxonomy, False))
            elif name == "ours":
                rows.append(measure(name, Ours(triager), texts, taxonomy, True))
            elif name == "ours-fp32":  # the dtype choice: the same decoder over float32 weights
                other = "float32" if config["model"]["dtype"] != "float32" else "bfloat16"
                alt = Triager.from_config(load_config(args.config, overrides={"model": {"dtype": other}}))
                rows.append(measure(f"ours-{other}", Ours(alt), texts, taxonomy, True))
            else:
                print(f"unknown method {name!r}", file=sys.stderr)
        except ImportError as exc:
            print(f"skipping {name}: {exc} (pip install -e '.[bench]')", file=sys.stderr)

    print(f"\n{'method':<10} {'p50 ms':>8} {'p95 ms':>8} {'tick/s b1':>10} {'tick/s b8':>10} {'valid %':>8}")
    for r in rows:
        b8 = f"{r['tps_b8']:.2f}" if r["tps_b8"] else "n/a"
        print(f"{r['method']:<10} {r['p50_ms']:>8.0f} {r['p95_ms']:>8.0f} {r['tps_b1']:>10.2f} {b8:>10} "
              f"{r['valid_pct']:>8.0f}")
    ours = next((r for r in rows if r["method"] == "ours"), None)
    if ours:
        for r in rows:
            if r is not ours and r["p50_ms"]:
                print(f"ours p50 / {r['method']} p50 = {ours['p50_ms'] / r['p50_ms']:.2f}")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
