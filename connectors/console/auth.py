"""Console log-in: a configured admin token or a small user list with werkzeug password hashes, a signed session
cookie (HttpOnly, SameSite=Lax, Secure behind TLS), a CSRF token on every form, and a per-address brake on wrong
log-ins.

The session is Flask's cookie session (itsdangerous-signed, with its own expiry), so every process that shares the
signing key accepts it. The CSRF token is a random value kept in that session and sent back in every form; a POST
whose token is missing or differs (compared in constant time) is refused before its view runs.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping

from werkzeug.security import check_password_hash, generate_password_hash

from triage_core.config import ConfigError

log = logging.getLogger(__name__)

ADMIN = "admin"
CSRF_FIELD = "csrf_token"
#: Hash methods werkzeug writes (generate_password_hash); anything else in console.users is a mistake.
_HASH_METHODS = ("scrypt", "pbkdf2")
# A hash checked for unknown names too, so a wrong name costs the same time as a wrong password.
_DUMMY_HASH = generate_password_hash(secrets.token_urlsafe(16))


class ConsoleConfigError(ConfigError):
    """The console section cannot be used; the message names the key."""


@dataclass
class Accounts:
    """Who may log in: `admin` with the token, and the named users with their password hashes."""

    admin_token: str = ""
    users: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, section: Mapping[str, Any], env: Mapping[str, str]) -> "Accounts":
        users = section.get("users") or {}
        if not isinstance(users, Mapping):
            raise ConsoleConfigError("console.users: expected a mapping of user name to password hash")
        checked: dict[str, str] = {}
        for name, hashed in users.items():
            if not isinstance(name, str) or not name.strip() or len(name) > 64:
                raise ConsoleConfigError(f"console.users: {name!r} is not a user name (1 to 64 characters)")
            if not isinstance(hashed, str) or hashed.split(":", 1)[0].split("$", 1)[0] not in _HASH_METHODS:
                raise ConsoleConfigError(
                    f"console.users.{name}: expected a werkzeug password hash (scrypt:... or pbkdf2:...), from "
                    "werkzeug.security.generate_password_hash; a plain password is never accepted")
            checked[name.strip()] = hashed
        token = env.get(str(section.get("admin_token_env") or ""), "") or ""
        if token and len(token) < 12:
            raise ConsoleConfigError(f"{section.get('admin_token_env')}: the console token must be at least 12 "
                                     "characters")
        return cls(admin_token=token, users=checked)

    @property
    def any(self) -> bool:
        return bool(self.admin_token or self.users)

    def check(self, name: str, password: str) -> str | None:
        """The user name when `password` is right for `name`, else None (the same time either way)."""
        name = (name or "").strip()
        password = password or ""
        ok = False
        hashed = self.users.get(name)
        # Always run one hash check, so an unknown name is not told apart by timing.
        hash_ok = check_password_hash(hashed or _DUMMY_HASH, password) and hashed is not None
        if hash_ok:
            ok = True
        if name == ADMIN and self.admin_token:
            ok = hmac.compare_digest(password.encode(), self.admin_token.encode()) or ok
        return name if ok else None


def signing_key(section: Mapping[str, Any], env: Mapping[str, str], accounts: Accounts) -> tuple[bytes, str]:
    """(key, where it came from): the configured secret, else one derived from the admin token, else random."""
    named = env.get(str(section.get("secret_key_env") or ""), "")
    if named:
        return named.encode(), str(section["secret_key_env"])
    if accounts.admin_token:
        return hmac.new(accounts.admin_token.encode(), b"ticket-triage console session", hashlib.sha256).digest(), \
            "derived from the admin token"
    return secrets.token_bytes(32), "random (sessions end when this process stops)"


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(expected: str | None, sent: str | None) -> bool:
    if not expected or not sent:
        return False
    return hmac.compare_digest(expected.encode(), sent.encode())


class LoginBrake:
    """At most `limit` wrong log-ins per address in `window` seconds; more are answered 429 until they age out."""

    def __init__(self, limit: int = 10, window: float = 300.0, clock=time.monotonic):
        self.limit = limit
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str) -> deque:
        now = self.clock()
        q = self._failures.setdefault(address, deque())
        while q and now - q[0] > self.window:
            q.popleft()
        return q

    def blocked(self, address: str) -> bool:
        with self._lock:
            return len(self._recent(address)) >= self.limit

    def failed(self, address: str) -> None:
        with self._lock:
            self._recent(address).append(self.clock())
            if len(self._failures) > 10_000:  # never grow without bound under a spray of addresses
                self._failures = {a: q for a, q in self._failures.items() if q}

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)
