"""`ticket-triage train` and `ticket-triage eval`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from triage_core.cli import CliState, fail, pass_state


def load_labelled(path: Path, taxonomy: Any, map_file: Path | None = None) -> list[dict]:
    """Records from JSONL (the record shape) or, with a map file, from a CSV/JSONL export via the importer."""
    from .importer import ImportDataError, import_tickets, load_map_file
    from .records import RecordError, read_records

    try:
        if map_file is not None:
            mf = load_map_file(map_file)
            report = import_tickets(path, mf.columns, taxonomy, label_map=mf.labels)
            return list(report.records)
        if path.suffix.lower() == ".csv":
            fail(f"{path}: a CSV needs --map-file to say which columns hold the text and labels")
        return read_records(path)
    except (RecordError, ImportDataError) as exc:
        fail(str(exc))
    return []


def _log_eval_metrics(out_dir: Path, step: int, val: dict) -> None:
    """Validation metrics into the run's TensorBoard log, beside the loss and learning-rate curves."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    with SummaryWriter(str(out_dir / "tensorboard")) as writer:
        for key in ("mean_accuracy", "mean_macro_f1", "validity_pct"):
            if isinstance(val.get(key), (int, float)):
                writer.add_scalar(f"eval/{key}", val[key], step)
        for name, m in val.get("fields", {}).items():
            writer.add_scalar(f"eval/{name}/accuracy", m["accuracy"], step)
            writer.add_scalar(f"eval/{name}/macro_f1", m["macro_f1"], step)


def _taxonomy(state: CliState, path: Path | None):
    from triage_core.taxonomy import TaxonomyError, load_taxonomy

    try:
        return load_taxonomy(path or state.load_config().taxonomy_path)
    except TaxonomyError as exc:
        fail(str(exc))


