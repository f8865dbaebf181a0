"""The daemon's Flask app factory: the composition root that wires config, store, queue, model, policy,
connectors and workers together.

`ticket-triage serve` runs it on gunicorn (one process per model copy, server.threads HTTP threads); `ticket-triage
worker` builds the same app and serves no HTTP. Scale out with more processes on the same database, which the
queue's leases and SKIP LOCKED claims make safe.
"""
from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from datetime import timezone
from typing import Mapping

from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from triage_core.config import Config, load_config
from triage_core.policy import Policy
from triage_core.queue import JobQueue, LeaseLost
from triage_core.registry import ModelRegistry
from triage_core.store import Store
from triage_core.text import TextProblem, ticket_text
from triage_core.triager import EmptyTicketError, TriageError, Triager

from .base import (Connector, FieldChange, PollNow, TicketReader, WebhookRejected, check_field_maps,
                   checked_event, load_connectors, retriage_info)
from .metrics import Metrics
from .polling import add_pollers
from .reload import ModelWatcher
from .worker import WorkerContext, start_workers

log = logging.getLogger(__name__)


def _error(status: int, reason: str) -> tuple[Response, int]:
    return jsonify({"error": reason}), status


def create_app(config: Config | None = None, *, triager: Triager | None = None, store: Store | None = None,
               connectors: Mapping[str, Connector] | None = None, env: Mapping[str, str] | None = None,
               workers: int | None = None) -> Flask:
    """Build the app. Anything not passed is built from `config` (the defaults and TRIAGE_* variables).

    :param config: the daemon's settings; None loads the defaults, the file named by $TRIAGE_CONFIG and TRIAGE_*.
    :param triager: the model to serve (default: the registry's champion, else `model.adapter`), so tests and
        embedders load it once.
    :param store: the database (default: `database.url`); it is migrated to the latest schema either way.
    :param connectors: name -> Connector (default: the enabled ones in `connectors`, found by entry point); their
        field maps are checked against the taxonomy.
    :param env: where secrets and tokens are read (default: os.environ).
    :param workers: worker threads (default `server.workers`); 0 serves the ingest and the API only (no jobs,
        pollers, retraining or model watcher in this process).

    For a test or an embedding host, with a connector of one's own and no worker threads::

        app = create_app(config, connectors={"acme": AcmeConnector()}, workers=0, env={"TRIAGE_API_TOKEN": "t"})
        app.test_client().post("/webhooks/acme", data=body, headers=signed)   # 202: queued
        app.test_client().get("/v1/jobs", headers={"Authorization": "Bearer t"})
    """
    env = os.environ if env is None else env
    config = config or load_config(env=env)
    server = config["server"]
    app = Flask("ticket_triage")
    max_body = int(server["max_body_bytes"])
    # One byte more than allowed, so a chunked body (no Content-Length) that is too large is seen as such by
    # read_body instead of being cut silently at the limit (werkzeug stops reading there).
    app.config["MAX_CONTENT_LENGTH"] = max_body + 1

    store = store or Store(config["database"]["url"])
    store.upgrade()
    queue = JobQueue.from_config(store, config["queue"])
    count = int(server["workers"]) if workers is None else workers
    watcher = ModelWatcher(ModelRegistry(store), lambda m: Triager.from_config(config, adapter=m.adapter_path),
                           interval=float(config["model"]["reload_seconds"]),
                           on_swap=lambda t: metrics.set_model(t.model_info))
    following = count > 0 and watcher.interval > 0
    if triager is None:  # the recorded champion if there is one, else the configured adapter
        triager = (watcher.initial() if following else None) or Triager.from_config(config)
    policy = Policy.from_config(config["policy"], triager.taxonomy)
    if connectors is None:
        connectors = load_connectors(config, env, triager.taxonomy)
    else:
        connectors = dict(connectors)
        check_field_maps(connectors, triager.taxonomy)
    metrics = Metrics(queue.depth)
    metrics.set_model(triager.model_info)
    if policy.shadow:
        log.warning("shadow mode is on (policy.shadow): tickets are triaged and stored, nothing is written back")
    api_token = env.get(server["api_token_env"], "")
    if not api_token:
        log.warning("%s is not set: the /v1 API answers 503 until it is", server["api_token_env"])

    ctx = WorkerContext(store=store, queue=queue, triager=triager, policy=policy, connectors=connectors,
                        metrics=metrics, batch_size=triager.settings.batch_size,
                        poll_interval=float(config["queue"]["poll_interval_seconds"]))
    app.extensions["triage"] = ctx
    app.extensions["triage_config"] = config  # the server's clean stop reads server.shutdown_seconds
    threads, stop = start_workers(ctx, count) if count > 0 else ([], threading.Event())
    app.extensions["triage_workers"] = (threads, stop)
    # One scheduler for the daemon's timed work: polls and the nightly retraining (none without workers).
    scheduler = BackgroundScheduler(timezone=timezone.utc) if count > 0 else None
    pollers = add_pollers(scheduler, connectors, store, queue, policy)
    app.extensions["triage_pollers"] = pollers
    if scheduler is not None:
        schedule_retraining(scheduler, config, store, connectors)
        if scheduler.get_jobs():
            scheduler.start()
    app.extensions["triage_scheduler"] = scheduler if scheduler is not None and scheduler.running else None
    watcher.ctx = ctx
    app.extensions["triage_watcher"] = watcher
    if following:
        watcher.start()

    def require_token() -> tuple[Response, int] | None:
        if not api_token:
            return _error(503, f"the API is disabled: set {server['api_token_env']}")
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), api_token.encode()):
            return _error(401, "missing or invalid bearer token")
        return None

    def read_body(cache: bool = False) -> bytes:
        """The whole request body, or 413 when it is over server.max_body_bytes (with or without a length)."""
        body = request.get_data(cache=cache)
        if len(body) > max_body:
            raise RequestEntityTooLarge(f"body larger than {max_body} bytes")
        return body

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        connector = (request.view_args or {}).get("connector") if request else None
        if connector and request.path.startswith("/webhooks/"):
            metrics.webhooks_refused.labels(connector, str(exc.code)).inc()
        return _error(exc.code or 500, exc.description or exc.name)

    @app.post("/webhooks/<connector>")
    def webhook(connector: str):
        conn = connectors.get(connector)
        if conn is None:
            return _error(404, f"unknown connector {connector!r}")
        metrics.webhooks_received.labels(connector).inc()
        body = read_body()
        try:
            tickets = conn.parse_webhook(body, request.headers, request.args)
            hint_only = isinstance(conn, TicketReader)  # its text is checked once read back, in the worker
            tickets = [checked_event(t, text_required=not hint_only) for t in tickets]
        except WebhookRejected as exc:
            metrics.webhooks_refused.labels(connector, str(exc.status)).inc()
            log.info("webhook %s refused: %d %s", connector, exc.status, exc.reason)
            return _error(exc.status, exc.reason)
        events = []
        for ticket in tickets:
            if isinstance(ticket, FieldChange):
                events.append(record_change(ticket))
                continue
            if isinstance(ticket, PollNow):
                runner = pollers.get(connector)
                if runner is not None:
                    runner.trigger()
                events.append({"poll": runner is not None})
                continue
            # A re-triage hint without its project (a Zoho thread) is filtered by the worker once it is read back.
            if not policy.filter.accepts(ticket) and not (ticket.project is None and retriage_info(ticket)):
                events.append({"ref": ticket.ref, "filtered": True})
                continue
            res = queue.submit(ticket)
            if not res.created:
                metrics.webhooks_duplicate.labels(connector).inc()
            events.append({"ref": ticket.ref, "event_id": res.event_id, "job_id": res.job_id,
                           "duplicate": not res.created})
        log.info("webhook %s: %d event(s) accepted", connector, len(events))
        # 202 unless the vendor requires another success status (Zoho Desk counts anything but 200 as failed)
        return jsonify({"accepted": events}), int(getattr(conn, "webhook_status", 202))

    @app.get("/webhooks/<connector>")
    def webhook_check(connector: str):
        """Some vendors (Zoho Desk) check a webhook URL with a GET before saving the subscription."""
        if connector not in connectors:
            return _error(404, f"unknown connector {connector!r}")
        return jsonify({"connector": connector, "ok": True})

    def record_change(change: FieldChange) -> dict:
        """A human edited a field: a correction when it overrides a value we wrote, otherwise nothing."""
        written = store.written_value(change.connector, change.ref, change.field)
        if written is None or change.new == written[1]:
            return {"ref": change.ref, "field": change.field, "correction": False}
        if store.last_correction(change.connector, change.ref, change.field) == change.new:
            # a redelivered update, or the same human choice again: the training label is already recorded
            return {"ref": change.ref, "field": change.field, "correction": False, "duplicate": True}
        store.record_correction(change.connector, change.ref, change.field, written[1], change.new,
                                result_id=written[0])
        metrics.corrections.labels(change.connector, change.field).inc()
        log.info("correction on %s %s: %s", change.connector, change.ref, change.field)
        return {"ref": change.ref, "field": change.field, "correction": True}

    @app.post("/v1/triage")
    def triage():
        denied = require_token()
        if denied:
            return denied
        read_body(cache=True)
        # The body is JSON whatever the Content-Type says (curl -d sends form-urlencoded unless told otherwise).
        data = request.get_json(force=True, silent=True)
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            sent = request.mimetype or "no Content-Type header"
            return _error(400, f'expected a JSON object {{"text": "..."}} (body sent as {sent})')
        try:
            result = ctx.triager.triage(ticket_text(data["text"]))
        except TextProblem as exc:
            return _error(400, str(exc))
        except EmptyTicketError:
            return _error(400, "empty text, nothing to triage")
        except TriageError as exc:
            return _error(500, str(exc))
        metrics.triage_latency.observe(result.latency_ms / 1000)
        return jsonify(result.to_dict(distributions=bool(data.get("distributions"))))

    @app.get("/v1/tickets/<connector>/<path:ref>")
    def ticket(connector: str, ref: str):
        denied = require_token()
        if denied:
            return denied
        history = store.ticket_history(connector, ref)
        if not history:
            return _error(404, f"no ticket {ref!r} from {connector!r}")
        return jsonify(history)

    @app.get("/v1/jobs")
    def jobs():
        denied = require_token()
        if denied:
            return denied
        state = request.args.get("state")
        if state not in (None, "queued", "running", "done", "dead"):
            return _error(400, "state must be queued, running, done or dead")
        return jsonify({"depth": queue.depth(), "jobs": [j.to_dict() for j in queue.list(state=state, limit=200)]})

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz():
        checks = {"database": store.ping(), "model": ctx.triager is not None,
                  "workers": all(t.is_alive() for t in threads), "connectors": sorted(connectors)}
        ok = checks["database"] and checks["model"] and checks["workers"]
        return jsonify({"ready": ok, **checks, "model_info": ctx.triager.model_info}), (200 if ok else 503)

    @app.get("/metrics")
    def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    from .console import init_console  # the review console at /console (console.enabled)

    init_console(app, ctx, config, env)
    return app


