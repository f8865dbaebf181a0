"""The Zoho Desk connector: Ticket_Add / Ticket_Update webhooks in, ticket updates and private comments out.

Zoho Desk signs no body. Each delivery (a JSON array of events) carries an RS256 JWT in `X-ZDesk-JWT` whose claims
say which organisation (`iss` "orgId:<id>") and which webhook (`aud` "webhookId:<id>") sent it; the keys are the
data centre's JWKS. Because the token does not cover the body, the payload is only a hint: the worker reads the
ticket back (`read_ticket`, GET /api/v1/tickets/{id}) and triages what the API returns. Ticket_Update events with
`prevState` (subscribe with includePrevState) become `FieldChange`s, the retraining signal.

Re-triage (`retriage: fields | all`, off by default): a Ticket_Update whose prevState shows a changed subject or
description, or a ticket reopened (its status was `closed_status`), and a Ticket_Thread_Add with direction `in` (a
reply from the customer; subscribe with that direction) queue a re-triage. The worker reads the ticket back, and
the thread (GET .../threads/{id}, whose direction must be `in` there too), and triages subject, description and
the reply together. The daemon's own write-back (a PATCH of triage fields and a private comment) is neither.

Write-back: one PATCH /api/v1/tickets/{id} with the applied fields (category, subCategory, priority,
classification, teamId and optionally departmentId), the review marker as a tag (POST .../associateTag, Zoho has
no tags on the ticket record), then one private comment (POST .../comments, plainText). Every Desk call carries
`orgId` and `Authorization: Zoho-oauthtoken` (refresh-token grant, connectors.oauth).

Settings (connectors.settings.zoho): org_id (required), desk_url (https://desk.zoho.com), accounts_url
(https://accounts.zoho.com), webhook_ids ([]: any webhook of the org), jwks_url (<desk_url>/.well-known/jwks.json),
client_id_env / client_secret_env / refresh_token_env (TRIAGE_ZOHO_CLIENT_ID / _CLIENT_SECRET / _REFRESH_TOKEN),
field_map, team_departments ({assignment_group label: departmentId}), closed_status (Closed), page_size (100),
timeout (10), jwt_leeway (60 s), jwks_refetch_seconds (60), retriage (off | fields | all), retriage_fields ([]).
"""
from __future__ import annotations

import dataclasses
import hmac
import logging
import math
import re
import threading
import time
from datetime import date, datetime, timezone
from typing import Any, Iterable, Iterator, Mapping
from urllib.parse import urlsplit

import jwt

from triage_core.policy import WritebackPlan
from triage_core.queue import InboundTicket
from triage_core.records import Record
from triage_core.taxonomy import Taxonomy
from triage_core.triager import TriageResult

from .base import (
    RETRIAGE,
    RETRIAGE_OFF,
    ConnectorConfigError,
    FieldChange,
    RetriageInfo,
    RetriageSettings,
    WebhookEvent,
    WebhookRejected,
    WritebackOutcome,
    header,
    json_body,
    retriage_info,
    retriage_settings,
    retriage_ticket,
)
from .fieldmap import FieldMap
from .html import html_to_text
from .http import StaticAuth, VendorClient, VendorError
from .oauth import ZohoRefreshAuth
from .settings import Settings

log = logging.getLogger(__name__)

NAME = "zoho"
JWT_HEADER = "X-ZDesk-JWT"
TICKET_ADD, TICKET_UPDATE, THREAD_ADD = "Ticket_Add", "Ticket_Update", "Ticket_Thread_Add"
#: Taxonomy field -> Zoho Desk ticket attribute. The field map's assignment_group values are team ids.
ZOHO_FIELDS = {"category": "category", "subcategory": "subCategory", "priority": "priority",
               "request_type": "classification", "assignment_group": "teamId"}
