"""The `webhooks` blueprint: POST /webhooks/<connector> verifies and queues a vendor's events; GET answers the
URL check some vendors make before saving a subscription.

What is acknowledged with 2xx is in the durable queue (or recorded as a correction) before the answer goes out.
"""
from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .base import FieldChange, PollNow, TicketReader, WebhookRejected, checked_event, retriage_info
from .daemon import TriageDaemon, current_daemon

log = logging.getLogger(__name__)

webhooks = Blueprint("webhooks", __name__, url_prefix="/webhooks")


def error(status: int, reason: str) -> tuple[Response, int]:
    return jsonify({"error": reason}), status


def read_body(cache: bool = False) -> bytes:
    """The whole request body, or 413 when it is over server.max_body_bytes (with or without a length)."""
    body = request.get_data(cache=cache)
    limit = current_daemon().max_body
    if len(body) > limit:
        raise RequestEntityTooLarge(f"body larger than {limit} bytes")
    return body


def http_error(exc: HTTPException) -> tuple[Response, int]:
    """Every HTTP error as JSON; a refused webhook is counted for its connector."""
    connector = (request.view_args or {}).get("connector") if request else None
    if connector and request.path.startswith("/webhooks/"):
        current_daemon().metrics.webhooks_refused.labels(connector, str(exc.code)).inc()
    return error(exc.code or 500, exc.description or exc.name)


@webhooks.post("/<connector>")
def receive(connector: str):
    daemon = current_daemon()
    conn = daemon.connectors.get(connector)
    if conn is None:
        return error(404, f"unknown connector {connector!r}")
    daemon.metrics.webhooks_received.labels(connector).inc()
    body = read_body()
    try:
        tickets = conn.parse_webhook(body, request.headers, request.args)
        hint_only = isinstance(conn, TicketReader)  # its text is checked once read back, in the worker
        tickets = [checked_event(t, text_required=not hint_only) for t in tickets]
    except WebhookRejected as exc:
        daemon.metrics.webhooks_refused.labels(connector, str(exc.status)).inc()
        log.info("webhook %s refused: %d %s", connector, exc.status, exc.reason)
        return error(exc.status, exc.reason)
    events = [_accept(daemon, connector, ticket) for ticket in tickets]
    log.info("webhook %s: %d event(s) accepted", connector, len(events))
    # 202 unless the vendor requires another success status (Zoho Desk counts anything but 200 as failed)
    return jsonify({"accepted": events}), int(getattr(conn, "webhook_status", 202))


@webhooks.get("/<connector>")
def check(connector: str):
    """Some vendors (Zoho Desk) check a webhook URL with a GET before saving the subscription."""
    if connector not in current_daemon().connectors:
        return error(404, f"unknown connector {connector!r}")
    return jsonify({"connector": connector, "ok": True})


def _accept(daemon: TriageDaemon, connector: str, ticket) -> dict:
    """One parsed event: a field change, a poll request, or a ticket for the queue."""
    if isinstance(ticket, FieldChange):
        return record_change(daemon, ticket)
    if isinstance(ticket, PollNow):
        runner = daemon.pollers.get(connector)
        if runner is not None:
            runner.trigger()
        return {"poll": runner is not None}
    # A re-triage hint without its project (a Zoho thread) is filtered by the worker once it is read back.
    if not daemon.policy.filter.accepts(ticket) and not (ticket.project is None and retriage_info(ticket) is not None):
        return {"ref": ticket.ref, "filtered": True}
    res = daemon.queue.submit(ticket)
    if not res.created:
        daemon.metrics.webhooks_duplicate.labels(connector).inc()
    return {"ref": ticket.ref, "event_id": res.event_id, "job_id": res.job_id, "duplicate": not res.created}


def record_change(daemon: TriageDaemon, change: FieldChange) -> dict:
    """A human edited a field: a correction when it overrides a value we wrote, otherwise nothing."""
    store = daemon.store
    written = store.written_value(change.connector, change.ref, change.field)
    if written is None or change.new == written[1]:
        return {"ref": change.ref, "field": change.field, "correction": False}
    if store.last_correction(change.connector, change.ref, change.field) == change.new:
        # a redelivered update, or the same human choice again: the training label is already recorded
        return {"ref": change.ref, "field": change.field, "correction": False, "duplicate": True}
    store.record_correction(change.connector, change.ref, change.field, written[1], change.new,
                            result_id=written[0])
    daemon.metrics.corrections.labels(change.connector, change.field).inc()
    log.info("correction on %s %s: %s", change.connector, change.ref, change.field)
    return {"ref": change.ref, "field": change.field, "correction": True}