def schedule_retraining(scheduler: BackgroundScheduler, config: Config, store: Store,
                        connectors: Mapping[str, Connector]) -> Job | None:
    """The nightly retraining job (retrain.cron, local time) when retrain.enabled; every instance schedules it,
    the database lock lets one run and the others skip."""
    if not config["retrain"]["enabled"]:
        return None
    from apscheduler.triggers.cron import CronTrigger

    from trainer.retrain import Retrainer  # the daemon is the composition root: it wires the trainer in
    from triage_core.registry import LockHeld

    def run() -> None:
        try:
            Retrainer(config, store, connectors).run()
        except LockHeld as exc:
            log.info("nightly retraining skipped: %s", exc)
        except Exception:
            log.exception("nightly retraining failed (recorded in retrain_runs)")

    return scheduler.add_job(run, CronTrigger.from_crontab(config["retrain"]["cron"]), id="retrain",
                             max_instances=1, coalesce=True)


def stop_workers(app: Flask, timeout: float = 10.0) -> int:
    """Stop the app's timed work (polls, retraining, the model watcher) and its worker threads: each finishes the
    batch in hand within `timeout` seconds; the jobs of a batch still unfinished then are handed back to the queue
    (released, the attempt not charged), so another process takes them at once. Returns how many were."""
    threads, stop = app.extensions.get("triage_workers", ([], None))
    scheduler = app.extensions.get("triage_scheduler")
    watcher = app.extensions.get("triage_watcher")
    if watcher is not None:
        watcher.stop.set()
    if scheduler is not None:
        scheduler.shutdown(wait=False)
    if stop is not None:
        stop.set()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    released = 0
    for t in threads:
        if not t.is_alive():
            continue
        for job in list(getattr(t, "in_hand", ())):
            try:
                app.extensions["triage"].queue.release(job.id, t.name)
                released += 1
            except LeaseLost:  # finished, failed or taken over meanwhile
                continue
            except Exception:
                log.exception("handing job %d back failed; its lease will expire", job.id)
    if released:
        log.warning("stopping: %d job(s) of an unfinished batch handed back to the queue", released)
    return released
