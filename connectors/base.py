"""The Connector protocol every ITSM connector follows, its errors, and entry-point discovery.

A connector is the only code that knows a vendor: it turns a webhook into `InboundTicket`s (after checking the
webhook is authentic) and a `WritebackPlan` into vendor API calls. Everything else (queue, policy, triage) is
vendor-agnostic. Beyond the two required methods a connector may offer optional capabilities, each a small protocol
the composition root checks for: `TaxonomyChecked` (validate a field map at start-up), `TicketReader` (read the
ticket back from the vendor before triage, for webhooks that are only hints), `Poller` (fetch new tickets on a
schedule), `ClosedTicketSource` (labelled history for retraining) and `RetriageReader` (read a ticket that gained
information before it is triaged again). A webhook may also report a `FieldChange` (a human edited a field) or a
`PollNow` (run the poller now) besides tickets. A ticket whose `extra` carries `retriage` (see `retriage_ticket`) is
a re-triage: the worker re-scores only the fields no human has set and writes only what changed (README: re-triage).
Connectors are found through the `ticket_triage.connectors` entry-point group, so a new ITSM is a package that
registers a factory, not a change here. `connectors.generic` is the reference implementation.
"""
from __future__ import annotations

import dataclasses
import email.utils
import json
import time
from dataclasses import dataclass, field as dc_field
from importlib.metadata import entry_points
from typing import Any, Callable, Iterable, Mapping, Protocol, Union, runtime_checkable

from triage_core.capabilities import ClosedTicketSource as ClosedTicketSource  # re-exported: trainer uses it too
from triage_core.config import ConfigError
from triage_core.policy import WritebackPlan
from triage_core.queue import InboundTicket
from triage_core.taxonomy import Taxonomy
from triage_core.text import TextProblem, check_strings, clean_text, identifier, ticket_text
from triage_core.triager import TriageResult

ENTRY_POINT_GROUP = "ticket_triage.connectors"

#: A connector factory, as registered under the entry-point group: (settings, environment) -> Connector.
ConnectorFactory = Callable[[Mapping[str, Any], Mapping[str, str]], "Connector"]


class ConnectorConfigError(ConfigError):
    """A connector cannot start with its settings or environment; the message names the key, never a secret."""


class WebhookRejected(Exception):
    """A webhook is refused; the route answers `status` with the one-line `reason`.

    400 malformed, 401 bad or missing signature, 413 too large, 415 wrong content type, 422 well-formed but not
    acceptable (e.g. a callback host that is not allowed).
    """

    def __init__(self, status: int, reason: str):
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason.replace("\n", " ")


class WritebackError(Exception):
    """The vendor refused or could not be reached. `retryable` tells the queue whether to try again, and
    `retry_after` (seconds) when the vendor said when (429/503 Retry-After)."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None, status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


@dataclass(frozen=True)
class WritebackOutcome:
    """What a write-back did: 'applied' (the vendor accepted it), 'shadow' (nothing written on purpose) or
    'skipped' (nothing to write to, e.g. no callback URL); `status` is the vendor's HTTP status when one was made."""

    outcome: str
    status: int | None
    detail: str = ""


@dataclass(frozen=True)
class FieldChange:
    """A human changed a triage field on a ticket (old and new are taxonomy labels, None when unset or unmapped).

    The daemon records it as a correction, the retraining signal, when it had written that field itself."""

    connector: str
    ref: str
    field: str
    old: str | None
    new: str | None
    actor: str | None = None


@dataclass(frozen=True)
class PollNow:
    """An authentic webhook that only says "something changed": the daemon runs the connector's poll at once."""

    connector: str


#: What `parse_webhook` may return items of.
WebhookEvent = Union[InboundTicket, FieldChange, PollNow]


@dataclass(frozen=True)
class PollResult:
    """New tickets from one poll, and the cursor to store once they are queued (None: keep the old one).

    `seen`: tickets observed in a state worth remembering but not triaging (a request closed, so that a later
    update can tell it was reopened); they are stored as inbound events without a job."""

    tickets: list[InboundTicket]
    cursor: str | None
    seen: list[InboundTicket] = dc_field(default_factory=list)


