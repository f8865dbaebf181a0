"""`ticket-triage serve`, `db upgrade`, `jobs list|retry`, `retrain` and `models list|promote|rollback`."""
from __future__ import annotations

import json
import signal
import sys

import click

from triage_core.cli import fail, get_config


@click.command("serve")
@click.option("--host", help="Bind address (default server.host, 127.0.0.1).")
@click.option("--port", type=int, help="Port (default server.port, 8080).")
@click.option("--workers", type=int, help="Worker threads (default server.workers).")
@click.pass_context
def serve_command(ctx: click.Context, host: str | None, port: int | None, workers: int | None) -> None:
    """Run the daemon with Flask's server (for production: gunicorn, see README)."""
    from triage_core.config import ConfigError
    from triage_core.model import ModelError
    from triage_core.taxonomy import TaxonomyError

    from .app import create_app, stop_workers
    from .base import ConnectorConfigError

    config = get_config(ctx)
    server = config["server"]
    try:
        app = create_app(config, workers=workers)
    except (ConfigError, ModelError, TaxonomyError, ConnectorConfigError) as exc:
        fail(str(exc))

    def shutdown(signum, frame):  # noqa: ARG001
        stop_workers(app)
        sys.exit(0)

    signal.signal(signal.SIGTERM, shutdown)
    click.echo(f"ticket-triage listening on http://{host or server['host']}:{port or server['port']} "
               f"(database {config['database']['url'].split('@')[-1]})", err=True)
    app.run(host=host or server["host"], port=port or server["port"], threaded=True, use_reloader=False)
    stop_workers(app)


@click.group("db")
def db_group() -> None:
    """The daemon's database (SQLite by default, PostgreSQL by URL)."""


