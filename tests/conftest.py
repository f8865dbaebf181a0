"""Shared fixtures. Model tests use the real bundled model (SmolLM2-135M-Instruct); it is loaded once per session.

Every test that loads the model is marked `slow`, so `pytest -m "not slow"` is a fast loop: tests that use the
session `triager` fixture (directly or through `live_daemon`) are marked here; tests that load the model another
way (a `ticket-triage` subprocess, `Triager.from_config`, a training run) carry `@pytest.mark.slow` themselves.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from triage_core import Triager, load_config, load_taxonomy

ROOT = Path(__file__).resolve().parent.parent

#: Fixtures that load the real model; a test depending on one (even indirectly) is slow.
MODEL_FIXTURES = {"triager"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def config():
    return load_config(env={})


@pytest.fixture(scope="session")
def triager(config):
    return Triager.from_config(config)


@pytest.fixture(scope="session")
def taxonomy(config):
    """The configured taxonomy file, parsed: no model needed."""
    return load_taxonomy(config.taxonomy_path)


class LiveDaemon:
    """The real app (create_app: queue, workers, pollers, the session's real model) served over HTTP on
    127.0.0.1 in this process, on a SQLite file. For end-to-end tests against fake vendors."""

    def __init__(self, tmp_path: Path, triager, overrides: dict, env: dict[str, str], workers: int = 1):
        import threading

        from werkzeug.serving import make_server

        from connectors.app import create_app
        from triage_core.store import Store

        base = {"database": {"url": f"sqlite:///{tmp_path / 'triage.db'}"},
                "queue": {"poll_interval_seconds": 0.1, "backoff_base_seconds": 0.2, "backoff_max_seconds": 1.0}}
        for key, value in overrides.items():
            base[key] = {**base.get(key, {}), **value}
        self.config = load_config(env={}, overrides=base)
        self.store = Store(self.config["database"]["url"])
        self.app = create_app(self.config, triager=triager, store=self.store, env=env, workers=workers)
        self.ctx = self.app.extensions["triage"]
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait_idle(self, done: int, dead: int = 0, timeout: float = 120) -> dict:
        """Wait until `done` jobs are done (and `dead` dead) and none is queued or running."""
        import time

        deadline = time.time() + timeout
        depth: dict = {}
        while time.time() < deadline:
            depth = self.ctx.queue.depth()
            if depth.get("done", 0) >= done and depth.get("dead", 0) >= dead and not depth.get("queued") \
                    and not depth.get("running"):
                return depth
            time.sleep(0.1)
        raise AssertionError(f"jobs not finished in {timeout} s: {depth}")

    def close(self) -> None:
        self.server.shutdown()
        self.ctx.stop()
        self.store.dispose()


@pytest.fixture
def live_daemon(tmp_path, triager):
    """Call with (overrides, env) to start a daemon; every one started is closed at the end of the test."""
    started = []

    def start(overrides: dict, env: dict[str, str], workers: int = 1) -> LiveDaemon:
        daemon = LiveDaemon(tmp_path, triager, overrides, env, workers)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.close()


# -- PostgreSQL: a throwaway cluster for the store, queue, lock and registry tests ---------------------------------
#
# The `db_url` fixture runs a test on a fresh SQLite file and on a fresh PostgreSQL database. PostgreSQL comes from
# $TRIAGE_TEST_POSTGRES_URL (an existing server's scratch database: its public schema is dropped before each test)
# or from Debian's binaries (initdb on PATH or in /usr/lib/postgresql/*/bin): a cluster initdb'd in a temporary
# folder, as a non-root user, listening on 127.0.0.1 on a free port, for the session. Without either the
# PostgreSQL cases are skipped, except in CI ($CI or $TRIAGE_TEST_REQUIRE_POSTGRES set), where they fail.

PG_URL_ENV = "TRIAGE_TEST_POSTGRES_URL"
PG_REQUIRED = any(os.environ.get(name, "") not in ("", "0", "false") for name in ("CI", "TRIAGE_TEST_REQUIRE_POSTGRES"))
#: The OS user a cluster runs as when the tests run as root (initdb refuses root); created with useradd if missing.
PG_OS_USER = "triage-pgtest"


def postgres_bin_dir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: from PATH, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found and (Path(found).resolve().parent / "pg_ctl").exists():
        return Path(found).resolve().parent
    versions = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        version = Path(initdb).parent.parent.name
        versions.append((tuple(int(p) for p in re.findall(r"\d+", version)), Path(initdb).parent))
    return max(versions)[1] if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """initdb + pg_ctl start in a temporary folder; `url` is a database created in it; `stop` removes it all."""

    def __init__(self, bin_dir: Path, root: Path | None = None) -> None:
        self.bin = bin_dir
        self.root = root or Path(tempfile.mkdtemp(prefix="triage-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.prefix: list[str] = []
        self.port = 0
        self.url = ""

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def _as_user(self) -> None:
        """As root: run every command as PG_OS_USER (created if missing), owning the folder."""
        import pwd

        try:
            entry = pwd.getpwnam(PG_OS_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_OS_USER],
                           check=True, capture_output=True)
            entry = pwd.getpwnam(PG_OS_USER)
        os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.prefix = ["runuser", "-u", PG_OS_USER, "--"] if shutil.which("runuser") else []
        if not self.prefix:
            raise RuntimeError("running as root and runuser is missing: cannot start PostgreSQL as another user")

    @classmethod
    def sweep(cls, bin_dir: Path) -> None:
        """Stop and remove clusters left by test sessions that were killed before their teardown."""
        for owner in glob.glob(os.path.join(tempfile.gettempdir(), "triage-pg-*", "owner.pid")):
            root = Path(owner).parent
            try:
                os.kill(int(Path(owner).read_text()), 0)
                continue  # that session is still running
            except (ProcessLookupError, ValueError):
                pass
            except PermissionError:
                continue
            stale = cls(bin_dir, root)
            if os.geteuid() == 0:
                stale._as_user()
            stale.stop(mode="immediate")

    def start(self) -> str:
        (self.root / "owner.pid").write_text(str(os.getpid()))
        if os.geteuid() == 0:
            self._as_user()
        init = self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                         "-E", "UTF8", "--locale=C", "--no-sync")
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip()[-2000:]}")
        for _ in range(5):  # a free port can be taken between the check and the bind: try another
            self.port = free_port()
            opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            started = self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                                "-t", "60", "-o", opts, "start")
            if started.returncode == 0:
                break
        else:
            raise RuntimeError(f"PostgreSQL did not start: {self.log.read_text()[-2000:] if self.log.exists() else ''}")
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute("CREATE DATABASE triage_test")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/triage_test"
        return self.url

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def reset_postgres(url: str) -> str:
    """An empty database at `url`: other sessions' connections are closed and the public schema recreated."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()
    return url


class _PgState:
    """What the session found: the server URL (or why there is none) and the tally printed at the end."""

    url: str | None = None
    where: str = ""
    missing: str | None = None
    outcomes: dict[str, int] = {}


PG = _PgState()


def _missing(reason: str):
    PG.missing = reason
    if PG_REQUIRED:
        pytest.fail(f"{reason}; CI requires PostgreSQL (CI or TRIAGE_TEST_REQUIRE_POSTGRES is set): "
                    "apt-get install postgresql, or set TRIAGE_TEST_POSTGRES_URL", pytrace=False)
    pytest.skip(f"{reason}: apt-get install postgresql, or set TRIAGE_TEST_POSTGRES_URL=postgresql+psycopg://...")


@pytest.fixture(scope="session")
def postgres_server():
    """The URL of a PostgreSQL database for this session (TRIAGE_TEST_POSTGRES_URL or a throwaway cluster)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _missing("the PostgreSQL driver psycopg is not installed (pip install 'psycopg[binary]')")
    named = os.environ.get(PG_URL_ENV)
    if named:
        PG.url, PG.where = named, f"{PG_URL_ENV} ({named.split('@')[-1]})"
        yield named
        return
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        _missing("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin)")
    PgCluster.sweep(bin_dir)
    cluster = PgCluster(bin_dir)
    try:
        PG.url = cluster.start()
    except Exception as exc:
        cluster.stop()
        PG.missing = f"the throwaway PostgreSQL cluster did not start: {exc}"
        pytest.fail(PG.missing, pytrace=False)
    PG.where = f"a throwaway cluster of {bin_dir} on 127.0.0.1:{cluster.port}"
    try:
        yield PG.url
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_server):
    """An empty PostgreSQL database (its public schema dropped and recreated)."""
    return reset_postgres(postgres_server)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    """A fresh database for each engine the daemon supports: a SQLite file, then an empty PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'triage.db'}"
    return request.getfixturevalue("postgres_url")


def pytest_runtest_logreport(report):
    if "postgres" in report.keywords and (report.when == "call" or report.outcome != "passed"):
        PG.outcomes[report.outcome] = PG.outcomes.get(report.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter):
    if not PG.outcomes:
        return
    tally = ", ".join(f"{n} {outcome}" for outcome, n in sorted(PG.outcomes.items()))
    if PG.url:
        line = f"PostgreSQL: tests ran against {PG.where}: {tally}"
    else:
        line = f"PostgreSQL: not used: {PG.missing or 'unavailable'}: {tally}"
    terminalreporter.write_line(line)
