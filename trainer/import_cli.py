"""`ticket-triage import` and `ticket-triage taxonomy infer`: the command-line side of trainer.importer/infer.

Registered through entry points (setup.cfg): `import` in ticket_triage.commands, `infer` in
ticket_triage.taxonomy_commands. Every error is one line (`triage_core.cli.fail`); reports go to stdout, the
progress bar to stderr.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from triage_core.cli import CliState, fail, pass_state

from .importer import (
    ImportDataError,
    LabelMap,
    load_label_map_file,
    load_map_file,
    merge_label_maps,
    parse_label_map_option,
    parse_map_option,
)
from .records import SOURCES

_MAP_HELP = ("FIELD=COLUMN, repeatable: text (join columns with +, e.g. text=\"Short description+Description\"), "
             "id, language, closed_at, or a taxonomy field (category=\"Category\").")
_MAP_FILE_HELP = ("YAML with 'columns' ({field: column}) and 'labels' ({field: {old: new}}), e.g. "
                  "config/maps/endava.yaml; --map and --label-map override it.")
_LABEL_MAP_HELP = "FIELD:OLD=NEW, repeatable: rename a label value, e.g. request_type:1=\"Service Request\"."


def _mapping_and_labels(map_file: Path | None, maps: tuple[str, ...], label_map_file: Path | None
                        ) -> tuple[dict[str, list[str]], LabelMap]:
    """Columns and label map from --map-file, then --label-map-file, then --map (the last wins per field)."""
    columns: dict[str, list[str]] = {}
    labels: LabelMap = {}
    if map_file is not None:
        loaded = load_map_file(map_file)
        columns, labels = dict(loaded.columns), loaded.labels
    for spec in maps:
        fld, cols = parse_map_option(spec)
        columns[fld] = cols
    if label_map_file is not None:
        labels = merge_label_maps(labels, load_label_map_file(label_map_file))
    return columns, labels


def refuse_overwrite(path: Path | None, force: bool, option: str) -> None:
    """A file the user already has is replaced only when they said --force (a taxonomy is hard to rebuild)."""
    if path is not None and path.exists() and not force:
        fail(f"{option} {path}: the file exists; pass --force to overwrite it, or choose another path")


def _check_input(path: Path) -> None:
    if not path.exists():
        fail(f"{path}: file not found")
    if not path.is_file():
        fail(f"{path}: not a file")


@click.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="JSONL of labelled-ticket records to write (without it: only the report, a dry run).")
@click.option("--map", "maps", multiple=True, metavar="FIELD=COLUMN", help=_MAP_HELP)
@click.option("--map-file", type=click.Path(dir_okay=False, path_type=Path), help=_MAP_FILE_HELP)
@click.option("--label-map", "label_maps", multiple=True, metavar="FIELD:OLD=NEW", help=_LABEL_MAP_HELP)
@click.option("--label-map-file", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML {field: {old value: taxonomy value}}.")
@click.option("--drop-rows", is_flag=True,
              help="Drop a whole row when one of its labels is not in the taxonomy (default: drop that label).")
@click.option("--encoding", help="Force the file encoding (default: UTF-8 with or without BOM, else cp1252).")
@click.option("--source", help=f"The records' source field ({', '.join(SOURCES)}; default: csv or jsonl).")
@click.option("--taxonomy", "taxonomy_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Taxonomy to check labels against (default: the configured one).")
@click.option("--test-out", type=click.Path(dir_okay=False, path_type=Path),
              help="Hold out a test file here (near-duplicates stay on one side); --out keeps the rest.")
@click.option("--test-share", type=click.FloatRange(0.05, 0.5), default=0.2, show_default=True,
              help="Share of the records held out with --test-out.")
@click.option("--force", is_flag=True, help="Overwrite --out and --test-out if they exist.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_state
def import_command(state: CliState, file: Path, out: Path | None, maps: tuple[str, ...], map_file: Path | None,
                   label_maps: tuple[str, ...], label_map_file: Path | None, drop_rows: bool,
                   encoding: str | None, source: str | None, taxonomy_path: Path | None, test_out: Path | None,
                   test_share: float, force: bool, as_json: bool) -> None:
    """Import closed tickets (CSV or JSONL export) as labelled-ticket records, checked against the taxonomy.

    Labels outside the taxonomy are reported and dropped (or mapped with --label-map); duplicates and rows
    without text are dropped and counted.
    """
    from triage_core.taxonomy import TaxonomyError, load_taxonomy

    from .importer import open_import
    from .records import write_records

    _check_input(file)
    if source is not None and source not in SOURCES:
        fail(f"--source {source!r}: expected one of {', '.join(SOURCES)}")
    if out is not None and out.resolve() == file.resolve():
        fail("--out must not be the input file")
    refuse_overwrite(out, force, "--out")
    refuse_overwrite(test_out, force, "--test-out")
    try:
        taxonomy = load_taxonomy(taxonomy_path or state.load_config().taxonomy_path)
    except TaxonomyError as exc:
        fail(str(exc))
    try:
        mapping, labels = _mapping_and_labels(map_file, maps, label_map_file)
        cli_labels: LabelMap = {}
        for spec in label_maps:
            fld, old, new = parse_label_map_option(spec, taxonomy)
            cli_labels.setdefault(fld, {})[old] = new
        labels = merge_label_maps(labels, cli_labels)
        with open_import(file, mapping, taxonomy, label_map=labels, drop_rows=drop_rows, encoding=encoding,
                         source=source, progress=True) as imp:
            if out is None:
                for _ in imp.records():
                    pass
            else:
                try:
                    write_records(out, imp.records())
                except BaseException:
                    # write_records writes OUT.tmp and renames it; leave no half-written file behind.
                    out.with_name(out.name + ".tmp").unlink(missing_ok=True)
                    raise
    except ImportDataError as exc:
        fail(str(exc))
    report = imp.report
    held = _hold_out(out, test_out, test_share) if test_out is not None and out is not None and report.written \
        else None
    if as_json:
        data = report.to_dict()
        data["out"] = str(out) if out else None
        data["test_out"] = {"path": str(test_out), "records": held} if held is not None else None
        click.echo(json.dumps(data, ensure_ascii=False))
    else:
        click.echo(report.format_text())
        click.echo(f"records written to {out}" if out else "dry run: no --out, nothing written")
        if held is not None:
            click.echo(f"{held} records held out in {test_out} (train on {out}, evaluate on {test_out})")
    if report.written == 0:
        if out is not None:
            out.unlink(missing_ok=True)
        fail("no records left after import (see the report)", code=1)


def _hold_out(out: Path, test_out: Path, share: float) -> int:
    """Move a seeded, near-duplicate-aware share of `out` into `test_out`; returns how many records moved."""
    from .records import read_records, write_records
    from .splits import split_records

    if test_out.resolve() == out.resolve():
        fail("--test-out must differ from --out")
    records = read_records(out)
    train, _, test = split_records(records, ratios=(1.0 - share, 0.0, share))
    write_records(out, train)
    write_records(test_out, test)
    return len(test)


@click.command("infer")
@click.option("--data", "data", type=click.Path(path_type=Path),
              help="Labelled closed tickets (CSV or JSONL).")
@click.option("--map", "maps", multiple=True, metavar="FIELD=COLUMN", help=_MAP_HELP)
@click.option("--map-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Same file as for import: its columns, and its labels to merge values before counting.")
@click.option("--label-map", "label_maps", multiple=True, metavar="FIELD:OLD=NEW",
              help="Rename values before counting (to merge rare labels), repeatable.")
@click.option("--label-map-file", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML {field: {old value: new value}}.")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the taxonomy YAML here (default: print it).")
@click.option("--min-count", type=click.IntRange(min=1), default=5, show_default=True,
              help="Values seen on fewer tickets are flagged RARE.")
@click.option("--name", help="Taxonomy name (default: inferred-<file name>).")
@click.option("--encoding", help="Force the file encoding (default: UTF-8 with or without BOM, else cp1252).")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists (say, the taxonomy the daemon serves).")
@click.option("--json", "as_json", is_flag=True, help="Print the counts (and the YAML when no --out) as JSON.")
def infer_command(data: Path | None, maps: tuple[str, ...], map_file: Path | None, label_maps: tuple[str, ...],
                  label_map_file: Path | None, out: Path | None, min_count: int, name: str | None,
                  encoding: str | None, force: bool, as_json: bool) -> None:
    """Draft a taxonomy YAML from the labels in closed tickets, with counts and rare values flagged."""
    from .infer import infer_taxonomy

    if data is None:
        fail("give the labelled tickets with --data FILE")
    _check_input(data)
    refuse_overwrite(out, force, "--out")
    try:
        mapping, labels = _mapping_and_labels(map_file, maps, label_map_file)
        cli_labels: LabelMap = {}
        for spec in label_maps:
            fld, old, new = parse_label_map_option(spec)
            cli_labels.setdefault(fld, {})[old] = new
        result = infer_taxonomy(data, mapping, min_count=min_count, label_map=merge_label_maps(labels, cli_labels),
                                encoding=encoding, name=name, progress=True)
    except ImportDataError as exc:
        fail(str(exc))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(result.yaml, encoding="utf-8")
    if as_json:
        payload = result.to_dict()
        if out is not None:
            payload.pop("yaml")
            payload["out"] = str(out)
        click.echo(json.dumps(payload, ensure_ascii=False))
    elif out is None:
        click.echo(result.yaml, nl=False)
    else:
        rare = sum(len(v) for v in result.rare.values())
        click.echo(f"wrote {out}: " + ", ".join(f"{f} {len(c)} values" for f, c in result.counts.items())
                   + f" from {result.rows_read:,} rows; {rare} rare values flagged")
