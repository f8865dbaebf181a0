"""ManageEngine ServiceDesk Plus (on-premises and Cloud), API v3: polls new requests, writes the triage back.

SDP has no signed "request created" webhook, so polling is the source of truth: every `poll_interval` seconds the
daemon lists open requests created at or after the cursor, oldest first (list_info: created_time ascending,
start_index/row_count pages until has_more_rows is false). The cursor is "<created_time ms>:<ids seen at that
ms>": the next poll asks for created_time >= that ms and skips those ids, so two requests created in the same
millisecond on either side of a poll are neither lost nor repeated. The first poll starts `initial_lookback_minutes`
ago. A custom trigger may call /webhooks/servicedesk with a shared token header to make the poll run at once; its
body is never trusted or queued.

Re-triage (`retriage: fields | all`; off by default): each poll also lists requests updated at or after a second
cursor (last_updated_time ascending, the same "<ms>:<ids>" form, stored after the first as "<created>|u<updated>").
A request the daemon has triaged is read again when its subject or description differs from what the daemon last
saw, or when it is open again after the poller saw it closed (a closed request is remembered as an inbound event
without a job); either queues a re-triage. The daemon's own write-back also moves last_updated_time: that costs
one read of the request, and nothing is queued because nothing it reads has changed. A requester's reply (a
conversation) is not read; it does not change the description.

The list answer carries no description, so each new request is read with GET /requests/{id} (one call per new
ticket; the triage needs the body). Write-back is one PUT /requests/{id} with the mapped fields as {"name": ...}
objects (an integer in the field map is sent as {"id": ...}), then one note hidden from the requester: Cloud wraps
it as `request_note` (with notify_technician), on-premises as `note` (whose attributes do not include it:
sdpop-v3-api/requests/request_note.html). Every call sends `Accept: application/vnd.manageengine.sdp.v3+json`
and, for multi-portal on-premises instances, `PORTALID`; parameters travel as `input_data` (a query parameter on
GET, a form field on PUT/POST), as SDP documents. Search criteria are one object whose further criteria are its
`children`, each with a `logical_operator` (getting-started/search-criteria.html). Errors name SDP's status code
and what it means, so a refused key (4022) never reads like a refused field value (4001).

Settings (connectors.settings.servicedesk): see DEFAULTS; secrets only through the *_env settings.
"""
from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator, Mapping

from triage_core.policy import WritebackPlan
from triage_core.queue import InboundTicket
from triage_core.records import Record
from triage_core.taxonomy import Taxonomy
from triage_core.triager import TriageResult

