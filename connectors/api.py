"""The daemon's own HTTP API: the `v1` blueprint (bearer token: triage a text, a ticket's history, the queue)
and the `probes` blueprint (liveness, readiness, Prometheus metrics; no token, for the orchestrator)."""
from __future__ import annotations

import hmac

from flask import Blueprint, Response, jsonify, request

from triage_core.store import JOB_STATES
from triage_core.text import TextProblem, ticket_text
from triage_core.triager import EmptyTicketError, TriageError

from .daemon import current_daemon
from .webhooks import error, read_body

v1 = Blueprint("v1", __name__, url_prefix="/v1")
probes = Blueprint("probes", __name__)


@v1.before_request
def require_token() -> tuple[Response, int] | None:
    daemon = current_daemon()
    if not daemon.api_token:
        return error(503, f"the API is disabled: set {daemon.config['server']['api_token_env']}")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), daemon.api_token.encode()):
        return error(401, "missing or invalid bearer token")
    return None


@v1.post("/triage")
def triage():
    read_body(cache=True)
    # The body is JSON whatever the Content-Type says (curl -d sends form-urlencoded unless told otherwise).
    data = request.get_json(force=True, silent=True)
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        sent = request.mimetype or "no Content-Type header"
        return error(400, f'expected a JSON object {{"text": "..."}} (body sent as {sent})')
    daemon = current_daemon()
    try:
        result = daemon.triager.triage(ticket_text(data["text"]))
    except TextProblem as exc:
        return error(400, str(exc))
    except EmptyTicketError:
        return error(400, "empty text, nothing to triage")
    except TriageError as exc:
        return error(500, str(exc))
    daemon.metrics.triage_latency.observe(result.latency_ms / 1000)
    return jsonify(result.to_dict(distributions=bool(data.get("distributions"))))


@v1.get("/tickets/<connector>/<path:ref>")
def ticket(connector: str, ref: str):
    history = current_daemon().store.ticket_history(connector, ref)
    if not history:
        return error(404, f"no ticket {ref!r} from {connector!r}")
    return jsonify(history)


@v1.get("/jobs")
def jobs():
    state = request.args.get("state")
    if state is not None and state not in JOB_STATES:
        return error(400, f"state must be {', '.join(JOB_STATES[:-1])} or {JOB_STATES[-1]}")
    queue = current_daemon().queue
    return jsonify({"depth": queue.depth(), "jobs": [j.to_dict() for j in queue.list(state=state, limit=200)]})


@probes.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@probes.get("/readyz")
def readyz():
    daemon = current_daemon()
    checks = {"database": daemon.store.ping(), "model": daemon.triager is not None,
              "workers": all(t.is_alive() for t in daemon.threads), "connectors": sorted(daemon.connectors)}
    ok = checks["database"] and checks["model"] and checks["workers"]
    return jsonify({"ready": ok, **checks, "model_info": daemon.triager.model_info}), (200 if ok else 503)


@probes.get("/metrics")
def prometheus():
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(current_daemon().metrics.registry), mimetype=CONTENT_TYPE_LATEST)
