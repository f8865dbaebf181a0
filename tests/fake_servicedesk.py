"""A local ManageEngine ServiceDesk Plus (API v3), on-premises or Cloud, holding requests in memory.

It checks what SDP documents and refuses anything else as a `Problem`: the v3 Accept header on every call, the
auth header of the edition (`authtoken` on-premises, `Authorization: Zoho-oauthtoken` on Cloud, with the portal
in the path /app/<portal>/api/v3), PORTALID when the instance has several portals, `input_data` as a query
parameter on GET and as the only field of a form-encoded body on PUT/POST, list_info keys and search criteria
(one {field, condition, value|values} object whose further criteria are `children` carrying `logical_operator`),
{"name"}/{"id"} objects on edit, and the note wrapper and attributes of the edition (`request_note` on Cloud with
notify_technician, `note` on-premises without it). Like a real instance it refuses lookup values it does not have
(a category, subcategory outside its category, priority, group or request type) with status code 4001, a bad
technician key or OAuth token with 4022 and HTTP 401, and its Zoho accounts server (served on the same port,
tests/fake_zoho.Accounts) rations and expires tokens. Answers use SDP's shapes: list answers carry `requests`,
`list_info` (has_more_rows, start_index, row_count) and a `response_status` list, single-entity answers a
`response_status` object, errors {"response_status": {"status_code": 4000, "messages": [...], "status": "failed"}}.
Lists omit `description`, as SDP's list view does. Every request carries `last_updated_time`, moved by each edit and
note (the API's own as well as a human's, `human_edit`), and lists sort and search on it.

Every rule names the page it follows, under manageengine.com/products/service-desk/: sdpop-v3-api/ (on-premises)
and sdpod-v3-api/ (Cloud), getting-started/ and requests/.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from triage_core.taxonomy import load_taxonomy

from fake_vendor import FakeVendor, Problem, Reply, Request
from fake_zoho import Accounts

ACCEPT = "application/vnd.manageengine.sdp.v3+json"
FORM = "application/x-www-form-urlencoded"
OK = {"status_code": 2000, "status": "success"}
_LIST_KEYS = {"row_count", "start_index", "sort_field", "sort_order", "get_total_count", "search_criteria",
              "fields_required", "page"}
_CONDITIONS = {"is": "eq", "=": "eq", "eq": "eq", "greater than": "gt", "gt": "gt", "greater or equal": "gte",
               "gte": "gte", "lesser than": "lt", "lt": "lt", "lesser or equal": "lte", "lte": "lte"}
_CRITERIA_FIELDS = {"created_time", "completed_time", "last_updated_time", "status.name"}
_EDITABLE = {"category", "subcategory", "priority", "group", "request_type", "impact", "urgency", "level", "mode"}
#: Lookups the fake knows the values of; the others (impact, urgency, level, mode) accept any name.
_LOOKUPS = ("category", "subcategory", "priority", "group", "request_type")
#: Note attributes per edition (requests/request_note.html): Cloud (sdpod) lists notify_technician, on-premises
#: (sdpop) lists only these four.
NOTE_FLAGS = {"onprem": {"show_to_requester", "mark_first_response", "add_to_linked_requests"},
              "cloud": {"show_to_requester", "notify_technician", "mark_first_response", "add_to_linked_requests"}}
#: getting-started/common-error-code.html: 4001 (HTTP 400) "Id or Name given in Input does not exist or not in use or
#: user cannot set the value"; 4007 (404) resource not found; 4022 (401) "Invalid API Key".
NO_SUCH_VALUE, NOT_FOUND, INVALID_KEY = 4001, 4007, 4022
TAXONOMY = Path(__file__).resolve().parent.parent / "config" / "taxonomy.yaml"


def sdp_error(status_code: int, message: str, field: str | None = None) -> dict:
    item = {"status_code": status_code, "type": "failed", "message": message, **({"field": field} if field else {})}
    return {"response_status": {"status_code": 4000, "status": "failed", "messages": [item]}}


def taxonomy_lookups(path: Path = TAXONOMY) -> tuple[dict[str, dict[str, str]], dict[str, set[str]]]:
    """An instance set up with the default taxonomy's names: (lookup -> {id: name}, category -> subcategories)."""
    taxonomy = load_taxonomy(path)
    lookups = {field: {str(i): name for i, name in enumerate(taxonomy[label].values, 1)}
               for field, label in (("category", "category"), ("priority", "priority"),
                                    ("group", "assignment_group"), ("request_type", "request_type"))}
    subcategories = {c: set(subs) for c, subs in taxonomy["subcategory"].children.items()}
    return lookups, subcategories


