"""Jira Cloud and Jira Service Management: issue webhooks in, one issue edit and one internal comment out.

Webhooks (register `https://<daemon>/webhooks/jira` for `jira:issue_created` and `jira:issue_updated`): an admin
webhook with a secret is signed `X-Hub-Signature: sha256=<hex HMAC-SHA256 of the raw body>`. Unsigned webhooks
(Connect/OAuth apps, automation) are refused unless `allow_unsigned_with_url_secret` is on and the URL carries
`?secret=<url secret>`. `X-Atlassian-Webhook-Identifier` (the same on Jira's retries) is the idempotency key.
A created issue becomes a ticket; a human's change to a field we write becomes `FieldChange`s (corrections), and
the daemon's own edits (`bot_account_id`) are ignored.

Re-triage (`retriage: fields | all`, off by default; subscribe to *Comment created* too): an update that changes
the summary or description, or reopens the issue (its resolution cleared, or its status moved out of Done, Closed
or Resolved), and a `comment_created` by the requester (not the bot, not an app, not an internal or restricted
comment, and by the reporter when the payload names one) queue a re-triage. The worker reads the issue back
(GET /rest/api/3/issue/{key}: a comment webhook carries no description) and triages summary, description and the
requester's replies together.

Where each taxonomy field lives in Jira is `targets` (field -> `priority` | `components` | `labels` |
`customfield_N` (a select list; a cascading select when another field is its `child`) | `child`); the values
come from `field_map` (connectors/fieldmap.py). Write-back is `PUT /rest/api/3/issue/{key}` with only the
applied fields plus the review marker as an added label, then one internal comment: the JSM property
`sd.public.comment: {internal: true}` (`internal_comment: jsm`) or a role/group restriction (`plain`).
`notify_users: false` adds `?notifyUsers=false` to the edit so watchers get no e-mail; Jira allows that only to a
user with the Administer Projects (or Administer Jira) permission, so when Jira refuses it (403/400) the edit is
sent once more without it, a warning is logged once, and later edits notify as usual.
Closed tickets for retraining come from `POST /rest/api/3/search/jql`, paged by `nextPageToken`. JQL reads a date
literal in the API user's profile time zone, so a `since` instant is written in the zone `GET /rest/api/3/myself`
reports (or, when it reports none, as minutes before Jira's now).

Rate limits (Atlassian, "Rate limiting"): a 429 with Retry-After waits that long; without it, until
`X-RateLimit-Reset` when that is in the future; otherwise about 5 s, doubling per attempt, with jitter.

Auth: `email` + API token (`api_token_env`, basic) or an OAuth 2.0 access token (`oauth_token_env`, bearer,
with `base_url` https://api.atlassian.com/ex/jira/<cloud id>). A bearer is not refreshed here: a 401 is final.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Callable, Iterator, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
    with_reply,
)
from .fieldmap import FieldMap
from .http import StaticAuth, VendorClient, VendorError
from .settings import Settings

log = logging.getLogger(__name__)

NAME = "jira"
KEY = f"connectors.settings.{NAME}"
SIGNATURE_HEADER = "X-Hub-Signature"
IDENTIFIER_HEADER = "X-Atlassian-Webhook-Identifier"
CREATED, UPDATED, COMMENTED = "jira:issue_created", "jira:issue_updated", "comment_created"
#: Statuses an issue leaves when it is reopened (besides a cleared resolution), compared without case.
CLOSED_STATUSES = ("done", "closed", "resolved")
DEFAULTS: dict[str, Any] = {
    "base_url": None, "email": None, "api_token_env": "TRIAGE_JIRA_API_TOKEN", "oauth_token_env": None,
    "secret_env": "TRIAGE_JIRA_WEBHOOK_SECRET", "allow_unsigned_with_url_secret": False,
    "url_secret_env": "TRIAGE_JIRA_URL_SECRET", "bot_account_id": None,
    "field_map": {}, "targets": {"priority": "priority", "category": "components"},
    "priority_by": "name", "option_by": "value",
    "human_set_fields": ["category", "subcategory", "assignment_group"], "default_priority": "Medium",
    "internal_comment": "jsm", "comment_visibility": None,
    "closed_jql": None, "closed_days": 90, "page_size": 100, "timeout": 10.0, "notify_users": True,
    "retriage": "off", "retriage_fields": [],
}
RATE_LIMIT_BACKOFF = 5.0  # seconds before retrying a 429 that names no delay ("Rate limiting" page)
RESET_HEADER = "X-RateLimit-Reset"
NOTIFY_REFUSED = (400, 403)  # how Jira answers notifyUsers=false from a user without Administer Projects
_CUSTOM = re.compile(r"^customfield_\d+$")
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ISSUE_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}-\d{1,12}$")
_CASCADE = re.compile(r"Parent values:\s*(.*?)\((\d+)\)(?:\s*Level 1 values:\s*(.*?)\((\d+)\))?", re.S)
_MAX_BODY = 4 * 1024 * 1024
_MAX_TEXT = 100_000
_MAX_DEPTH = 64
_MAX_IDENTIFIER = 200
_DONE_MEMORY = 2048


#: The `targets` value of a cascading select's child (subcategory under category), which is also the key of the
#: child option inside the parent field's value in Jira's JSON: {"value": "Hardware", "child": {"value": "Laptop"}}.
CHILD = "child"


@dataclass(frozen=True)
class FieldTarget:
    """Where Jira holds a taxonomy field: the Jira field `field` (priority, components, labels, customfield_N), or,
    when `child`, the child option of the cascading select in `field`, which is the parent field's target (a child
    has no Jira field of its own, so it is read, written and matched in changelogs through its parent's)."""

    field: str
    child: bool = False

    def read(self, fields: Mapping[str, Any]) -> Any:
        """The raw value on an issue's `fields`: a child's is the `child` option of its parent's value."""
        value = fields.get(self.field)
        if self.child:
            return value.get(CHILD) if isinstance(value, dict) else None
        return value


