"""`ticket-triage serve`, `worker`, `db upgrade`, `jobs list|retry`, `retrain` and
`models list|add|promote|rollback`."""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

from triage_core.cli import database_where, driver_missing, fail, get_config, open_store

#: Exit codes of a gunicorn server process that could not load the app or boot.
_GUNICORN_BOOT_FAILURES = (3, 4)


class _Stop(BaseException):
    """Raised by the SIGTERM handler of the development server to leave its loop (not an Exception: no handler in
    between swallows it)."""


def _load_app(config, workers: int | None, store=None):
    """The daemon's app from the one factory; a bad config, model, taxonomy or connector is a one-line error."""
    from triage_core.config import ConfigError
    from triage_core.model import ModelError
    from triage_core.taxonomy import TaxonomyError

    from .app import create_app
    from .base import ConnectorConfigError

    try:
        return create_app(config, workers=workers, store=store)
    except (ConfigError, ModelError, TaxonomyError, ConnectorConfigError) as exc:
        fail(str(exc))


def _started(app, what: str, config) -> str:
    model = app.extensions["triage"].triager.model_info
    threads = len(app.extensions["triage"].threads)
    return (f"{what} (database {database_where(config['database']['url'])}, model {model['base']}"
            f" + {model.get('adapter') or 'no adapter'}, {threads} worker thread(s))")


@click.command("serve")
@click.option("--host", help="Bind address (default server.host, 127.0.0.1).")
@click.option("--port", type=int, help="Port (default server.port, 8080).")
@click.option("--workers", type=int,
              help="Worker threads claiming jobs (default server.workers); 0: ingest webhooks and answer the API only, "
                   "`ticket-triage worker` processes do the work.")
@click.option("--dev", is_flag=True, help="Flask's development server instead of gunicorn.")
@click.pass_context
def serve_command(ctx: click.Context, host: str | None, port: int | None, workers: int | None, dev: bool) -> None:
    """Run the daemon: webhooks, the API and (unless --workers 0) worker threads, on gunicorn.

    One server process (the model is loaded once) with server.threads HTTP threads. SIGTERM stops intake, lets
    the batch in hand finish or hands its jobs back to the queue, and exits within server.shutdown_seconds."""
    config = get_config(ctx)
    server = config["server"]
    if port is not None and not 1 <= port <= 65535:
        fail(f"--port {port}: must be between 1 and 65535")
    if workers is not None and workers < 0:
        fail(f"--workers {workers}: must be 0 or more")
    host, port = host or server["host"], port or server["port"]
    store = open_store(config)  # migrated here, once, before any server process starts
    if dev:
        _serve_dev(config, store, host, port, workers)
        return
    store.dispose()  # no pooled connection crosses the fork into the server process
    from .server import DaemonServer

    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        DaemonServer(config, bind, load=lambda: _load_app(config, workers),
                     started=lambda app: _started(app, f"ticket-triage listening on http://{host}:{port}", config)
                     ).run()
    except SystemExit as exc:
        if exc.code in _GUNICORN_BOOT_FAILURES:
            sys.exit(2)  # the server process said why (one line) before it exited
        raise


def _serve_dev(config, store, host: str, port: int, workers: int | None) -> None:
    """Flask's development server (--dev): one process, the same app and the same clean stop."""
    import time

    from .server import stop_budget

    term: list[float] = []
    serving: list[bool] = []

    def on_term(signum, frame):  # noqa: ARG001
        term.append(time.monotonic())
        if serving:
            raise _Stop

    signal.signal(signal.SIGTERM, on_term)  # before the model loads: a stop during start-up is honoured after it
    app = _load_app(config, workers, store)
    serving.append(True)
    if term:
        app.extensions["triage"].stop(stop_budget(config, term[0]))
        _exit_now()
    click.echo(_started(app, f"ticket-triage listening on http://{host}:{port} (development server)", config),
               err=True)
    try:
        app.run(host=host, port=port, threaded=True, use_reloader=False)
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        app.extensions["triage"].stop(stop_budget(config, term[0] if term else time.monotonic()))
        store.dispose()
    _exit_now()


@click.command("worker")
@click.option("--threads", "threads", type=int,
              help="Worker threads claiming jobs (default server.workers, at least 1).")
@click.pass_context
def worker_command(ctx: click.Context, threads: int | None) -> None:
    """Claim and process jobs, run the pollers and the model watcher; serve no HTTP.

    Run as many as there are machines, next to `serve --workers 0`, all on one database (PostgreSQL: SKIP LOCKED
    claims and leases). SIGTERM stops claiming, lets the batch in hand finish or hands its jobs back, and exits
    within server.shutdown_seconds."""
    import threading
    import time

    from .server import stop_budget

    config = get_config(ctx)
    count = threads if threads is not None else max(1, int(config["server"]["workers"]))
    if count < 1:
        fail(f"--threads {count}: a worker needs at least 1 thread")
    stop = threading.Event()
    term: list[float] = []

    def on_signal(signum, frame):  # noqa: ARG001
        term.append(time.monotonic())
        stop.set()

    # Before the model loads: a stop asked for during start-up is honoured once the app is built.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    store = open_store(config)
    app = _load_app(config, count, store)
    click.echo(_started(app, "ticket-triage worker running", config), err=True)
    while not stop.wait(0.5):
        pass
    released = app.extensions["triage"].stop(stop_budget(config, term[0]))
    store.dispose()
    click.echo(f"ticket-triage worker stopped ({released} job(s) handed back)", err=True)
    _exit_now()


