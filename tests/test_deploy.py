"""The example deployment files in deploy/ are tested, not only written: the systemd units pass
`systemd-analyze verify` (where it exists), and gunicorn's own command line with deploy/gunicorn.conf.py serves
the daemon and stops clean on SIGTERM."""
from __future__ import annotations

import configparser
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from triage_core.config import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
UNITS = {"ticket-triage.service": "serve", "ticket-triage-worker@.service": "worker"}


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(DEPLOY / name)
    return parser


@pytest.mark.parametrize("name, command", UNITS.items())
def test_systemd_units_run_the_daemon_and_give_it_time_to_stop(name, command):
    service = unit(name)["Service"]
    assert service["ExecStart"].split()[-1] == command and service["ExecStart"].endswith(f"ticket-triage {command}")
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > DEFAULTS["server"]["shutdown_seconds"]
    assert service["User"] != "root" and service["NoNewPrivileges"] == "yes"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path):
    """Checked as installed: the ExecStart paths point at this interpreter's ticket-triage (verify requires an
    executable), a template unit as one instance of it. verify exits 0 on a bad key, so its warnings count."""
    paths = []
    for name in UNITS:
        text = (DEPLOY / name).read_text().replace("/opt/ticket-triage/bin/ticket-triage", str(BIN / "ticket-triage"))
        path = tmp_path / name.replace("@.", "@1.")
        path.write_text(text)
        paths.append(str(path))
    out = subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ours = [line for line in (out.stdout + out.stderr).splitlines() if str(tmp_path) in line or "ticket-triage" in line]
    assert ours == []


@pytest.fixture
def callback():
    from test_daemon import Callback

    cb = Callback()
    yield cb
    cb.close()


@pytest.mark.slow
def test_gunicorn_with_the_shipped_config_serves_the_daemon_and_stops_clean(tmp_path, callback):
    from test_daemon import Daemon, ticket

    daemon = Daemon(tmp_path, TRIAGE_SERVER_SHUTDOWN_SECONDS="8")
    daemon.env["TRIAGE_SERVER_PORT"] = str(daemon.port)
    daemon.proc = subprocess.Popen([str(BIN / "gunicorn"), "-c", str(DEPLOY / "gunicorn.conf.py"),
                                    "connectors.app:create_app()"], env=daemon.env, cwd=ROOT,
                                   stdout=daemon.log.open("ab"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while True:
            assert daemon.proc.poll() is None, daemon.log.read_text()[-3000:]
            try:
                if requests.get(daemon.base + "/readyz", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass
            assert time.time() < deadline, "gunicorn did not serve the daemon"
            time.sleep(0.5)
        assert daemon.webhook(ticket("G-1", callback)).status_code == 202
        daemon.wait_depth(done=1)
        assert callback.ids() == ["G-1"]
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(40) == 0
    finally:
        daemon.stop()