PRIORITY, COMPONENTS, LABELS = FieldTarget("priority"), FieldTarget("components"), FieldTarget("labels")


@dataclass(frozen=True)
class JiraOptions:
    """The validated settings that shape requests and parsing (secrets and the HTTP client are kept apart)."""

    targets: Mapping[str, str]
    bot_account_id: str | None = None
    priority_by: str = "name"  # priority written and read by name or id
    option_by: str = "value"  # select options written and read by value or id
    human_set_fields: tuple[str, ...] = ("category", "subcategory", "assignment_group")
    default_priority: str | None = "Medium"  # a priority label that does not count as set by a human
    internal_comment: str = "jsm"
    comment_visibility: Mapping[str, str] | None = None
    closed_jql: str | None = None
    closed_days: int = 90
    page_size: int = 100
    notify_users: bool = True  # False: edits send notifyUsers=false (needs Administer Projects)
    retriage: RetriageSettings = RETRIAGE_OFF


class JiraConnector:
    """One Jira site. Thread-safe: settings are read-only; the write-back step memory is under a lock."""

    name = NAME

    def __init__(self, client: VendorClient, field_map: FieldMap, options: JiraOptions, *, secret: bytes | None,
                 url_secret: bytes | None = None):
        self.client, self.field_map, self.opt = client, field_map, options
        self.targets = dict(options.targets)
        self._secret, self._url_secret = secret, url_secret
        self._parents = {"subcategory": "category"}  # child field -> parent; the taxonomy's own at check time
        self._taxonomy: Taxonomy | None = None  # known after check_taxonomy: labels are then checked against it
        self._done: OrderedDict[tuple[str, str], set[str]] = OrderedDict()
        self._lock = threading.Lock()
        self._notify_refused = False  # Jira refused notifyUsers=false once: edits notify from then on

    def __repr__(self) -> str:  # never a secret
        return f"JiraConnector({self.client.base_url!r}, targets={self.targets})"

    @property
    def retriage(self) -> RetriageSettings:
        return self.opt.retriage

    def _target(self, name: str) -> FieldTarget | None:
        """Where taxonomy field `name` lives in Jira (None: no target); a child's field is its parent's target, as
        the taxonomy (after `check_taxonomy`) names the parent."""
        target = self.targets.get(name)
        if target != CHILD:
            return None if target is None else FieldTarget(target)
        return FieldTarget(self.targets.get(self._parents.get(name) or "", ""), child=True)

    def _mapped(self) -> Iterator[tuple[str, FieldTarget]]:
        """(name, target) of every field that both the field map and `targets` know, in `targets` order."""
        for name in self.targets:
            target = self._target(name)
            if name in self.field_map and target is not None:
                yield name, target

    def _children(self) -> Iterator[tuple[str, str, FieldTarget]]:
        """(child, parent, target) of every mapped field written as the child option of a cascading select."""
        for child, parent in self._parents.items():
            target = self._target(child)
            if target is not None and target.child and child in self.field_map:
                yield child, parent, target

    def _wanted(self, *base: str) -> list[str]:
        """The issue fields to ask Jira for: `base`, then every mapped field's Jira field (a child comes with its
        parent)."""
        return [*base, *(t.field for _, t in self._mapped() if not t.child and t.field not in base)]

    # -- start-up ----------------------------------------------------------------------------------------------

    def check_taxonomy(self, taxonomy: Taxonomy) -> None:
        """Every label of every mapped field must map, each mapped field needs a target, labels no spaces."""
        self.field_map.check(taxonomy)
        problems = []
        self._parents = {f.name: f.parent for f in taxonomy.enum_fields if f.parent}
        for name in self.field_map.names:
            target = self._target(name)
            if target is None:
                problems.append(f"{KEY}.targets.{name}: missing (field_map maps it, so it must be written somewhere)")
            elif target.child and not _CUSTOM.match(target.field):
                problems.append(f"{KEY}.targets.{name}: {CHILD!r} needs its parent field on a cascading custom field")
            elif target == LABELS:
                for label in taxonomy[name].values:
                    value = str(self.field_map.vendor(name, label, parent=_any_parent(taxonomy, name, label)))
                    if not value or len(value.split()) != 1:
                        problems.append(f"{KEY}.field_map.{name}.{label}: a Jira label cannot contain spaces")
        if problems:
            raise ConnectorConfigError("; ".join(problems))
        self.opt.retriage.check(taxonomy, KEY)
        self._taxonomy = taxonomy

    # -- webhooks ----------------------------------------------------------------------------------------------

    def parse_webhook(self, body: bytes, headers: Mapping[str, str], query: Mapping[str, str]) -> list[WebhookEvent]:
        """Authenticate first (constant time), then parse: a created issue is a ticket, an update FieldChanges (and a
        re-triage when it gained information), the requester's comment a re-triage."""
        self._authenticate(body, header(headers, SIGNATURE_HEADER), query.get("secret"))
        if len(body) > _MAX_BODY:
            raise WebhookRejected(413, f"body larger than {_MAX_BODY} bytes")
        content_type = (header(headers, "Content-Type") or "application/json").split(";")[0].strip().lower()
        if content_type != "application/json" and not content_type.endswith("+json"):
            raise WebhookRejected(415, f"expected application/json, got {content_type}")
        data = json_body(body)
        if not isinstance(data, dict):
            raise WebhookRejected(400, "expected a JSON object")
        event = data.get("webhookEvent")
        if event not in (CREATED, UPDATED, COMMENTED) or (event == COMMENTED and not self.opt.retriage.enabled):
            log.debug("jira webhook %r ignored", event)
            return []
        issue = data.get("issue")
        if not isinstance(issue, dict) or not isinstance(issue.get("fields"), dict):
            raise WebhookRejected(400, "issue: expected an object with fields")
        key = issue.get("key")
        if not isinstance(key, str) or not _ISSUE_KEY.match(key):
            raise WebhookRejected(400, "issue.key: expected an issue key such as IT-42")
        user = data.get("user") if isinstance(data.get("user"), dict) else {}
        actor = user.get("accountId") if isinstance(user.get("accountId"), str) else None
        identifier = (header(headers, IDENTIFIER_HEADER) or "").strip()
        if len(identifier) > _MAX_IDENTIFIER or any(ord(c) < 32 for c in identifier):
            raise WebhookRejected(400, f"{IDENTIFIER_HEADER}: at most {_MAX_IDENTIFIER} printable characters")
        event_key = identifier or hashlib.sha256(body).hexdigest()
        fields = issue["fields"]
        if event == COMMENTED:
            reply = self._requester_reply(data.get("comment"), fields)
            if reply is None:
                return []
            return [self._retriage(key, event_key, issue, ["reply"], reply)]
        if event == UPDATED:
            if self.opt.bot_account_id and actor == self.opt.bot_account_id:
                return []  # our own write-back echoed back
            changelog = data.get("changelog")
            if changelog is None:  # e.g. issue_commented: nothing we write has changed
                return []
            items = changelog.get("items") if isinstance(changelog, dict) else None
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise WebhookRejected(400, "changelog.items: expected a list of objects")
            events: list[WebhookEvent] = list(self._changes(key, items, actor))
            reasons = _gained(items)
            if reasons and self.opt.retriage.enabled:
                events.append(self._retriage(key, event_key, issue, reasons))
            return events
        text = _text(fields)
        if not text.strip():
            raise WebhookRejected(400, "issue has neither summary nor description")
        return [InboundTicket(connector=NAME, ref=key, event_key=event_key,
                              text=text, project=_name(fields.get("project"), "key"),
                              ticket_type=_name(fields.get("issuetype"), "name"), current=self._human_set(fields),
                              extra={"id": str(issue.get("id") or "")})]

    def _human_set(self, fields: Mapping[str, Any]) -> dict[str, str]:
        """The issue's fields that count as a human's: those of `human_set_fields`, but not Jira's default priority."""
        return {n: v for n, v in self._labels_of(fields).items() if n in self.opt.human_set_fields
                and not (n == "priority" and v == self.opt.default_priority)}

    def _requester_reply(self, comment: Any, fields: Mapping[str, Any]) -> str | None:
        """The comment's text when it is the requester's reply; None for the bot's notes, an app's, an internal
        or restricted comment, or (when the payload names the reporter) another person's."""
        if not isinstance(comment, dict):
            raise WebhookRejected(400, "comment: expected an object")
        author = comment.get("author") if isinstance(comment.get("author"), dict) else {}
        author_id = author.get("accountId") if isinstance(author.get("accountId"), str) else None
        if author_id is None or author_id == self.opt.bot_account_id or author.get("accountType") == "app":
            return None
        internal = comment.get("jsdPublic") is False or comment.get("visibility") or any(
            isinstance(p, dict) and p.get("key") == "sd.public.comment" and p.get("value") == {"internal": True}
            for p in _list(comment.get("properties")))
        reporter = fields.get("reporter") if isinstance(fields.get("reporter"), dict) else {}
        if internal or (isinstance(reporter.get("accountId"), str) and reporter["accountId"] != author_id):
            return None
        body = comment.get("body")
        text = body if isinstance(body, str) else adf_to_text(body)
        return text.strip()[:_MAX_TEXT] or None

    def _retriage(self, key: str, event_key: str, issue: Mapping[str, Any], reasons: list[str],
                  reply: str | None = None) -> InboundTicket:
        """A re-triage ticket; its text and fields are read back from Jira by the worker (`read_for_retriage`)."""
        fields = issue["fields"]
        ticket = InboundTicket(connector=NAME, ref=key, event_key=event_key,
                               text=with_reply(_text(fields), reply, _MAX_TEXT) or key,
                               project=_name(fields.get("project"), "key"),
                               ticket_type=_name(fields.get("issuetype"), "name"),
                               extra={"id": str(issue.get("id") or "")})
        return retriage_ticket(ticket, reasons, reply=reply)

    def read_for_retriage(self, ticket: InboundTicket) -> InboundTicket:
        """The issue as Jira has it now: summary and description as the text (the worker adds the replies), the
        fields a human set (as for a created issue) as `current`, and every mapped field's value as `vendor`."""
        wanted = self._wanted("summary", "description", "project", "issuetype")
        issue = self.client.json("GET", f"/rest/api/3/issue/{ticket.ref}", params={"fields": ",".join(wanted)})
        fields = issue.get("fields") if isinstance(issue, dict) else None
        if not isinstance(fields, dict):
            raise VendorError(f"Jira GET /rest/api/3/issue/{ticket.ref}: expected an issue with fields",
                              retryable=True)
        info = dataclasses.replace(retriage_info(ticket) or RetriageInfo(), vendor=self._vendor(fields))
        return InboundTicket(connector=NAME, ref=ticket.ref, event_key=ticket.event_key,
                             text=_text(fields) or ticket.text,
                             project=_name(fields.get("project"), "key") or ticket.project,
                             ticket_type=_name(fields.get("issuetype"), "name") or ticket.ticket_type,
                             current=self._human_set(fields),
                             extra={**ticket.extra, RETRIAGE: info.to_extra()})

    def _vendor(self, fields: Mapping[str, Any]) -> dict[str, str]:
        """Every mapped field's value on the issue: its label, or Jira's own name or value when unmapped (a value
        no label stands for is still a value someone set)."""
        out = dict(self._labels_of(fields))
        for name, target in self._mapped():
            if name in out or target == LABELS:
                continue  # labels also hold other teams' tags: only a mapped one says anything
            raw = target.read(fields)
            values = _list(raw) if target == COMPONENTS else [raw]
            shown = [_name(v, "name") or _name(v, "value") for v in values]
            if any(shown):
                out[name] = next(v for v in shown if v)
        return out

    def _authenticate(self, body: bytes, signature: str | None, url_secret: str | None) -> None:
        if signature:
            if self._secret is None:
                raise WebhookRejected(401, f"signed webhook but no secret configured ({KEY}.secret_env)")
            expected = ("sha256=" + hmac.new(self._secret, body, hashlib.sha256).hexdigest()).encode("ascii")
            if not hmac.compare_digest(expected, signature.strip().lower().encode("utf-8", "replace")):
                raise WebhookRejected(401, f"{SIGNATURE_HEADER} does not match the body")
        elif self._url_secret is None:
            raise WebhookRejected(401, f"missing {SIGNATURE_HEADER} header")
        elif not hmac.compare_digest(self._url_secret, (url_secret or "").encode("utf-8", "replace")):
            raise WebhookRejected(401, f"unsigned webhook without the right ?secret= ({SIGNATURE_HEADER} missing)")

    def _changes(self, ref: str, items: list[dict], actor: str | None) -> Iterator[FieldChange]:
        """One FieldChange per taxonomy field whose Jira field the changelog touches (items are aggregated:
        Jira logs a component swap as a removal and an addition)."""
        seen: dict[str, list[str | None]] = {}
        for item in items:
            jira_field = item.get("fieldId") or item.get("field")
            for name, target in self._mapped():
                if target.field != jira_field:  # a child's changes are logged under its parent's field
                    continue
                old, new = (self._change_value(name, target, item, side) for side in ("from", "to"))
                pair = seen.setdefault(name, [None, None])
                pair[0], pair[1] = pair[0] or old, pair[1] or new
        for name, (old, new) in seen.items():
            if old != new:
                yield FieldChange(NAME, ref, name, old, new, actor)

    def _change_value(self, name: str, target: FieldTarget, item: Mapping[str, Any], side: str) -> str | None:
        raw, shown = item.get(side), item.get(side + "String")
        if target == PRIORITY:
            return self._label(name, raw if self.opt.priority_by == "id" else shown)
        if target == COMPONENTS:
            return self._label(name, shown)
        if target == LABELS:  # fromString/toString list the labels, space-separated
            return next((lab for v in str(shown or "").split() if (lab := self._label(name, v))), None)
        match = _CASCADE.search(str(shown or ""))
        if not match:  # a plain select list: the option id in from/to, its value in fromString/toString
            return self._label(name, raw if self.opt.option_by == "id" else shown)
        parent = self._label(self._parents.get(name, name) if target.child else name,
                             match[2] if self.opt.option_by == "id" else match[1])
        if not target.child:
            return parent
        return self._label(name, match[4] if self.opt.option_by == "id" else match[3], parent) if match[3] else None

    # -- reading Jira values back to labels --------------------------------------------------------------------

    def _label(self, name: str, value: Any, parent: str | None = None) -> str | None:
        """A taxonomy label for a Jira value, never a value outside the taxonomy (once it is known)."""
        if isinstance(value, (dict, list)):
            return None
        label = self.field_map.label(name, value, parent=parent)
        if label is None or self._taxonomy is None:
            return label
        allowed = self._taxonomy[name].values if name in self._taxonomy else ()
        return next((a for a in allowed if a.casefold() == label.casefold()), None)

    def _labels_of(self, fields: Mapping[str, Any]) -> dict[str, str]:
        """Taxonomy labels of the issue's mapped fields (closed tickets, fields a human already set)."""
        out: dict[str, str] = {}
        for name, target in self._mapped():
            if target.child:
                continue
            raw = target.read(fields)
            if target == PRIORITY:
                label = self._label(name, _name(raw, self.opt.priority_by))
            elif target in (COMPONENTS, LABELS):
                values = [_name(v, "name") if target == COMPONENTS else v for v in _list(raw)]
                label = next((lab for v in values if (lab := self._label(name, v))), None)
            else:
                label = self._label(name, _name(raw, self.opt.option_by))
                for child, parent, child_target in self._children():
                    if parent == name and label:
                        sub = self._label(child, _name(child_target.read(fields), self.opt.option_by), label)
                        if sub:
                            out[child] = sub
            if label:
                out[name] = label
        for child, parent in self._parents.items():  # a subcategory only under the category it belongs to
            tax = self._taxonomy
            if child in out and tax is not None and out[child] not in tax[child].children.get(out.get(parent), ()):
                del out[child]
        return out

    # -- write-back --------------------------------------------------------------------------------------------

    def write_back(self, ticket: InboundTicket, plan: WritebackPlan, result: TriageResult) -> WritebackOutcome:
        """One PUT with the applied fields and the review label (skipped when empty), then one internal comment.

        Steps that succeeded are remembered per event (in this process), so the worker's retry after a failed
        comment does not edit again, and a retry of a job whose note was posted does not post it twice."""
        if plan.shadow:
            return WritebackOutcome("shadow", None, "shadow mode: nothing written")
        path = f"/rest/api/3/issue/{ticket.ref}"
        done_key = (ticket.ref, ticket.event_key)
        with self._lock:
            done = set(self._done.get(done_key, ()))
        edit, status = self._edit(ticket, plan), None
        if edit and "edit" not in done:
            status = self._put(path, edit)
            self._mark(done_key, "edit")
        if "comment" not in done:
            comment: dict[str, Any] = {"body": _adf_doc(plan.note or "Triaged by ticket-triage.")}
            if self.opt.internal_comment == "jsm":
                comment["properties"] = [{"key": "sd.public.comment", "value": {"internal": True}}]
            else:
                comment["visibility"] = dict(self.opt.comment_visibility or {})
            status = self.client.request("POST", path + "/comment", json_body=comment).status_code
            self._mark(done_key, "comment")
        written = ", ".join(sorted(edit.get("fields", {}))) or "no field"
        return WritebackOutcome("applied", status, f"{written} written, internal comment posted")

    def _put(self, path: str, edit: dict[str, Any]) -> int:
        """The edit, without notifying watchers when configured and allowed. Jira refuses notifyUsers=false to a
        user without Administer Projects: the edit is then sent once more as a plain one, and if that succeeds
        the refusal was about the permission, so it is logged once and not asked for again."""
        with self._lock:
            quiet = not self.opt.notify_users and not self._notify_refused
        if not quiet:
            return self.client.request("PUT", path, json_body=edit).status_code
        try:
            return self.client.request("PUT", path, params={"notifyUsers": "false"}, json_body=edit).status_code
        except VendorError as exc:
            if exc.status not in NOTIFY_REFUSED:
                raise
            refusal = str(exc)
        status = self.client.request("PUT", path, json_body=edit).status_code
        with self._lock:
            first, self._notify_refused = not self._notify_refused, True
        if first:
            log.warning("jira: notify_users is false but Jira refused notifyUsers=false (the bot needs the "
                        "Administer Projects permission); edits notify watchers from now on. Jira said: %s", refusal)
        return status

    def _mark(self, key: tuple[str, str], step: str) -> None:
        with self._lock:
            self._done.setdefault(key, set()).add(step)
            self._done.move_to_end(key)
            while len(self._done) > _DONE_MEMORY:
                self._done.popitem(last=False)

    def _edit(self, ticket: InboundTicket, plan: WritebackPlan) -> dict[str, Any]:
        """The PUT body: Jira's `fields` (set) and `update` (labels added) for the applied, mapped fields."""
        fields: dict[str, Any] = {}
        labels: list[str] = []
        for name, label in plan.apply.items():
            target = self._target(name)
            if name not in self.field_map or target is None or target.child:
                continue
            parent = self._parents.get(name)
            try:
                value = str(self.field_map.vendor(name, label, parent=plan.apply.get(parent) or
                                                  ticket.current.get(parent or "")))
            except KeyError:  # a nested map with no parent value on the ticket: nothing sensible to write
                continue
            if target == PRIORITY:
                fields["priority"] = {self.opt.priority_by: value}
            elif target == COMPONENTS:
                fields["components"] = [{"name": value}]
            elif target == LABELS:
                labels.append(value)
            else:
                fields[target.field] = {self.opt.option_by: value}
        for child, parent, target in self._children():
            parent_label = plan.apply.get(parent) or ticket.current.get(parent)
            if child not in plan.apply or not parent_label or not _CUSTOM.match(target.field) or \
                    parent not in self.field_map:
                continue
            by = self.opt.option_by
            option = fields.setdefault(target.field, {by: str(self.field_map.vendor(parent, parent_label))})
            option[CHILD] = {by: str(self.field_map.vendor(child, plan.apply[child], parent_label))}
        if plan.needs_review and plan.review_marker:
            labels.append(plan.review_marker)
        body: dict[str, Any] = {"fields": fields} if fields else {}
        if labels:
            body["update"] = {"labels": [{"add": label} for label in dict.fromkeys(labels)]}
        return body

    # -- closed tickets ----------------------------------------------------------------------------------------

    def _user_zone(self) -> ZoneInfo | None:
        """The API user's profile time zone, in which JQL reads date literals; None when Jira shows none."""
        me = self.client.json("GET", "/rest/api/3/myself") or {}
        name = me.get("timeZone") if isinstance(me, dict) else None
        if not isinstance(name, str) or not name:
            return None
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            log.warning("jira: unknown time zone %r for the API user; closed-ticket JQL uses relative minutes", name)
            return None

    def closed_tickets(self, since: Any = None) -> Iterator[Record]:
        """Labelled-ticket records (DESIGN.md) of issues resolved since `since` (a datetime, date, ISO string,
        or a number of days; None: `closed_days`), oldest first. Needs `check_taxonomy` first, so that no label
        outside the taxonomy is kept."""
        if self._taxonomy is None:
            raise RuntimeError("JiraConnector.closed_tickets: call check_taxonomy(taxonomy) first")
        clause = _resolved_since(since, self.opt.closed_days, self._user_zone)
        jql = f"({self.opt.closed_jql}) AND {clause}" if self.opt.closed_jql else clause
        wanted = self._wanted("summary", "description", "resolutiondate", "project", "issuetype")
        token: str | None = None
        while True:
            request: dict[str, Any] = {"jql": jql + " ORDER BY resolved ASC", "fields": wanted,
                                       "maxResults": self.opt.page_size}
            if token:
                request["nextPageToken"] = token
            page = self.client.json("POST", "/rest/api/3/search/jql", json_body=request) or {}
            for issue in page.get("issues") or []:
                fields = issue.get("fields") or {}
                text = _text(fields)
                if text.strip() and isinstance(issue.get("key"), str):
                    record: Record = {"id": issue["key"], "text": text, "labels": self._labels_of(fields),
                                      "source": NAME}
                    if isinstance(fields.get("resolutiondate"), str):
                        record["closed_at"] = _iso(fields["resolutiondate"])
                    yield record
            previous, token = token, page.get("nextPageToken")
            if page.get("isLast") or not token or token == previous:
                return


