"""`ticket-triage generate`: synthetic labelled tickets, split into train/val/test JSONL files.

Registered through the `ticket_triage.commands` entry-point group (setup.cfg:
`generate = trainer.generate_cli:generate_command`). Errors are one line (`triage_core.cli.fail`); counts go to
stdout, the progress bar to stderr.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from triage_core.cli import CliState, fail, pass_state

from .splits import SPLITS


@click.command("generate")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for train.jsonl, val.jsonl and test.jsonl (created if missing, files overwritten).")
@click.option("--n", "n", type=int, default=3000, show_default=True,
              help="Number of records in all (before the split).")
@click.option("--seed", type=int, default=13, show_default=True, help="Same seed, same files, byte for byte.")
@click.option("--lang-mix", metavar="LANG=SHARE,...",
              help="Language shares, e.g. en=0.6,es=0.25,mix=0.15 (the default); mix is Spanglish.")
@click.option("--taxonomy", "taxonomy_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Taxonomy to label for (default: the configured one).")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_state
def generate_command(state: CliState, out_dir: Path, n: int, seed: int, lang_mix: str | None,
                     taxonomy_path: Path | None, as_json: bool) -> None:
    """Generate synthetic labelled IT tickets for training, split without near-duplicates across splits."""
    from triage_core.taxonomy import TaxonomyError, load_taxonomy

    from .records import write_records
    from .splits import split_records
    from .synthetic import generate, parse_lang_mix

    if n < 1:
        fail("--n must be at least 1")
    shares = None
    if lang_mix is not None:
        try:
            shares = parse_lang_mix(lang_mix)
        except ValueError as exc:
            fail(f"--lang-mix: {exc}")
    path = taxonomy_path or state.load_config().taxonomy_path
    try:
        taxonomy = load_taxonomy(path)
    except TaxonomyError as exc:
        fail(str(exc))

    records = generate(taxonomy, n, seed=seed, lang_mix=shares, progress=True)
    if len(records) < n:
        click.echo(f"warning: only {len(records)} distinct tickets could be made (asked for {n})", err=True)
    parts = split_records(records, seed=seed)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        counts = {name: write_records(out_dir / f"{name}.jsonl", part)
                  for name, part in zip(SPLITS, parts, strict=True)}
    except OSError as exc:
        fail(f"{out_dir}: {exc.strerror or exc}")

    if as_json:
        click.echo(json.dumps({"out": str(out_dir), "taxonomy": taxonomy.name, "seed": seed,
                               "total": len(records), "counts": counts}, ensure_ascii=False))
    else:
        for name in SPLITS:
            click.echo(f"{name:>5}: {counts[name]:>6,} records  {out_dir / f'{name}.jsonl'}")
        click.echo(f"total: {len(records):>6,} records (taxonomy {taxonomy.name!r}, seed {seed})")