_PARENT = {"subcategory": "category"}  # Zoho's subCategory depends on category
DEFAULTS: dict[str, Any] = {
    "org_id": None,
    "desk_url": "https://desk.zoho.com",
    "accounts_url": "https://accounts.zoho.com",
    "webhook_ids": [],
    "jwks_url": None,
    "client_id_env": "TRIAGE_ZOHO_CLIENT_ID",
    "client_secret_env": "TRIAGE_ZOHO_CLIENT_SECRET",
    "refresh_token_env": "TRIAGE_ZOHO_REFRESH_TOKEN",
    "field_map": {},
    "team_departments": {},
    "closed_status": "Closed",
    "page_size": 100,
    "timeout": 10.0,
    "jwt_leeway": 60.0,
    "jwks_refetch_seconds": 60.0,
    "retriage": "off",
    "retriage_fields": [],
}
_ID = re.compile(r"^[0-9]{1,30}$")  # Zoho ids are digit strings; anything else never reaches a URL path
_MAX_BODY = 1 << 20
_MAX_EVENTS = 200
_MAX_TOKEN = 8192
_MAX_TEXT = 50_000
_SEARCH_MAX_FROM = 4999  # the search API's documented ceiling for `from` (0-based)


class _Keys:
    """The JWKS, cached by key id and fetched again only for an unknown kid, at most once per `refetch` seconds,
    so a flood of made-up kids cannot make us hammer Zoho (or stall deliveries behind key fetches)."""

    def __init__(self, client: VendorClient, path: str, refetch: float):
        self._client, self._path, self.refetch = client, path, refetch
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._failed = False
        self._lock = threading.Lock()
        self.fetches = 0

    def get(self, kid: str) -> Any | None:
        with self._lock:
            if kid in self._keys:
                return self._keys[kid]
            now = time.monotonic()
            if self._fetched_at is not None and now - self._fetched_at < self.refetch:
                if self._failed:
                    raise WebhookRejected(503, "Zoho's signing keys cannot be fetched right now; try again later")
                return None
            self._fetched_at, self.fetches = now, self.fetches + 1
            try:
                data = self._client.json("GET", self._path)
            except VendorError as exc:
                self._failed = True
                log.warning("zoho: fetching the JWKS failed: %s", exc)
                raise WebhookRejected(503, "Zoho's signing keys cannot be fetched right now; try again later") \
                    from None
            self._failed = False
            keys = {}
            for jwk in (data.get("keys") if isinstance(data, dict) else None) or []:
                if isinstance(jwk, dict) and jwk.get("kty") == "RSA" and isinstance(jwk.get("kid"), str) \
                        and jwk.get("use", "sig") == "sig":
                    try:
                        keys[jwk["kid"]] = jwt.PyJWK(jwk, algorithm="RS256").key
                    except (jwt.PyJWTError, ValueError, TypeError):
                        log.warning("zoho: JWKS key %r is not a usable RSA key; ignored", jwk["kid"][:64])
            self._keys = keys or self._keys  # an empty or garbled answer does not throw away keys we know
            return self._keys.get(kid)


