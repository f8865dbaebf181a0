"""Retraining curve on real tickets: model vs TF-IDF+SVM macro-F1 and accuracy as the training slice grows.

The data is ../shared/data/endava_topic_group.csv, taken the way a team bootstraps from its own history (the
README's first path): `ticket-triage taxonomy infer` drafts a taxonomy from its labels (topic_group as category,
ticket_type as request type: 1, a service request, on every row of this subset), `ticket-triage import` turns the
export into records. The file has no dates, so records are shuffled once with a fixed seed; a fixed held-out slice
(--test-n records) scores every size and the training slices are nested prefixes of the rest; each size trains a
fresh LoRA adapter on the base model within the stated budget (--epochs over the slice, at most --max-steps steps
of --batch tickets), the way a nightly run would. The baseline is trained on the same slice.

    python bench/retrain_curve.py PATH/TO/endava_topic_group.csv [--sizes 250,500,1000,2000] [--test-n 200]
        [--max-steps 250] [--epochs 2] [--lr 2e-3]
"""
from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ["--map", "text=title+body", "--map", "category=topic_group", "--map", "request_type=ticket_type",
           "--label-map", "request_type:1=Service Request"]  # ticket_type is 1 on every row of this subset


def cli(*args: str) -> str:
    exe = Path(sys.executable).parent / "ticket-triage"
    done = subprocess.run([str(exe), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ticket-triage {' '.join(args[:2])} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path, help="the Endava export, endava_topic_group.csv (in ../shared/data beside "
                    "the project's checkout)")
    ap.add_argument("--sizes", default="250,500,1000,2000")
    ap.add_argument("--test-n", type=int, default=200)
    ap.add_argument("--max-steps", type=int, default=250, help="per size: the time budget, in optimizer steps")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=float, default=2.0, help="per size, capped by --max-steps")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not args.data.is_file():
        ap.error(f"{args.data}: file not found; give the path to endava_topic_group.csv")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    from trainer.evaluate import evaluate
    from trainer.records import read_records
    from trainer.synthetic import INSTRUCTIONS
    from trainer.train import TrainSettings, train
    from triage_core import Triager, load_config, load_taxonomy

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        cli("taxonomy", "infer", "--data", str(args.data), *COLUMNS, "--name", "endava", "-o", str(tmp / "tax.yaml"))
        cli("import", str(args.data), *COLUMNS, "--taxonomy", str(tmp / "tax.yaml"), "-o", str(tmp / "all.jsonl"))
        bootstrap_s = time.perf_counter() - t0
        taxonomy = load_taxonomy(tmp / "tax.yaml")
        records = [r for r in read_records(tmp / "all.jsonl") if set(r["labels"]) >= set(taxonomy.field_names)]
        random.Random(7).shuffle(records)
        test, pool = records[:args.test_n], records[args.test_n:]
        print(f"taxonomy {taxonomy.name}: " + ", ".join(f"{f.name} ({len(f.values)} values)"
                                                        for f in taxonomy.fields)
              + f"; {len(records)} complete records, test {len(test)}, pool {len(pool)} "
              f"(infer + import {bootstrap_s:.0f} s)", file=sys.stderr, flush=True)
        (tmp / "config.yaml").write_text(f"taxonomy: {tmp / 'tax.yaml'}\nmodel:\n  adapter: null\n")
        cfg = load_config(tmp / "config.yaml", env={})
        rows = []
        for size in sizes:
            if size > len(pool):
                print(f"size {size}: only {len(pool)} records in the pool, skipped", file=sys.stderr)
                continue
            slice_ = pool[:size]
            steps = min(args.max_steps, math.ceil(args.epochs * size / args.batch))
            settings = TrainSettings.from_mapping(cfg["train"], max_steps=steps, batch_size=args.batch,
                                                  eval_limit=0, learning_rate=args.lr)
            out = tmp / f"adapter-{size}"
            t1 = time.perf_counter()
            train(slice_, taxonomy, cfg["model"], settings, out, instructions=INSTRUCTIONS, progress=False,
                  tensorboard=False)
            train_s = time.perf_counter() - t1
            t2 = time.perf_counter()
            metrics, _ = evaluate(Triager.from_config(cfg, adapter=out), test, train=slice_, batch_size=8)
            eval_s = time.perf_counter() - t2
            row = {"size": size, "steps": steps, "seen": steps * args.batch, "train_s": round(train_s),
                   "eval_s": round(eval_s), "validity_pct": metrics["model"].get("validity_pct")}
            for who in ("model", "baseline"):
                for name, f in metrics[who]["fields"].items():
                    row[f"{who}.{name}.acc"] = f["accuracy"]
                    row[f"{who}.{name}.f1"] = f["macro_f1"]
            rows.append(row)
            print(f"  size {size}: {json.dumps(row)}", file=sys.stderr, flush=True)

    fields = taxonomy.field_names
    head = f"{'size':>5} {'seen':>5} {'train s':>7} " + " ".join(
        f"{n[:12] + ' ' + w:>22}" for n in fields for w in ("model acc/F1", "base acc/F1"))
    print(head)
    for r in rows:
        cells = []
        for n in fields:
            for who in ("model", "baseline"):
                cells.append(f"{r[f'{who}.{n}.acc']:.3f}/{r[f'{who}.{n}.f1']:.3f}".rjust(22))
        print(f"{r['size']:>5} {r['seen']:>5} {r['train_s']:>7} " + " ".join(cells))
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
