"""gunicorn settings for running the daemon under gunicorn's own command line, the same as `ticket-triage serve`:

    gunicorn -c deploy/gunicorn.conf.py 'connectors.app:create_app()'

Every value comes from the daemon's config (TRIAGE_CONFIG and TRIAGE_* variables: server.host, server.port,
server.threads, server.timeout_seconds, server.keepalive_seconds, server.shutdown_seconds), with the clean-stop
hooks: on SIGTERM job claims stop, the batch in hand finishes or its jobs are handed back to the queue, and the
process exits within server.shutdown_seconds. Keep workers at 1: each server process loads its own model copy;
scale out with `ticket-triage worker` processes instead.
"""
from connectors.server import gunicorn_settings
from triage_core.config import load_config

globals().update(gunicorn_settings(load_config()))
