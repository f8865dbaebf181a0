"""Webhook load: N concurrent signed webhooks (10% duplicates) against a running daemon.

Starts `ticket-triage serve` on a temporary SQLite file with a local callback server standing in for the ITSM
(or use --url for a daemon you run, with TRIAGE_GENERIC_SECRET and TRIAGE_API_TOKEN exported). Prints acks/s,
p50/p99 ack latency, the time until every job is done, and the counts that must match: unique tickets =
triage results = write-backs received, lost = 0.

    python bench/load_webhooks.py [--n 1000] [--concurrency 32] [--dup 0.1] [--dashboard]

`--dashboard` then logs in to the review console (as admin, with TRIAGE_CONSOLE_TOKEN) and prints what its
dashboard shows after the load: the headline counts and the outcome, coverage and accuracy cards as text.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [
    "VPN drops every few minutes for the sales team", "Printer on floor {n} jams on every page",
    "Please install Visio on laptop {n}", "Cannot log in to SAP since the password change",
    "Outlook does not sync my calendar", "Wi-Fi in meeting room {n} is down",
    "Need access to the finance share for the month-end close", "Monitor {n} flickers after the update",
    "Phishing e-mail received, I clicked the link", "El portatil {n} no enciende desde esta manana",
]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


class Receiver:
    def __init__(self):
        self.ids: list[str] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with outer.lock:
                    outer.ids.append(body["id"])
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cb"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="webhooks to send (duplicates included)")
    ap.add_argument("--dup", type=float, default=0.1, help="share of deliveries that repeat an earlier one")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--url", help="a running daemon (default: start one)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds to wait for all jobs")
    ap.add_argument("--dashboard", action="store_true", help="print the console's dashboard after the load")
    args = ap.parse_args()

    secret = os.environ.get("TRIAGE_GENERIC_SECRET", "bench-secret")
    token = os.environ.get("TRIAGE_API_TOKEN", "bench-token")
    console_token = os.environ.get("TRIAGE_CONSOLE_TOKEN", "bench-console-token")
    receiver = Receiver()
    tmp = tempfile.mkdtemp(prefix="triage-load-")
    db = Path(tmp) / "triage.db"
    proc = None
    base = args.url
    if not base:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "TRIAGE_GENERIC_SECRET": secret, "TRIAGE_API_TOKEN": token,
               "TRIAGE_CONSOLE_TOKEN": console_token,
               "TRIAGE_DATABASE_URL": f"sqlite:///{db}", "TRIAGE_QUEUE_POLL_INTERVAL_SECONDS": "0.1"}
        exe = str(Path(sys.executable).parent / "ticket-triage")
        proc = subprocess.Popen([exe, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                                stderr=open(Path(tmp) / "daemon.log", "wb"))
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if requests.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # gunicorn holds connections while it loads
                time.sleep(0.2)

    rng = random.Random(1)
    unique = int(round(args.n * (1 - args.dup)))
    deliveries = [f"T-{i}" for i in range(unique)]
    deliveries += [rng.choice(deliveries[:unique]) for _ in range(args.n - unique)]
    rng.shuffle(deliveries)
    bodies = {}
    for i, ref in enumerate(sorted(set(deliveries))):
        text = TEXTS[i % len(TEXTS)].format(n=i)
        bodies[ref] = json.dumps({"id": ref, "text": f"{text} (ticket {ref})", "callback_url": receiver.url}).encode()

    session = requests.Session()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def send(ref: str) -> None:
        body = bodies[ref]
        ts = str(int(time.time()))  # signed with the body; a repeat of the same body is a duplicate
        sig = "sha256=" + hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
        t = time.perf_counter()
        r = session.post(base + "/webhooks/generic", data=body, timeout=60,
                         headers={"Content-Type": "application/json", "X-Triage-Signature": sig,
                                  "X-Triage-Timestamp": ts})
        dt = time.perf_counter() - t
        with lock:
            latencies.append(dt * 1000)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(send, deliveries))
    ack_seconds = time.perf_counter() - t0
    print(f"sent {len(deliveries)} webhooks ({unique} unique) in {ack_seconds:.1f} s: "
          f"{len(deliveries) / ack_seconds:.0f} acks/s, ack p50 {pct(latencies, 0.5):.1f} ms, "
          f"p99 {pct(latencies, 0.99):.1f} ms, statuses {statuses}", flush=True)

    headers = {"Authorization": f"Bearer {token}"}
    depth = {}
    while time.perf_counter() - t0 < args.timeout:
        depth = requests.get(base + "/v1/jobs", headers=headers, timeout=30).json()["depth"]
        if (depth.get("done", 0) + depth.get("dead", 0) >= unique and not depth.get("queued")
                and not depth.get("running")):
            break
        time.sleep(1)
    all_done = time.perf_counter() - t0
    time.sleep(1)
    received = receiver.ids
    print(f"all jobs finished {all_done:.1f} s after the first webhook ({unique / all_done:.2f} tickets/s end to end)")
    if args.dashboard:
        print_dashboard(base, console_token)
    results = writebacks = None
    if proc is not None:
        with sqlite3.connect(db) as conn:
            results = conn.execute("select count(distinct ticket_ref) from triage_results").fetchone()[0]
            writebacks = conn.execute("select count(*) from writebacks where outcome='applied'").fetchone()[0]
        proc.terminate()
        proc.wait(30)
    lost = len(set(bodies) - set(received))
    print(f"unique tickets {unique} | triage results {results} | write-backs received {len(received)} "
          f"(distinct {len(set(received))}) | write-backs recorded {writebacks} | dead {depth.get('dead', 0)} | "
          f"lost {lost}")


def print_dashboard(base: str, console_token: str) -> None:
    """Log in to the console and print its dashboard's cards as text (what an operator sees after the load)."""
    import re
    from html.parser import HTMLParser

    class Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.parts: list[str] = []
            self.skip = 0

        def handle_starttag(self, tag, attrs):  # noqa: ANN001
            self.skip += tag in ("script", "style", "svg")
            if tag in ("tr", "h2", "div", "p", "li"):
                self.parts.append("\n")

        def handle_endtag(self, tag):  # noqa: ANN001
            self.skip -= tag in ("script", "style", "svg")

        def handle_data(self, data):  # noqa: ANN001
            if not self.skip and data.strip():
                self.parts.append(data.strip() + " ")

    web = requests.Session()
    page = web.get(base + "/console/login", timeout=30).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    web.post(base + "/console/login", data={"username": "admin", "password": console_token,
                                            "csrf_token": csrf.group(1) if csrf else ""}, timeout=30)
    dash = web.get(base + "/console/dashboard", timeout=60)
    if dash.status_code != 200 or "/console/login" in dash.url:
        print(f"dashboard: could not log in ({dash.status_code})")
        return
    parser = Text()
    parser.feed(dash.text[dash.text.find("<main"):])
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    print("dashboard after the load:\n  " + "\n  ".join(line for line in lines if line))


if __name__ == "__main__":
    main()