def when(ms: int) -> dict:
    return {"value": str(ms), "display_value": time.strftime("%b %d, %Y %I:%M %p", time.gmtime(ms / 1000))}


class FakeServiceDesk(FakeVendor):
    def __init__(self, edition: str = "onprem", *, api_key: str = "tech-key", portal: str = "itdesk",
                 portal_id: str | None = None, client_id: str = "cid", client_secret: str = "csecret",
                 refresh_token: str = "rtoken"):
        super().__init__()
        assert edition in ("onprem", "cloud")
        self.edition, self.api_key, self.portal, self.portal_id = edition, api_key, portal, portal_id
        self.accounts = Accounts(client_id, client_secret, refresh_token)
        self.lookups, self.subcategories = taxonomy_lookups()
        self.tickets: dict[str, dict] = {}
        self.notes: dict[str, list[dict]] = {}
        self.edits: dict[str, list[dict]] = {}
        self._ids = 100000
        self._data_lock = threading.Lock()

    @property
    def prefix(self) -> str:
        return f"/app/{self.portal}/api/v3" if self.edition == "cloud" else "/api/v3"

    @property
    def tokens(self) -> list[str]:
        """Access tokens the accounts server issued, oldest first."""
        return list(self.accounts.order)

    def set_lookup(self, field: str, names: Iterable[str]) -> None:
        """The instance's values of a lookup (ids 1, 2, ... in order), e.g. its support groups."""
        self.lookups[field] = {str(i): name for i, name in enumerate(names, 1)}

    # -- test helpers ---------------------------------------------------------------------------------------

    def add(self, subject: str, description: str = "", *, created_ms: int | None = None, status: str = "Open",
            completed_ms: int | None = None, **named: str | None) -> str:
        """A request; `named` sets category, subcategory, priority, group, request_type, site by name."""
        with self._data_lock:
            self._ids += 1
            rid = str(self._ids)
            created = int(time.time() * 1000) if created_ms is None else created_ms
            self.tickets[rid] = {
                "id": rid, "display_id": rid, "subject": subject, "description": description,
                "created_time": when(created), "last_updated_time": when(created),
                "status": {"id": "2", "name": status},
                "completed_time": when(completed_ms) if completed_ms is not None else None,
                **{k: None for k in ("category", "subcategory", "priority", "group", "request_type", "site")},
                **{k: ({"name": v} if v else None) for k, v in named.items()},
            }
            return rid

    def delete(self, rid: str) -> None:
        with self._data_lock:
            del self.tickets[rid]

    def human_edit(self, rid: str, *, status: str | None = None, **changes: str | None) -> None:
        """A technician or the requester changes the request in SDP's UI: subject, description, a status, or a
        lookup by name (category, priority, group, ...); last_updated_time moves as SDP moves it."""
        with self._data_lock:
            ticket = self.tickets[rid]
            for name, value in changes.items():
                ticket[name] = value if name in ("subject", "description") else ({"name": value} if value else None)
            if status is not None:
                ticket["status"] = {"id": "2", "name": status}
            self._touch(ticket)

    def _touch(self, ticket: dict) -> None:
        """last_updated_time moves forward on every change, one millisecond at least."""
        ms = max(int(time.time() * 1000), int(ticket["last_updated_time"]["value"]) + 1)
        ticket["last_updated_time"] = when(ms)

    def list_inputs(self) -> list[dict]:
        """The input_data of every list call, decoded."""
        return [json.loads(r.query["input_data"][0]) for r in self.calls("GET", r"/requests$")]

    def form_inputs(self, method: str, path_regex: str) -> list[dict]:
        return [json.loads(r.form()["input_data"][0]) for r in self.calls(method, path_regex)]

    # -- routing --------------------------------------------------------------------------------------------

    def route(self, req: Request) -> Reply:
        if req.path == "/oauth/v2/token":  # sdpod-v3-api/getting-started/oauth-2.0.html: Zoho's accounts server
            return self.accounts.answer(req)
        # sdpod-v3-api/getting-started/data-centers.html (Cloud: /app/<portal>/api/v3), sdpop: /api/v3
        if not req.path.startswith(self.prefix + "/"):
            raise Problem(f"{self.edition} API paths start with {self.prefix}/")
        denied = self._check_common(req)
        if denied is not None:
            return denied
        parts = req.path[len(self.prefix) + 1:].split("/")
        if parts == ["requests"] and req.method == "GET":
            return self._list(req)
        if len(parts) == 2 and parts[0] == "requests" and req.method in ("GET", "PUT"):
            return self._get(req, parts[1]) if req.method == "GET" else self._edit(req, parts[1])
        if len(parts) == 3 and parts[0] == "requests" and parts[2] == "notes" and req.method == "POST":
            return self._add_note(req, parts[1])
        raise Problem("no such endpoint")

    def _check_common(self, req: Request) -> Reply | None:
        if req.header("Accept") != ACCEPT:  # getting-started/api-request.html: the v3 Accept header on every call
            raise Problem(f"Accept must be {ACCEPT}, got {req.header('Accept')!r}")
        if self.portal_id is not None and req.header("PORTALID") != self.portal_id:
            # sdpop-v3-api/getting-started/api-request.html: PORTALID picks the portal of a multi-portal instance
            raise Problem(f"PORTALID header must be {self.portal_id}, got {req.header('PORTALID')!r}")
        if self.edition == "onprem":  # sdpop-v3-api/getting-started/authentication.html: the authtoken header
            if req.header("Authorization"):
                raise Problem("on-premises authenticates with the authtoken header, not Authorization")
            if req.header("authtoken") != self.api_key:  # common-error-code.html: 4022, HTTP 401
                return Reply(401, sdp_error(INVALID_KEY, "Invalid API key received"))
        else:  # sdpod-v3-api/getting-started/oauth-2.0.html: Authorization: Zoho-oauthtoken <access token>
            if req.header("authtoken"):
                raise Problem("Cloud authenticates with Authorization: Zoho-oauthtoken, not authtoken")
            scheme, _, token = (req.header("Authorization") or "").partition(" ")
            if scheme != "Zoho-oauthtoken":
                raise Problem(f"Authorization scheme must be Zoho-oauthtoken, got {scheme!r}")
            if not self.accounts.valid(token):  # an unknown or expired token: common-error-code.html, 4022
                return Reply(401, sdp_error(INVALID_KEY, "Invalid OAuth token"))
        # getting-started/api-request.html: input_data is a query parameter on GET, a form field on POST/PUT
        if req.method == "GET":
            if req.body:
                raise Problem("GET carries input_data as a query parameter, not a body")
        elif (req.header("Content-Type") or "").split(";")[0] != FORM:
            raise Problem(f"{req.method} bodies are {FORM}, got {req.header('Content-Type')!r}")
        elif set(req.form()) != {"input_data"}:
            raise Problem(f"the form holds exactly input_data, got {sorted(req.form())}")
        return None

    @staticmethod
    def _input(req: Request) -> Any:
        raw = req.query.get("input_data") if req.method == "GET" else req.form().get("input_data")
        if not raw:
            raise Problem("input_data is missing")
        try:
            return json.loads(raw[0])
        except ValueError as exc:
            raise Problem(f"input_data is not JSON: {exc}") from None

    # -- endpoints ------------------------------------------------------------------------------------------

    def _list(self, req: Request) -> Reply:
        """requests/request.html#get-list-request, paged by getting-started/list-info.html."""
        data = self._input(req)
        if not isinstance(data, dict) or set(data) != {"list_info"} or not isinstance(data["list_info"], dict):
            raise Problem('input_data must be {"list_info": {...}}')
        info = data["list_info"]
        if set(info) - _LIST_KEYS:
            raise Problem(f"unknown list_info keys {sorted(set(info) - _LIST_KEYS)}")
        rows, start = info.get("row_count", 10), info.get("start_index", 1)
        if not isinstance(rows, int) or not 1 <= rows <= 100 or not isinstance(start, int) or start < 1:
            raise Problem("row_count must be 1..100 and start_index a 1-based integer")
        if info.get("sort_order", "asc") not in ("asc", "desc"):
            raise Problem("sort_order is asc or desc")
        sort_field = info.get("sort_field", "created_time")
        if sort_field not in ("created_time", "completed_time", "last_updated_time", "id"):
            raise Problem(f"unexpected sort_field {sort_field!r}")
        if "get_total_count" in info and not isinstance(info["get_total_count"], bool):
            raise Problem("get_total_count is a boolean")
        criteria = info.get("search_criteria")
        if criteria is not None and not isinstance(criteria, dict):
            # getting-started/search-criteria.html: one criterion object; further ones go in its "children"
            raise Problem("search_criteria is one object, with further criteria in its children")
        with self._data_lock:
            matching = [t for t in self.tickets.values() if criteria is None or _matches(t, criteria)]
        def key(t: dict) -> tuple[int, int]:
            return int(t["id"] if sort_field == "id" else (t[sort_field] or {"value": 0})["value"]), int(t["id"])

        matching.sort(key=key, reverse=info.get("sort_order") == "desc")
        page = matching[start - 1:start - 1 + rows]
        list_info = {"has_more_rows": start - 1 + rows < len(matching), "start_index": start, "row_count": len(page),
                     "sort_field": sort_field, "sort_order": info.get("sort_order", "asc")}
        if info.get("get_total_count"):
            list_info["total_count"] = len(matching)
        view = [{k: v for k, v in t.items() if k != "description"} | {"short_description": t["description"][:100]}
                for t in page]
        return Reply(200, {"requests": view, "list_info": list_info, "response_status": [OK]})

    def _get(self, req: Request, rid: str) -> Reply:
        """requests/request.html#get-request."""
        if req.query:
            raise Problem("GET /requests/{id} takes no parameters")
        with self._data_lock:
            ticket = self.tickets.get(rid)
            if ticket is None:
                return Reply(404, sdp_error(NOT_FOUND, f"Request {rid} does not exist"))
            return Reply(200, {"request": dict(ticket), "response_status": OK})

    def _edit(self, req: Request, rid: str) -> Reply:
        """requests/request.html#edit-request: lookups as {"name"} or {"id"}, UDFs under udf_fields."""
        data = self._input(req)
        if not isinstance(data, dict) or set(data) != {"request"} or not isinstance(data["request"], dict):
            raise Problem('input_data must be {"request": {...}}')
        fields = data["request"]
        for name, value in fields.items():
            if name == "udf_fields":
                if not isinstance(value, dict) or not all(k.startswith("udf_") for k in value):
                    raise Problem("udf_fields is an object of udf_* keys")
            elif name not in _EDITABLE:
                raise Problem(f"{name!r} is not an editable lookup field")
            elif not isinstance(value, dict) or len(value) != 1 or not (
                    isinstance(value.get("name"), str) or isinstance(value.get("id"), str)):
                raise Problem(f'{name} must be {{"name": "..."}} or {{"id": "..."}}, got {value!r}')
        with self._data_lock:
            ticket = self.tickets.get(rid)
            if ticket is None:
                return Reply(404, sdp_error(NOT_FOUND, f"Request {rid} does not exist"))
            refused = self._unknown_value(ticket, fields)
            if refused is not None:
                return Reply(400, refused)
            self.edits.setdefault(rid, []).append(fields)
            ticket.update({k: self._resolved(k, v) for k, v in fields.items() if k != "udf_fields"})
            self._touch(ticket)
            return Reply(200, {"request": dict(ticket), "response_status": OK})

    def _unknown_value(self, ticket: dict, fields: dict) -> dict | None:
        """The 4001 answer for the first lookup value the instance does not have (common-error-code.html)."""
        for name in _LOOKUPS:
            if name not in fields:
                continue
            value = fields[name]
            if name == "subcategory":  # requests/request.html: a subcategory of the request's category
                category = _name_of(fields.get("category") or ticket.get("category"), self.lookups["category"])
                known = self.subcategories.get(category or "", set())
                ok = value.get("name") in known
            else:
                ok = value.get("id") in self.lookups[name] if "id" in value else \
                    value.get("name") in self.lookups[name].values()
            if not ok:
                return sdp_error(NO_SUCH_VALUE, f"Id or Name given in Input does not exist or not in use or user "
                                                f"cannot set the value: {value}", field=name)
        return None

    def _resolved(self, name: str, value: dict) -> dict:
        """A lookup as SDP stores it: an id sent alone gets its name."""
        if name in self.lookups and "id" in value:
            return {"id": value["id"], "name": self.lookups[name][value["id"]]}
        return value

    def _add_note(self, req: Request, rid: str) -> Reply:
        """requests/request_note.html#add-request-note of the edition (sdpod: request_note, sdpop: note)."""
        data = self._input(req)
        wrapper = "request_note" if self.edition == "cloud" else "note"
        if not isinstance(data, dict) or set(data) != {wrapper} or not isinstance(data[wrapper], dict):
            raise Problem(f'{self.edition} notes are {{"{wrapper}": {{...}}}}, got keys {sorted(data or {})}')
        note = data[wrapper]
        if not isinstance(note.get("description"), str) or not note["description"].strip():
            raise Problem("a note needs a description")  # request_note.html: "Mandatory Fields :- description"
        flags = NOTE_FLAGS[self.edition]
        if set(note) - flags - {"description"}:
            raise Problem(f"{self.edition} note attributes are description and {sorted(flags)}, got "
                          f"{sorted(set(note) - flags - {'description'})}")
        for flag in flags:
            if flag in note and not isinstance(note[flag], bool):
                raise Problem(f"{flag} is a boolean")
        with self._data_lock:
            if rid not in self.tickets:
                return Reply(404, sdp_error(NOT_FOUND, f"Request {rid} does not exist"))
            notes = self.notes.setdefault(rid, [])
            notes.append(note)
            self._touch(self.tickets[rid])
            return Reply(201, {wrapper: {"id": str(len(notes)), **note}, "response_status": OK})


