"""Polling connectors on an APScheduler interval job: fetch new tickets, queue them, then store the cursor.

The cursor is saved only after every ticket of the poll is queued, so a crash between the two repeats a poll
rather than skipping one; the queue's (connector, ref, event key) uniqueness turns the repeat into duplicates it
acknowledges and drops. One poll runs at a time per connector (max one instance, coalesced); a webhook trigger
that arrives during a poll runs one more poll right after it, so no trigger is lost.

A poller whose `retriage` setting is on also reports tickets that gained information since the daemon last saw them
(re-triage tickets, queued like new ones); it is called `poll(cursor, last_seen=...)`, where `last_seen(ref)` is
the payload of the ticket's latest inbound event (None: the daemon never saw the ticket). Tickets it reports as
`seen` (a request closed) are stored as inbound events without a job, for the next comparison.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from triage_core.policy import Policy
from triage_core.queue import JobQueue
from triage_core.store import Store

from .base import RETRIAGE, Poller, RetriageSettings, WritebackError

log = logging.getLogger(__name__)


@dataclass
class PollStats:
    polls: int = 0
    queued: int = 0
    duplicates: int = 0
    filtered: int = 0
    retriage: int = 0  # of `queued`, re-triages of tickets that gained information
    seen: int = 0  # ticket states remembered without a job (a request closed)
    errors: int = 0
    last_error: str | None = None


class PollRunner:
    """Runs one connector's poll; `run` is what the scheduler calls, `trigger` asks for a poll now."""

    def __init__(self, name: str, poller: Poller, store: Store, queue: JobQueue, policy: Policy):
        self.name = name
        self.poller = poller
        self.store = store
        self.queue = queue
        self.policy = policy
        self.stats = PollStats()
        self._lock = threading.Lock()
        self._again = threading.Event()
        self.scheduler = None  # set by add_pollers

    def run(self) -> None:
        if not self._lock.acquire(blocking=False):
            self._again.set()  # the poll in progress will run once more when it finishes
            return
        try:
            while True:
                self._again.clear()
                self._poll_once()
                if not self._again.is_set():
                    break
        finally:
            self._lock.release()

    def trigger(self) -> None:
        """Poll as soon as possible (a webhook said something changed)."""
        if self._lock.locked():
            self._again.set()
            return
        if self.scheduler is not None:
            self.scheduler.modify_job(self.job_id, next_run_time=datetime.now(timezone.utc))
        else:
            threading.Thread(target=self.run, name=f"poll-{self.name}", daemon=True).start()

    @property
    def job_id(self) -> str:
        return f"poll:{self.name}"

    def _poll_once(self) -> None:
        stats = self.stats
        stats.polls += 1
        cursor = self.store.cursor(self.name)
        settings = getattr(self.poller, "retriage", None)
        try:
            if isinstance(settings, RetriageSettings) and settings.enabled:
                result = self.poller.poll(cursor, last_seen=lambda ref: self.store.last_event(self.name, ref))
            else:
                result = self.poller.poll(cursor)
        except WritebackError as exc:  # vendor down: keep the cursor, the next interval tries again
            stats.errors += 1
            stats.last_error = str(exc)[:500]
            log.warning("poll %s failed: %s", self.name, stats.last_error)
            return
        except Exception as exc:
            stats.errors += 1
            stats.last_error = repr(exc)[:500]
            log.exception("poll %s crashed", self.name)
            return
        for ticket in result.tickets:
            if not self.policy.filter.accepts(ticket):
                stats.filtered += 1
                continue
            if self.queue.submit(ticket).created:
                stats.queued += 1
                stats.retriage += RETRIAGE in ticket.extra
            else:
                stats.duplicates += 1
        for ticket in result.seen:
            stats.seen += self.store.record_event(ticket.connector, ticket.ref, ticket.event_key, ticket.to_dict())
        if result.cursor is not None and result.cursor != cursor:
            self.store.save_cursor(self.name, result.cursor)
        if result.tickets:
            log.info("poll %s: %d new ticket(s)", self.name, len(result.tickets))


def add_pollers(scheduler: Any, connectors: Mapping[str, object], store: Store, queue: JobQueue,
                policy: Policy) -> dict[str, PollRunner]:
    """A runner per polling connector, each an interval job on `scheduler` (None: runners only, run by hand)."""
    runners = {name: PollRunner(name, c, store, queue, policy) for name, c in connectors.items()
               if isinstance(c, Poller)}
    for runner in runners.values() if scheduler is not None else ():
        runner.scheduler = scheduler
        scheduler.add_job(runner.run, "interval", seconds=float(runner.poller.poll_interval), id=runner.job_id,
                          max_instances=1, coalesce=True, next_run_time=datetime.now(timezone.utc),
                          misfire_grace_time=None)
    return runners