@db_group.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply the Alembic migrations up to the newest version."""
    from triage_core.store import Store

    url = get_config(ctx)["database"]["url"]
    try:
        Store(url).upgrade()
    except Exception as exc:
        fail(f"database.url: cannot upgrade {url.split('@')[-1]}: {exc}".splitlines()[0])
    click.echo(f"database {url.split('@')[-1]} is at the newest version")


@click.group("jobs")
def jobs_group() -> None:
    """Inspect the durable queue and re-queue dead jobs."""


def _queue(ctx: click.Context):
    from triage_core.queue import JobQueue
    from triage_core.store import Store

    config = get_config(ctx)
    store = Store(config["database"]["url"])
    store.upgrade()
    return JobQueue.from_config(store, config["queue"])


@jobs_group.command("list")
@click.option("--state", type=click.Choice(["queued", "running", "done", "dead"]))
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs_list(ctx: click.Context, state: str | None, limit: int, as_json: bool) -> None:
    """List jobs (newest first) with their state, attempts and last error."""
    queue = _queue(ctx)
    jobs = [j.to_dict() for j in queue.list(state=state, limit=limit)]
    if as_json:
        click.echo(json.dumps({"depth": queue.depth(), "jobs": jobs}, default=str))
        return
    click.echo("depth: " + ", ".join(f"{k} {v}" for k, v in queue.depth().items()))
    for j in jobs:
        err = (j.get("last_error") or "").splitlines()[0][:80] if j.get("last_error") else ""
        click.echo(f"{j['id']:>6} {j['state']:<8} {j['connector']}:{j['ticket_ref']} attempts {j['attempts']} {err}")


@jobs_group.command("retry")
@click.argument("job_ids", nargs=-1, type=int)
@click.option("--all", "all_dead", is_flag=True, help="Re-queue every dead job.")
@click.pass_context
def jobs_retry(ctx: click.Context, job_ids: tuple[int, ...], all_dead: bool) -> None:
    """Re-queue dead jobs (by id, or --all)."""
    if not job_ids and not all_dead:
        fail("give job ids or --all")
    count = _queue(ctx).retry(None if all_dead else list(job_ids))
    click.echo(f"{count} job(s) re-queued")


@click.command("retrain")
@click.option("--now", "now", is_flag=True, help="Run one retraining immediately (with a progress bar).")
@click.option("--dry-run", is_flag=True, help="Gather and report what a run would train on; train nothing.")
@click.option("--timeout", type=float, default=None, help="Give up training after this many seconds.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def retrain_command(ctx: click.Context, now: bool, dry_run: bool, timeout: float | None, as_json: bool) -> None:
    """Retrain from closed tickets and corrections; promote the challenger only if it is not worse.

    The daemon runs this nightly when retrain.enabled is true; this command runs one by hand."""
    from tqdm import tqdm

    from triage_core.config import ConfigError
    from triage_core.registry import LockHeld
    from triage_core.store import Store
    from trainer.retrain import Retrainer

    from .base import ConnectorConfigError, load_connectors

    if not now and not dry_run:
        fail("say --now to run one, or --dry-run to gather and report only")
    config = get_config(ctx)
    store = Store(config["database"]["url"])
    store.upgrade()
    try:
        import os

        from triage_core.taxonomy import load_taxonomy

        connectors = load_connectors(config, os.environ, load_taxonomy(config.taxonomy_path))
    except (ConfigError, ConnectorConfigError) as exc:
        fail(str(exc))
    stages = ["gather"] if dry_run else ["gather", "train", "decide"]
    bar = tqdm(total=len(stages), desc="retrain", unit="stage", file=sys.stderr, disable=as_json)

    def stage(name: str) -> None:
        bar.set_postfix_str(name)
        if name != "gather":
            bar.update(1)

    try:
        report = Retrainer(config, store, connectors, stage=stage).run(dry_run=dry_run, timeout=timeout)
    except LockHeld as exc:
        fail(f"another retraining is running: {exc}")
    except Exception as exc:
        fail(f"retraining failed: {exc}".splitlines()[0])
    finally:
        bar.update(bar.total - bar.n)
        bar.close()
    if as_json:
        click.echo(json.dumps(report.to_dict(), default=str))
        return
    c = report.counts
    click.echo(f"run {report.id}: {report.state} in {report.seconds:.0f} s: {report.decision}")
    click.echo(f"gathered {c.get('gathered', 0)} ({c.get('sources', {})}), kept {c.get('kept', 0)}, "
               f"train {c.get('train', 0)} (+{c.get('synthetic', 0)} synthetic), test {c.get('test', 0)}")
    if c.get("dropped"):
        click.echo("dropped: " + ", ".join(f"{k} {v}" for k, v in c["dropped"].items()))
    if c.get("redacted"):
        click.echo("redacted: " + ", ".join(f"{k} {v}" for k, v in c["redacted"].items()))
    for who in ("champion", "challenger"):
        fields = report.metrics.get(who, {}).get("fields", {})
        if fields:
            click.echo(f"{who:<10} " + "  ".join(f"{n} F1 {f['macro_f1']:.3f}" for n, f in fields.items()))


@click.group("models")
def models_group() -> None:
    """The adapters the daemon knows: which one serves (the champion), promotion and rollback."""


def _registry(ctx: click.Context):
    from triage_core.registry import ModelRegistry
    from triage_core.store import Store

    store = Store(get_config(ctx)["database"]["url"])
    store.upgrade()
    return ModelRegistry(store)


@models_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models_list(ctx: click.Context, as_json: bool) -> None:
    """Every registered adapter, newest first, with its status and held-out metrics."""
    models = _registry(ctx).list()
    if as_json:
        click.echo(json.dumps([m.to_dict() for m in models]))
        return
    if not models:
        click.echo("no adapters registered: the configured adapter (model.adapter) serves")
    for m in models:
        fields = (m.metrics.get("heldout") or {}).get("fields", {})
        f1 = " ".join(f"{n}={f['macro_f1']:.2f}" for n, f in fields.items())
        click.echo(f"{m.id:>4} {m.tag:<28} {m.status:<10} {m.created_at:%Y-%m-%d %H:%M} {f1}")


@models_group.command("promote")
@click.argument("version")
@click.pass_context
def models_promote(ctx: click.Context, version: str) -> None:
    """Serve VERSION (id, name@version or version); running daemons reload it within model.reload_seconds."""
    from triage_core.registry import RegistryError

    try:
        m = _registry(ctx).promote(version)
    except RegistryError as exc:
        fail(str(exc))
    click.echo(f"{m.tag} is the champion")


@models_group.command("rollback")
@click.pass_context
def models_rollback(ctx: click.Context) -> None:
    """Retire the champion and serve the one promoted before it."""
    from triage_core.registry import RegistryError

    try:
        m = _registry(ctx).rollback()
    except RegistryError as exc:
        fail(str(exc))
    click.echo(f"rolled back: {m.tag} is the champion")