# -- re-triage -----------------------------------------------------------------------------------------------------

RETRIAGE = "retriage"  #: the `InboundTicket.extra` key that marks a re-triage
RETRIAGE_MODES = ("off", "fields", "all")
#: Why a ticket is triaged again, as the internal note says it ("... after the requester's reply").
RETRIAGE_REASONS = {"reply": "the requester's reply", "description": "the changed description",
                    "summary": "the changed summary", "reopened": "the ticket was reopened"}


@dataclass(frozen=True)
class RetriageSettings:
    """A connector's `retriage` (off | fields | all) and `retriage_fields` settings.

    off: a ticket that gains information is not triaged again. fields: only the fields in `fields` may be
    re-scored and rewritten. all: every field no human has set."""

    mode: str = "off"
    fields: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def allows(self, name: str) -> bool:
        return self.mode == "all" or (self.mode == "fields" and name in self.fields)

    def check(self, taxonomy: Taxonomy, key: str) -> None:
        """Every name in `retriage_fields` must be an enum field of the taxonomy (text fields are not re-triaged)."""
        wrong = [n for n in self.fields if n not in taxonomy or not taxonomy[n].is_enum]
        if wrong:
            raise ConnectorConfigError(f"{key}.retriage_fields: not enum fields of taxonomy {taxonomy.name!r}: "
                                       f"{', '.join(map(repr, wrong))} (expected some of "
                                       f"{', '.join(f.name for f in taxonomy.enum_fields)})")


#: The settings of a connector that does not re-triage (shared: RetriageSettings is frozen).
RETRIAGE_OFF = RetriageSettings()


def retriage_settings(settings: Mapping[str, Any], key: str) -> RetriageSettings:
    """`retriage` and `retriage_fields` from a connector's merged settings, or `ConnectorConfigError` naming the key.

    YAML reads a bare `off` as false, so false is taken for off."""
    mode = settings.get("retriage", "off")
    if mode is False:
        mode = "off"
    if mode not in RETRIAGE_MODES:
        raise ConnectorConfigError(f"{key}.retriage: expected one of {', '.join(RETRIAGE_MODES)}, got {mode!r}")
    names = settings.get("retriage_fields") or []
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConnectorConfigError(f"{key}.retriage_fields: expected a list of taxonomy field names")
    if mode == "fields" and not names:
        raise ConnectorConfigError(f"{key}.retriage_fields: retriage is 'fields', so name the fields to re-triage")
    return RetriageSettings(mode, tuple(n.strip() for n in names))


@dataclass(frozen=True)
class RetriageInfo:
    """What `InboundTicket.extra["retriage"]` says of a re-triage: why, and what the connector has read so far.

    `reasons`: keys of RETRIAGE_REASONS. `reply`: the requester's new reply, when the event or the read-back carried
    one ("" when read back empty). `thread_id`: the Zoho thread the reply is in, read back by the worker. `vendor`:
    every mapped field's value on the ticket as the vendor has it (label, or raw vendor value when unmapped), set by
    `read_for_retriage`. The extra is JSON in the durable queue: `from_extra` reads what `to_extra` writes (and what
    earlier releases wrote); a key left None is not written."""

    reasons: tuple[str, ...] = ()
    thread_id: str | None = None
    reply: str | None = None
    vendor: Mapping[str, Any] | None = None

    @classmethod
    def from_extra(cls, extra: Any) -> RetriageInfo | None:
        """The re-triage of an `extra` mapping, or None when it holds none (a ticket triaged for the first time)."""
        info = extra.get(RETRIAGE) if isinstance(extra, Mapping) else None
        if not isinstance(info, dict):
            return None
        reasons, reply, vendor = info.get("reasons"), info.get("reply"), info.get("vendor")
        return cls(reasons=tuple(str(r) for r in reasons) if isinstance(reasons, (list, tuple)) else (),
                   thread_id=str(info["thread_id"]) if info.get("thread_id") else None,
                   reply=reply if isinstance(reply, str) else None,
                   vendor=dict(vendor) if isinstance(vendor, dict) else None)

    def to_extra(self) -> dict[str, Any]:
        """The JSON object stored as `extra["retriage"]`: reasons, then thread_id, reply and vendor where set."""
        out: dict[str, Any] = {"reasons": list(self.reasons)}
        if self.thread_id is not None:
            out["thread_id"] = self.thread_id
        if self.reply is not None:
            out["reply"] = self.reply
        if self.vendor is not None:
            out["vendor"] = dict(self.vendor)
        return out


