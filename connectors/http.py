"""The one HTTP layer every vendor connector talks through.

A `VendorClient` owns a requests Session (connection reuse, thread-safe enough for our use: one request at a time
per call, no shared mutable state besides the pool), a base URL, timeouts and an `Auth`. Retries follow one rule
for all vendors: 429, 502, 503, 504 and connection errors are retried with exponential backoff, honouring
Retry-After; any other 4xx is final and raised with the vendor's own message, so a deleted ticket or a missing
permission parks the job instead of hammering the vendor. A 401 lets the auth refresh its token once. Two optional,
per-client refinements for vendors that document them (Jira): `rate_limit_backoff`, the first wait after a 429 that
names no delay, and `reset_header`, a header holding the ISO 8601 instant a rate limit resets.
"""
from __future__ import annotations

import base64
import logging
import random
import threading
import time
from datetime import datetime, timezone
from typing import Any, Mapping, Protocol

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from .base import WritebackError, parse_retry_after

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 502, 503, 504})
JITTER = (0.7, 1.3)  # the multiplier range of a rate-limit backoff (Atlassian's "Rate limiting" page)
_MAX_MESSAGE = 300


class VendorError(WritebackError):
    """A vendor call failed. `retryable`: the queue should try again later (429, 5xx, unreachable)."""


class _Transient(Exception):
    def __init__(self, error: VendorError):
        super().__init__(str(error))
        self.error = error


class Auth(Protocol):
    """How a client authenticates. Implementations must be thread-safe and never put secrets in exceptions."""

    def headers(self) -> dict[str, str]:
        """Headers to add to a request (may fetch or refresh a token)."""
        ...

    def invalidate(self) -> bool:
        """The vendor answered 401: drop any cached token; True when trying once more can help."""
        ...


class StaticAuth:
    """A fixed header: Basic e-mail:API-token, a bearer token, an on-premises authtoken."""

    def __init__(self, headers: Mapping[str, str]):
        self._headers = dict(headers)

    @classmethod
    def basic(cls, user: str, password: str) -> "StaticAuth":
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return cls({"Authorization": f"Basic {token}"})

    @classmethod
    def bearer(cls, token: str, scheme: str = "Bearer") -> "StaticAuth":
        return cls({"Authorization": f"{scheme} {token}"})

    def headers(self) -> dict[str, str]:
        return dict(self._headers)

    def invalidate(self) -> bool:
        return False

    def __repr__(self) -> str:  # never the secret
        return f"StaticAuth({sorted(self._headers)})"