from .base import (
    RETRIAGE,
    RETRIAGE_OFF,
    PollNow,
    PollResult,
    RetriageInfo,
    RetriageSettings,
    WebhookRejected,
    WritebackOutcome,
    header,
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

NAME = "servicedesk"
SOURCE = "manageengine"
ACCEPT = "application/vnd.manageengine.sdp.v3+json"
DEFAULTS: dict[str, Any] = {
    "edition": "onprem",                      # onprem | cloud
    "base_url": None,                         # https://sdp.example.com:8080 or https://sdpondemand.manageengine.eu
    "portal": None,                           # Cloud: the portal's URL name (/app/<portal>/api/v3)
    "portal_id": None,                        # on-premises with several portals: the PORTALID header
    "api_key_env": "TRIAGE_SERVICEDESK_API_KEY",                 # on-premises technician key
    "accounts_url": "https://accounts.zoho.com",                 # Cloud: the regional Zoho accounts server
    "client_id_env": "TRIAGE_SERVICEDESK_CLIENT_ID",
    "client_secret_env": "TRIAGE_SERVICEDESK_CLIENT_SECRET",
    "refresh_token_env": "TRIAGE_SERVICEDESK_REFRESH_TOKEN",
    "webhook_secret_env": "TRIAGE_SERVICEDESK_WEBHOOK_SECRET",   # unset: webhooks are refused
    "webhook_header": "X-Triage-Token",
    "poll_interval": 60.0,
    "initial_lookback_minutes": 60,
    "page_size": 100,
    "max_pages": 10,                          # per poll; the cursor resumes where a long backlog stopped
    "open_statuses": ["Open"],
    "closed_statuses": ["Closed", "Resolved"],
    "attributes": {},                         # taxonomy field -> SDP request attribute, over ATTRIBUTES
    "current_fields": ["category", "subcategory", "assignment_group"],
    "field_map": None,
    "review_udf": None,                       # e.g. udf_sline_301: a single-line UDF that receives the marker
    "timeout": 10.0,
    "retriage": "off",                        # off | fields | all: re-triage a request whose text changed or reopened
    "retriage_fields": [],                    # with retriage: fields, the taxonomy fields it may rewrite
}
ATTRIBUTES = {"category": "category", "subcategory": "subcategory", "priority": "priority",
              "assignment_group": "group", "request_type": "request_type"}
MAX_WEBHOOK_BYTES = 65536
MAX_TEXT = 20000
#: SDP's own status codes (getting-started/common-error-code.html) and what to check for each.
SDP_CODES = {
    4001: "an id or name in the input does not exist, is not in use or cannot be set: check the field map "
          "against the instance's values",
    4002: "forbidden: the technician may not do this",
    4007: "no such request or URL",
    4012: "a mandatory field has no value",
    4015: "the API rate limit is reached",
    4022: "the API key or OAuth token was refused: check the technician key (on-premises) or the Zoho OAuth "
          "credentials (Cloud)",
}
_CODE = re.compile(r"^(4\d{3})\b")

@dataclass(frozen=True)
class Cursor:
    """Requests created at `ms` whose ids are in `seen` were already returned; later ones were not."""

    ms: int
    seen: frozenset[str] = frozenset()

    def __str__(self) -> str:
        return f"{self.ms}:{','.join(sorted(self.seen))}"

    @classmethod
    def parse(cls, text: str) -> "Cursor":
        ms, _, ids = text.partition(":")
        return cls(int(ms), frozenset(i for i in ids.split(",") if i))


class ServiceDeskConnector:
    """Polls and writes back through one VendorClient; holds no per-ticket state, so it is thread-safe."""

    name = NAME

    def __init__(self, client: VendorClient, *, cloud: bool, field_map: FieldMap, attributes: Mapping[str, str],
                 webhook_secret: bytes, webhook_header: str, poll_interval: float, lookback_minutes: float,
                 page_size: int, max_pages: int, open_statuses: list[str], closed_statuses: list[str],
                 current_fields: list[str], review_udf: str | None,
                 retriage: RetriageSettings = RETRIAGE_OFF):
        self.client = client
        self.cloud = cloud
        self.field_map = field_map
        self.attributes = dict(attributes)
        self._webhook_secret = webhook_secret
        self.webhook_header = webhook_header
        self.poll_interval = poll_interval
        self.lookback_minutes = lookback_minutes
        self.page_size = page_size
        self.max_pages = max_pages
        self.open_statuses = open_statuses
        self.closed_statuses = closed_statuses
        self.current_fields = current_fields
        self.review_udf = review_udf
        self.retriage = retriage

    def __repr__(self) -> str:  # never a secret
        return f"ServiceDeskConnector({self.client.base_url!r}, cloud={self.cloud})"

    def check_taxonomy(self, taxonomy: Taxonomy) -> None:
        self.field_map.check(taxonomy)
        self.retriage.check(taxonomy, f"connectors.settings.{NAME}")

    # -- webhook ---------------------------------------------------------------------------------------------

    def parse_webhook(self, body: bytes, headers: Mapping[str, str], query: Mapping[str, str]) -> list[PollNow]:
        """A custom-trigger call only says "poll now": the token header is checked, the body is ignored."""
        if not self._webhook_secret:
            raise WebhookRejected(401, f"webhooks are disabled: connectors.settings.{NAME}.webhook_secret_env "
                                       "names an unset variable")
        given = (header(headers, self.webhook_header) or "").strip().encode("utf-8", "replace")
        if not given:
            raise WebhookRejected(401, f"missing {self.webhook_header} header")
        if not hmac.compare_digest(given, self._webhook_secret):
            raise WebhookRejected(401, f"{self.webhook_header} does not match")
        if len(body) > MAX_WEBHOOK_BYTES:
            raise WebhookRejected(413, f"body larger than {MAX_WEBHOOK_BYTES} bytes")
        return [PollNow(NAME)]

    # -- polling ---------------------------------------------------------------------------------------------

    def poll(self, cursor: str | None, last_seen: Callable[[str], Any] | None = None) -> PollResult:
        """Open requests created after the cursor, oldest first, at most `max_pages` pages per poll; with re-triage
        on and `last_seen` (ref -> payload of the ticket's latest inbound event, None when never seen), also the
        requests that gained information since."""
        created_part, _, updated_part = (cursor or "").partition("|")
        start = self._start_cursor(created_part or None)
        ms, seen = start.ms, set(start.seen)
        criteria = _all_of({"field": "created_time", "condition": "greater or equal", "value": str(start.ms)},
                           _status_criterion(self.open_statuses))
        tickets = []
        for req in self._list(criteria, "created_time", self.max_pages):
            rid, created = str(req.get("id", "")), _ms(req.get("created_time"))
            if not rid or created is None or created < start.ms or (created == start.ms and rid in start.seen):
                continue
            ticket = self._ticket(req)
            if ticket is not None:
                tickets.append(ticket)
            if created > ms:
                ms, seen = created, {rid}
            else:
                seen.add(rid)
        next_cursor = str(Cursor(ms, frozenset(seen)))
        if not self.retriage.enabled or last_seen is None:  # an updated-cursor is kept for when it is on again
            return PollResult(tickets, next_cursor + (f"|{updated_part}" if updated_part else ""))
        updated = self._start_cursor(updated_part[1:] if updated_part.startswith("u") else None)
        again, observed, updated = self._updated(updated, last_seen, {t.ref for t in tickets})
        return PollResult(tickets + again, f"{next_cursor}|u{updated}", seen=observed)

    def _updated(self, start: Cursor, last_seen: Callable[[str], Any],
                 skip: set[str]) -> tuple[list[InboundTicket], list[InboundTicket], Cursor]:
        """Re-triage tickets for requests updated since `start` that gained information, the closed ones to
        remember, and the next updated-cursor."""
        ms, seen = start.ms, set(start.seen)
        again: list[InboundTicket] = []
        observed: list[InboundTicket] = []
        criteria = {"field": "last_updated_time", "condition": "greater or equal", "value": str(start.ms)}
        for req in self._list(criteria, "last_updated_time", self.max_pages):
            rid, when = str(req.get("id", "")), _ms(req.get("last_updated_time"))
            if not rid or when is None or when < start.ms or (when == start.ms and rid in start.seen):
                continue
            if when > ms:
                ms, seen = when, {rid}
            else:
                seen.add(rid)
            last = last_seen(rid) if rid not in skip else None
            if not isinstance(last, dict):
                continue  # created in this poll, or never triaged by the daemon: nothing to re-triage
            before = last.get("extra") if isinstance(last.get("extra"), dict) else {}
            if str(before.get("last_updated")) == str(when):
                continue  # the daemon saw this very update already
            status, was_closed = _name(req.get("status")), self._closed(before.get("status"))
            if self._closed(status):
                if not was_closed:  # remembered, so that reopening it later is seen as such
                    observed.append(InboundTicket(NAME, rid, f"closed:{rid}:{when}", str(last.get("text") or ""),
                                                  extra={"status": status, "last_updated": when}))
                continue
            full = self._detail(req)
            ticket = self._ticket(full, event_key=f"updated:{rid}:{when}") if full is not None else None
            if ticket is None:
                continue
            reasons = ["description"] if ticket.text != last.get("text") else []
            reasons += ["reopened"] if was_closed else []
            if reasons:
                again.append(retriage_ticket(ticket, reasons, vendor=self._vendor(full)))
        return again, observed, Cursor(ms, frozenset(seen))

    def _closed(self, status: Any) -> bool:
        return isinstance(status, str) and status.casefold() in {c.casefold() for c in self.closed_statuses}

    def read_for_retriage(self, ticket: InboundTicket) -> InboundTicket:
        """The request as SDP has it now, for a re-triage: its text, the fields a human set, every field's value."""
        full = self._detail({"id": ticket.ref})
        if full is None:
            raise VendorError(f"{NAME}: request {ticket.ref} is gone", retryable=False, status=404)
        info = dataclasses.replace(retriage_info(ticket) or RetriageInfo(), vendor=self._vendor(full))
        fresh = self._ticket(full, event_key=ticket.event_key)
        return InboundTicket(NAME, ticket.ref, ticket.event_key, _text(full) or ticket.text,
                             project=fresh.project if fresh else ticket.project,
                             ticket_type=fresh.ticket_type if fresh else ticket.ticket_type,
                             current=self._labels(full, self.current_fields),
                             extra={**ticket.extra, RETRIAGE: info.to_extra()})

    def _vendor(self, req: Mapping[str, Any]) -> dict[str, str]:
        """Every mapped field's value on the request: its label, or the SDP name when the field map has none."""
        labels = self._labels(req, list(self.attributes))
        for field in self.field_map.names:
            raw = _name(req.get(self.attributes.get(field, "")))
            if field not in labels and raw:
                labels[field] = raw
        return labels

    def _start_cursor(self, cursor: str | None) -> Cursor:
        if cursor:
            try:
                return Cursor.parse(cursor)
            except ValueError:  # the queue drops repeats, so starting over is safe; stalling is not
                log.warning("%s: unreadable cursor %r, starting from the look-back window", NAME, cursor[:80])
        return Cursor(int((time.time() - self.lookback_minutes * 60) * 1000))

    def _list(self, criteria: dict, sort_field: str, max_pages: int | None) -> Iterator[dict]:
        """Requests matching `criteria`, page by page (start_index is 1-based) while has_more_rows."""
        start, pages = 1, 0
        while max_pages is None or pages < max_pages:
            list_info = {"row_count": self.page_size, "start_index": start, "sort_field": sort_field,
                         "sort_order": "asc", "search_criteria": criteria}  # has_more_rows pages, no total
            data = self._call("GET", "/requests", params={"input_data": _dumps({"list_info": list_info})})
            rows = data.get("requests") or []
            if not isinstance(rows, list):
                raise VendorError(f"{NAME}: 'requests' is not a list", retryable=False)
            yield from (r for r in rows if isinstance(r, dict))
            pages += 1
            if not rows or not (data.get("list_info") or {}).get("has_more_rows"):
                return
            start += len(rows)

    def _detail(self, req: dict) -> dict | None:
        """The full request (the list omits the description); None when it vanished since it was listed."""
        if "description" in req:
            return req
        try:
            data = self._call("GET", f"/requests/{req['id']}")
        except VendorError as exc:
            if exc.retryable:
                raise
            log.info("%s: request %s not readable, skipped: %s", NAME, req["id"], exc)
            return None
        return data.get("request") if isinstance(data.get("request"), dict) else None

    def _ticket(self, req: dict, event_key: str | None = None) -> InboundTicket | None:
        full = self._detail(req)
        if full is None:
            return None
        rid = str(full.get("id") or req["id"])
        text = _text(full)
        if not text:
            return None
        extra: dict[str, Any] = {"created_time": _ms(full.get("created_time"))}
        if self.retriage.enabled:  # what a later poll compares with (Store.last_event)
            extra |= {"status": _name(full.get("status")), "last_updated": _ms(full.get("last_updated_time"))}
        return InboundTicket(connector=NAME, ref=rid, event_key=event_key or f"created:{rid}", text=text,
                             project=_name(full.get("site")), ticket_type=_name(full.get("request_type")),
                             current=self._labels(full, self.current_fields), extra=extra)

    def _labels(self, req: Mapping[str, Any], fields: Iterable[str]) -> dict[str, str]:
        """Taxonomy labels of the request's values for `fields`; unmapped values are left out."""
        out: dict[str, str] = {}
        for field in sorted(fields, key=lambda f: f != "category"):  # the parent before its subcategory
            if field not in self.field_map or field not in self.attributes:
                continue
            parent = out.get("category") if field == "subcategory" else None
            label = self.field_map.label(field, _name(req.get(self.attributes[field])), parent=parent)
            if label is not None:
                out[field] = label
        return out

    # -- write-back ------------------------------------------------------------------------------------------

    def write_back(self, ticket: InboundTicket, plan: WritebackPlan, result: TriageResult) -> WritebackOutcome:
        """One PUT of the mapped fields (skipped when there are none), then one internal note."""
        if plan.shadow:
            return WritebackOutcome("shadow", None, "shadow mode: nothing written")
        if not ticket.ref.isdigit():  # refs come from our own poll; anything else must not reach a URL path
            raise VendorError(f"{NAME}: request id {ticket.ref[:40]!r} is not numeric", retryable=False)
        fields = self._request_fields(ticket, plan)
        path = f"/requests/{ticket.ref}"
        if fields:
            self._call("PUT", path, data={"input_data": _dumps({"request": fields})})
        wrapper = "request_note" if self.cloud else "note"
        note = {"description": plan.note, "show_to_requester": False, "mark_first_response": False,
                "add_to_linked_requests": False}
        if self.cloud:  # only the Cloud note has it (sdpod- vs sdpop-v3-api/requests/request_note.html)
            note["notify_technician"] = False
        status = self._call("POST", f"{path}/notes", data={"input_data": _dumps({wrapper: note})}, status=True)
        written = ", ".join(k for k in fields if k != "udf_fields") or "no field"
        return WritebackOutcome("applied", status, f"updated {written}; note added")

    def _request_fields(self, ticket: InboundTicket, plan: WritebackPlan) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field, label in plan.apply.items():
            if field not in self.field_map or field not in self.attributes:
                continue
            parent = None
            if self.field_map.is_nested(field):
                parent = plan.apply.get("category") or ticket.current.get("category")
                if parent is None:
                    continue
            try:
                value = self.field_map.vendor(field, label, parent=parent)
            except KeyError:
                continue
            out[self.attributes[field]] = {"id": str(value)} if isinstance(value, int) else {"name": value}
        if plan.needs_review and plan.review_marker and self.review_udf:
            out["udf_fields"] = {self.review_udf: plan.review_marker}
        return out

    # -- closed tickets --------------------------------------------------------------------------------------

    def closed_tickets(self, since: Any) -> Iterator[Record]:
        """Labelled records (DESIGN.md) of requests closed or resolved after `since` (datetime, ISO or None)."""
        criteria = _status_criterion(self.closed_statuses)
        if since is not None:
            when = datetime.fromisoformat(since) if isinstance(since, str) else since
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            criteria = _all_of({"field": "completed_time", "condition": "greater than",
                                "value": str(int(when.timestamp() * 1000))}, criteria)
        for req in self._list(criteria, "completed_time", None):
            full = self._detail(req)
            text = _text(full) if full else ""
            if not text:
                continue
            record: Record = {"id": str(full.get("id") or req["id"]), "text": text,
                              "labels": self._labels(full, list(self.attributes)), "source": SOURCE}
            closed = _ms(full.get("completed_time")) or _ms(full.get("resolved_time"))
            if closed is not None:
                record["closed_at"] = datetime.fromtimestamp(closed / 1000, timezone.utc).isoformat()
            yield record

    # -- HTTP ------------------------------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, status: bool = False, **kw: Any) -> Any:
        """A v3 call; a 2xx whose response_status says failed is a (permanent) error too."""
        try:
            response = self.client.request(method, path, **kw)
        except VendorError as exc:
            raise _explained(exc) from None
        try:
            data = response.json() if response.content else {}
        except ValueError:
            raise VendorError(f"{NAME} {method} {path}: answered {response.status_code} with a body that is not "
                              "JSON", retryable=True, status=response.status_code) from None
        statuses = data.get("response_status") if isinstance(data, dict) else None
        for item in statuses if isinstance(statuses, list) else [statuses]:
            if isinstance(item, dict) and str(item.get("status", "success")).lower() == "failed":
                messages = "; ".join(str(m.get("message", m)) for m in item.get("messages") or []
                                     if isinstance(m, dict))
                codes = [m.get("status_code") for m in item.get("messages") or [] if isinstance(m, dict)]
                code = next((c for c in codes if isinstance(c, int) and c in SDP_CODES), None)
                meaning = f"{SDP_CODES[code]} ({code}): " if code else ""
                raise VendorError(f"{NAME} {method} {path} failed: {meaning}{messages or item.get('status_code')}",
                                  retryable=False, status=response.status_code)
        return response.status_code if status else (data if isinstance(data, dict) else {})


def _text(req: Mapping[str, Any]) -> str:
    subject = " ".join(str(req.get("subject") or "").split())
    body = html_to_text(str(req.get("description") or ""))
    return "\n\n".join(p for p in (subject, body) if p)[:MAX_TEXT]


def _name(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("name")
    return value.strip() or None if isinstance(value, str) else None


def _ms(value: Any) -> int | None:
    """SDP date-times are {"value": "<epoch ms>", "display_value": ...}."""
    if isinstance(value, dict):
        value = value.get("value")
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _status_criterion(statuses: list[str]) -> dict[str, Any]:
    return {"field": "status.name", "condition": "is", "values": list(statuses)}


def _all_of(first: dict[str, Any], *more: dict[str, Any]) -> dict[str, Any]:
    """Criteria joined by AND in SDP's documented form: the first one, the rest as its children."""
    return {**first, "children": [{**c, "logical_operator": "AND"} for c in more]} if more else dict(first)


def _explained(exc: VendorError) -> VendorError:
    """The client's error with SDP's status code spelled out: the vendor text after "answered NNN: " starts with
    the code of each message (connectors.http.vendor_message)."""
    text = str(exc)
    detail = text.split(": ", 1)[1] if ": " in text else ""
    codes = [int(m.group(1)) for part in detail.split("; ") if (m := _CODE.match(part.strip()))]
    code = next((c for c in codes if c in SDP_CODES), None)
    if code is None:
        return exc
    return VendorError(f"{text} -> {SDP_CODES[code]} ({code})", retryable=exc.retryable,
                       retry_after=exc.retry_after, status=exc.status)


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def from_config(settings: Mapping[str, Any], env: Mapping[str, str]) -> ServiceDeskConnector:
    """The entry-point factory: settings from connectors.settings.servicedesk, secrets from the environment."""
    s = Settings(settings, DEFAULTS, f"connectors.settings.{NAME}", env)
    key = s.key
    edition = s["edition"]
    if edition not in ("onprem", "cloud"):
        raise s.error("edition", f"expected onprem or cloud, got {edition!r}")
    base_url = s["base_url"]
    if not isinstance(base_url, str) or not base_url.startswith(("https://", "http://")):
        raise s.error("base_url", "expected the http(s) URL of the ServiceDesk Plus server")
    headers = {"Accept": ACCEPT}
    if edition == "cloud":
        portal = s["portal"]
        if not isinstance(portal, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", portal):
            raise s.error("portal", "Cloud needs the portal's URL name (/app/<portal>/api/v3)")
        root = f"{base_url.rstrip('/')}/app/{portal}/api/v3"
        try:
            auth: Any = ZohoRefreshAuth(str(s["accounts_url"]), s.secret("client_id_env"),
                                        s.secret("client_secret_env"), s.secret("refresh_token_env"),
                                        timeout=s.number("timeout"))
        except ValueError as exc:
            raise s.error("accounts_url", str(exc)) from None
    else:
        if s["portal"] is not None:
            raise s.error("portal", "only for Cloud; on-premises portals are chosen by portal_id")
        root = f"{base_url.rstrip('/')}/api/v3"
        auth = StaticAuth({"authtoken": s.secret("api_key_env")})
    if s["portal_id"] is not None:
        if isinstance(s["portal_id"], bool) or not str(s["portal_id"]).strip().isalnum():
            raise s.error("portal_id", "expected the portal's id")
        headers["PORTALID"] = str(s["portal_id"]).strip()

    attributes = s["attributes"]
    if not isinstance(attributes, Mapping) or not all(isinstance(v, str) and v for v in attributes.values()):
        raise s.error("attributes", "expected a mapping of taxonomy field to SDP attribute")
    attributes = {**ATTRIBUTES, **attributes}
    field_map = FieldMap.from_settings(s["field_map"], f"{key}.field_map")
    for field in field_map.names:
        if field not in attributes:
            raise s.error(f"field_map.{field}", f"no SDP attribute for it; add it to {key}.attributes")
    webhook_var = s.env_name("webhook_secret_env") if s["webhook_secret_env"] is not None else None
    webhook_header = s["webhook_header"]
    if not isinstance(webhook_header, str) or not re.fullmatch(r"[A-Za-z0-9-]+", webhook_header):
        raise s.error("webhook_header", "expected a header name")
    review_udf = s["review_udf"]
    if review_udf is not None and not (isinstance(review_udf, str) and re.fullmatch(r"udf_\w+", review_udf)):
        raise s.error("review_udf", "expected a UDF key such as udf_sline_301")
    page_size = s.number("page_size", integer=True)
    if page_size > 100:
        raise s.error("page_size", "SDP returns at most 100 rows a page")
    retriage = retriage_settings(s, key)
    client = VendorClient("ServiceDesk Plus", root, auth, timeout=s.number("timeout"), headers=headers)
    return ServiceDeskConnector(
        client, cloud=edition == "cloud", field_map=field_map, attributes=attributes,
        webhook_secret=env.get(webhook_var, "").encode("utf-8") if webhook_var else b"",
        webhook_header=webhook_header, poll_interval=s.number("poll_interval"),
        lookback_minutes=s.number("initial_lookback_minutes"), page_size=page_size,
        max_pages=s.number("max_pages", integer=True), open_statuses=s.names("open_statuses"),
        closed_statuses=s.names("closed_statuses"), current_fields=s.names("current_fields", empty_ok=True),
        review_udf=review_udf, retriage=retriage)
