"""Worker threads: claim jobs from the durable queue, triage, apply the policy, write back through the connector.

Nothing is lost: a job is completed only after its write-back is recorded; a vendor failure goes back to the
queue with backoff (Retry-After honoured) and ends parked as dead after the maximum attempts; a crash leaves the
job leased, and the lease expiring hands it to another worker. A retried job reuses its stored triage result and
never writes back twice once a write-back is recorded as applied.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from typing import Mapping

from triage_core.policy import Policy
from triage_core.queue import ClaimedJob, JobQueue, LeaseLost
from triage_core.store import Store
from triage_core.triager import TriageError, TriageResult, Triager

from .base import Connector, TicketReader, WritebackError
from .metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """Everything a worker needs; shared by the worker threads of one daemon."""

    store: Store
    queue: JobQueue
    triager: Triager
    policy: Policy
    connectors: Mapping[str, Connector]
    metrics: Metrics
    batch_size: int = 8
    poll_interval: float = 0.5


class Worker(threading.Thread):
    def __init__(self, name: str, ctx: WorkerContext, stop: threading.Event):
        super().__init__(name=name, daemon=True)
        self.ctx = ctx
        self.stop = stop

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                jobs = self._claim_batch()
            except Exception:  # the database may be briefly unavailable: wait and try again
                log.exception("%s: claiming jobs failed", self.name)
                self.stop.wait(self.ctx.poll_interval * 4)
                continue
            if not jobs:
                self.stop.wait(self.ctx.poll_interval)
                continue
            try:
                self.process(jobs)
            except LeaseLost as exc:  # another worker took the job over after our lease ran out: it is theirs
                log.warning("%s: %s", self.name, exc)
            except Exception:  # never let one bad batch kill the thread; leases bring the jobs back
                log.exception("%s: processing a batch failed", self.name)

    def _claim_batch(self) -> list[ClaimedJob]:
        jobs = []
        while len(jobs) < self.ctx.batch_size:
            job = self.ctx.queue.claim(self.name)
            if job is None:
                break
            jobs.append(job)
        return jobs

    def process(self, jobs: list[ClaimedJob]) -> None:
        """Triage the jobs that have no stored result yet in one batch, then write each back."""
        ctx = self.ctx
        results: dict[int, tuple[int, TriageResult]] = {}
        fresh = []
        jobs = [j for j in (self._read_back(j) for j in jobs) if j is not None]
        triager = ctx.triager  # the whole batch uses one model, even if a hot reload swaps it meanwhile
        for job in jobs:
            stored = ctx.store.result_for_job(job.id)
            if stored is not None:
                results[job.id] = stored
            else:
                fresh.append(job)
        if fresh:
            try:
                t0 = time.perf_counter()
                triaged = triager.triage_many([j.ticket.text for j in fresh])
                per_ticket = (time.perf_counter() - t0) / len(fresh)
                for _ in fresh:
                    ctx.metrics.triage_latency.observe(per_ticket)
            except TriageError:
                triaged = [self._triage_one(triager, j) for j in fresh]
            except Exception as exc:
                for j in fresh:
                    self._fail(j, f"triage failed: {exc}")
                return
            for job, result in zip(fresh, triaged):
                if result is None:
                    continue
                rid = ctx.store.record_result(job.id, job.ticket.connector, job.ticket.ref, result.ticket,
                                              result.confidence, result.model, result.latency_ms)
                results[job.id] = (rid, result)
        for job in jobs:
            if job.id in results:
                self._write_back(job, *results[job.id])

    def _read_back(self, job: ClaimedJob) -> ClaimedJob | None:
        """For connectors whose webhooks are only hints, the ticket as the vendor has it now (None: failed)."""
        connector = self.ctx.connectors.get(job.ticket.connector)
        if not isinstance(connector, TicketReader) or self.ctx.store.writeback_applied(job.id):
            return job
        try:
            ticket = connector.read_ticket(job.ticket)
        except WritebackError as exc:
            self._fail(job, f"reading the ticket back failed: {exc}", retry_after=exc.retry_after,
                       permanent=not exc.retryable)
            return None
        except Exception as exc:
            log.exception("%s: reading %s %s back crashed", self.name, job.ticket.connector, job.ticket.ref)
            self._fail(job, f"reading the ticket back crashed: {exc!r}")
            return None
        return dataclasses.replace(job, ticket=ticket)

    def _triage_one(self, triager: Triager, job: ClaimedJob) -> TriageResult | None:
        try:
            return triager.triage(job.ticket.text)
        except TriageError as exc:
            self._fail(job, f"triage failed: {exc}", permanent=True)
            return None

    def _write_back(self, job: ClaimedJob, result_id: int, result: TriageResult) -> None:
        ctx, ticket = self.ctx, job.ticket
        connector = ctx.connectors.get(ticket.connector)
        if ctx.store.writeback_applied(job.id):
            ctx.queue.complete(job.id, self.name)
            return
        plan = ctx.policy.plan(result, ticket)
        common = dict(fields_sent=plan.apply, suggested=plan.suggest, needs_review=plan.needs_review,
                      note=plan.note)
        if plan.shadow:
            ctx.store.record_writeback(job.id, result_id, ticket.connector, ticket.ref, "shadow", **common)
            ctx.metrics.writebacks.labels(ticket.connector, "shadow").inc()
            ctx.queue.complete(job.id, self.name)
            return
        if connector is None:
            self._fail(job, f"connector {ticket.connector!r} is not enabled", permanent=True)
            return
        try:
            outcome = connector.write_back(ticket, plan, result)
        except WritebackError as exc:
            ctx.store.record_writeback(job.id, result_id, ticket.connector, ticket.ref, "failed",
                                       vendor_status=exc.status, detail=str(exc)[:2000], **common)
            ctx.metrics.writebacks.labels(ticket.connector, "failed").inc()
            self._fail(job, f"write-back failed: {exc}", retry_after=exc.retry_after, permanent=not exc.retryable)
            return
        except Exception as exc:  # an unexpected bug in a connector: retried with backoff, then parked
            log.exception("%s: write-back to %s crashed", self.name, ticket.connector)
            self._fail(job, f"write-back crashed: {exc!r}")
            return
        ctx.store.record_writeback(job.id, result_id, ticket.connector, ticket.ref, outcome.outcome,
                                   vendor_status=outcome.status, detail=outcome.detail, **common)
        ctx.metrics.writebacks.labels(ticket.connector, outcome.outcome).inc()
        ctx.queue.complete(job.id, self.name)

    def _fail(self, job: ClaimedJob, error: str, retry_after: float | None = None, permanent: bool = False) -> None:
        state = self.ctx.queue.fail(job.id, self.name, error, retry_after=retry_after, permanent=permanent)
        level = logging.WARNING if state == "dead" else logging.INFO
        log.log(level, "job %d (%s %s) attempt %d: %s -> %s", job.id, job.ticket.connector, job.ticket.ref,
                job.attempts, error.splitlines()[0][:200], state)


def start_workers(ctx: WorkerContext, count: int) -> tuple[list[Worker], threading.Event]:
    stop = threading.Event()
    workers = [Worker(f"worker-{i + 1}", ctx, stop) for i in range(count)]
    for w in workers:
        w.start()
    return workers, stop
