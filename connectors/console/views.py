"""The console's pages (a Flask blueprint mounted at /console).

Every page but the log-in page needs a logged-in session; an anonymous request is redirected to the log-in page
(with where it was going, a path under /console only). Every POST carries the session's CSRF token or is refused
with 400 before its view runs. Ticket text is attacker-controlled: templates autoescape it, and the pages send a
Content-Security-Policy that allows no inline script and nothing from another origin.
"""
from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, session, url_for
from werkzeug.exceptions import HTTPException

from . import charts, review, stats
from .auth import CSRF_FIELD, csrf_ok, new_csrf_token

log = logging.getLogger(__name__)

blueprint = Blueprint("console", __name__, template_folder="templates", static_folder="static",
                      static_url_path="/static")

#: Endpoints reachable without a session.
PUBLIC = {"console.login", "console.static"}

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")


def state() -> dict[str, Any]:
    return current_app.extensions["triage_console"]


def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = new_csrf_token()
    return token


@blueprint.app_template_global("csrf_field_name")
def _csrf_field_name() -> str:
    return CSRF_FIELD


@blueprint.app_template_filter("pct")
def _pct(value: Any, digits: int = 0) -> str:
    """A probability as a percentage, rounded down (0.499 never reads as 50%)."""
    if not isinstance(value, (int, float)):
        return "–"
    scale = 10 ** digits
    return f"{int(value * 100 * scale + 1e-9) / scale:.{digits}f}%"


@blueprint.app_template_filter("reject_offset")
def _reject_offset(args: dict) -> dict:
    return {k: v for k, v in args.items() if k != "offset"}


@blueprint.app_template_global("console_has")
def _console_has(endpoint: str) -> bool:
    return endpoint in current_app.view_functions


@blueprint.app_template_global("csrf_token")
def _csrf_token() -> str:
    return csrf_token()


@blueprint.before_request
def guard():
    if request.method == "POST" and request.endpoint != "console.static":
        if not csrf_ok(session.get("csrf"), request.form.get(CSRF_FIELD)):
            log.info("console: %s %s refused: CSRF token missing or wrong", request.method, request.path)
            abort(400, "The form's security token is missing or out of date. Go back, reload the page and try "
                       "again.")
    if request.endpoint in PUBLIC:
        return None
    user = session.get("user")
    if not user:
        return redirect(url_for("console.login",
                                next=request.full_path.rstrip("?") if request.method == "GET" else None))
    g.user = user
    return None


@blueprint.after_request
def headers(response):
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != "console.static":
        response.headers.setdefault("Cache-Control", "no-store")
    return response


@blueprint.errorhandler(HTTPException)
def http_error(exc: HTTPException):
    return render_template("console/error.html", code=exc.code, name=exc.name,
                           message=exc.description), exc.code or 500


def _safe_next(target: str | None) -> str:
    """Where to go after log-in: a path under /console on this site, else the queue."""
    prefix = url_for("console.index")
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and target.startswith(prefix) and not target.startswith("//") \
                and "\\" not in target:
            return target
    return url_for("console.queue")


@blueprint.route("/login", methods=["GET", "POST"])
def login():
    st = state()
    if request.method == "GET":
        csrf_token()
        return render_template("console/login.html", next=request.args.get("next", ""),
                               configured=st["accounts"].any)
    address = request.remote_addr or "?"
    if st["brake"].blocked(address):
        return render_template("console/login.html", next="", configured=True, failed=True,
                               message="Too many failed log-ins from this address; wait a few minutes."), 429
    user = st["accounts"].check(request.form.get("username", ""), request.form.get("password", ""))
    if user is None:
        st["brake"].failed(address)
        log.info("console: failed log-in from %s", address)
        return render_template("console/login.html", next=request.form.get("next", ""), configured=st["accounts"].any,
                               failed=True, message="Wrong user name or password."), 401
    st["brake"].succeeded(address)
    target = _safe_next(request.form.get("next"))
    session.clear()  # a new session on log-in: nothing from before it carries over (no fixation)
    session.permanent = True
    session["user"] = user
    session["csrf"] = new_csrf_token()
    log.info("console: %s logged in from %s", user, address)
    return redirect(target)


@blueprint.post("/logout")
def logout():
    user = session.get("user")
    session.clear()
    log.info("console: %s logged out", user)
    flash("You are logged out.")
    return redirect(url_for("console.login"))


@blueprint.get("/")
def index():
    return redirect(url_for("console.queue"))


def _ctx():
    return state()["ctx"]


def _int_arg(name: str, default: int = 0) -> int:
    try:
        return max(0, int(request.args.get(name, default)))
    except ValueError:
        return default


@blueprint.get("/queue")
def queue():
    ctx = _ctx()
    taxonomy = ctx.triager.taxonomy
    filters = {k: (request.args.get(k) or None) for k in ("connector", "field", "model")}
    if filters["field"] and (filters["field"] not in taxonomy or not taxonomy[filters["field"]].is_enum):
        abort(400, f"no enum field {filters['field']!r} in the taxonomy")
    decided = request.args.get("decided") == "1"
    limit = int(state()["section"]["queue_page_size"])
    page = review.review_queue(ctx.store, ctx.policy, taxonomy, connector=filters["connector"],
                               field_name=filters["field"], model=filters["model"], decided=decided,
                               offset=_int_arg("offset"), limit=limit)
    return render_template("console/queue.html", page=page, filters=filters, decided=decided,
                           choices=review.filter_choices(ctx.store), fields=[f.name for f in taxonomy.enum_fields],
                           thresholds={f.name: ctx.policy.rule(f.name) for f in taxonomy.enum_fields})