class ZohoConnector:
    """Zoho Desk over its REST API v1. Safe across worker threads (the JWKS cache is locked, the rest is
    read-only after start-up)."""

    name = NAME
    #: Zoho counts a delivery as received only on exactly 200 OK; any other answer is a failed delivery, and 410 Gone
    #: deletes the subscription (desk.zoho.com/support/WebhookDocument.do). The webhook route reads this.
    webhook_status = 200

    def __init__(self, client: VendorClient, keys: _Keys, org_id: str, field_map: FieldMap, *,
                 webhook_ids: Iterable[str] = (), team_departments: Mapping[str, str] | None = None,
                 closed_status: str = "Closed", page_size: int = 100, jwt_leeway: float = 60.0,
                 retriage: RetriageSettings = RETRIAGE_OFF):
        self.client = client
        self.keys = keys
        self.org_id = org_id
        self.field_map = field_map
        self.webhook_ids = tuple(webhook_ids)
        self.team_departments = dict(team_departments or {})
        self.closed_status = closed_status
        self.page_size = page_size
        self.jwt_leeway = jwt_leeway
        self.retriage = retriage

    def __repr__(self) -> str:  # never a token
        return f"ZohoConnector({self.client.base_url!r}, org_id={self.org_id!r})"

    # --- webhooks -------------------------------------------------------------------------------------------

    def parse_webhook(self, body: bytes, headers: Mapping[str, str], query: Mapping[str, str]) -> list[WebhookEvent]:
        """Check the JWT first, then the event array. No Desk API calls here: Zoho gives up after a few seconds."""
        self._verify(header(headers, JWT_HEADER))
        data = json_body(body, _MAX_BODY)
        if not isinstance(data, list) or not data:
            raise WebhookRejected(400, "expected a non-empty JSON array of events")
        if len(data) > _MAX_EVENTS:
            raise WebhookRejected(413, f"more than {_MAX_EVENTS} events in one delivery")
        out: list[WebhookEvent] = []
        for i, event in enumerate(data):
            out += self._event(event, f"event {i}")
        return out

    def _verify(self, token: str | None) -> None:
        token = (token or "").strip()
        if token[:7].lower() == "bearer ":
            token = token[7:].strip()
        if not token:
            raise WebhookRejected(401, f"missing {JWT_HEADER} header")
        if len(token) > _MAX_TOKEN:
            raise WebhookRejected(401, f"{JWT_HEADER} is longer than {_MAX_TOKEN} characters")
        try:
            head = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise WebhookRejected(401, f"{JWT_HEADER} is not a JWT") from None
        if head.get("alg") != "RS256":  # never "none", never HS* keyed with a public key
            raise WebhookRejected(401, f"{JWT_HEADER}: algorithm {str(head.get('alg'))[:20]!r} is not accepted")
        kid = head.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 200:
            raise WebhookRejected(401, f"{JWT_HEADER}: no key id (kid)")
        key = self.keys.get(kid)
        if key is None:
            raise WebhookRejected(401, f"{JWT_HEADER}: key id {kid[:64]!r} is not one of Zoho's signing keys")
        try:  # the signature only; the claims are checked below (Zoho's times may be in milliseconds)
            claims = jwt.decode(token, key, algorithms=["RS256"],
                                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                                         "verify_aud": False, "verify_iss": False})
        except jwt.PyJWTError:
            raise WebhookRejected(401, f"{JWT_HEADER}: signature does not verify") from None
        now, leeway = time.time(), self.jwt_leeway
        exp, iat = _epoch(claims.get("exp")), _epoch(claims.get("iat"))
        if exp is None or iat is None:
            raise WebhookRejected(401, f"{JWT_HEADER}: exp and iat are required")
        if now > exp + leeway:
            raise WebhookRejected(401, f"{JWT_HEADER}: expired")
        if iat > now + leeway:
            raise WebhookRejected(401, f"{JWT_HEADER}: issued in the future")
        if not _equal(claims.get("iss"), f"orgId:{self.org_id}"):
            raise WebhookRejected(401, f"{JWT_HEADER}: issuer is not this organisation (orgId:{self.org_id})")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if self.webhook_ids and not any(_equal(a, f"webhookId:{w}") for a in auds for w in self.webhook_ids):
            raise WebhookRejected(401, f"{JWT_HEADER}: audience is not a configured webhook (webhook_ids)")

    def _event(self, event: Any, where: str) -> list[WebhookEvent]:
        if not isinstance(event, dict) or not isinstance(event.get("eventType"), str):
            raise WebhookRejected(400, f"{where}: expected an object with eventType")
        kind = event["eventType"]
        if kind not in (TICKET_ADD, TICKET_UPDATE, THREAD_ADD) or (kind == THREAD_ADD and not self.retriage.enabled):
            return []  # other subscriptions (comments, contacts) are not ours to triage
        payload, org = event.get("payload"), event.get("orgId")
        if not isinstance(payload, dict):
            raise WebhookRejected(400, f"{where}: payload: expected the ticket object")
        if org is not None and str(org) != self.org_id:
            raise WebhookRejected(400, f"{where}: orgId does not match the token's organisation")
        if kind == THREAD_ADD:
            return self._thread(payload, where)
        ref = str(payload.get("id") or "")
        if not _ID.match(ref):
            raise WebhookRejected(400, f"{where}: payload.id: expected a Zoho ticket id (digits)")
        when = event.get("eventTime")
        if isinstance(when, bool) or not isinstance(when, (str, int)) or not 0 < len(str(when)) <= 40 or \
                not str(when).isprintable():
            raise WebhookRejected(400, f"{where}: eventTime: expected a timestamp")
        if kind == TICKET_UPDATE:
            prev = event.get("prevState")
            if prev is not None and not isinstance(prev, dict):
                raise WebhookRejected(400, f"{where}: prevState: expected an object")
            out: list[WebhookEvent] = list(self._changes(ref, payload, prev or {}))
            reasons = self._gained(payload, prev or {})
            if reasons and self.retriage.enabled:
                hint = InboundTicket(connector=self.name, ref=ref, event_key=f"{ref}:{kind}:{when}",
                                     text=_ticket_text(payload) or f"Zoho Desk ticket {ref}",
                                     project=_str(payload.get("departmentId")), extra=_extra(payload))
                out.append(retriage_ticket(hint, reasons))
            return out
        return [InboundTicket(connector=self.name, ref=ref, event_key=f"{ref}:{kind}:{when}",
                              text=_ticket_text(payload) or f"Zoho Desk ticket {ref}",
                              project=_str(payload.get("departmentId")), current=self._current(payload),
                              extra=_extra(payload))]

    def _thread(self, payload: Mapping[str, Any], where: str) -> list[WebhookEvent]:
        """A thread added to a ticket: a re-triage when it came in from the customer (direction `in`); the
        worker reads the thread back and checks that direction again, since Zoho signs no body."""
        ref, thread = str(payload.get("ticketId") or ""), str(payload.get("id") or "")
        if not _ID.match(ref) or not _ID.match(thread):
            raise WebhookRejected(400, f"{where}: payload.ticketId and payload.id: expected Zoho ids (digits)")
        if payload.get("direction") != "in":
            return []  # an agent's reply, or the daemon's own: no new information from the requester
        hint = InboundTicket(connector=self.name, ref=ref, event_key=f"{ref}:{THREAD_ADD}:{thread}",
                             text=f"Zoho Desk ticket {ref}")
        return [retriage_ticket(hint, ["reply"], thread_id=thread)]

    def _gained(self, now: Mapping[str, Any], prev: Mapping[str, Any]) -> list[str]:
        """Why an update means the ticket gained information: prevState shows another subject or description, or
        the ticket was closed and is not any more."""
        reasons = [reason for attr, reason in (("subject", "summary"), ("description", "description"))
                   if attr in prev and prev[attr] != now.get(attr)]
        closed = self.closed_status.casefold()
        was = [str(prev.get(k) or "").casefold() for k in ("status", "statusType") if k in prev]
        if closed in was and str(now.get("status") or "").casefold() != closed and \
                str(now.get("statusType") or "").casefold() != "closed":
            reasons.append("reopened")
        return reasons

    def _changes(self, ref: str, now: Mapping[str, Any], prev: Mapping[str, Any]) -> list[FieldChange]:
        """Mapped fields whose value differs from prevState (which holds only what changed)."""
        before = {**now, **prev}
        out = []
        for name in self.field_map.names:
            attr = ZOHO_FIELDS[name]
            if attr in prev and prev[attr] != now.get(attr):
                old, new = self._label(name, before), self._label(name, now)
                if old != new:
                    out.append(FieldChange(self.name, ref, name, old, new, actor=_str(now.get("modifiedBy"))))
        return out

    # --- the Desk API ---------------------------------------------------------------------------------------

    def read_ticket(self, ticket: InboundTicket) -> InboundTicket:
        """The ticket as Zoho has it now: the text to triage and the fields a human set come from the API."""
        data = self._ticket(ticket.ref)
        return dataclasses.replace(ticket, text=_ticket_text(data), project=_str(data.get("departmentId")),
                                   current=self._current(data), extra={**ticket.extra, **_extra(data)})

    def read_for_retriage(self, ticket: InboundTicket) -> InboundTicket:
        """`read_ticket`, plus the customer's reply (the thread, read back: its direction must be `in`; the worker
        adds it after subject and description) and every mapped field's value as `vendor`."""
        data = self._ticket(ticket.ref)
        info = retriage_info(ticket) or RetriageInfo()
        thread_id = info.thread_id or ""
        if thread_id:
            if not _ID.match(thread_id):
                raise VendorError(f"Zoho Desk: {thread_id!r} is not a thread id", retryable=False)
            thread = self.client.json("GET", f"/api/v1/tickets/{ticket.ref}/threads/{thread_id}") or {}
            if isinstance(thread, dict) and thread.get("direction") == "in":
                body = thread.get("content") if isinstance(thread.get("content"), str) else thread.get("summary")
                info = dataclasses.replace(info, reply=html_to_text(body) if isinstance(body, str) else "")
            else:  # the webhook said "in", the API does not: no reply from the customer to read
                info = dataclasses.replace(info, reasons=tuple(r for r in info.reasons if r != "reply"), reply=None)
        current = self._current(data)
        info = dataclasses.replace(info, vendor=current)
        return dataclasses.replace(ticket, text=_ticket_text(data),
                                   project=_str(data.get("departmentId")), current=current,
                                   extra={**ticket.extra, **_extra(data), RETRIAGE: info.to_extra()})

    def write_back(self, ticket: InboundTicket, plan: WritebackPlan, result: TriageResult) -> WritebackOutcome:
        """One PATCH (skipped when nothing maps), the review tag when needed, then one private comment."""
        if plan.shadow:
            return WritebackOutcome("shadow", None, "shadow mode: nothing written")
        if not _ID.match(ticket.ref):
            raise VendorError(f"Zoho Desk: {ticket.ref!r} is not a ticket id", retryable=False)
        path = f"/api/v1/tickets/{ticket.ref}"
        update: dict[str, str] = {}
        for name, label in plan.apply.items():
            if name not in self.field_map:
                continue
            try:
                parent = result.ticket.get(_PARENT.get(name, ""))
                update[ZOHO_FIELDS[name]] = str(self.field_map.vendor(name, label, parent))
            except KeyError:
                log.warning("zoho: %s label %r has no vendor value; not written", name, label)
                continue
            if name == "assignment_group" and label in self.team_departments:
                update["departmentId"] = str(self.team_departments[label])
        status = self._patch(path, update) if update else None
        if plan.needs_review and plan.review_marker:
            self.client.request("POST", path + "/associateTag", json_body={"tags": [plan.review_marker]})
        response = self.client.request("POST", path + "/comments",
                                       json_body={"isPublic": False, "contentType": "plainText", "content": plan.note})
        return WritebackOutcome("applied", status or response.status_code,
                                f"fields {sorted(update)}" if update else "comment only")

    def _patch(self, path: str, update: Mapping[str, str]) -> int:
        """The field update. Zoho refuses the whole update with 422 INVALID_DATA when one value is not in the
        portal's layout (DeskAPIDocument#Errors); the error then says what was sent, so the field map can be fixed."""
        try:
            return self.client.request("PATCH", path, json_body=dict(update)).status_code
        except VendorError as exc:
            if exc.status != 422:
                raise
            raise VendorError(f"{exc} (sent {dict(update)}: check connectors.settings.{NAME}.field_map against the "
                              "portal's picklists, teams and departments)", retryable=False, status=422) from None

    def closed_tickets(self, since: Any) -> Iterator[Record]:
        """Labelled records (DESIGN.md) of tickets closed after `since` (datetime, date, ISO string or None),
        from the search API (0-based `from`, `limit` pages), oldest change first."""
        after = _when(since)
        params: dict[str, Any] = {"status": self.closed_status, "limit": self.page_size, "sortBy": "modifiedTime"}
        if after is not None:  # closing a ticket modifies it, so this window holds every ticket closed since
            params["modifiedTimeRange"] = f"{_zoho_time(after)},{_zoho_time(datetime.now(timezone.utc))}"
        offset = 0
        while True:
            page = self.client.json("GET", "/api/v1/tickets/search", params={**params, "from": offset})
            rows = page.get("data") if isinstance(page, dict) else None  # 204 No Content: no (more) tickets
            if not rows:
                return
            for row in rows:
                record = self._record(row, after) if isinstance(row, dict) else None
                if record is not None:
                    yield record
            if len(rows) < self.page_size:
                return
            offset += len(rows)
            if offset > _SEARCH_MAX_FROM:
                log.warning("zoho: the search API stops at %d results; run again with a later `since`",
                            _SEARCH_MAX_FROM + 1)
                return

    def check_taxonomy(self, taxonomy: Taxonomy) -> None:
        self.field_map.check(taxonomy)
        self.retriage.check(taxonomy, f"connectors.settings.{NAME}")
        groups = taxonomy["assignment_group"].values if "assignment_group" in taxonomy else ()
        stray = [label for label in self.team_departments if label not in groups]
        if stray:
            raise ConnectorConfigError(f"connectors.settings.{NAME}.team_departments: not assignment_group labels: "
                                       f"{', '.join(map(repr, stray))}")

    def _ticket(self, ref: str) -> dict:
        if not _ID.match(ref):
            raise VendorError(f"Zoho Desk: {ref!r} is not a ticket id", retryable=False)
        data = self.client.json("GET", f"/api/v1/tickets/{ref}")
        if not isinstance(data, dict):
            raise VendorError(f"Zoho Desk GET /api/v1/tickets/{ref}: expected a ticket object", retryable=True)
        return data

    def _record(self, row: dict, after: datetime | None) -> Record | None:
        ref = str(row.get("id") or "")
        if not _ID.match(ref):
            return None
        if "description" not in row:  # search results leave the body out; the record needs it
            try:
                row = self._ticket(ref)
            except VendorError as exc:
                if exc.status == 404:  # deleted since the search
                    return None
                raise
        try:
            closed = _when(row.get("closedTime"))
        except (ValueError, TypeError):
            closed = None
        if after is not None and closed is not None and closed < after:
            return None
        text = _ticket_text(row)
        if not text:
            return None
        labels = {name: label for name in self.field_map.names if (label := self._label(name, row))}
        record: Record = {"id": ref, "text": text, "labels": labels, "source": NAME}
        if closed is not None:
            record["closed_at"] = closed.isoformat().replace("+00:00", "Z")
        return record

    def _label(self, name: str, fields: Mapping[str, Any]) -> str | None:
        value = fields.get(ZOHO_FIELDS[name])
        parent = self._label(_PARENT[name], fields) if name in _PARENT and _PARENT[name] in self.field_map else None
        return self.field_map.label(name, value, parent=parent) if value not in (None, "") else None

    def _current(self, fields: Mapping[str, Any]) -> dict[str, str]:
        """Fields already set on the ticket. An unmapped value still counts as set, so it is never overwritten."""
        out = {}
        for name in self.field_map.names:
            value = fields.get(ZOHO_FIELDS[name])
            if value not in (None, "") and str(value).strip():
                out[name] = self._label(name, fields) or str(value).strip()
        return out