# -- helpers ---------------------------------------------------------------------------------------------------

def _name(value: Any, key: str) -> str | None:
    """`value[key]` of a Jira object ({"name": ...}, {"value": ..., "id": ...}), or None."""
    if isinstance(value, dict) and isinstance(value.get(key), (str, int)) and not isinstance(value.get(key), bool):
        return str(value[key])
    return None


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _text(fields: Mapping[str, Any]) -> str:
    summary = fields.get("summary") if isinstance(fields.get("summary"), str) else ""
    description = fields.get("description")
    body = description if isinstance(description, str) else adf_to_text(description)
    return "\n\n".join(p for p in (summary.strip(), body.strip()) if p)[:_MAX_TEXT]


def _gained(items: list[dict]) -> list[str]:
    """Why a changelog means the issue gained information: its summary or description changed, or it was reopened
    (its resolution cleared, or its status moved out of a closed one)."""
    reasons = []
    for item in items:
        name = str(item.get("fieldId") or item.get("field") or "").lower()
        if name in ("summary", "description") and item.get("fromString") != item.get("toString"):
            reasons.append(name)
        elif name == "resolution" and (item.get("from") or item.get("fromString")) and not (
                item.get("to") or item.get("toString")):
            reasons.append("reopened")
        elif name == "status" and str(item.get("fromString") or "").casefold() in CLOSED_STATUSES and \
                str(item.get("toString") or "").casefold() not in CLOSED_STATUSES:
            reasons.append("reopened")
    return list(dict.fromkeys(reasons))