@click.command("train")
@click.option("--data", "data", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Training records (JSONL in the record shape).")
@click.option("--val", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Validation records: triaged after training for the adapter's metrics.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Adapter folder to write.")
@click.option("--taxonomy", "taxonomy_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Taxonomy the adapter learns (default: the configured one); recorded by hash in the adapter.")
@click.option("--name", help="Adapter name (default: the folder name).")
@click.option("--version", "version", help="Adapter version (default: a UTC timestamp).")
@click.option("--init-adapter", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Continue training this adapter instead of starting fresh.")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in --out (OUT/checkpoints).")
@click.option("--qlora/--no-qlora", default=None, help="4-bit nf4 base (QLoRA); default from train.qlora.")
@click.option("--max-steps", type=int, help="Stop after this many optimizer steps (default train.max_steps; "
              "0: from --epochs).")
@click.option("--epochs", type=float, help="Passes over the data (default train.epochs; 0: chosen from the number "
              "of records, about 1,000 examples seen).")
@click.option("--batch-size", type=int, help="Tickets per step (default train.batch_size, 8).")
@click.option("--learning-rate", type=float, help="Peak learning rate (default train.learning_rate; 0: chosen from "
              "the budget, 2e-3 at short ones).")
@click.option("--rank", type=int, help="LoRA rank (default train.rank, 16).")
@click.option("--max-length", type=int, help="Longest training example in tokens; longer tickets are cut "
              "(default train.max_length).")
@click.option("--seed", type=int, help="Random seed for order and initialisation (default train.seed).")
@click.option("--lexical/--no-lexical", default=True, show_default=True,
              help="Fit the lexical expert (TF-IDF + linear model) and the calibrated pooling with the adapter.")
@click.option("--pool-only", is_flag=True,
              help="Keep the adapter in --out as it is (its LM trained on --data) and fit only the lexical expert "
                   "and the pooling, calibrated on --val: how an adapter from before the recipe gains them.")
@click.option("--json", "as_json", is_flag=True, help="Print the training summary as JSON.")
@pass_state
def train_command(state: CliState, data: Path, val: Path | None, out_dir: Path, taxonomy_path: Path | None,
                  name: str | None, version: str | None, init_adapter: Path | None, resume: bool,
                  qlora: bool | None, max_steps: int | None, epochs: float | None, batch_size: int | None,
                  learning_rate: float | None, rank: int | None, max_length: int | None, seed: int | None,
                  lexical: bool, pool_only: bool, as_json: bool) -> None:
    """Fine-tune a LoRA (or QLoRA) adapter on labelled records."""
    from triage_core.model import ModelError, read_adapter_meta
    from triage_core.triager import DecodingSettings

    from .recipe import train_adapter
    from .records import RecordError, read_records
    from .synthetic import INSTRUCTIONS
    from .train import TrainingError, TrainSettings, write_meta

    config = state.load_config()
    taxonomy = _taxonomy(state, taxonomy_path)
    try:
        records = read_records(data)
        val_records = read_records(val) if val else []
    except RecordError as exc:
        fail(str(exc))
    if not records:
        fail(f"{data}: no records")
    settings = TrainSettings.from_mapping(config["train"], qlora=qlora, max_steps=max_steps, epochs=epochs,
                                          batch_size=batch_size, learning_rate=learning_rate, rank=rank,
                                          max_length=max_length, seed=seed)
    if settings.max_steps < 0 or settings.batch_size < 1:
        fail("--max-steps must be >= 0 and --batch-size >= 1")
    if not settings.partial_labels and not any(_labels_every_field(r, taxonomy) for r in records):
        fail(f"{data}: no usable training records: none labels every field of the taxonomy and "
             f"{PARTIAL_HINT}")
    if resume and not any((out_dir / "checkpoints").glob("step-*/trainer_state.pt")):
        click.echo(f"warning: --resume: no checkpoint in {out_dir / 'checkpoints'}; training from the start",
                   err=True)
    if pool_only:
        _pool_only(config, taxonomy, out_dir, records, val_records, as_json)
        return
    try:
        recipe = train_adapter(records, taxonomy, config["model"], settings, out_dir,
                               decoding=DecodingSettings.from_mapping(config["decoding"]), lexical=lexical,
                               name=name, version=version, init_adapter=init_adapter, resume=resume,
                               instructions=INSTRUCTIONS)
    except (TrainingError, ModelError) as exc:
        hint = "" if settings.partial_labels or "no usable training records" not in str(exc) else f"; {PARTIAL_HINT}"
        fail(f"{exc}{hint}")
    result = recipe.train
    meta = read_adapter_meta(out_dir)
    if val_records and settings.eval_limit:
        from triage_core.triager import DecodingSettings, Triager

        from .evaluate import evaluate, headline

        triager = Triager.from_config(config, adapter=str(out_dir))
        subset = val_records[: settings.eval_limit]
        metrics, _ = evaluate(triager, subset, batch_size=DecodingSettings.from_mapping(config["decoding"]).batch_size,
                              progress=True, data_name=str(val))
        meta["metrics"] = {"val": {"n": len(subset), **headline(metrics["model"]),
                                   "validity_pct": metrics["model"].get("validity_pct"),
                                   "fields": {k: {"accuracy": v["accuracy"], "macro_f1": v["macro_f1"]}
                                              for k, v in metrics["model"]["fields"].items()}}}
        write_meta(out_dir, meta)
        _log_eval_metrics(out_dir, result.steps, meta["metrics"]["val"])
    summary = {"adapter": str(out_dir), "steps": result.steps, "examples": result.examples,
               "skipped": result.skipped, "seconds": round(result.seconds, 1),
               "tokens_per_second": meta["training"]["tokens_per_second"], "final_loss": round(result.final_loss, 4),
               "calibration_records": len(recipe.calibration_ids),
               "suggested_thresholds": meta.get("suggested_thresholds", {}), "metrics": meta.get("metrics", {})}
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
    else:
        click.echo(f"adapter written to {out_dir}: {result.steps} steps over {result.examples} examples "
                   f"({result.skipped} skipped) in {result.seconds:.0f} s, final loss {result.final_loss:.3f}")
        if meta.get("metrics"):
            click.echo(f"validation: {json.dumps(meta['metrics']['val'], ensure_ascii=False)}")


PARTIAL_HINT = ("train.partial_labels is false; set TRIAGE_TRAIN_PARTIAL_LABELS=true (or train.partial_labels: "
                "true in the config) to train on the fields each record does label")


def _labels_every_field(record: dict, taxonomy: Any) -> bool:
    return set(taxonomy.field_names) <= set(record.get("labels") or {})


def _pool_only(config: Any, taxonomy: Any, out_dir: Path, records: list, val_records: list, as_json: bool) -> None:
    from triage_core.model import ModelError, check_adapter
    from triage_core.triager import DecodingSettings

    from .recipe import fit_pooling

    if not val_records:
        fail("--pool-only needs --val: held-out records to calibrate the pooling on")
    try:
        check_adapter(out_dir, taxonomy.label_hash)
        recipe = fit_pooling(out_dir, taxonomy, config["model"], records, val_records, records + val_records,
                             decoding=DecodingSettings.from_mapping(config["decoding"]))
    except ModelError as exc:
        fail(str(exc))
    thresholds = {f: t.get("p95") for f, t in recipe.combination.thresholds.items()}
    if as_json:
        click.echo(json.dumps({"adapter": str(out_dir), "suggested_thresholds": thresholds}))
    else:
        click.echo(f"lexical expert and pooling written to {out_dir}; thresholds for 95% precision: {thresholds}")


@click.command("eval")
@click.option("--data", "data", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Labelled records (JSONL), or a CSV/JSONL export with --map-file.")
@click.option("--map-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Column and label mapping for a raw export (see config/maps/).")
@click.option("--train", "train_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Training records for the TF-IDF + SVM baseline shown beside the model.")
@click.option("--adapter", help="Adapter folder (overrides model.adapter).")
@click.option("--taxonomy", "taxonomy_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Taxonomy of the records and the adapter (default: the configured one).")
@click.option("--limit", type=int, help="Evaluate the first N records only.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Tickets triaged together.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write metrics.json, report.md and PNGs here.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@pass_state
def eval_command(state: CliState, data: Path, map_file: Path | None, train_path: Path | None,
                 adapter: str | None, taxonomy_path: Path | None, limit: int | None, batch_size: int,
                 report_dir: Path | None, as_json: bool) -> None:
    """Evaluate the model (and a TF-IDF + SVM baseline) on labelled tickets."""
    from triage_core.config import Config
    from triage_core.model import ModelError
    from triage_core.triager import Triager

    from .evaluate import evaluate, evaluated_fields, model_line, policy_snippet, summary_table, write_report
    from .records import RecordError, read_records

    config = state.load_config()
    taxonomy = _taxonomy(state, taxonomy_path)
    records = load_labelled(data, taxonomy, map_file)
    if limit:
        records = records[:limit]
    if not records:
        fail(f"{data}: no labelled records")
    if not evaluated_fields(taxonomy, records):
        fail(f"{data}: no record carries a label of the taxonomy's enum fields")
    train_records = None
    if train_path:
        try:
            train_records = read_records(train_path)
        except RecordError as exc:
            fail(str(exc))
    if taxonomy_path:
        data_cfg = dict(config.data)
        data_cfg["taxonomy"] = str(taxonomy_path.resolve())
        config = Config(data=data_cfg, base_dir=config.base_dir, source=config.source)
    try:
        triager = Triager.from_config(config, adapter=adapter)
    except ModelError as exc:
        fail(str(exc))
    metrics, preds = evaluate(triager, records, train=train_records, batch_size=batch_size, progress=True,
                              data_name=str(data))
    if report_dir:
        write_report(report_dir, metrics, records, preds, evaluated_fields(taxonomy, records))
    if as_json:
        click.echo(json.dumps(metrics, ensure_ascii=False))
    else:
        m = metrics["model"]
        click.echo(f"model: {model_line(metrics.get('model_info') or triager.model_info)}")
        click.echo(f"{m['n']} tickets, validity {m.get('validity_pct')}%, latency p50 "
                   f"{m.get('latency_ms', {}).get('p50')} ms, {m.get('tickets_per_second')} tickets/s")
        click.echo(summary_table(metrics))
        click.echo("\nTo auto-apply only what was 95% right on these tickets:\n" + policy_snippet(metrics))
        if report_dir:
            click.echo(f"report written to {report_dir}")
