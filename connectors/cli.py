"""`ticket-triage serve`, `ticket-triage db upgrade` and `ticket-triage jobs list|retry`."""
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