_BLOCK_JOIN = {"doc": "\n\n", "blockquote": "\n\n", "panel": "\n\n", "listItem": "\n", "expand": "\n\n",
               "table": "\n", "tableRow": " | ", "tableCell": "\n", "tableHeader": "\n", "layoutSection": "\n\n",
               "layoutColumn": "\n\n", "nestedExpand": "\n\n", "bodiedExtension": "\n\n"}


def adf_to_text(node: Any, depth: int = 0) -> str:
    """Atlassian Document Format flattened to plain text: blocks on their own lines, list items bulleted or
    numbered, mentions as their display text, hard breaks as newlines; media and unknown leaves are dropped."""
    if not isinstance(node, dict) or depth > _MAX_DEPTH:
        return ""
    kind, attrs = node.get("type"), node.get("attrs") if isinstance(node.get("attrs"), dict) else {}
    if kind == "text":
        return node.get("text") if isinstance(node.get("text"), str) else ""
    if kind == "hardBreak":
        return "\n"
    if kind in ("mention", "emoji", "status", "date", "inlineCard", "blockCard"):
        value = attrs.get("text") or attrs.get("shortName") or attrs.get("url") or attrs.get("timestamp") or ""
        return str(value)
    content = node.get("content") if isinstance(node.get("content"), list) else []
    parts = [adf_to_text(child, depth + 1) for child in content]
    if kind in ("bulletList", "orderedList"):
        start = attrs.get("order") if isinstance(attrs.get("order"), int) else 1
        marks = [f"{start + i}. " if kind == "orderedList" else "- " for i in range(len(parts))]
        return "\n".join(m + p.replace("\n", "\n  ") for m, p in zip(marks, parts, strict=True) if p.strip())
    if kind in _BLOCK_JOIN:
        return _BLOCK_JOIN[kind].join(p for p in parts if p.strip())
    return "".join(parts)  # paragraph, heading, codeBlock and other inline containers


