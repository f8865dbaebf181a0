"""The model registry (which adapter serves: the champion) and the database lock that serialises retraining.

Both live in the shared database so every daemon instance agrees: instances poll `ModelRegistry.champion()` and
hot-reload when it changes, and a retraining run holds `DbLock("retrain")` so only one runs across instances. The
lock is a row with an expiry, not a session-scoped lock, so it works the same on SQLite and PostgreSQL and a
holder that crashed frees it when the expiry passes.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .store import LockRow, ModelVersion, Store, utcnow


class RegistryError(ValueError):
    """A registry operation cannot be done (unknown version, nothing to roll back to); the message says why."""


@dataclass(frozen=True)
class ModelInfo:
    id: int
    name: str
    version: str
    base: str
    adapter_path: str | None
    taxonomy_hash: str | None
    metrics: dict[str, Any]
    status: str
    created_at: datetime
    promoted_at: datetime | None

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def from_row(cls, row: ModelVersion) -> "ModelInfo":
        return cls(row.id, row.name, row.version, row.base, row.adapter_path, row.taxonomy_hash, dict(row.metrics),
                   row.status, row.created_at, row.promoted_at)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "tag": self.tag, "base": self.base, "adapter_path": self.adapter_path,
                "taxonomy_hash": self.taxonomy_hash, "status": self.status, "metrics": self.metrics,
                "created_at": self.created_at.isoformat(),
                "promoted_at": self.promoted_at.isoformat() if self.promoted_at else None}


class ModelRegistry:
    def __init__(self, store: Store):
        self.store = store

    def list(self) -> list[ModelInfo]:
        """Every known version, newest first."""
        with self.store.session(readonly=True) as s:
            return [ModelInfo.from_row(r) for r in s.scalars(select(ModelVersion).order_by(ModelVersion.id.desc()))]

    def champion(self) -> ModelInfo | None:
        """The serving version; None while none was ever promoted (the configured adapter serves)."""
        with self.store.session(readonly=True) as s:
            row = s.scalars(select(ModelVersion).where(ModelVersion.status == "champion").limit(1)).first()
            return None if row is None else ModelInfo.from_row(row)

    def get(self, ref: str | int) -> ModelInfo:
        """A version by id, by "name@version" or by version alone (when unambiguous)."""
        with self.store.session(readonly=True) as s:
            return ModelInfo.from_row(self._find(s, ref))

    def register(self, name: str, version: str, base: str, adapter_path: str | None, taxonomy_hash: str | None,
                 metrics: dict[str, Any] | None = None) -> ModelInfo:
        """Record a trained adapter as a challenger."""
        with self.store.session() as s:
            row = ModelVersion(name=name, version=version, base=base, adapter_path=adapter_path,
                               taxonomy_hash=taxonomy_hash, metrics=dict(metrics or {}), status="challenger")
            s.add(row)
            try:
                s.flush()
            except IntegrityError:
                raise RegistryError(f"{name}@{version} is already registered") from None
            return ModelInfo.from_row(row)

    def promote(self, ref: str | int) -> ModelInfo:
        """Make `ref` the champion; the previous champion is retired (and is what `rollback` returns to)."""
        with self.store.session() as s:
            row = self._find(s, ref)
            if row.status == "champion":
                return ModelInfo.from_row(row)
            for old in s.scalars(select(ModelVersion).where(ModelVersion.status == "champion")):
                old.status = "retired"
            s.flush()
            row.status = "champion"
            row.promoted_at = utcnow()
            return ModelInfo.from_row(row)

    def rollback(self) -> ModelInfo:
        """Retire the champion and restore the one promoted before it (repeatable: each step goes further back)."""
        with self.store.session() as s:
            current = s.scalars(select(ModelVersion).where(ModelVersion.status == "champion")).first()
            if current is None:
                raise RegistryError("no champion to roll back from")
            previous = s.scalars(select(ModelVersion).where(
                ModelVersion.status == "retired", ModelVersion.promoted_at.is_not(None),
                ModelVersion.promoted_at < current.promoted_at).order_by(ModelVersion.promoted_at.desc())).first()
            if previous is None:
                raise RegistryError(f"{current.name}@{current.version} is the first champion: nothing to roll back to")
            current.status = "retired"
            s.flush()
            previous.status = "champion"  # promoted_at stays: a second rollback goes one further back
            return ModelInfo.from_row(previous)

    @staticmethod
    def _find(s: Any, ref: str | int) -> ModelVersion:
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            row = s.get(ModelVersion, int(ref))
            if row is None:
                raise RegistryError(f"no model version with id {ref}")
            return row
        name, sep, version = ref.rpartition("@")
        stmt = select(ModelVersion).where(ModelVersion.version == (version if sep else ref))
        if sep:
            stmt = stmt.where(ModelVersion.name == name)
        rows = s.scalars(stmt).all()
        if not rows:
            raise RegistryError(f"no model version {ref!r} (see `ticket-triage models list`)")
        if len(rows) > 1:
            raise RegistryError(f"{ref!r} is ambiguous: give name@version or the id")
        return rows[0]


class DbLock:
    """A named lock row with an expiry. `acquire` is atomic across instances (one write transaction)."""

    def __init__(self, store: Store, name: str, owner: str, ttl_seconds: float = 3600.0):
        self.store = store
        self.name = name
        self.owner = owner
        self.ttl = timedelta(seconds=ttl_seconds)

    def acquire(self) -> bool:
        """True when this owner now holds the lock (free, expired, or already ours: then it is extended)."""
        now = utcnow()
        try:
            with self.store.session() as s:
                row = s.get(LockRow, self.name, with_for_update=True)
                if row is None:
                    s.add(LockRow(name=self.name, owner=self.owner, acquired_at=now, expires_at=now + self.ttl))
                    return True
                if row.owner != self.owner and row.expires_at > now:
                    return False
                if row.owner != self.owner:
                    row.acquired_at = now
                row.owner = self.owner
                row.expires_at = now + self.ttl
                return True
        except IntegrityError:  # another instance inserted the row first
            return False

    refresh = acquire  # extending a held lock is acquiring it again

    def release(self) -> None:
        with self.store.session() as s:
            row = s.get(LockRow, self.name, with_for_update=True)
            if row is not None and row.owner == self.owner:
                s.delete(row)

    def holder(self) -> tuple[str, datetime] | None:
        """(owner, expires_at) of a live lock, None when free."""
        with self.store.session(readonly=True) as s:
            row = s.get(LockRow, self.name)
            if row is None or row.expires_at <= utcnow():
                return None
            return row.owner, row.expires_at

    def __enter__(self) -> "DbLock":
        if not self.acquire():
            held = self.holder()
            who = f"{held[0]} until {held[1].isoformat(timespec='seconds')}" if held else "another instance"
            raise LockHeld(f"lock {self.name!r} is held by {who}")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class LockHeld(RuntimeError):
    """Another instance holds the lock."""
