"""The daemon object: its parts (store, queue, model, policy, connectors, metrics) and its background work
(worker threads, the scheduler for polls and nightly retraining, the model watcher).

Building one starts nothing, as `Flask()` serves nothing before `app.run()`: `start()` starts the background work
and `stop()` ends it, handing back the jobs of an unfinished batch. `create_app` builds one, puts it in
`app.extensions["triage"]` (the only extension key the routes read) and starts it; `serve`, `worker` and the tests
stop it through the same object.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import timezone
from typing import Mapping

from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler
from flask import current_app

from triage_core.config import Config
from triage_core.policy import Policy
from triage_core.queue import JobQueue, LeaseLost
from triage_core.registry import ModelRegistry
from triage_core.store import Store
from triage_core.triager import Triager

from .base import Connector, check_field_maps, load_connectors
from .metrics import Metrics
from .polling import PollRunner, add_pollers
from .reload import ModelWatcher
from .worker import Worker, WorkerContext, start_workers

log = logging.getLogger(__name__)


@dataclass
class TriageDaemon:
    """One daemon process's parts and background work. Build it with `TriageDaemon.build`."""

    config: Config
    ctx: WorkerContext  # what the worker threads share; `ctx.triager` is swapped by the watcher
    watcher: ModelWatcher
    pollers: dict[str, PollRunner]
    scheduler: BackgroundScheduler | None  # None without worker threads: no timed work in this process
    workers: int  # worker threads start() starts
    api_token: str  # the bearer token of /v1 ("" : the API answers 503)
    threads: list[Worker] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)  # set: workers claim no more jobs

    @classmethod
    def build(cls, config: Config, env: Mapping[str, str], *, triager: Triager | None = None,
              store: Store | None = None, connectors: Mapping[str, Connector] | None = None,
              workers: int | None = None) -> TriageDaemon:
        """Wire the parts; see `create_app` for the arguments. Loads the model and migrates the store."""
        server = config["server"]
        store = store or Store(config["database"]["url"])
        store.upgrade()
        queue = JobQueue.from_config(store, config["queue"])
        count = int(server["workers"]) if workers is None else workers
        metrics = Metrics(queue.depth)
        watcher = ModelWatcher(ModelRegistry(store), lambda m: Triager.from_config(config, adapter=m.adapter_path),
                               interval=float(config["model"]["reload_seconds"]),
                               on_swap=lambda t: metrics.set_model(t.model_info))
        if triager is None:  # the recorded champion if this process follows it, else the configured adapter
            triager = (watcher.initial() if count > 0 and watcher.interval > 0 else None) \
                or Triager.from_config(config)
        metrics.set_model(triager.model_info)
        policy = Policy.from_config(config["policy"], triager.taxonomy)
        connectors = _connectors(config, env, triager, connectors)
        ctx = WorkerContext(store=store, queue=queue, triager=triager, policy=policy, connectors=connectors,
                            metrics=metrics, batch_size=triager.settings.batch_size,
                            poll_interval=float(config["queue"]["poll_interval_seconds"]))
        watcher.ctx = ctx
        scheduler = BackgroundScheduler(timezone=timezone.utc) if count > 0 else None
        pollers = add_pollers(scheduler, connectors, store, queue, policy)
        if scheduler is not None:
            schedule_retraining(scheduler, config, store, connectors)
        return cls(config=config, ctx=ctx, watcher=watcher, pollers=pollers, scheduler=scheduler, workers=count,
                   api_token=env.get(server["api_token_env"], ""))

    # The parts the routes and the console read, by name.
    store = property(lambda self: self.ctx.store)
    queue = property(lambda self: self.ctx.queue)
    triager = property(lambda self: self.ctx.triager)
    policy = property(lambda self: self.ctx.policy)
    connectors = property(lambda self: self.ctx.connectors)
    metrics = property(lambda self: self.ctx.metrics)

    @property
    def max_body(self) -> int:
        return int(self.config["server"]["max_body_bytes"])

    def start(self) -> None:
        """Start the worker threads, the timed work (when scheduled) and the model watcher (when it follows)."""
        if self.policy.shadow:
            log.warning("shadow mode is on (policy.shadow): tickets are triaged and stored, nothing is written back")
        if not self.api_token:
            log.warning("%s is not set: the /v1 API answers 503 until it is", self.config["server"]["api_token_env"])
        if self.workers > 0:
            self.threads, self.stopping = start_workers(self.ctx, self.workers)
        if self.scheduler is not None and self.scheduler.get_jobs():
            self.scheduler.start()
        if self.workers > 0 and self.watcher.interval > 0:
            self.watcher.start()

    def stop(self, timeout: float = 10.0) -> int:
        """Stop the timed work and the worker threads: each finishes the batch in hand within `timeout` seconds;
        the jobs of a batch still unfinished then are handed back to the queue (released, the attempt not
        charged), so another process takes them at once. Returns how many were."""
        self.watcher.stop.set()
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        released = sum(self._hand_back(t) for t in self.threads if t.is_alive())
        if released:
            log.warning("stopping: %d job(s) of an unfinished batch handed back to the queue", released)
        return released

    def _hand_back(self, worker: Worker) -> int:
        released = 0
        for job in list(worker.in_hand):
            try:
                self.queue.release(job.id, worker.name)
                released += 1
            except LeaseLost:  # finished, failed or taken over meanwhile
                continue
            except Exception:
                log.exception("handing job %d back failed; its lease will expire", job.id)
        return released


def current_daemon() -> TriageDaemon:
    """The daemon of the app handling the current request."""
    return current_app.extensions["triage"]


def _connectors(config: Config, env: Mapping[str, str], triager: Triager,
                given: Mapping[str, Connector] | None) -> dict[str, Connector]:
    """The given connectors (their field maps checked against the taxonomy), else the enabled ones."""
    if given is None:
        return load_connectors(config, env, triager.taxonomy)
    check_field_maps(given, triager.taxonomy)
    return dict(given)


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