def _exit_now() -> None:
    """Exit 0 at once: everything is in the database, and the interpreter's teardown (torch, threads still in a
    cut batch) can take seconds that server.shutdown_seconds does not have."""
    import logging
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


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
    except ModuleNotFoundError as exc:
        fail(driver_missing(url, exc))
    except Exception as exc:
        fail(f"database.url: cannot upgrade {database_where(url)}: {exc}".splitlines()[0])
    click.echo(f"database {database_where(url)} is at the newest version")


@click.group("jobs")
def jobs_group() -> None:
    """Inspect the durable queue and re-queue dead jobs."""


def _queue(ctx: click.Context):
    from triage_core.queue import JobQueue

    config = get_config(ctx)
    return JobQueue.from_config(open_store(config), config["queue"])


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
    queue = _queue(ctx)
    if not all_dead:
        found = {i: queue.get(i) for i in job_ids}
        unknown = [str(i) for i, job in found.items() if job is None]
        if unknown:
            fail(f"no job with id {', '.join(unknown)} (see `ticket-triage jobs list`)")
        alive = [f"{i} ({job.state})" for i, job in found.items() if job.state != "dead"]
        if alive:
            fail(f"only dead jobs are re-queued; not dead: {', '.join(alive)}")
    count = queue.retry(None if all_dead else list(job_ids))
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

    from trainer.retrain import Retrainer
    from triage_core.config import ConfigError
    from triage_core.registry import LockHeld

    from .base import ConnectorConfigError, load_connectors

    if not now and not dry_run:
        fail("say --now to run one, or --dry-run to gather and report only")
    config = get_config(ctx)
    store = open_store(config)
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

    return ModelRegistry(open_store(get_config(ctx)))


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


@models_group.command("add")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--taxonomy", "taxonomy_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Check the adapter against this taxonomy (default: the configured one, as the daemon will).")
@click.option("--name", help="Register under this name (default: the adapter's own, from triage_adapter.json).")
@click.option("--version", "version", help="Register as this version (default: the adapter's own).")
@click.option("--promote", is_flag=True, help="Make it the champion at once (running daemons reload it).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models_add(ctx: click.Context, folder: Path, taxonomy_path: Path | None, name: str | None,
               version: str | None, promote: bool, as_json: bool) -> None:
    """Register an adapter folder that `train` wrote (with its metrics), so promote and rollback know it.

    The adapter must have been trained for the taxonomy the daemon serves: the configured one (or --taxonomy)."""
    from triage_core.model import ModelError, check_adapter
    from triage_core.registry import RegistryError
    from triage_core.taxonomy import TaxonomyError, load_taxonomy

    config = get_config(ctx)
    tax_file = taxonomy_path or config.taxonomy_path
    try:
        taxonomy = load_taxonomy(tax_file)
        meta = check_adapter(folder, taxonomy.label_hash)
    except (TaxonomyError, ModelError) as exc:
        fail(f"{exc} (taxonomy {tax_file})")
    if not meta:
        fail(f"{folder}: no triage_adapter.json; register only adapter folders that `ticket-triage train` wrote")
    base = str(meta.get("base") or config["model"]["base"])
    if base != str(config["model"]["base"]):
        fail(f"{folder} was trained on base {base!r} but model.base is {config['model']['base']!r}; "
             "set model.base to match")
    registry = _registry(ctx)
    try:
        info = registry.register(name or str(meta.get("name") or folder.resolve().name),
                                 version or str(meta.get("version") or "1"), base, str(folder.resolve()),
                                 meta.get("taxonomy_hash") or taxonomy.label_hash, adapter_metrics(meta))
        if promote:
            info = registry.promote(info.id)
    except RegistryError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(info.to_dict()))
        return
    click.echo(f"registered {info.tag} ({info.adapter_path}) for taxonomy {taxonomy.name!r}"
               + (": it is the champion" if promote else f"; serve it with `ticket-triage models promote {info.tag}`"))


def adapter_metrics(meta: dict) -> dict:
    """The registry's metrics from triage_adapter.json: validation metrics as held-out, and the training record."""
    metrics = dict(meta.get("metrics") or {})
    out = {"heldout": metrics["val"]} if isinstance(metrics.get("val"), dict) else {}
    for key in ("data", "training", "suggested_thresholds"):
        if meta.get(key):
            out[key] = meta[key]
    if metrics:
        out["adapter"] = metrics
    return out