class VendorClient:
    """Requests to one vendor base URL with the shared retry rule. `vendor` names it in errors and logs."""

    def __init__(self, vendor: str, base_url: str, auth: Auth, *, timeout: float = 10.0, attempts: int = 4,
                 max_wait: float = 30.0, backoff: float = 0.5, headers: Mapping[str, str] | None = None,
                 session: requests.Session | None = None, rate_limit_backoff: float | None = None,
                 reset_header: str | None = None):
        """`rate_limit_backoff`: seconds before the first retry of a 429 without Retry-After or a usable reset
        header, doubling per attempt, with jitter (None: the general `backoff`, as for every other failure).
        `reset_header`: read on a 429 without Retry-After; its ISO 8601 instant, when in the future, is the wait."""
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"{vendor}: base URL must start with http:// or https://, got {base_url!r}")
        self.vendor = vendor
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.max_wait = max_wait
        self.backoff = backoff
        self.rate_limit_backoff = rate_limit_backoff
        self.reset_header = reset_header
        self.session = session or requests.Session()
        self.session.headers.update(headers or {})

    def __repr__(self) -> str:
        return f"VendorClient({self.vendor!r}, {self.base_url!r})"

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json_body: Any = None,
                data: Any = None, headers: Mapping[str, str] | None = None) -> requests.Response:
        """One logical call: retried on transient failures, a 2xx response or a `VendorError`.

        `path` is relative to the base URL (absolute URLs are refused: credentials go to the configured host
        only)."""
        if not path.startswith("/"):
            raise ValueError(f"{self.vendor}: path must start with '/', got {path!r}")
        retrying = Retrying(stop=stop_after_attempt(self.attempts), wait=self._wait,
                            retry=retry_if_exception_type(_Transient), reraise=True, sleep=self._sleep)
        try:
            for attempt in retrying:
                with attempt:
                    return self._once(method, path, params, json_body, data, headers)
        except _Transient as exc:
            raise exc.error from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, response: requests.Response, path: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise VendorError(f"{self.vendor} {path}: answered {response.status_code} with a body that is not "
                              "JSON", retryable=True, status=response.status_code) from None

    def json(self, method: str, path: str, **kw: Any) -> Any:
        """`request` and decode the JSON answer (empty bodies give None)."""
        response = self.request(method, path, **kw)
        if not response.content:
            return None
        return self._json(response, path)

    def _once(self, method: str, path: str, params: Any, json_body: Any, data: Any,
              headers: Mapping[str, str] | None) -> requests.Response:
        url = self.base_url + path
        refreshed = False
        while True:
            try:
                all_headers = {**self.auth.headers(), **(headers or {})}
            except VendorError as exc:
                if exc.retryable:
                    raise _Transient(exc) from None
                raise
            try:
                response = self.session.request(method, url, params=params, json=json_body, data=data,
                                                headers=all_headers, timeout=self.timeout, allow_redirects=False)
            except (requests.ConnectionError, requests.Timeout) as exc:
                log.info("%s %s %s: %s", self.vendor, method, path, type(exc).__name__)
                raise _Transient(VendorError(f"{self.vendor} unreachable ({method} {path}): {type(exc).__name__}",
                                             retryable=True)) from None
            status = response.status_code
            log.debug("%s %s %s -> %d", self.vendor, method, path, status)
            if 200 <= status < 300:
                return response
            if status == 401 and not refreshed and self.auth.invalidate():
                refreshed = True  # one fresh token, then a 401 is final
                response.close()
                continue
            message = f"{self.vendor} {method} {path} answered {status}: {vendor_message(response)}"
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after is None and status == 429 and self.reset_header:
                retry_after = seconds_until(response.headers.get(self.reset_header))
            response.close()
            if status in RETRY_STATUSES:
                error = VendorError(message, retryable=True, retry_after=retry_after, status=status)
                if retry_after is not None and retry_after > self.max_wait:
                    raise error  # longer than we hold a worker: hand it to the queue with the vendor's delay
                raise _Transient(error)
            raise VendorError(message, retryable=status >= 500, retry_after=retry_after, status=status)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Transient) and exc.error.retry_after is not None:
            return min(exc.error.retry_after, self.max_wait)
        if isinstance(exc, _Transient) and exc.error.status == 429 and self.rate_limit_backoff:
            delay = self.rate_limit_backoff * (2 ** (state.attempt_number - 1))
            return min(self.max_wait, delay * random.uniform(*JITTER))
        delay = self.backoff * (2 ** (state.attempt_number - 1))
        return min(self.max_wait, delay * (1 + random.random() * 0.2))

    def _sleep(self, seconds: float) -> None:
        threading.Event().wait(seconds)


def seconds_until(value: str | None, now: float | None = None) -> float | None:
    """Seconds until an ISO 8601 instant (`2024-05-01T10:15Z`, as Jira's X-RateLimit-Reset), None when absent,
    unreadable or not in the future (a reset already past says nothing about how long to wait)."""
    if not value or not value.strip():
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))  # Python 3.10 reads no "Z"
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    left = when.timestamp() - (time.time() if now is None else now)
    return left if left > 0 else None


def vendor_message(response: requests.Response) -> str:
    """The vendor's own error text, short and on one line: Jira errorMessages/errors, Zoho message/errorCode,
    ServiceDesk Plus response_status messages, or the start of the body."""
    try:
        data = response.json()
    except ValueError:
        data = None
    parts: list[str] = []
    if isinstance(data, dict):
        parts += [str(m) for m in data.get("errorMessages") or [] if m]
        if isinstance(data.get("errors"), dict):
            parts += [f"{k}: {v}" for k, v in data["errors"].items()]
        for key in ("errorCode", "message", "error", "error_description"):
            if isinstance(data.get(key), str) and data[key]:
                parts.append(data[key])
        status = data.get("response_status")
        for item in status if isinstance(status, list) else [status]:
            if isinstance(item, dict):
                for m in item.get("messages") or []:
                    if isinstance(m, dict):
                        parts.append(" ".join(str(m.get(k)) for k in ("status_code", "message", "field")
                                              if m.get(k) is not None))
    text = "; ".join(parts) if parts else (response.text or response.reason or "")
    text = " ".join(text.split())
    return text[:_MAX_MESSAGE] + ("..." if len(text) > _MAX_MESSAGE else "")