def retriage_ticket(ticket: InboundTicket, reasons: Iterable[str], *, reply: str | None = None,
                    thread_id: str | None = None, vendor: Mapping[str, str] | None = None) -> InboundTicket:
    """`ticket` marked as a re-triage for `reasons` (keys of RETRIAGE_REASONS), with the new reply's text if any.

    The connector's `RetriageReader.read_for_retriage` (or `TicketReader.read_ticket`) reads, before triage, the
    ticket's text (subject and description) and `vendor`: the label (or raw vendor value when unmapped) of every
    mapped field on the ticket. The worker then adds the requester's replies: those of the ticket's earlier
    re-triages, and this one."""
    info = RetriageInfo(reasons=tuple(r for r in dict.fromkeys(reasons) if r in RETRIAGE_REASONS),
                        thread_id=thread_id, reply=clean_text(reply).strip() if reply else None,
                        vendor=vendor)
    return dataclasses.replace(ticket, extra={**ticket.extra, RETRIAGE: info.to_extra()})


def retriage_info(ticket: InboundTicket) -> RetriageInfo | None:
    """The re-triage data of a ticket, or None for a ticket triaged for the first time."""
    return RetriageInfo.from_extra(ticket.extra)


def with_reply(text: str, reply: str | None, limit: int) -> str:
    """A ticket's text (subject and description) with a reply after it, cut to `limit` characters."""
    return "\n\n".join(p for p in (text.strip(), (reply or "").strip()) if p)[:limit]


def with_replies(text: str, replies: Iterable[str], limit: int) -> str:
    """`text` with each reply it does not hold yet after it, oldest first, cut to `limit` characters."""
    for reply in replies:
        if reply and reply.strip() and reply.strip() not in text:
            text = with_reply(text, reply, limit)
    return text[:limit]


@runtime_checkable
class Connector(Protocol):
    """One ITSM. Implementations must be safe to call from several worker threads.

    A new ITSM is a package with a factory `(settings, env) -> Connector` registered under the
    `ticket_triage.connectors` entry-point group (`[options.entry_points] ticket_triage.connectors = acme =
    acme_triage:from_config`), enabled by `connectors.enabled: [acme]`, its settings in `connectors.settings.acme`::

        class AcmeConnector:
            name = "acme"

            def parse_webhook(self, body, headers, query):
                verify_signature(body, headers)            # raise WebhookRejected(401, ...) first
                data = json_body(body)
                return [InboundTicket(connector=self.name, ref=data["id"], event_key=data["event_id"],
                                      text=data["subject"] + ". " + data["body"])]

            def write_back(self, ticket, plan, result):
                if plan.shadow:
                    return WritebackOutcome("shadow", None)
                status = self.api.update(ticket.ref, fields=plan.apply, comment=plan.note)
                return WritebackOutcome("applied", status)
    """

    #: The connector's name in config, webhook URLs (/webhooks/<name>) and the store's rows.
    name: str

    def parse_webhook(self, body: bytes, headers: Mapping[str, str], query: Mapping[str, str]) -> list[WebhookEvent]:
        """Verify authenticity first (constant-time), then parse; raise `WebhookRejected`.

        May return several tickets (batched events) or none (an event that is not a new ticket), and
        `FieldChange`/`PollNow` items where the connector supports them. Must answer fast: vendors time out.

        :param body: the raw request body, as signed (parse it only after the signature checks out).
        :param headers: the request headers (signatures, content type, delivery ids).
        :param query: the URL's query parameters (some vendors put a shared token there).
        :returns: the events in the delivery; each ticket is checked (`checked_event`) before it is acknowledged."""
        ...

    def write_back(self, ticket: InboundTicket, plan: WritebackPlan, result: TriageResult) -> WritebackOutcome:
        """Write the plan to the ticket; raise `WritebackError` (retryable for 429, 5xx, connection errors).

        :param ticket: the ticket as queued (or as read back by a `TicketReader`), with the vendor ids in `extra`.
        :param plan: what the policy decided: fields to `apply`, ones only to `suggest`, the note, `shadow`.
        :param result: the model's triage (fields, confidences, model version) the plan was made from.
        :returns: applied, shadow or skipped, with the vendor's HTTP status where a call was made."""
        ...