def _adf_doc(text: str) -> dict[str, Any]:
    """Plain text as an ADF document: one paragraph per line block (ADF has no empty text nodes)."""
    paragraphs = [p for p in text.split("\n") if p.strip()] or ["-"]
    return {"type": "doc", "version": 1,
            "content": [{"type": "paragraph", "content": [{"type": "text", "text": p}]} for p in paragraphs]}


def _any_parent(taxonomy: Taxonomy, name: str, label: str) -> str | None:
    f = taxonomy[name]
    return next((p for p, values in f.children.items() if label in values), None) if f.parent else None


def _resolved_since(since: Any, days: int, zone_of: Callable[[], ZoneInfo | None] | None = None) -> str:
    """The JQL clause for "resolved since". JQL reads a date literal in the API user's profile time zone
    ("JQL fields: Resolved"), so an instant (a zone-less one is UTC) is written in that zone (`zone_of()`), or,
    when Jira shows none, as whole minutes before Jira's now, which no zone shifts. A date is a calendar day."""
    if since is None:
        return f"resolved >= -{days}d"
    if isinstance(since, bool) or not isinstance(since, (int, float, str, date)):
        raise TypeError(f"since: expected a datetime, date, ISO string or days, got {type(since).__name__}")
    if isinstance(since, (int, float)):
        return f"resolved >= -{max(0, math.ceil(since))}d"
    if isinstance(since, str):
        text = since.strip()
        text = text.replace("Z", "+00:00")  # Python 3.10 reads no "Z"
        since = date.fromisoformat(text) if _DATE_ONLY.match(text) else datetime.fromisoformat(text)
    if isinstance(since, datetime):
        instant = since if since.tzinfo is not None else since.replace(tzinfo=timezone.utc)
        zone = zone_of() if zone_of is not None else None
        if zone is None:
            return f"resolved >= -{max(0, math.ceil((time.time() - instant.timestamp()) / 60))}m"
        return f'resolved >= "{instant.astimezone(zone):%Y-%m-%d %H:%M}"'  # minutes floored: overlap, no gap
    return f'resolved >= "{since:%Y-%m-%d}"'