def _name_of(value: Any, lookup: dict[str, str]) -> str | None:
    if not isinstance(value, dict):
        return None
    return value.get("name") or lookup.get(str(value.get("id")))


def _matches(ticket: dict, criterion: Any) -> bool:
    """getting-started/search-criteria.html: a criterion, then each child joined by its logical_operator, in order."""
    if not isinstance(criterion, dict):
        raise Problem("each search criterion is an object")
    allowed = {"field", "condition", "value", "values", "logical_operator", "children"}
    if set(criterion) - allowed:
        raise Problem(f"unknown search criterion keys {sorted(set(criterion) - allowed)}")
    children = criterion.get("children", [])
    if not isinstance(children, list):
        raise Problem("children is a list of criteria")
    result = _match(ticket, criterion)
    for child in children:
        operator = str(child.get("logical_operator") if isinstance(child, dict) else None).upper()
        if operator not in ("AND", "OR"):
            raise Problem("each child criterion carries logical_operator AND or OR")
        matched = _matches(ticket, child)
        result = (result and matched) if operator == "AND" else (result or matched)
    return result


def _match(ticket: dict, criterion: dict) -> bool:
    """One {field, condition, value|values} comparison (getting-started/search-criteria.html)."""
    field, condition = criterion.get("field"), _CONDITIONS.get(str(criterion.get("condition")).lower())
    if field not in _CRITERIA_FIELDS or condition is None:
        raise Problem(f"the fake supports fields {sorted(_CRITERIA_FIELDS)} and comparisons, got {criterion!r}")
    if ("value" in criterion) == ("values" in criterion):
        raise Problem("a criterion has either value (one) or values (a list)")
    if "values" in criterion and (not isinstance(criterion["values"], list) or condition != "eq"):
        raise Problem("values is a list, for is/is not")
    if field == "status.name":
        wanted = criterion.get("values") or [criterion.get("value")]
        return ticket["status"]["name"].casefold() in {str(w).casefold() for w in wanted}
    raw = criterion.get("value")
    if not isinstance(raw, str) or not raw.isdigit():
        raise Problem(f"{field} compares with epoch milliseconds as a string, got {raw!r}")
    if ticket[field] is None:
        return False
    have, want = int(ticket[field]["value"]), int(raw)
    return {"eq": have == want, "gt": have > want, "gte": have >= want, "lt": have < want,
            "lte": have <= want}[condition]