@runtime_checkable
class TaxonomyChecked(Protocol):
    """Optional: a connector with a field map checks it against the taxonomy when the daemon starts."""

    def check_taxonomy(self, taxonomy: Taxonomy) -> None:
        """Raise `ConnectorConfigError` naming every taxonomy label the field map does not map."""
        ...


@runtime_checkable
class TicketReader(Protocol):
    """Optional: the worker reads the ticket from the vendor before triaging it, because the webhook that queued
    it is not proof of its content (Zoho Desk signs the delivery, not the body) or carries only ids."""

    def read_ticket(self, ticket: InboundTicket) -> InboundTicket:
        """The ticket as the vendor has it now; raise `WritebackError` (404: permanent) like a write-back."""
        ...


@runtime_checkable
class RetriageReader(Protocol):
    """Optional: the worker reads a re-triaged ticket from the vendor before triaging it again, so that the text
    is whole (a comment webhook carries no description) and the fields' values are those on the ticket now."""

    retriage: RetriageSettings

    def read_for_retriage(self, ticket: InboundTicket) -> InboundTicket:
        """The ticket now: its text (subject and description; the worker adds the replies), the new reply in
        `extra['retriage']['reply']` when it is read here, and `extra['retriage']['vendor']` (every mapped field's
        label on the ticket, the raw value when unmapped); `WritebackError` like a read."""
        ...


@runtime_checkable
class Poller(Protocol):
    """Optional: a connector that fetches new tickets itself (ManageEngine ServiceDesk Plus)."""

    poll_interval: float

    def poll(self, cursor: str | None) -> PollResult:
        """Tickets created after `cursor` (None: the connector's configured starting point), oldest first.

        A poller with a `retriage` setting that is on is called `poll(cursor, last_seen=...)` (connectors.polling)
        and may also return re-triage tickets, and tickets to remember in `PollResult.seen`."""
        ...


