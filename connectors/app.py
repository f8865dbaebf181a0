"""The daemon's Flask app factory: the composition root that wires config, store, queue, model, policy,
connectors and workers together.

`ticket-triage serve` runs it on gunicorn (one process per model copy, server.threads HTTP threads); `ticket-triage
worker` builds the same app and serves no HTTP. Scale out with more processes on the same database, which the
queue's leases and SKIP LOCKED claims make safe.
"""
from __future__ import annotations

import os
from typing import Mapping

from flask import Flask
from werkzeug.exceptions import HTTPException

from triage_core.config import Config, load_config
from triage_core.store import Store
from triage_core.triager import Triager

from .api import probes, v1
from .base import Connector
from .daemon import TriageDaemon
from .webhooks import http_error, webhooks


def create_app(config: Config | None = None, *, triager: Triager | None = None, store: Store | None = None,
               connectors: Mapping[str, Connector] | None = None, env: Mapping[str, str] | None = None,
               workers: int | None = None) -> Flask:
    """Build the app and start its daemon; anything not passed is built from `config`.

    :param config: the daemon's settings; None loads the defaults, the file named by $TRIAGE_CONFIG and TRIAGE_*.
    :param triager: the model to serve (default: the registry's champion, else `model.adapter`).
    :param store: the database (default: `database.url`); it is migrated to the latest schema either way.
    :param connectors: name -> Connector (default: the enabled ones in `connectors`, found by entry point); their
        field maps are checked against the taxonomy.
    :param env: where secrets and tokens are read (default: os.environ).
    :param workers: worker threads (default `server.workers`); 0 serves the ingest and the API only (no jobs,
        pollers, retraining or model watcher in this process).

    The daemon is `app.extensions["triage"]` (a `TriageDaemon`); stop it with `.stop()`. For a test or an
    embedding host, with a connector of one's own and no worker threads::

        app = create_app(config, connectors={"acme": AcmeConnector()}, workers=0, env={"TRIAGE_API_TOKEN": "t"})
        app.test_client().post("/webhooks/acme", data=body, headers=signed)   # 202: queued
        app.test_client().get("/v1/jobs", headers={"Authorization": "Bearer t"})
        app.extensions["triage"].stop()
    """
    env = os.environ if env is None else env
    config = config or load_config(env=env)
    daemon = TriageDaemon.build(config, env, triager=triager, store=store, connectors=connectors, workers=workers)
    app = Flask("ticket_triage")
    # One byte more than allowed, so a chunked body (no Content-Length) that is too large is seen as such by
    # read_body instead of being cut silently at the limit (werkzeug stops reading there).
    app.config["MAX_CONTENT_LENGTH"] = daemon.max_body + 1
    app.extensions["triage"] = daemon
    app.register_error_handler(HTTPException, http_error)
    for blueprint in (webhooks, v1, probes):
        app.register_blueprint(blueprint)
    from .console import init_console  # the review console at /console (console.enabled)

    init_console(app, daemon.ctx, config, env)
    daemon.start()
    return app

