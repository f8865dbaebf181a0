"""The `ticket-triage` command group.

Like `flask`, the group knows none of its subcommands by import: each package registers its own under the
`ticket_triage.commands` entry-point group (triage_core: triage, taxonomy; trainer: generate, import, train, eval,
...; connectors: serve, db, jobs, ...), and `taxonomy` subcommands under `ticket_triage.taxonomy_commands`
(trainer: infer). A broken plug-in is reported and skipped, not fatal.

The group hands every subcommand one `CliState` (as `flask` hands its commands a `ScriptInfo`): take it with
`@pass_state`, and call `state.load_config()` for the config named by `--config`::

    @click.command("hello")
    @pass_state
    def hello_command(state: CliState) -> None:
        click.echo(state.load_config().taxonomy_path)
"""
from __future__ import annotations

import json
import logging
import sys
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import click

from .config import Config, ConfigError, load_config

ENTRY_POINT_GROUP = "ticket_triage.commands"


class PluginGroup(click.Group):
    """A command group that also loads subcommands from an entry-point group, on first use."""

    def __init__(self, *args: Any, entry_point_group: str = ENTRY_POINT_GROUP, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entry_point_group = entry_point_group

    def _plugins(self) -> dict[str, metadata.EntryPoint]:
        return {ep.name: ep for ep in metadata.entry_points(group=self.entry_point_group)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        ep = self._plugins().get(name)
        if ep is None:
            return None
        try:
            return ep.load()
        except Exception as exc:  # a broken plug-in must not take the whole CLI down
            click.echo(f"warning: cannot load command {name!r} from {ep.value}: {exc}", err=True)
            return None


def fail(message: str, code: int = 2) -> None:
    """Exit with a one-line reason."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@dataclass
class CliState:
    """What the `ticket-triage` group knows for its subcommands: the `--config` path, and the config it names once
    loaded. A command invoked without the group (a test, another tool's group) gets a fresh one: embedded
    defaults, or $TRIAGE_CONFIG where `load_config` reads it."""

    config_path: str | None = None
    _config: Config | None = field(default=None, repr=False)

    def load_config(self) -> Config:
        """The config named by --config (or $TRIAGE_CONFIG), loaded once per invocation; a bad one exits with
        its one-line reason."""
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                fail(str(exc))
        return self._config


#: Passes the invocation's `CliState` to a command as its first argument (creating one where the group did not).
pass_state = click.make_pass_decorator(CliState, ensure=True)


def get_config(ctx: click.Context) -> Config:
    """The invocation's config, for commands that take the click context rather than `@pass_state`."""
    return ctx.ensure_object(CliState).load_config()


def database_where(url: str) -> str:
    """The database URL without its credentials, for messages."""
    return url.split("@")[-1]


def open_store(config: Config, upgrade: bool = True) -> Any:
    """The configured database (migrated unless `upgrade` is false); a missing driver or an unreachable server
    is a one-line error naming the fix, in every command that opens it."""
    from sqlalchemy.exc import SQLAlchemyError

    from .store import Store

    url = config["database"]["url"]
    try:
        store = Store(url)
        if upgrade:
            store.upgrade()
    except ModuleNotFoundError as exc:
        fail(driver_missing(url, exc))
    except SQLAlchemyError as exc:
        fail(f"database.url: cannot open {database_where(url)}: {str(exc).splitlines()[0]}")
    return store


def driver_missing(url: str, exc: ModuleNotFoundError) -> str:
    """One line naming the package that provides the missing database driver."""
    name = exc.name or str(exc)
    fix = "pip install 'ticket-triage[postgres]'" if "psycopg" in name else f"pip install {name}"
    return f"database.url {database_where(url)}: the database driver {name!r} is not installed; {fix}"


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="TRIAGE_CONFIG",
              help="YAML config file (default: embedded defaults; env TRIAGE_CONFIG).")
@click.option("-v", "--verbose", count=True,
              help="More logging (-v info, -vv debug), and third-party warnings (bitsandbytes, transformers).")
@click.version_option(package_name="ticket-triage")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """Triage IT tickets with a small fine-tuned LLM and schema-guided decoding."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        quiet_third_party()
    ctx.obj = CliState(config_path=config_path)


#: Libraries whose warnings (missing optional kernels, deprecations) say nothing about the user's input.
THIRD_PARTY_LOGGERS = ("transformers", "huggingface_hub", "accelerate", "bitsandbytes", "peft", "torch",
                       "datasets", "tensorboard")


def quiet_third_party() -> None:
    """Hide third-party noise: their loggers below ERROR and Python warnings (FutureWarning, UserWarning...).

    The CLI's own messages are not Python warnings (they are echoed or logged by triage_core, trainer and
    connectors loggers), so they stay; `--verbose` shows everything."""
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.simplefilter("ignore")


def main() -> None:
    cli(prog_name="ticket-triage")


# --- triage ---------------------------------------------------------------------------------------------------

def _read_jsonl_texts(path: Path) -> Iterator[tuple[str, str]]:
    """(id, text) for each line of a JSONL file of {"id", "text"} objects or plain strings."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        fail(f"{path}: {exc.strerror}")
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(f"{path}: not UTF-8 (byte {exc.start}); convert it first, e.g. iconv -f cp1252 -t utf-8")
    for n, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            fail(f"{path}:{n}: not JSON ({exc.msg})")
        if isinstance(item, str):
            yield str(n), item
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            yield str(item.get("id", n)), item["text"]
        else:
            fail(f"{path}:{n}: expected an object with a 'text' string")


def _human(result: dict[str, Any], alternatives: int = 3) -> str:
    """The triage as aligned lines; with distributions, each enum field's next most likely values under it."""
    lines = []
    for name, value in result["ticket"].items():
        conf = result["confidence"].get(name)
        lines.append(f"{name:>18}: {value}" + (f"  ({conf:.0%})" if conf is not None else ""))
        dist = (result.get("distributions") or {}).get(name)
        if dist:
            others = sorted(((p, v) for v, p in dist.items() if v != value), reverse=True)[:alternatives]
            if others:
                lines.append(f"{'':>18}  also: " + ", ".join(f"{v} ({p:.0%})" for p, v in others))
    model = result["model"]
    lines.append(f"{'model':>18}: {model['base']}" + (f" + {model['adapter']}" if model.get("adapter") else ""))
    lines.append(f"{'latency':>18}: {result['latency_ms']} ms")
    return "\n".join(lines)


@click.command("triage")
@click.argument("text", required=False)
@click.option("--file", "file_", type=click.Path(dir_okay=False, path_type=Path),
              help="JSONL of {\"id\", \"text\"} objects; prints one result per line.")
@click.option("--adapter", help="LoRA adapter folder (overrides model.adapter).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--distributions", is_flag=True,
              help="Show each enum field's alternatives (with --json: the full distribution).")
@pass_state
def triage_command(state: CliState, text: str | None, file_: Path | None, adapter: str | None, as_json: bool,
                   distributions: bool) -> None:
    """Triage TEXT (or - for stdin, or --file for JSONL) and print the result."""
    if file_ is None and text is None:
        fail("give the ticket text, - for stdin, or --file FILE.jsonl")
    if file_ is not None and text is not None:
        fail("give either TEXT or --file, not both")
    if file_ is not None:
        items = list(_read_jsonl_texts(file_))
        if not items:
            fail(f"{file_}: no tickets")
    else:
        if text == "-":
            data = sys.stdin.buffer.read()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                fail(f"stdin is not UTF-8 (byte {exc.start})")
        items = [("1", text or "")]
    from .text import TextProblem, ticket_text

    cleaned = []
    for ident, body in items:  # the same check as the daemon's intake: argv can carry undecodable bytes
        try:
            cleaned.append((ident, ticket_text(body)))
        except TextProblem:
            fail(f"ticket {ident}: empty text (no letters or digits), nothing to triage")
    items = cleaned

    config = state.load_config()
    from .model import ModelError
    from .taxonomy import TaxonomyError
    from .triager import TriageError, Triager

    try:
        triager = Triager.from_config(config, adapter=adapter)
    except (ModelError, TaxonomyError, ConfigError) as exc:
        fail(str(exc))
    limit = triager.settings.max_ticket_tokens
    for ident, body in items:
        enc = triager.codec.encode_ticket(body, limit)
        if enc.truncated:
            click.echo(f"warning: ticket {ident}: {enc.original_tokens} tokens, only the first {limit} are read "
                       "(decoding.max_ticket_tokens)", err=True)
    logging.getLogger("triage_core.triager").setLevel(logging.ERROR)  # warned above already
    try:
        results = triager.triage_many([body for _, body in items])
    except TriageError as exc:
        fail(str(exc), code=1)
    for (ident, _), result in zip(items, results, strict=True):
        data = result.to_dict(distributions=distributions)
        if file_ is not None:
            data = {"id": ident, **data}
        if as_json or file_ is not None:
            click.echo(json.dumps(data, ensure_ascii=False))
        else:
            click.echo(_human(data))


# --- taxonomy -------------------------------------------------------------------------------------------------

@click.group("taxonomy", cls=PluginGroup, entry_point_group="ticket_triage.taxonomy_commands")
def taxonomy_group() -> None:
    """Inspect and check the taxonomy (the labels the model may write)."""


@taxonomy_group.command("check")
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@pass_state
def taxonomy_check(state: CliState, path: Path | None, as_json: bool) -> None:
    """Validate a taxonomy file (default: the configured one) and summarise it."""
    from .taxonomy import TaxonomyError, load_taxonomy

    path = path or state.load_config().taxonomy_path
    try:
        tax = load_taxonomy(path)
    except TaxonomyError as exc:
        fail(str(exc))
    summary = {"file": str(path), "name": tax.name, "hash": tax.label_hash,
               "fields": {f.name: (f.kind if f.kind == "text" else len(f.values)) for f in tax.fields}}
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
    else:
        click.echo(f"{path}: ok, taxonomy {tax.name!r} ({tax.label_hash})")
        for name, info in summary["fields"].items():
            click.echo(f"  {name}: {info if info == 'text' else f'{info} values'}")


@taxonomy_group.command("schema")
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@pass_state
def taxonomy_schema(state: CliState, path: Path | None) -> None:
    """Print the JSON Schema (draft 2020-12) derived from the taxonomy."""
    from .schema import json_schema
    from .taxonomy import TaxonomyError, load_taxonomy

    try:
        tax = load_taxonomy(path or state.load_config().taxonomy_path)
    except TaxonomyError as exc:
        fail(str(exc))
    click.echo(json.dumps(json_schema(tax), indent=2, ensure_ascii=False))