def _iso(value: str) -> str:
    try:
        return datetime.fromisoformat(value).isoformat()
    except ValueError:
        return value


def from_config(settings: Mapping[str, Any], env: Mapping[str, str]) -> JiraConnector:
    """The entry-point factory: settings from connectors.settings.jira, secrets from the environment."""
    s = Settings(settings, DEFAULTS, KEY, env)

    def secret(name: str, why: str) -> str:  # Jira reads a variable's name as text: stripped, never blank
        return s.secret(name, why, var=s.text(name, required=True))

    base_url = s.text("base_url", required=True)
    if not base_url.startswith(("https://", "http://")):
        raise s.error("base_url", f"expected https://<site>.atlassian.net, got {base_url!r}")
    if s.text("oauth_token_env"):
        auth = StaticAuth.bearer(secret("oauth_token_env", "it holds the OAuth 2.0 access token"))
    else:
        email = s.text("email")
        if email is None:
            raise s.error("email", "required for API-token auth (or set oauth_token_env)")
        auth = StaticAuth.basic(email, secret("api_token_env", "it holds the Atlassian API token for " + email))
    unsigned = s["allow_unsigned_with_url_secret"]
    if not isinstance(unsigned, bool):
        raise s.error("allow_unsigned_with_url_secret", "expected true or false")
    hook_var = s.text("secret_env", required=True)
    if not unsigned or env.get(hook_var):
        hook_secret: str | None = secret("secret_env", "the connector needs it to verify webhook signatures")
    else:
        hook_secret = None
    url_secret = secret("url_secret_env", "allow_unsigned_with_url_secret needs it") if unsigned else None

    raw_targets = s["targets"]
    if not isinstance(raw_targets, Mapping):
        raise s.error("targets", "expected a mapping of taxonomy field to Jira field")
    targets = {k: v for k, v in {**DEFAULTS["targets"], **raw_targets}.items() if v is not None}
    for name, target in targets.items():
        ok = target in ("components", "labels", CHILD) or _CUSTOM.match(str(target)) or \
            target == "priority" == name
        if not isinstance(target, str) or not ok:
            raise s.error(f"targets.{name}", "expected components, labels, customfield_<id>, "
                          f"{CHILD}{' or priority' if name == 'priority' else ''}, got {target!r}")
    human = s["human_set_fields"]
    if not isinstance(human, (list, tuple)) or not all(isinstance(h, str) for h in human):
        raise s.error("human_set_fields", "expected a list of taxonomy field names")
    visibility = s["comment_visibility"]
    internal = s.choice("internal_comment", ("jsm", "plain"))
    if internal == "plain" and not (isinstance(visibility, Mapping) and visibility.get("type") in ("role", "group")
                                    and isinstance(visibility.get("value"), str) and visibility["value"]):
        raise s.error("comment_visibility", "internal_comment plain needs "
                      "{type: role | group, value: <role or group name>}")
    notify = s["notify_users"]
    if not isinstance(notify, bool):
        raise s.error("notify_users", f"expected true or false, got {notify!r}")
    client = VendorClient("Jira", base_url, auth, timeout=s.number("timeout"),
                          headers={"Accept": "application/json"}, rate_limit_backoff=RATE_LIMIT_BACKOFF,
                          reset_header=RESET_HEADER)
    options = JiraOptions(
        targets, bot_account_id=s.text("bot_account_id"), priority_by=s.choice("priority_by", ("name", "id")),
        option_by=s.choice("option_by", ("value", "id")), human_set_fields=tuple(human),
        default_priority=s.text("default_priority"), internal_comment=internal,
        comment_visibility=dict(visibility) if internal == "plain" else None, closed_jql=s.text("closed_jql"),
        closed_days=s.number("closed_days", integer=True), page_size=min(s.number("page_size", integer=True), 5000),
        notify_users=notify, retriage=retriage_settings(s, KEY))
    return JiraConnector(client, FieldMap.from_settings(s["field_map"], f"{KEY}.field_map"), options,
                         secret=hook_secret.encode("utf-8") if hook_secret else None,
                         url_secret=url_secret.encode("utf-8") if url_secret else None)
