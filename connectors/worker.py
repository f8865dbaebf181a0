"""Worker threads: claim jobs from the durable queue, triage, apply the policy, write back through the connector.

Nothing is lost: a job is completed only after its write-back is recorded; a vendor failure goes back to the
queue with backoff (Retry-After honoured) and ends parked as dead after the maximum attempts. One job's failure
is charged to that job alone (a failed batch is triaged again ticket by ticket), and an error in the worker hands
its jobs back at once; only a dead process leaves jobs leased, and the lease expiring hands them to another worker.
A retried job reuses its stored triage result and never writes back twice once a write-back is recorded as applied.

A re-triage job (a ticket that gained information, `connectors.base.retriage_ticket`) waits for the ticket's earlier
jobs, is skipped when the daemon never triaged the ticket or the connector's `retriage` is off, is read back from the
vendor, and is written back only where a field no human has set changed (`Policy.retriage_plan`). A field is
human-set when a correction of it is recorded, when the vendor shows a value other than the one the daemon last
wrote, or, never written by the daemon, when the connector reports it as set (`InboundTicket.current`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Mapping

from triage_core.policy import Policy, WritebackPlan
from triage_core.queue import ClaimedJob, InboundTicket, JobQueue, LeaseLost
from triage_core.store import Store
from triage_core.text import TextProblem, ticket_text
from triage_core.triager import TriageError, Triager, TriageResult

from .base import (
    RETRIAGE_REASONS,
    Connector,
    RetriageInfo,
    RetriageReader,
    RetriageSettings,
    TicketReader,
    WritebackError,
    retriage_info,
    with_replies,
)
from .metrics import Metrics

log = logging.getLogger(__name__)

#: Seconds a re-triage job waits, uncharged, while an earlier job of its ticket is queued or running.
RETRIAGE_WAIT = 5.0
#: Longest text a re-triage composes (subject, description, replies); the model reads its first tokens anyway.
MAX_RETRIAGE_TEXT = 100_000


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


class LeaseKeeper:
    """Extends the leases of the batch in hand every third of a lease while it is processed.

    A lease only says "this worker is alive": a slow batch (long e-mails on a busy CPU, a vendor slow to answer)
    must not be taken over by another worker and triaged and written twice. Jobs settled meanwhile drop out (their
    lease is gone); a database hiccup is logged and retried at the next beat, well before the lease runs out.
    """

    def __init__(self, queue: JobQueue, owner: str, jobs: list[ClaimedJob]):
        self.queue, self.owner, self.jobs = queue, owner, list(jobs)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"{owner}-lease", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._done.wait(max(0.5, self.queue.lease_seconds / 3)):
            for job in list(self.jobs):
                try:
                    self.queue.extend(job.id, self.owner)
                except LeaseLost:  # settled, handed back or taken over: nothing to keep
                    self.jobs.remove(job)
                except Exception:
                    log.warning("%s: extending the lease of job %d failed; retried at the next beat", self.owner,
                                job.id, exc_info=True)


class Worker(threading.Thread):
    def __init__(self, name: str, ctx: WorkerContext, stop: threading.Event):
        super().__init__(name=name, daemon=True)
        self.ctx = ctx
        self.stop = stop
        # The batch being processed: a clean stop that cannot wait for it hands back what is still leased.
        self.in_hand: list[ClaimedJob] = []

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
            self.in_hand = jobs
            try:
                with LeaseKeeper(self.ctx.queue, self.name, jobs):
                    self.process(jobs)
            except Exception as exc:  # a bug outside the per-job guards: hand the jobs back, keep the thread
                log.exception("%s: processing a batch failed", self.name)
                self._release(jobs, f"processing crashed: {exc!r}")
            self.in_hand = []

    def _claim_batch(self) -> list[ClaimedJob]:
        jobs = []
        while len(jobs) < self.ctx.batch_size:
            job = self.ctx.queue.claim(self.name)
            if job is None:
                break
            jobs.append(job)
        return jobs

    def process(self, jobs: list[ClaimedJob]) -> None:
        """Triage the jobs that have no stored result yet in one batch, then write each back.

        One job's failure is that job's alone: a batch that fails is triaged again one ticket at a time at once,
        and every write-back is settled on its own."""
        ctx = self.ctx
        results: dict[int, tuple[int, TriageResult]] = {}
        fresh = []
        jobs = [j for j in (self._retriage_gate(j) for j in jobs) if j is not None]
        jobs = [j for j in (self._read_back(j) for j in jobs) if j is not None]
        triager = ctx.triager  # the whole batch uses one model, even if a hot reload swaps it meanwhile
        for job in jobs:
            stored = ctx.store.result_for_job(job.id)
            if stored is not None:
                results[job.id] = stored
            else:
                fresh.append(job)
        checked = {j.id: j for j in (self._checked_text(j) for j in fresh) if j is not None}
        fresh = list(checked.values())
        jobs = [checked.get(j.id, j) for j in jobs if j.id in results or j.id in checked]
        for job, result in self._triage(triager, fresh):
            self._guarded(job, partial(self._keep, results, job, result))
        for job in jobs:
            if job.id in results:
                self._guarded(job, partial(self._write_back, job, *results[job.id]))

    def _triage(self, triager: Triager, jobs: list[ClaimedJob]) -> list[tuple[ClaimedJob, TriageResult]]:
        """(job, result) for each job triaged; a failed batch is retried ticket by ticket, so only the ticket
        that fails is charged for it."""
        if not jobs:
            return []
        if len(jobs) > 1:
            try:
                t0 = time.perf_counter()
                triaged = triager.triage_many([j.ticket.text for j in jobs])
                per_ticket = (time.perf_counter() - t0) / len(jobs)
                for _ in jobs:
                    self.ctx.metrics.triage_latency.observe(per_ticket)
                return list(zip(jobs, triaged, strict=True))
            except Exception as exc:
                log.warning("%s: a batch of %d failed (%s); triaging its tickets one by one", self.name,
                            len(jobs), type(exc).__name__)
        out = []
        for job in jobs:
            result = self._triage_one(triager, job)
            if result is not None:
                out.append((job, result))
        return out

    def _triage_one(self, triager: Triager, job: ClaimedJob) -> TriageResult | None:
        try:
            t0 = time.perf_counter()
            result = triager.triage(job.ticket.text)
        except (TriageError, TypeError, ValueError) as exc:  # the input itself: another try gives the same
            self._fail(job, f"triage failed: {type(exc).__name__}: {exc}", permanent=True)
            return None
        except Exception as exc:  # e.g. out of memory: worth another attempt later
            log.exception("%s: triaging job %d crashed", self.name, job.id)
            self._fail(job, f"triage crashed: {exc!r}")
            return None
        self.ctx.metrics.triage_latency.observe(time.perf_counter() - t0)
        return result

    def _checked_text(self, job: ClaimedJob) -> ClaimedJob | None:
        """The job with its text cleaned (tickets from polls and read-backs never passed a webhook's check);
        None, the job parked, when nothing triageable is left."""
        try:
            text = ticket_text(job.ticket.text)
        except TextProblem as exc:
            self._fail(job, f"triage failed: {exc}", permanent=True)
            return None
        return job if text == job.ticket.text else dataclasses.replace(
            job, ticket=dataclasses.replace(job.ticket, text=text))

    def _record(self, job: ClaimedJob, result: TriageResult) -> int:
        result_id = self.ctx.store.record_result(job.id, job.ticket.connector, job.ticket.ref, result.ticket,
                                                 result.confidence, result.model, result.latency_ms)
        # The console shows the alternatives as this batch scored them, so it never scores the ticket again.
        self.ctx.store.record_alternatives(result_id, result.distributions, result.model)
        return result_id

    def _keep(self, results: dict, job: ClaimedJob, result: TriageResult) -> None:
        results[job.id] = (self._record(job, result), result)

    def _guarded(self, job: ClaimedJob, step: Callable[[], object]) -> None:
        """Run one job's step; whatever it raises concerns that job only."""
        try:
            step()
        except LeaseLost as exc:  # another worker took the job over after our lease ran out: it is theirs
            log.warning("%s: %s", self.name, exc)
        except Exception as exc:
            log.exception("%s: job %d crashed", self.name, job.id)
            self._release([job], f"crashed: {exc!r}")

    def _release(self, jobs: list[ClaimedJob], error: str) -> None:
        """Give back every job of `jobs` this worker still holds, as a failed attempt (none stays leased)."""
        for job in jobs:
            try:
                state = self.ctx.queue.fail(job.id, self.name, error)
            except LeaseLost:
                continue  # finished, failed or taken over already
            except Exception:
                log.exception("%s: releasing job %d failed; its lease will expire", self.name, job.id)
                continue
            log.warning("job %d (%s %s) attempt %d handed back: %s -> %s", job.id, job.ticket.connector,
                        job.ticket.ref, job.attempts, error.splitlines()[0][:200], state)

    def _retriage_gate(self, job: ClaimedJob) -> ClaimedJob | None:
        """A re-triage job goes on only when it may: None when it was postponed (an earlier job of its ticket is
        unfinished) or completed as skipped (re-triage is off, or the daemon never triaged the ticket)."""
        ctx, ticket = self.ctx, job.ticket
        if retriage_info(ticket) is None:
            return job
        try:
            if ctx.store.result_for_job(job.id) is not None:
                return job  # a retry after a failed write-back: it passed the gate then
            settings = getattr(ctx.connectors.get(ticket.connector), "retriage", None)
            if not isinstance(settings, RetriageSettings) or not settings.enabled:
                self._skip(job, "re-triage is off for this connector")
                return None
            earlier = ctx.store.earlier_jobs(ticket.connector, ticket.ref, job.id)
            if earlier["queued"] or earlier["running"]:
                if ctx.store.postpone_job(job.id, self.name, RETRIAGE_WAIT,
                                          "re-triage waits for an earlier job of the ticket"):
                    log.info("job %d (%s %s): re-triage waits for an earlier job of the ticket", job.id,
                             ticket.connector, ticket.ref)
                return None
            if not earlier["done"]:
                self._skip(job, "the daemon has no finished triage of this ticket to revise")
                return None
        except LeaseLost as exc:
            log.warning("%s: %s", self.name, exc)
            return None
        except Exception as exc:
            log.exception("%s: the re-triage check of job %d crashed", self.name, job.id)
            self._release([job], f"crashed: {exc!r}")
            return None
        return job

    def _skip(self, job: ClaimedJob, why: str, note: str | None = None) -> None:
        """Complete a re-triage job that writes nothing, recorded as a skipped write-back saying why."""
        ctx, ticket = self.ctx, job.ticket
        result = ctx.store.result_for_job(job.id)
        ctx.store.record_writeback(job.id, result[0] if result else None, ticket.connector, ticket.ref, "skipped",
                                   fields_sent={}, suggested={}, needs_review=False, note=note,
                                   detail=f"re-triage: {why}")
        ctx.metrics.writebacks.labels(ticket.connector, "skipped").inc()
        ctx.queue.complete(job.id, self.name)
        log.info("job %d (%s %s): re-triage wrote nothing: %s", job.id, ticket.connector, ticket.ref, why)

    def _read_back(self, job: ClaimedJob) -> ClaimedJob | None:
        """For connectors whose webhooks are only hints, and for re-triages, the ticket as the vendor has it now
        (None: failed); a re-triage's text then gets the requester's replies."""
        job = self._read_vendor(job)
        if job is None or retriage_info(job.ticket) is None:
            return job
        try:
            if not self.ctx.policy.filter.accepts(job.ticket):  # a hint may not have said its project
                self._skip(job, "the ticket is not one policy.filter admits")
                return None
            return self._with_replies(job)
        except Exception as exc:
            log.exception("%s: collecting the replies of job %d crashed", self.name, job.id)
            self._release([job], f"crashed: {exc!r}")
            return None

    def _with_replies(self, job: ClaimedJob) -> ClaimedJob:
        """The re-triage's text: subject and description, then the replies earlier re-triages read, then this one's
        (kept in its inbound event for later ones)."""
        ticket, info = job.ticket, retriage_info(job.ticket)
        reply = info.reply if info is not None else None
        replies = self.ctx.store.retriage_replies(ticket.connector, ticket.ref, job.event_id)
        if reply:
            self.ctx.store.keep_reply(job.event_id, reply)
        text = with_replies(ticket.text, [*replies, reply or ""], MAX_RETRIAGE_TEXT)
        return job if text == ticket.text else dataclasses.replace(job, ticket=dataclasses.replace(ticket, text=text))

    def _read_vendor(self, job: ClaimedJob) -> ClaimedJob | None:
        connector = self.ctx.connectors.get(job.ticket.connector)
        if retriage_info(job.ticket) is not None and isinstance(connector, RetriageReader):
            read = connector.read_for_retriage
        elif isinstance(connector, TicketReader):
            read = connector.read_ticket
        else:
            return job
        if self.ctx.store.writeback_applied(job.id):
            return job
        try:
            ticket = read(job.ticket)
        except WritebackError as exc:
            self._fail(job, f"reading the ticket back failed: {exc}", retry_after=exc.retry_after,
                       permanent=not exc.retryable)
            return None
        except Exception as exc:
            log.exception("%s: reading %s %s back crashed", self.name, job.ticket.connector, job.ticket.ref)
            self._fail(job, f"reading the ticket back crashed: {exc!r}")
            return None
        return dataclasses.replace(job, ticket=ticket)

    def _write_back(self, job: ClaimedJob, result_id: int, result: TriageResult) -> None:
        ctx, ticket = self.ctx, job.ticket
        connector = ctx.connectors.get(ticket.connector)
        if ctx.store.writeback_applied(job.id):
            ctx.queue.complete(job.id, self.name)
            return
        info = retriage_info(ticket)
        if info is None:
            plan = ctx.policy.plan(result, ticket)
        else:
            plan, ticket = self._retriage_plan(ticket, info, result, getattr(connector, "retriage", None))
            if not plan.apply and not plan.suggest:
                self._skip(job, "nothing changed", note=plan.note)
                return
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

    def _retriage_plan(self, ticket: InboundTicket, info: RetriageInfo, result: TriageResult,
                       settings: RetriageSettings | None) -> tuple[WritebackPlan, InboundTicket]:
        """The re-triage plan, and the ticket to write it to (its `current`: every value the ticket carries, so a
        connector finds the parent of a dependent field it writes alone)."""
        store = self.ctx.store
        vendor = info.vendor if info.vendor is not None else dict(ticket.current)
        before: dict[str, str | None] = {}
        human: set[str] = set()
        for name in result.ticket:
            if result.confidence.get(name) is None:
                continue
            value = vendor.get(name)
            before[name] = str(value) if value not in (None, "") else None
            written = store.written_value(ticket.connector, ticket.ref, name)
            if store.last_correction(ticket.connector, ticket.ref, name) is not None:
                human.add(name)  # a human corrected what the daemon wrote
            elif written is not None:
                if before[name] != written[1]:
                    human.add(name)  # the vendor shows something else than the daemon wrote: a human's value
            elif name in ticket.current:
                human.add(name)  # never written by the daemon, and set on the ticket in a way that counts as human
        reasons = [RETRIAGE_REASONS.get(r, r) for r in info.reasons]
        why = " and ".join(reasons) or "new information on the ticket"
        settings = settings if isinstance(settings, RetriageSettings) else RetriageSettings("all")
        plan = self.ctx.policy.retriage_plan(result, before=before, human=human, allowed=settings.allows, why=why)
        carried = {name: value for name, value in before.items() if value}
        return plan, dataclasses.replace(ticket, current=carried)

    def _fail(self, job: ClaimedJob, error: str, retry_after: float | None = None, permanent: bool = False) -> None:
        try:
            state = self.ctx.queue.fail(job.id, self.name, error, retry_after=retry_after, permanent=permanent)
        except LeaseLost as exc:  # another worker holds it now: its outcome is theirs to record
            log.warning("%s: %s", self.name, exc)
            return
        level = logging.WARNING if state == "dead" else logging.INFO
        log.log(level, "job %d (%s %s) attempt %d: %s -> %s", job.id, job.ticket.connector, job.ticket.ref,
                job.attempts, error.splitlines()[0][:200], state)


def start_workers(ctx: WorkerContext, count: int) -> tuple[list[Worker], threading.Event]:
    stop = threading.Event()
    # Lease owners are unique across processes and hosts sharing the database (host:pid:worker-N).
    prefix = f"{socket.gethostname()}:{os.getpid()}:"
    workers = [Worker(f"{prefix}worker-{i + 1}", ctx, stop) for i in range(count)]
    for w in workers:
        w.start()
    return workers, stop
