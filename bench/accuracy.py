"""Accuracy on real tickets along the bootstrap path, against TF-IDF + LinearSVC in the same run.

For each task the README's "Start from your own history" commands run as a new user runs them, with default
settings: `ticket-triage taxonomy infer` drafts the taxonomy from the export, `ticket-triage import` turns it
into records, `ticket-triage train` fits the adapter (LoRA + lexical expert + calibrated pooling, budget chosen
from the data), and the adapter is evaluated on a held-out test slice. Each seed is a different shuffle; each
size a prefix of the shuffled pool. Reported per task, size and system (the pooled model as it triages, the LM
alone, the lexical expert alone, the SVM): macro-F1 and accuracy with 95% bootstrap intervals, ECE, coverage
at 95% precision, and training seconds.

Tasks (../shared/data):
  endava      endava_topic_group.csv, topic_group as category
  multi       support_tickets_multilang.csv, queue as assignment_group, priority, type as request_type
  multi-opaque the same with the queues renamed Q01..Q10 (names that mean nothing to a language model)

    python bench/accuracy.py [--tasks endava,multi] [--sizes 250,500,1000,all] [--seeds 1,2,3] [--test-n 300]
                             [--data-dir ../shared/data] [--out bench-accuracy.jsonl]
    python bench/accuracy.py --shipped [--shipped-n 200 --shipped-seed 101]
    python bench/accuracy.py --set train.label_descriptions=false --variant no-descriptions   # an ablation

Runs append to `--out`; a (task, seed, size, variant) already there is skipped, so an interrupted grid resumes.

`--shipped` checks the shipped adapter instead: fresh synthetic tickets from a seed it never saw, against the SVM
trained on the synthetic records the adapter was trained on (`make adapter`'s generate, seed 13).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS = {
    "endava": ("endava_topic_group.csv", ["--map", "text=title+body", "--map", "category=topic_group"]),
    "multi": ("support_tickets_multilang.csv", ["--map", "text=subject+body", "--map", "assignment_group=queue",
                                                "--map", "priority=priority", "--map", "request_type=type"]),
}
TASKS["multi-opaque"] = TASKS["multi"]
SYSTEMS = ("model", "lm", "lexical", "baseline")


def cli(env: dict, *args: str) -> str:
    exe = Path(sys.executable).parent / "ticket-triage"
    done = subprocess.run([str(exe), *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"ticket-triage {' '.join(args[:2])} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def opaque_copy(src: Path, dst: Path) -> None:
    """The export with each queue renamed to an id (Q01 for the largest), as many service desks name teams."""
    with src.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["queue"]] = counts.get(r["queue"], 0) + 1
    ids = {q: f"Q{i + 1:02d}" for i, q in enumerate(sorted(counts, key=lambda q: -counts[q]))}
    with dst.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({**r, "queue": ids[r["queue"]]})


def bootstrap(gold: list[str], got: list[str], rounds: int = 1000, seed: int = 0) -> dict[str, list[float]]:
    """95% intervals of macro-F1 and accuracy by resampling the test tickets."""
    import numpy as np
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(seed)
    g, p = np.array(gold), np.array(got)
    f1s, accs = [], []
    for _ in range(rounds):
        i = rng.integers(0, len(g), len(g))
        f1s.append(f1_score(g[i], p[i], labels=sorted(set(g[i])), average="macro", zero_division=0))
        accs.append(float((g[i] == p[i]).mean()))
    return {"macro_f1_ci": [round(float(np.percentile(f1s, q)), 4) for q in (2.5, 97.5)],
            "accuracy_ci": [round(float(np.percentile(accs, q)), 4) for q in (2.5, 97.5)]}


def run_size(env: dict, tmp: Path, tax: Path, slice_: list, test: list, tag: str) -> dict:
    from trainer.evaluate import predict_baseline, predict_model, score
    from triage_core import Triager, load_config, load_taxonomy

    train_path = tmp / f"{tag}.train.jsonl"
    train_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in slice_), encoding="utf-8")
    out = tmp / f"adapter-{tag}"
    t0 = time.perf_counter()
    summary = json.loads(cli(env, "train", "--data", str(train_path), "--taxonomy", str(tax), "--out", str(out),
                             "--json").strip().splitlines()[-1])
    train_s = time.perf_counter() - t0
    taxonomy = load_taxonomy(tax)
    fields = [f.name for f in taxonomy.enum_fields]
    cfg = load_config(tmp / "config.yaml", env=env)
    preds = predict_model(Triager.from_config(cfg, adapter=out), test, batch_size=8)
    systems = {"model": preds, **preds.views, "baseline": predict_baseline(slice_, test, fields)}
    row = {"train_s": round(train_s), "steps": summary["steps"], "examples": summary["examples"], "fields": {}}
    for who, p in systems.items():
        metrics = score(test, p, fields)
        for name, m in metrics["fields"].items():
            gold = [r["labels"][name] for r in test if name in r["labels"]]
            got = [p.labels[i].get(name, "<invalid>") for i, r in enumerate(test) if name in r["labels"]]
            row["fields"].setdefault(name, {})[who] = {
                "macro_f1": m["macro_f1"], "accuracy": m["accuracy"], **bootstrap(gold, got),
                **({"ece": m["ece"], "coverage_at_95": m["coverage_at_95"]} if "ece" in m else {})}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--tasks", default="endava,multi")
    ap.add_argument("--sizes", default="250,500,1000,all")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--test-n", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("bench-accuracy.jsonl"), help="one JSON line per run")
    ap.add_argument("--max-ticket-tokens", type=int, default=0,
                    help="decoding.max_ticket_tokens for this run (0: the config's)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a setting for this run's training and triage (TRIAGE_SECTION_KEY), e.g. for an ablation")
    ap.add_argument("--variant", default="default", help="the name this run's rows carry (ablations)")
    ap.add_argument("--shipped", action="store_true", help="check the shipped adapter on fresh synthetic tickets")
    ap.add_argument("--shipped-n", type=int, default=200)
    ap.add_argument("--shipped-seed", type=int, default=101)
    args = ap.parse_args()
    if args.shipped:
        shipped(args)
        return
    tasks = [t for t in args.tasks.split(",") if t]
    for t in tasks:
        if t not in TASKS:
            ap.error(f"unknown task {t!r}; known: {', '.join(TASKS)}")
        if not (args.data_dir / TASKS[t][0]).is_file():
            ap.error(f"{args.data_dir / TASKS[t][0]} not found: pass --data-dir (the folder of ../shared/data)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    if args.max_ticket_tokens:
        env["TRIAGE_DECODING_MAX_TICKET_TOKENS"] = str(args.max_ticket_tokens)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            ap.error(f"--set {item!r}: expected SECTION.KEY=VALUE")
        env["TRIAGE_" + key.replace(".", "_").upper()] = value
    args.done = done_runs(args.out)
    with tempfile.TemporaryDirectory() as tmp_name, args.out.open("a", encoding="utf-8") as out:
        tmp = Path(tmp_name)
        for task in tasks:
            run_task(task, args, env, tmp, out)
    print_table(args.out)


def run_task(task: str, args, env: dict, tmp: Path, out) -> None:
    from trainer.records import read_records

    src = args.data_dir / TASKS[task][0]
    if task == "multi-opaque":
        opaque_copy(src, tmp / "opaque.csv")
        src = tmp / "opaque.csv"
    tax = tmp / f"{task}.yaml"
    cli(env, "taxonomy", "infer", "--data", str(src), *TASKS[task][1], "--name", task, "-o", str(tax))
    cli(env, "import", str(src), *TASKS[task][1], "--taxonomy", str(tax), "-o", str(tmp / f"{task}.jsonl"))
    (tmp / "config.yaml").write_text(f"taxonomy: {tax}\nmodel:\n  adapter: null\n", encoding="utf-8")
    records = read_records(tmp / f"{task}.jsonl")
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        shuffled = list(records)
        random.Random(seed).shuffle(shuffled)
        test, pool = shuffled[: args.test_n], shuffled[args.test_n :]
        for size_arg in args.sizes.split(","):
            size = len(pool) if size_arg == "all" else int(size_arg)
            if size > len(pool) or (task, seed, size, args.variant) in args.done:
                continue
            row = run_size(env, tmp, tax, pool[:size], test, f"{task}-{seed}-{size}")
            row.update(task=task, seed=seed, size=size, size_arg=size_arg, test_n=len(test), variant=args.variant,
                       settings=args.set, commit=_commit())
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(f"{task} seed {seed} size {size}: " + "; ".join(
                f"{n}: " + ", ".join(f"{w} {m['macro_f1']:.3f}" for w, m in f.items())
                for n, f in row["fields"].items()), file=sys.stderr, flush=True)


def done_runs(path: Path) -> set[tuple]:
    if not path.is_file():
        return set()
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {(r["task"], r["seed"], r["size"], r.get("variant", "default")) for r in rows}


def _commit() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip()


def shipped(args) -> None:
    """The shipped adapter on unseen synthetic tickets, beside the SVM trained on its own training records."""
    from trainer.evaluate import evaluate, summary_table
    from trainer.records import read_records
    from triage_core import Triager, load_config

    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cli(env, "generate", "--n", "3000", "--seed", "13", "--out", str(tmp / "train"))
        # Enough records that the test split holds --shipped-n of them; a seed training never used.
        cli(env, "generate", "--n", str(args.shipped_n * 10), "--seed", str(args.shipped_seed), "--out",
            str(tmp / "fresh"))
        fresh = read_records(tmp / "fresh" / "test.jsonl")[: args.shipped_n]
        train = read_records(tmp / "train" / "train.jsonl")
        metrics, _ = evaluate(Triager.from_config(load_config(env=env)), fresh, train=train)
    print(f"shipped adapter, {len(fresh)} fresh synthetic tickets (seed {args.shipped_seed}), "
          f"SVM trained on the adapter's {len(train)} training records")
    print(summary_table(metrics))


def print_table(path: Path) -> None:
    """Mean over seeds per task, field and size: macro-F1 (accuracy) per system, ECE, training seconds."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    groups: dict[tuple, list] = {}
    for r in rows:
        for name, f in r["fields"].items():
            groups.setdefault((r["task"], r.get("variant", "default"), name, r["size"]), []).append((r, f))
    print("| task | variant | field | size | seeds | " + " | ".join(f"{s} F1 (acc)" for s in SYSTEMS)
          + " | model ECE | coverage at 95% | train s |")
    print("|---|---|---|---|---|" + "---|" * (len(SYSTEMS) + 3))
    for (task, variant, name, size), items in sorted(groups.items()):
        cells = []
        for s in SYSTEMS:
            vals = [f[s] for _, f in items if s in f]
            if not vals:
                cells.append("-")
                continue
            f1 = statistics.mean(v["macro_f1"] for v in vals)
            acc = statistics.mean(v["accuracy"] for v in vals)
            ci = vals[0]["macro_f1_ci"] if len(vals) == 1 else None
            cells.append(f"{f1:.3f} ({acc:.3f})" + (f" [{ci[0]:.2f}-{ci[1]:.2f}]" if ci else ""))
        model = [f["model"] for _, f in items]
        ece = statistics.mean(m.get("ece", float("nan")) for m in model)
        cov = statistics.mean(m.get("coverage_at_95", {}).get("coverage", 0.0) for m in model)
        train_s = statistics.mean(r["train_s"] for r, _ in items)
        print(f"| {task} | {variant} | {name} | {size} | {len(items)} | " + " | ".join(cells)
              + f" | {ece:.3f} | {cov:.2f} | {train_s:.0f} |")


if __name__ == "__main__":
    main()