def _ticket_text(ticket: Mapping[str, Any]) -> str:
    subject = ticket.get("subject") if isinstance(ticket.get("subject"), str) else ""
    body = ticket.get("description") if isinstance(ticket.get("description"), str) else ""
    text = "\n\n".join(part for part in (" ".join(subject.split()), html_to_text(body)) if part)
    return text[:_MAX_TEXT]


def _extra(ticket: Mapping[str, Any]) -> dict[str, Any]:
    return {k: str(ticket[k]) for k in ("ticketNumber", "departmentId", "status") if ticket.get(k) is not None}


def _str(value: Any) -> str | None:
    return str(value) if value not in (None, "") and not isinstance(value, (dict, list, bool)) else None


def _equal(given: Any, expected: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())


def _epoch(value: Any) -> float | None:
    """Seconds since the epoch from a JWT time; Zoho documents milliseconds, its example shows seconds."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value / 1000 if value > 1e11 else float(value)


def _when(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if isinstance(value, str):
        try:
            return _when(datetime.fromisoformat(value.strip()))
        except ValueError:
            raise ValueError(f"not an ISO-8601 time: {value[:40]!r}") from None
    raise TypeError(f"expected a datetime, date or ISO-8601 string, got {type(value).__name__}")


def _zoho_time(when: datetime) -> str:
    when = when.astimezone(timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _url(value: Any, key: str) -> str:
    """https only, except for a local host (tests, a local proxy): keys and tokens must not cross in clear."""
    parts = urlsplit(value) if isinstance(value, str) else None
    local = parts is not None and parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts is None or not parts.netloc or "@" in parts.netloc or not (
            parts.scheme == "https" or (parts.scheme == "http" and local)):
        raise ConnectorConfigError(f"{key}: expected an https:// URL, got {value!r}")
    return value.rstrip("/")


def from_config(settings: Mapping[str, Any], env: Mapping[str, str]) -> ZohoConnector:
    """The entry-point factory: settings from connectors.settings.zoho, OAuth credentials from the environment."""
    s = Settings(settings, DEFAULTS, f"connectors.settings.{NAME}", env)
    key = s.key
    org_id = str(s["org_id"] or "").strip()
    if not _ID.match(org_id):
        raise s.error("org_id", f"expected the Zoho Desk organisation id (digits), got {s['org_id']!r}")
    desk_url, accounts_url = _url(s["desk_url"], f"{key}.desk_url"), _url(s["accounts_url"], f"{key}.accounts_url")
    jwks_url = _url(s["jwks_url"], f"{key}.jwks_url") if s["jwks_url"] else desk_url + "/.well-known/jwks.json"
    ids = [s["webhook_ids"]] if isinstance(s["webhook_ids"], (str, int)) else s["webhook_ids"]
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, (str, int)) and _ID.match(str(i)) for i in ids):
        raise s.error("webhook_ids", "expected a list of Zoho webhook ids (digits)")
    client_id, client_secret, refresh_token = (
        s.secret(name) for name in ("client_id_env", "client_secret_env", "refresh_token_env"))
    timeout = s.number("timeout")
    jwt_leeway = s.number("jwt_leeway", zero_ok=True)  # zero: no leeway
    refetch = s.number("jwks_refetch_seconds", zero_ok=True)  # zero: refetch for every unknown key id
    s.number("page_size")
    page_size = s["page_size"]
    if not isinstance(page_size, int) or page_size > 100:
        raise s.error("page_size", "expected a whole number from 1 to 100 (Zoho's page limit)")
    field_map = FieldMap.from_settings(s["field_map"], f"{key}.field_map")
    unknown = [n for n in field_map.names if n not in ZOHO_FIELDS]
    if unknown:
        raise s.error(f"field_map.{unknown[0]}", "Zoho Desk has no attribute for it "
                      f"(mapped fields: {', '.join(ZOHO_FIELDS)})")
    departments = s["team_departments"] or {}
    if not isinstance(departments, Mapping) or not all(_ID.match(str(v)) for v in departments.values()):
        raise s.error("team_departments", "expected a mapping of assignment_group label to departmentId (digits)")
    if departments and "assignment_group" not in field_map:
        raise s.error("team_departments", "needs field_map.assignment_group (the team ids)")
    if not isinstance(s["closed_status"], str) or not s["closed_status"].strip():
        raise s.error("closed_status", "expected a status name")
    auth = ZohoRefreshAuth(accounts_url, client_id, client_secret, refresh_token, timeout=timeout)
    client = VendorClient("Zoho Desk", desk_url, auth, timeout=timeout, headers={"orgId": org_id})
    # The JWKS is public: no token and no orgId go there, and one quick try, since a delivery is waiting on it.
    jwks = urlsplit(jwks_url)
    key_client = VendorClient("Zoho JWKS", f"{jwks.scheme}://{jwks.netloc}", StaticAuth({}),
                              timeout=min(timeout, 3.0), attempts=1)
    keys = _Keys(key_client, (jwks.path or "/") + (f"?{jwks.query}" if jwks.query else ""), refetch)
    return ZohoConnector(client, keys, org_id, field_map, webhook_ids=[str(i) for i in ids],
                         team_departments={str(k): str(v) for k, v in departments.items()},
                         closed_status=s["closed_status"].strip(), page_size=page_size,
                         jwt_leeway=jwt_leeway, retriage=retriage_settings(s, key))
