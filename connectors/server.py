"""The production WSGI server: gunicorn through its Python API, serving the daemon's one app factory.

One gunicorn server process (so the model is loaded once) with server.threads HTTP threads (gthread). The app is
built in that process after the fork, never in the master, so no thread, model or database connection crosses a
fork. On SIGTERM the master stops accepting and forwards it; the server process stops claiming jobs at once,
finishes the requests in flight, then gives its worker threads what is left of server.shutdown_seconds to finish
the batch in hand and hands the rest back to the queue (`TriageDaemon.stop`), and the master exits 0 within
server.shutdown_seconds (its graceful timeout). `ticket-triage serve` runs `DaemonServer`; deploy/gunicorn.conf.py
gives gunicorn's own command line the same settings and hooks.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from typing import Any, Callable

import click
from gunicorn.app.base import BaseApplication

from triage_core.config import Config

#: Seconds of server.shutdown_seconds kept back for handing unfinished jobs back and exiting.
STOP_MARGIN = 2.0
#: When this server process got SIGTERM (monotonic), for the worker threads' share of the shutdown time.
_term_at: list[float] = []


def gunicorn_settings(config: Config, bind: str | None = None) -> dict[str, Any]:
    """gunicorn's settings from the daemon's config (server.*), with the clean-stop hooks."""
    server = config["server"]
    verbose = logging.getLogger().getEffectiveLevel() <= logging.INFO
    return {
        "bind": [bind or f"{server['host']}:{server['port']}"], "workers": 1, "worker_class": "gthread",
        "threads": int(server["threads"]), "timeout": int(server["timeout_seconds"]),
        "keepalive": int(server["keepalive_seconds"]),
        "graceful_timeout": math.ceil(float(server["shutdown_seconds"])), "proc_name": "ticket-triage",
        "loglevel": "info" if verbose else "warning", "errorlog": "-", "accesslog": None,
        # No control socket in $HOME (two daemons on one host would share it).
        "control_socket_disable": True,
        "post_fork": post_fork, "post_worker_init": post_worker_init, "worker_exit": worker_exit,
    }


def stop_budget(config: Config, since: float) -> float:
    """What is left of server.shutdown_seconds since `since` (monotonic), less the margin to exit."""
    return max(0.5, float(config["server"]["shutdown_seconds"]) - STOP_MARGIN - (time.monotonic() - since))


def post_fork(arbiter: Any, worker: Any) -> None:
    """gunicorn hook, in the new server process: it dies with its master. A master killed outright (SIGKILL, the
    OOM killer) takes the whole daemon down, as one process would, instead of leaving an orphan holding the port
    and the jobs; its leases expire and another process takes the jobs."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    if os.getppid() != arbiter.pid:  # the master died before the line above
        os._exit(1)


def post_worker_init(worker: Any) -> None:
    """gunicorn hook, in the server process once the app is loaded: SIGTERM stops job claims at once (gunicorn's
    own handler then stops intake and finishes the requests in flight)."""
    theirs = signal.getsignal(signal.SIGTERM)
    app = worker.wsgi

    def on_term(signum: int, frame: Any) -> None:
        if not _term_at:
            _term_at.append(time.monotonic())
            app.extensions["triage"].stopping.set()
        if callable(theirs):
            theirs(signum, frame)

    signal.signal(signal.SIGTERM, on_term)


def worker_exit(arbiter: Any, worker: Any) -> None:
    """gunicorn hook, in the server process after its last request: the worker threads finish the batch in hand
    or hand its jobs back."""
    app = getattr(worker, "wsgi", None)
    if app is None or "triage" not in getattr(app, "extensions", {}):
        return
    daemon = app.extensions["triage"]
    daemon.stop(stop_budget(daemon.config, _term_at[0] if _term_at else time.monotonic()))
    daemon.store.dispose()
    # Exit 0 now: the interpreter's teardown (torch, a thread still in a cut batch) can outlast the master's
    # graceful timeout, which would end in a SIGKILL.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class DaemonServer(BaseApplication):
    """gunicorn with the app built by `load` in the server process; `started(app)` is echoed once it is up."""

    def __init__(self, config: Config, bind: str, *, load: Callable[[], Any], started: Callable[[Any], str]) -> None:
        self.daemon_config = config
        self.bind = bind
        self._load = load
        self._started = started
        super().__init__()

    def load_config(self) -> None:
        settings = gunicorn_settings(self.daemon_config, self.bind)
        ready = settings["post_worker_init"]

        def announce(worker: Any) -> None:
            ready(worker)
            click.echo(self._started(worker.wsgi) + f"; gunicorn, {self.cfg.threads} HTTP threads", err=True)

        settings["post_worker_init"] = announce
        for key, value in settings.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Any:
        try:
            return self._load()
        except SystemExit as exc:  # a bad config, model or connector, said in one line: gunicorn's "app failed
            raise SystemExit(4 if exc.code else 0) from None  # to load" code stops the master (no respawning)
