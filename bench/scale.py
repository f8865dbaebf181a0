"""Scale-out figures on one PostgreSQL: tickets/s end to end for 1 and 2 `ticket-triage worker` processes, and the
queue's own cost per job without the model.

    python bench/scale.py [--tickets 40] [--workers 1,2] [--queue-jobs 400] [--only end-to-end|queue]
                          [--database-url postgresql+psycopg://...]

Without --database-url it starts a throwaway PostgreSQL cluster (tests/conftest.py's PgCluster, from Debian's
binaries) and removes it afterwards; with one, that database's public schema is dropped first.

End to end: `ticket-triage serve --workers 0` takes the signed webhooks, a local receiver stands in for the ITSM,
and K worker processes (one thread each, model.threads = cores / K) start together; once every one has loaded
the model the webhooks are sent and the clock runs until every job is done and written back.

Queue overhead: the real worker loop (SKIP LOCKED claim under a lease, result recorded, shadow write-back
recorded, job completed) in 1 and 2 processes, with a stub triager that answers at once. The stub exists in this
bench only, to take the model out of the figure.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from load_webhooks import Receiver  # the ITSM's stand-in: answers 200 to every write-back, counts them

ROOT = Path(__file__).resolve().parent.parent
EXE = shutil.which("ticket-triage", path=str(Path(sys.executable).parent)) or "ticket-triage"
SECRET = "bench-secret"
TEXTS = ["VPN drops every few minutes for the sales team", "Printer on floor {n} jams on every page",
         "Please install Visio on laptop {n}", "Cannot log in to SAP since the password change",
         "Outlook does not sync my calendar", "Wi-Fi in meeting room {n} is down",
         "Need access to the finance share for the month-end close", "Monitor {n} flickers after the update"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reset(url: str) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import reset_postgres

    reset_postgres(url)


def done_count(url: str) -> int:
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT count(*) FROM jobs WHERE state IN ('done', 'dead')").scalar()
    finally:
        engine.dispose()


def end_to_end(url: str, tickets: int, processes: int, tmp: Path) -> float:
    """Tickets/s with `processes` worker processes (model loaded before the clock starts)."""
    reset(url)
    receiver = Receiver()
    cores = os.cpu_count() or 1
    port = free_port()
    env = {**os.environ, "TRIAGE_DATABASE_URL": url, "TRIAGE_GENERIC_SECRET": SECRET, "TRIAGE_API_TOKEN": "bench",
           "TRIAGE_SERVER_WORKERS": "0", "TRIAGE_QUEUE_POLL_INTERVAL_SECONDS": "0.05",
           "TRIAGE_MODEL_THREADS": str(max(1, cores // processes))}
    logs = [tmp / f"worker-{processes}-{i}.log" for i in range(processes)]
    web = subprocess.Popen([EXE, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    workers = [subprocess.Popen([EXE, "worker", "--threads", "1"], env=env, stdout=log.open("wb"),
                                stderr=subprocess.STDOUT) for log in logs]
    try:
        deadline = time.time() + 600
        while not all("ticket-triage worker running" in log.read_text(errors="replace") for log in logs):
            assert time.time() < deadline and all(w.poll() is None for w in workers), "workers did not start"
            time.sleep(0.3)
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert time.time() < deadline and web.poll() is None, "the web process did not start"
            time.sleep(0.3)
        t0 = time.perf_counter()
        for i in range(tickets):
            body = json.dumps({"id": f"B-{i}", "text": TEXTS[i % len(TEXTS)].format(n=i),
                               "callback_url": receiver.url}).encode()
            ts = str(int(time.time()))
            sig = "sha256=" + hmac.new(SECRET.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
            r = requests.post(f"http://127.0.0.1:{port}/webhooks/generic", data=body, timeout=30,
                              headers={"Content-Type": "application/json", "X-Triage-Signature": sig,
                                       "X-Triage-Timestamp": ts})
            assert r.status_code == 202, r.text
        while done_count(url) < tickets:
            assert time.time() < deadline + 1800, "jobs not finished"
            time.sleep(0.2)
        elapsed = time.perf_counter() - t0
        assert len(set(receiver.ids)) == tickets
        return tickets / elapsed
    finally:
        for proc in [*workers, web]:
            proc.send_signal(signal.SIGTERM)
        for proc in [*workers, web]:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        receiver.server.shutdown()


def _stub_worker(url: str, barrier, out) -> None:
    """In a spawned process: the real Worker with a stub triager (bench only), until the queue is empty."""
    import threading as th

    from connectors.metrics import Metrics
    from connectors.worker import Worker, WorkerContext
    from triage_core.config import load_config
    from triage_core.policy import Policy
    from triage_core.queue import JobQueue
    from triage_core.store import Store
    from triage_core.taxonomy import load_taxonomy
    from triage_core.triager import TriageResult

    config = load_config(env={}, overrides={"policy": {"shadow": True}})
    taxonomy = load_taxonomy(config.taxonomy_path)
    answer = {f.name: (f.values[0] if f.kind != "text" else "stub") for f in taxonomy.fields}

    class StubTriager:  # answers at once: the figure is the queue's, not the model's
        def triage(self, text):
            return TriageResult(ticket=dict(answer), confidence={k: 0.99 for k in answer},
                                model={"base": "stub", "adapter": None}, latency_ms=0)

        def triage_many(self, texts):
            return [self.triage(t) for t in texts]

    store = Store(url)
    queue = JobQueue(store, lease_seconds=60)
    ctx = WorkerContext(store=store, queue=queue, triager=StubTriager(), policy=Policy.from_config(
        config["policy"], taxonomy), connectors={}, metrics=Metrics(queue.depth), batch_size=8, poll_interval=0.01)
    stop = th.Event()
    worker = Worker(f"bench-{os.getpid()}", ctx, stop)
    barrier.wait(120)
    t0 = time.perf_counter()
    worker.start()
    while queue.depth()["queued"] or queue.depth()["running"]:
        time.sleep(0.01)
    stop.set()
    worker.join(30)
    out.put(time.perf_counter() - t0)
    store.dispose()


def queue_overhead(url: str, jobs: int, processes: int) -> tuple[float, float]:
    """(ms per job, jobs/s) of the queue itself with `processes` worker processes."""
    from triage_core.queue import InboundTicket, JobQueue
    from triage_core.store import Store

    reset(url)
    store = Store(url)
    store.upgrade()
    queue = JobQueue(store)
    for i in range(jobs):
        queue.submit(InboundTicket(connector="generic", ref=f"Q-{i}", event_key=f"q{i}", text=f"ticket {i}"))
    store.dispose()
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_stub_worker, args=(url, barrier, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    elapsed = max(out.get(timeout=1800) for _ in procs)
    for p in procs:
        p.join(60)
    return 1000 * elapsed / jobs, jobs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=40)
    parser.add_argument("--workers", default="1,2", help="worker process counts to run, e.g. 1,2")
    parser.add_argument("--queue-jobs", type=int, default=400)
    parser.add_argument("--database-url", help="an existing PostgreSQL scratch database (its schema is dropped)")
    parser.add_argument("--only", choices=["end-to-end", "queue"], help="run one of the two measurements")
    args = parser.parse_args()
    counts = [int(c) for c in args.workers.split(",")]
    cluster = None
    url = args.database_url
    if not url:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import PgCluster, postgres_bin_dir

        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            sys.exit("PostgreSQL is not installed (apt-get install postgresql) and no --database-url was given")
        cluster = PgCluster(bin_dir)
        url = cluster.start()
    print(f"machine: {os.cpu_count()} cores; PostgreSQL {'(throwaway cluster)' if cluster else url.split('@')[-1]}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for k in counts if args.only != "queue" else []:
                print(f"end to end, {k} worker process(es), {args.tickets} tickets: "
                      f"{end_to_end(url, args.tickets, k, Path(tmp)):.2f} tickets/s", flush=True)
        for k in counts if args.only != "end-to-end" else []:
            ms, rate = queue_overhead(url, args.queue_jobs, k)
            print(f"queue only (stub triager), {k} process(es), {args.queue_jobs} jobs: {ms:.2f} ms/job wall, "
                  f"{rate:.0f} jobs/s", flush=True)
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
