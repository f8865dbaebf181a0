"""The model registry and the retraining lock, on a real SQLite file shared by two Store objects (two instances)."""
from __future__ import annotations

import time

import pytest

from triage_core.registry import DbLock, LockHeld, ModelRegistry, RegistryError
from triage_core.store import Store


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path / 'reg.db'}"
    Store(url).upgrade()
    return url


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
