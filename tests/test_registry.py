"""The model registry and the retraining lock, on a real SQLite file and a real PostgreSQL database, each shared by
two Store objects (two instances)."""
from __future__ import annotations

import time

import pytest

from triage_core.registry import DbLock, LockHeld, ModelRegistry, RegistryError
from triage_core.store import Store


@pytest.fixture
def url(db_url):
    """A migrated database: a SQLite file, then PostgreSQL (conftest.py's `db_url`)."""
    store = Store(db_url)
    store.upgrade()
    store.dispose()
    return db_url


def test_promote_and_rollback_walk_back_through_champions(url):
    reg = ModelRegistry(Store(url))
    assert reg.champion() is None
    a, b, c = (reg.register("it", v, "base", f"/adapters/{v}", "h1", {"f1": 0.5}) for v in ("1", "2", "3"))
    assert reg.get("it@2").id == b.id and reg.get("3").id == c.id and reg.get(str(a.id)).id == a.id
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("it", "1", "base", None, None)
    with pytest.raises(RegistryError, match="no model version"):
        reg.get("it@9")
    with pytest.raises(RegistryError, match="no champion"):
        reg.rollback()
    for v in (a, b, c):
        reg.promote(v.tag)
        time.sleep(0.01)
    assert reg.champion().tag == "it@3"
    assert [m.status for m in reg.list()] == ["champion", "retired", "retired"]
    assert reg.rollback().tag == "it@2" and reg.champion().tag == "it@2"
    assert reg.rollback().tag == "it@1"  # further back, not back and forth
    with pytest.raises(RegistryError, match="first champion"):
        reg.rollback()
    assert ModelRegistry(Store(url)).champion().tag == "it@1"  # another instance sees the same


def test_only_one_instance_holds_the_lock_and_expiry_frees_it(url):
    one = DbLock(Store(url), "retrain", "instance-1", ttl_seconds=0.5)
    two = DbLock(Store(url), "retrain", "instance-2", ttl_seconds=60)
    assert one.acquire()
    assert not two.acquire()
    with pytest.raises(LockHeld, match="instance-1"):
        with two:
            pass
    assert one.refresh()  # the holder extends it
    time.sleep(0.6)  # the holder died: the lock expires
    assert two.acquire() and not one.acquire()
    two.release()
    with one:
        assert one.holder()[0] == "instance-1"
    assert one.holder() is None


def test_models_and_retrain_commands(tmp_path):
    """`ticket-triage models list|promote|rollback` and `retrain --dry-run` as a user runs them."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = shutil.which("ticket-triage", path=str(Path(sys.executable).parent)) or "ticket-triage"
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {**os.environ, "TRIAGE_DATABASE_URL": url, "TRIAGE_RETRAIN_OUTPUT_DIR": str(tmp_path / "runs"),
           "TRIAGE_CONNECTORS_ENABLED": "[]"}

    def run(*args):
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=300, env=env)
        return proc.returncode, proc.stdout, proc.stderr

    code, out, err = run("models", "list")
    assert code == 0 and "no adapters registered" in out, err
    Store(url).upgrade()
    reg = ModelRegistry(Store(url))
    for v in ("1", "2"):
        reg.register("it", v, "base", f"/adapters/{v}", "h")
    assert run("models", "promote", "it@1")[0] == 0
    code, out, _ = run("models", "promote", "it@2")
    assert code == 0 and "it@2 is the champion" in out
    code, out, _ = run("models", "list", "--json")
    assert [(m["tag"], m["status"]) for m in json.loads(out)] == [("it@2", "champion"), ("it@1", "retired")]
    code, out, _ = run("models", "rollback")
    assert code == 0 and "it@1 is the champion" in out
    code, _, err = run("models", "promote", "it@7")
    assert code != 0 and "no model version" in err and "Traceback" not in err
    code, _, err = run("retrain")
    assert code != 0 and "--now" in err
    code, out, err = run("retrain", "--dry-run", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["state"] == "dry-run" and report["counts"]["sources"] == {"corrections": 0}


@pytest.mark.slow
def test_watcher_serves_the_champion_from_the_start_and_skips_one_that_does_not_load(url, config):
    """A daemon starting after a promotion serves the champion's adapter from the start; a broken one is
    skipped once, and the configured adapter serves instead."""
    from connectors.app import create_app
    from connectors.reload import ModelWatcher
    from triage_core import Triager

    reg = ModelRegistry(Store(url))
    loaded = []

    def load(m):
        loaded.append(m.tag)
        return Triager.from_config(config, adapter=m.adapter_path)

    watcher = ModelWatcher(reg, load, interval=60)
    assert watcher.initial() is None and loaded == []  # no champion: the configured adapter serves
    broken = reg.register("it", "1", "base", "/nowhere/adapter", None)
    reg.promote(broken.id)
    assert watcher.initial() is None and watcher.initial() is None and loaded == ["it@1"]  # tried once
    shipped = str(config.path(config["model"]["adapter"]))
    good = reg.register("default-it", "2", "base", shipped, None)
    reg.promote(good.id)
    triager = watcher.initial()
    assert triager is not None and watcher.serving == good.id and triager.model_info["adapter"] == "default-it@2"
    app = create_app(config, store=Store(url), env={"TRIAGE_GENERIC_SECRET": "s"}, workers=1)  # no triager given
    try:
        assert app.extensions["triage"].watcher.serving == good.id
        assert app.extensions["triage"].triager.model_info["adapter"] == "default-it@2"
    finally:
        app.extensions["triage"].stop()