def json_body(body: bytes, max_bytes: int | None = None) -> Any:
    """A webhook body decoded as UTF-8 JSON, or `WebhookRejected` (413 too large, 400 with a one-line reason)."""
    if max_bytes is not None and len(body) > max_bytes:
        raise WebhookRejected(413, f"body larger than {max_bytes} bytes")
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise WebhookRejected(400, f"body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise WebhookRejected(400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise WebhookRejected(400, "malformed JSON: nested too deeply") from None


def checked_ticket(ticket: InboundTicket, text_required: bool = True) -> InboundTicket:
    """The ticket with its text cleaned (triage_core.text), or `WebhookRejected(400)` naming the field.

    Run on every ticket a webhook yields, before it is acknowledged: what is wrong with it now would otherwise
    be a dead job later. `text_required=False` for connectors whose webhook text is only a hint (the worker
    reads the ticket back and checks the text it gets then)."""
    try:
        for name, value in (("id", ticket.ref), ("event key", ticket.event_key)):
            identifier(value, name)
        check_strings(ticket.extra, "extra")
        check_strings(ticket.callback_url, "callback_url")
        if text_required:
            text = ticket_text(ticket.text)
        else:
            text = clean_text(ticket.text) if isinstance(ticket.text, str) else ""
    except TextProblem as exc:
        raise WebhookRejected(400, str(exc)) from None
    current = {_clean(k): _clean(v) for k, v in ticket.current.items()}
    return dataclasses.replace(ticket, text=text, current=current, project=_clean(ticket.project),
                               ticket_type=_clean(ticket.ticket_type))


def checked_event(event: Any, text_required: bool = True) -> Any:
    """`checked_ticket` for a ticket; any other event with a string that is not valid Unicode is a 400 (its ids
    are looked up in the database, which cannot store a lone surrogate)."""
    if isinstance(event, InboundTicket):
        return checked_ticket(event, text_required)
    if dataclasses.is_dataclass(event):
        try:
            check_strings(dataclasses.asdict(event), type(event).__name__)
        except TextProblem as exc:
            raise WebhookRejected(400, str(exc)) from None
    return event


def _clean(value: Any) -> Any:
    return clean_text(value) if isinstance(value, str) else value


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by case-insensitive name, whether `headers` is a plain dict or a framework's header map."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.casefold()
    for key, value in headers.items():
        if key.casefold() == wanted:
            return value
    return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP date); None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:  # HTTP dates are GMT; a zone-less one is not one
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def load_connectors(config: Any, env: Mapping[str, str], taxonomy: Taxonomy | None = None) -> dict[str, Connector]:
    """Instantiate every enabled connector (`connectors.enabled`) from its entry point, with its settings.

    `config` is a `Config` or a mapping with a `connectors` section. Raises `ConnectorConfigError` naming the key
    when a connector is not installed, its settings are not a mapping, its factory refuses them, or (given the
    taxonomy) its field map leaves a label unmapped: a start-up error, not a surprise at the first write-back.
    """
    section = config["connectors"]
    enabled = section.get("enabled") or []
    all_settings = section.get("settings") or {}
    if not isinstance(enabled, (list, tuple)) or not all(isinstance(n, str) and n for n in enabled):
        raise ConnectorConfigError(f"connectors.enabled: expected a list of connector names, got {enabled!r}")
    if not isinstance(all_settings, Mapping):
        raise ConnectorConfigError("connectors.settings: expected a mapping of connector name to settings")
    available = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    out: dict[str, Connector] = {}
    for name in enabled:
        if name in out:
            raise ConnectorConfigError(f"connectors.enabled: {name!r} is listed twice")
        if name not in available:
            known = ", ".join(sorted(available)) or "none"
            raise ConnectorConfigError(f"connectors.enabled: no connector named {name!r} is installed "
                                       f"(entry-point group {ENTRY_POINT_GROUP}; installed: {known})")
        settings = all_settings.get(name) or {}
        if not isinstance(settings, Mapping):
            raise ConnectorConfigError(f"connectors.settings.{name}: expected a mapping")
        try:
            factory = available[name].load()
        except Exception as exc:  # a broken plug-in must name itself, not crash start-up with a bare traceback
            raise ConnectorConfigError(f"connectors.enabled: connector {name!r} cannot be loaded "
                                       f"({available[name].value}): {type(exc).__name__}: {exc}") from exc
        try:
            connector = factory(settings, env)
        except ConnectorConfigError:
            raise
        except (ConfigError, ValueError, TypeError, KeyError) as exc:
            raise ConnectorConfigError(f"connectors.settings.{name}: {exc}") from exc
        if not isinstance(connector, Connector):
            raise ConnectorConfigError(f"connectors.enabled: {available[name].value} did not return a Connector")
        if connector.name != name:
            raise ConnectorConfigError(f"connectors.enabled: entry point {name!r} built a connector named "
                                       f"{connector.name!r}; tickets would not find their way back")
        out[name] = connector
    if taxonomy is not None:
        check_field_maps(out, taxonomy)
    return out


def check_field_maps(connectors: Mapping[str, Connector], taxonomy: Taxonomy) -> None:
    """Every connector with a field map checks it against the taxonomy: an unmapped label stops start-up."""
    for connector in connectors.values():
        if isinstance(connector, TaxonomyChecked):
            connector.check_taxonomy(taxonomy)
