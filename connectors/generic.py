"""The generic connector: a plain signed JSON webhook in, a signed JSON callback out.

The reference implementation of the Connector protocol, and the way to connect an ITSM that has no dedicated
connector (a small script or an automation rule posts the ticket, receives the triage).

Webhook body (UTF-8 JSON):
    {"id": "INC-42", "text": "subject and body", "callback_url": "http://127.0.0.1:9000/triaged",  # optional
     "project": "IT", "type": "Incident", "fields": {"priority": "High"}}   # optional; fields a human already set
Headers (both required), as Stripe and Slack sign theirs:
    X-Triage-Timestamp: <Unix seconds when the request was signed>
    X-Triage-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<raw body>">
A request whose timestamp is more than `tolerance_seconds` (default 300) from the daemon's clock is refused, so a
captured request cannot be sent again later; inside the window a replay is a duplicate, because the idempotency
key is the body's SHA-256 (a sender's retry, re-signed with a new timestamp, is a duplicate as well). The
idempotency key comes from signed bytes only: an unsigned header (X-Triage-Delivery) is not read on webhooks.

Write-back: a POST of {"id", "ticket" (applied fields), "suggested", "needs_review", "review_marker", "note",
"confidence", "model"} to the ticket's callback URL (or settings `callback_url`), through the shared vendor HTTP
layer (connectors.http), signed the same way (timestamp + body), with `X-Triage-Delivery` set to the webhook's
idempotency key so the receiver can drop repeats. A 4xx from the receiver parks the job with the receiver's own
message. Callback hosts must be listed in `callback_hosts`: the daemon never posts to a host a webhook sender chose
freely.

Settings (connectors.settings.generic): secret_env (TRIAGE_GENERIC_SECRET), callback_url (none),
callback_hosts ([127.0.0.1, localhost]), timeout (10 seconds), tolerance_seconds (300), attempts (1: a failed
callback goes back to the durable queue, which retries it with backoff and Retry-After, visible in /v1/jobs).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

import requests

from triage_core.policy import WritebackPlan
from triage_core.queue import InboundTicket
from triage_core.triager import TriageResult

from .base import ConnectorConfigError, WebhookRejected, WritebackError, WritebackOutcome, header, json_body
from .http import StaticAuth, VendorClient
from .settings import Settings

NAME = "generic"
SIGNATURE_HEADER = "X-Triage-Signature"
TIMESTAMP_HEADER = "X-Triage-Timestamp"
DELIVERY_HEADER = "X-Triage-Delivery"
DEFAULTS: dict[str, Any] = {
    "secret_env": "TRIAGE_GENERIC_SECRET",
    "callback_url": None,
    "callback_hosts": ["127.0.0.1", "localhost"],
    "timeout": 10.0,
    "tolerance_seconds": 300,
    "attempts": 1,
}
_BODY_KEYS = ("id", "text", "callback_url", "project", "type", "fields")
_MAX_REF = 255
_MAX_TIMESTAMP_DIGITS = 12


def sign(secret: bytes, timestamp: int | str, body: bytes) -> str:
    """The signature header value for `body` sent at `timestamp` (Unix seconds): HMAC-SHA256 of
    "<timestamp>.<body>". What senders put on webhooks and receivers check on callbacks."""
    message = str(timestamp).encode("ascii") + b"." + body
    return "sha256=" + hmac.new(secret, message, hashlib.sha256).hexdigest()


def signed_headers(secret: bytes, body: bytes, now: float | None = None) -> dict[str, str]:
    """The timestamp and signature headers for sending `body` now."""
    timestamp = int(time.time() if now is None else now)
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(secret, timestamp, body)}


def verify(secret: bytes, body: bytes, headers: Mapping[str, str], tolerance: float = 300.0,
           now: float | None = None) -> int:
    """Check a signed request (a webhook, or a callback on the receiver's side); returns its timestamp.

    Raises `WebhookRejected(401)`: missing or malformed headers, a signature that does not match (compared in
    constant time), or a timestamp outside `tolerance` seconds of `now` (a replay, or a sender's clock that is off).
    """
    signature = header(headers, SIGNATURE_HEADER)
    if not signature:
        raise WebhookRejected(401, f"missing {SIGNATURE_HEADER} header")
    raw = (header(headers, TIMESTAMP_HEADER) or "").strip()
    if not raw:
        raise WebhookRejected(401, f"missing {TIMESTAMP_HEADER} header (Unix seconds, signed with the body)")
    if not raw.isascii() or not raw.isdigit() or len(raw) > _MAX_TIMESTAMP_DIGITS:
        raise WebhookRejected(401, f"{TIMESTAMP_HEADER}: expected Unix seconds, got {raw[:20]!r}")
    expected = sign(secret, raw, body).encode("ascii")
    given = signature.strip().lower().encode("utf-8", "replace")
    if not hmac.compare_digest(expected, given):
        raise WebhookRejected(401, f"{SIGNATURE_HEADER} does not match the timestamp and body")
    skew = int(raw) - (time.time() if now is None else now)
    if abs(skew) > tolerance:
        raise WebhookRejected(401, f"{TIMESTAMP_HEADER} is {abs(skew):.0f} s in the "
                                   f"{'future' if skew > 0 else 'past'} (tolerance {tolerance:g} s): a replayed "
                                   "request, or a sender whose clock is off")
    return int(raw)


class GenericConnector:
    """Signed JSON webhooks and callbacks. Stateless apart from settings, so safe across worker threads."""

    name = NAME

    def __init__(self, secret: bytes, callback_hosts: Iterable[str] = ("127.0.0.1", "localhost"),
                 callback_url: str | None = None, timeout: float = 10.0, tolerance: float = 300.0,
                 attempts: int = 1):
        if not secret:
            raise ConnectorConfigError(f"connectors.settings.{NAME}: an empty secret cannot sign anything")
        self._secret = secret
        self.callback_hosts = frozenset(h.casefold() for h in callback_hosts)
        self.timeout = timeout
        self.tolerance = tolerance
        self.attempts = attempts
        self._clients: dict[str, VendorClient] = {}  # one per callback origin, for connection reuse
        self._clients_lock = threading.Lock()
        if callback_url is not None:
            problem = self._callback_problem(callback_url)
            if problem:
                raise ConnectorConfigError(f"connectors.settings.{NAME}.callback_url: {problem}")
        self.callback_url = callback_url

    def __repr__(self) -> str:  # never the secret
        return f"GenericConnector(callback_hosts={sorted(self.callback_hosts)}, timeout={self.timeout})"

    def parse_webhook(self, body: bytes, headers: Mapping[str, str], query: Mapping[str, str]) -> list[InboundTicket]:
        """Check the signature over the timestamp and raw bytes first, then the JSON; the query string is not
        used."""
        verify(self._secret, body, headers, self.tolerance)
        content_type = (header(headers, "Content-Type") or "application/json").split(";")[0].strip().lower()
        if content_type not in ("application/json", "text/json") and not content_type.endswith("+json"):
            raise WebhookRejected(415, f"expected application/json, got {content_type}")
        data = json_body(body)
        if not isinstance(data, dict):
            raise WebhookRejected(400, "expected a JSON object")
        for key in data:
            if key not in _BODY_KEYS:
                raise WebhookRejected(400, f"unknown key {key!r} (expected {', '.join(_BODY_KEYS)})")
        ref = _text(data, "id", required=True)
        if len(ref) > _MAX_REF:
            raise WebhookRejected(400, f"id is longer than {_MAX_REF} characters")
        text = _text(data, "text", required=True)
        callback_url = _text(data, "callback_url")
        if callback_url is not None:
            problem = self._callback_problem(callback_url)
            if problem:
                raise WebhookRejected(422, f"callback_url: {problem}")
        current = _current_fields(data.get("fields"))
        event_key = hashlib.sha256(body).hexdigest()  # signed bytes only: a replay cannot pass for a new event
        return [InboundTicket(connector=self.name, ref=ref, event_key=event_key, text=text,
                              project=_text(data, "project"), ticket_type=_text(data, "type"), current=current,
                              callback_url=callback_url)]

    def write_back(self, ticket: InboundTicket, plan: WritebackPlan, result: TriageResult) -> WritebackOutcome:
        """POST the signed plan to the callback URL; redirects are not followed (they could lead anywhere)."""
        if plan.shadow:  # the worker never calls this in shadow mode; refuse to write anyway
            return WritebackOutcome("shadow", None, "shadow mode: nothing written")
        url = ticket.callback_url or self.callback_url
        if url is None:
            return WritebackOutcome("skipped", None, "no callback_url on the ticket or in the settings")
        problem = self._callback_problem(url)  # settings may have changed since the webhook was accepted
        if problem:
            raise WritebackError(f"callback_url: {problem}", retryable=False)
        payload = {"id": ticket.ref, "ticket": plan.apply, "suggested": plan.suggest,
                   "needs_review": plan.needs_review, "review_marker": plan.review_marker, "note": plan.note,
                   "confidence": {k: round(v, 4) for k, v in result.confidence.items()}, "model": result.model}
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = {"Content-Type": "application/json", DELIVERY_HEADER: ticket.event_key,
                   **signed_headers(self._secret, body)}
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        client = self._client(f"{parts.scheme}://{parts.netloc}")
        try:  # 429/5xx/unreachable come back retryable, any other status final with the receiver's message
            response = client.request("POST", path, data=body, headers=headers)
        except requests.RequestException as exc:  # not a network failure: a request that cannot be made
            raise WritebackError(f"callback failed: {type(exc).__name__}: {exc}", retryable=False) from None
        status = response.status_code
        response.close()
        return WritebackOutcome("applied", status)

    def _client(self, origin: str) -> VendorClient:
        with self._clients_lock:
            client = self._clients.get(origin)
            if client is None:
                client = VendorClient("generic callback", origin, StaticAuth({}), timeout=self.timeout,
                                      attempts=self.attempts)
                self._clients[origin] = client
            return client

    def closed_tickets(self, since: Any) -> Iterable[dict]:
        raise NotImplementedError("the generic connector keeps no ticket history; import closed tickets from CSV")

    def _callback_problem(self, url: str) -> str | None:
        """Why `url` may not be called back, or None. Strict, so urllib and requests cannot read it differently."""
        if any(ord(c) <= 32 or c == "\\" for c in url):
            return "spaces, control characters and backslashes are not allowed"
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError as exc:
            return f"not a URL ({exc})"
        if parts.scheme not in ("http", "https"):
            return "only http and https are allowed"
        if "@" in parts.netloc:
            return "credentials in the URL are not allowed"
        host = (parts.hostname or "").casefold()
        if host not in self.callback_hosts:
            return f"host {host or '(none)'!r} is not in connectors.settings.{NAME}.callback_hosts"
        return None


def _text(data: Mapping[str, Any], key: str, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise WebhookRejected(400, f"{key}: expected a string, got {type(value).__name__}" if key in data
                              else f"{key}: missing")
    if not value.strip():
        if required:
            raise WebhookRejected(400, f"{key}: empty")
        return None
    return value if key == "text" else value.strip()


def _current_fields(raw: Any) -> dict[str, str]:
    """Fields a human already set; null or blank values count as unset."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise WebhookRejected(400, f"fields: expected an object, got {type(raw).__name__}")
    out: dict[str, str] = {}
    for name, value in raw.items():
        if value is None:
            continue
        if not isinstance(value, str):
            raise WebhookRejected(400, f"fields.{name}: expected a string, got {type(value).__name__}")
        if value.strip():
            out[name] = value
    return out


def from_config(settings: Mapping[str, Any], env: Mapping[str, str]) -> GenericConnector:
    """The entry-point factory: settings from connectors.settings.generic, the secret from the environment."""
    s = Settings(settings, DEFAULTS, f"connectors.settings.{NAME}", env)
    secret = s.secret("secret_env", "the generic connector needs it to verify webhook signatures and sign callbacks")
    hosts = s.names("callback_hosts", empty_ok=True, noun="host names")
    timeout = s.number("timeout", unit="seconds")
    tolerance = s.number("tolerance_seconds", unit="seconds")
    attempts = s["attempts"]
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 10:
        raise s.error("attempts", f"expected a whole number from 1 to 10, got {attempts!r}")
    callback_url = s["callback_url"]
    if callback_url is not None and not isinstance(callback_url, str):
        raise s.error("callback_url", "expected a URL")
    return GenericConnector(secret.encode("utf-8"), callback_hosts=hosts, callback_url=callback_url or None,
                            timeout=timeout, tolerance=tolerance, attempts=attempts)