@blueprint.get("/tickets/<int:result_id>")
def ticket(result_id: int):
    ctx = _ctx()
    taxonomy = ctx.triager.taxonomy
    view = review.load_ticket(ctx.store, result_id)
    if view is None:
        abort(404, f"no triage result {result_id}")
    alternatives = review.ensure_alternatives(ctx.store, ctx.triager, view)
    k = int(state()["section"]["similar_tickets"])
    similar = state()["similar"].query(view.text, k=k, exclude=(view.result.connector, view.result.ticket_ref))
    return render_template("console/ticket.html", view=view, taxonomy=taxonomy, alternatives=alternatives,
                           similar=similar, low=review.low_fields(view.result.confidence or {}, ctx.policy, taxonomy),
                           rules={f.name: ctx.policy.rule(f.name) for f in taxonomy.enum_fields},
                           start=review.baseline(view, taxonomy, ctx.policy), shadow=ctx.policy.shadow,
                           model_tag=review.model_tag)


@blueprint.post("/tickets/<int:result_id>/decide")
def decide(result_id: int):
    ctx = _ctx()
    decision = request.form.get("decision", "")
    chosen = {f.name: request.form.get(f"value_{f.name}", "") for f in ctx.triager.taxonomy.enum_fields}
    try:
        outcome = review.decide(ctx, result_id, g.user, decision, chosen if decision == "correct" else None)
    except review.DecisionError as exc:
        flash(str(exc), "error")
        return redirect(url_for("console.ticket", result_id=result_id))
    state()["similar"].invalidate()
    flash(_describe(outcome), "ok")
    return redirect(url_for("console.ticket", result_id=result_id))


def _describe(outcome: review.DecisionOutcome) -> str:
    done = {"accept": "Accepted", "correct": "Corrected", "dismiss": "Dismissed"}[outcome.decision]
    if outcome.decision == "dismiss":
        return f"{done}: nothing written to the ticket; its fields will not be trained on."
    if outcome.writeback == "applied":
        written = ", ".join(f"{k} {v}" for k, v in outcome.written.items())
        return f"{done}: written to the ticket: {written}."
    if outcome.writeback == "shadow":
        return f"{done}: shadow mode is on, so nothing was written to the ticket; the decision is stored."
    if outcome.writeback:
        return f"{done}: the connector answered {outcome.writeback} ({outcome.detail})."
    return f"{done}: the ticket already carries these values; the decision is stored."


@blueprint.get("/dashboard")
def dashboard():
    from triage_core.registry import ModelRegistry

    ctx = _ctx()
    taxonomy = ctx.triager.taxonomy
    days = int(state()["section"]["dashboard_days"])
    d = stats.build(ctx.store, ctx.policy, taxonomy, days)
    labels = [day.strftime("%m-%d") for day in d.days]
    every = max(1, len(labels) // 10)
    figures = {
        "triaged": charts.bar_chart(labels, d.triaged, label="tickets triaged per day", every=every,
                                    width=1180, height=200),
        "outcomes": charts.share_bar(list(d.outcomes.items()), label="outcome shares", width=1180),
        "accuracy": charts.line_chart([day.strftime("%m-%d") for day in d.review_days], d.accuracy_by_day,
                                      label="accuracy per field from console reviews",
                                      every=max(1, len(d.review_days) // 8), width=680,
                                      height=220) if d.review_days else None,
        "coverage": charts.bar_chart(list(d.coverage), [100 * (c["share"] or 0) for c in d.coverage.values()],
                                     label="coverage at the configured thresholds (%)", width=460,
                                     height=180),
    }
    runs = [{**r, "champion": stats.run_accuracy(r), "challenger": stats.run_accuracy(r, "challenger")}
            for r in d.runs]
    return render_template("console/dashboard.html", d=d, figures=figures, runs=runs, days=days,
                           models=ModelRegistry(ctx.store).list(), dead=ctx.queue.list(state="dead", limit=100),
                           serving=ctx.triager.model_info, enum=[f.name for f in taxonomy.enum_fields])


@blueprint.post("/jobs/<int:job_id>/retry")
def retry_job(job_id: int):
    count = _ctx().queue.retry([job_id])
    if count:
        log.info("console: %s re-queued dead job %d", g.user, job_id)
        flash(f"Job {job_id} is queued again.", "ok")
    else:
        flash(f"Job {job_id} is not dead (any more): nothing re-queued.", "error")
    return redirect(url_for("console.dashboard") + "#dead-jobs")


@blueprint.route("/try", methods=["GET", "POST"])
def try_it():
    """Triage pasted text and show what the daemon would do with it; nothing is stored or written anywhere."""
    from triage_core.text import TextProblem, ticket_text
    from triage_core.triager import TriageError

    ctx = _ctx()
    taxonomy = ctx.triager.taxonomy
    text = request.form.get("text", "") if request.method == "POST" else ""
    result = error = None
    similar: list = []
    if request.method == "POST":
        try:
            result = ctx.triager.triage(ticket_text(text))
        except TextProblem as exc:
            error = str(exc)
        except TriageError as exc:
            error = f"The ticket could not be triaged: {exc}"
        if result is not None:
            similar = state()["similar"].query(text, k=int(state()["section"]["similar_tickets"]))
    low = review.low_fields(result.confidence, ctx.policy, taxonomy) if result else []
    return render_template("console/try.html", text=text, result=result, error=error, similar=similar, low=low,
                           alternatives=review.ranked(result.distributions, taxonomy) if result else {},
                           rules={f.name: ctx.policy.rule(f.name) for f in taxonomy.enum_fields}, taxonomy=taxonomy)
