"""Shared fixtures. Model tests use the real bundled model (SmolLM2-135M-Instruct); it is loaded once per session.

Every test that loads the model is marked `slow`, so `pytest -m "not slow"` is a fast loop: tests that use the
session `triager` fixture (directly or through `live_daemon`) are marked here; tests that load the model another
way (a `ticket-triage` subprocess, `Triager.from_config`, a training run) carry `@pytest.mark.slow` themselves.
"""
from __future__ import annotations

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
        from connectors.app import stop_workers

        self.server.shutdown()
        stop_workers(self.app)
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
