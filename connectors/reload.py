"""Hot reload: every instance follows the champion recorded in the database.

A promotion (by a retraining run or `ticket-triage models promote|rollback`, on any instance) only changes a row;
each daemon notices it within `model.reload_seconds`, loads the new adapter beside the serving one, and swaps the
reference the workers read at the start of each batch. A batch in flight finishes on the model it started with,
so no job is dropped or triaged twice; the old model is freed once nothing holds it.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from triage_core.registry import ModelInfo, ModelRegistry
from triage_core.triager import Triager

from .worker import WorkerContext

log = logging.getLogger(__name__)


class ModelWatcher(threading.Thread):
    def __init__(self, registry: ModelRegistry, load: Callable[[ModelInfo], Triager], interval: float,
                 on_swap: Callable[[Triager], None] | None = None):
        super().__init__(name="model-watcher", daemon=True)
        self.ctx: WorkerContext | None = None  # set before start(): the context whose model is swapped
        self.registry = registry
        self.load = load
        self.interval = interval
        self.on_swap = on_swap
        self.stop = threading.Event()
        self.serving: int | None = None  # the registry id being served (None: the configured adapter)
        self._failed: set[int] = set()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # the database may blink; the next check tries again
                log.exception("model watcher: checking the champion failed")

    def initial(self) -> Triager | None:
        """At start-up, the champion's model (None: no champion, or it does not load), so the daemon serves
        what every instance serves without loading the configured adapter first."""
        found = self._load_new()
        if found is None:
            return None
        self.serving = found[0].id
        log.info("model watcher: serving the champion %s", found[0].tag)
        return found[1]

    def check(self) -> bool:
        """Swap to the champion if it changed; True when a swap happened."""
        found = self._load_new()
        if found is None:
            return False
        champion, triager = found
        if triager.taxonomy.label_hash != self.ctx.triager.taxonomy.label_hash:
            self._failed.add(champion.id)
            log.error("model watcher: %s was trained for another taxonomy; not serving it", champion.tag)
            return False
        self.ctx.triager = triager  # one reference assignment: workers pick it up at their next batch
        self.serving = champion.id
        if self.on_swap:
            self.on_swap(triager)
        log.info("model watcher: now serving %s", champion.tag)
        return True

    def _load_new(self) -> tuple[ModelInfo, Triager] | None:
        """The champion and its model when it is not the one served; a version that fails is not retried."""
        champion = self.registry.champion()
        if champion is None or champion.id == self.serving or champion.id in self._failed:
            return None
        try:
            return champion, self.load(champion)
        except Exception as exc:  # keep serving the current model
            self._failed.add(champion.id)
            log.error("model watcher: cannot load %s (%s): %s; keeping the model served", champion.tag,
                      champion.adapter_path, exc)
            return None
