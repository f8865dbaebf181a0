"""CPU LoRA training throughput and peak memory: ours against a naive loop, in the same run.

naive  batch 8, every example padded to 256 tokens, LoRA on all layers, bf16 autocast, loss on the answer
ours   trainer.train's loop: LoRA on the upper layers only (no backward below them), length-grouped batches (no
       padding to a fixed width), bf16 autocast over bf16 base weights

Each variant runs in its own child process, so its peak RSS is its own. Prints processed tokens/s (padding
included), real tokens/s (padding excluded), seconds per step and peak RSS, and ours/naive ratios. With
--curve it also trains adapters on growing slices of the synthetic set and prints model vs TF-IDF+SVM accuracy
and macro-F1 on a fixed synthetic test slice (slow: minutes per size).

    python bench/train_throughput.py [--steps 6] [--curve 100,200,400]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def synthetic_records(n: int, seed: int):
    from trainer.synthetic import generate
    from triage_core import load_config, load_taxonomy

    cfg = load_config()
    return generate(load_taxonomy(cfg.taxonomy_path), n, seed=seed)


def run_variant(name: str, steps: int, queue) -> None:
    import torch

    from trainer.synthetic import INSTRUCTIONS
    from trainer.train import IGNORE, TrainSettings, build_examples, collate, length_grouped_batches, prepare_model
    from triage_core import load_config, load_taxonomy

    cfg = load_config()
    tax = load_taxonomy(cfg.taxonomy_path)
    records = synthetic_records(400, seed=99)
    if name == "naive":
        settings = TrainSettings.from_mapping(cfg["train"], upper_layers=0, max_length=256, batch_size=8)
    else:
        settings = TrainSettings.from_mapping(cfg["train"])
    loaded = prepare_model(cfg["model"], settings)
    model, tok = loaded.model, loaded.tokenizer
    examples, _ = build_examples(records, tok, tax, settings, INSTRUCTIONS)
    if name == "naive":
        batches = [list(range(i, i + 8)) for i in range(0, len(examples) - 8, 8)]
    else:
        batches = length_grouped_batches(examples, settings.batch_size, settings.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    processed = real = 0
    t0 = None
    for step in range(steps + 1):  # the first step is a warm-up and is not timed
        if step == 1:
            t0 = time.perf_counter()
            processed = real = 0
        batch = collate([examples[i] for i in batches[step % len(batches)]], tok.pad_token_id)
        if name == "naive":
            width = 256
            pad = width - batch["input_ids"].shape[1]
            if pad > 0:
                batch = {k: torch.nn.functional.pad(v, (0, pad), value=(tok.pad_token_id if k == "input_ids" else
                                                                          IGNORE if k == "labels" else 0))
                         for k, v in batch.items()}
        processed += batch["input_ids"].numel()
        real += int(batch["attention_mask"].sum())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t0
    queue.put({"variant": name, "steps": steps, "seconds": seconds, "processed_tps": processed / seconds,
               "real_tps": real / seconds, "s_per_step": seconds / steps,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "trainable_params": sum(p.numel() for p in params)})


def throughput(steps: int) -> list[dict]:
    ctx = mp.get_context("spawn")
    rows = []
    for name in ("naive", "ours"):
        q = ctx.Queue()
        p = ctx.Process(target=run_variant, args=(name, steps, q))
        p.start()
        rows.append(q.get())
        p.join()
        print(f"  {name}: {rows[-1]['real_tps']:.0f} real tokens/s", file=sys.stderr, flush=True)
    return rows


def curve(sizes: list[int], test_n: int, seed: int) -> list[dict]:
    from trainer.evaluate import evaluate, headline
    from trainer.synthetic import INSTRUCTIONS
    from trainer.train import TrainSettings, train
    from triage_core import Triager, load_config, load_taxonomy

    cfg = load_config()
    tax = load_taxonomy(cfg.taxonomy_path)
    pool = synthetic_records(max(sizes) + test_n, seed=seed)
    test, pool = pool[:test_n], pool[test_n:]
    rows = []
    for size in sizes:
        records = pool[:size]
        with tempfile.TemporaryDirectory() as tmp:
            settings = TrainSettings.from_mapping(cfg["train"], epochs=2.0)
            t0 = time.perf_counter()
            train(records, tax, cfg["model"], settings, tmp, instructions=INSTRUCTIONS, progress=False,
                  tensorboard=False)
            seconds = time.perf_counter() - t0
            metrics, _ = evaluate(Triager.from_config(cfg, adapter=tmp), test, train=records, batch_size=8)
        rows.append({"size": size, "train_s": round(seconds), "model": headline(metrics["model"]),
                     "baseline": headline(metrics["baseline"])})
        print(f"  size {size}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--curve", default="", help="comma-separated training sizes, e.g. 100,200,400")
    ap.add_argument("--test-n", type=int, default=150)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    rows = throughput(args.steps)
    print(f"\n{'variant':<8} {'proc tok/s':>10} {'real tok/s':>10} {'s/step':>7} {'peak RSS MB':>11} {'trainable':>10}")
    for r in rows:
        print(f"{r['variant']:<8} {r['processed_tps']:>10.0f} {r['real_tps']:>10.0f} {r['s_per_step']:>7.2f} "
              f"{r['peak_rss_mb']:>11.0f} {r['trainable_params']:>10}")
    naive, ours = rows
    print(f"ours / naive: real tokens/s x{ours['real_tps'] / naive['real_tps']:.2f}, processed tokens/s "
          f"x{ours['processed_tps'] / naive['processed_tps']:.2f}, "
          f"peak RSS x{ours['peak_rss_mb'] / naive['peak_rss_mb']:.2f}")
    out = {"throughput": rows}
    if args.curve:
        sizes = [int(s) for s in args.curve.split(",") if s.strip()]
        out["curve"] = curve(sizes, args.test_n, seed=7)
        print(f"\n{'size':>6} {'train s':>8} {'model acc':>9} {'model F1':>9} {'base acc':>9} {'base F1':>8}")
        for r in out["curve"]:
            print(f"{r['size']:>6} {r['train_s']:>8} {r['model']['mean_accuracy']:>9.3f} "
                  f"{r['model']['mean_macro_f1']:>9.3f} {r['baseline']['mean_accuracy']:>9.3f} "
                  f"{r['baseline']['mean_macro_f1']:>8.3f}")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
