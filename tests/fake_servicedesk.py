"""A local ManageEngine ServiceDesk Plus (API v3), on-premises or Cloud, holding requests in memory.

It checks what SDP documents and refuses anything else as a `Problem`: the v3 Accept header on every call, the
auth header of the edition (`authtoken` on-premises, `Authorization: Zoho-oauthtoken` on Cloud, with the portal
in the path /app/<portal>/api/v3), PORTALID when the instance has several portals, `input_data` as a query
parameter on GET and as the only field of a form-encoded body on PUT/POST, list_info keys and search criteria
({field, condition, value|values, logical_operator}), {"name"}/{"id"} objects on edit, and the note wrapper of the
edition (`request_note` on Cloud, `note` on-premises). Answers use SDP's shapes: list answers carry `requests`,
`list_info` (has_more_rows, start_index, row_count) and a `response_status` list, single-entity answers a
`response_status` object, errors {"response_status": {"status_code": 4000, "messages": [...], "status": "failed"}}.
Lists omit `description`, as SDP's list view does. The Zoho accounts token endpoint is served on the same port.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any

from fake_vendor import FakeVendor, Problem, Reply, Request

ACCEPT = "application/vnd.manageengine.sdp.v3+json"
FORM = "application/x-www-form-urlencoded"
OK = {"status_code": 2000, "status": "success"}
_LIST_KEYS = {"row_count", "start_index", "sort_field", "sort_order", "get_total_count", "search_criteria",
              "fields_required", "page"}
_CONDITIONS = {"is": "eq", "=": "eq", "eq": "eq", "greater than": "gt", "gt": "gt", "greater or equal": "gte",
               "gte": "gte", "lesser than": "lt", "lt": "lt", "lesser or equal": "lte", "lte": "lte"}
_CRITERIA_FIELDS = {"created_time", "completed_time", "status.name"}
_EDITABLE = {"category", "subcategory", "priority", "group", "request_type", "impact", "urgency", "level", "mode"}


def sdp_error(status_code: int, message: str) -> dict:
    return {"response_status": {"status_code": 4000, "status": "failed",
                                "messages": [{"status_code": status_code, "type": "failed", "message": message}]}}


def when(ms: int) -> dict:
    return {"value": str(ms), "display_value": time.strftime("%b %d, %Y %I:%M %p", time.gmtime(ms / 1000))}


class FakeServiceDesk(FakeVendor):
    def __init__(self, edition: str = "onprem", *, api_key: str = "tech-key", portal: str = "itdesk",
                 portal_id: str | None = None, client_id: str = "cid", client_secret: str = "csecret",
                 refresh_token: str = "rtoken"):
        super().__init__()
        assert edition in ("onprem", "cloud")
        self.edition, self.api_key, self.portal, self.portal_id = edition, api_key, portal, portal_id
        self.oauth = {"client_id": client_id, "client_secret": client_secret, "refresh_token": refresh_token,
                      "grant_type": "refresh_token"}
        self.tokens: list[str] = []  # issued access tokens; only the newest is valid
        self.tickets: dict[str, dict] = {}
        self.notes: dict[str, list[dict]] = {}
        self.edits: dict[str, list[dict]] = {}
        self._ids = 100000
        self._data_lock = threading.Lock()

    @property
    def prefix(self) -> str:
        return f"/app/{self.portal}/api/v3" if self.edition == "cloud" else "/api/v3"

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
                "created_time": when(created), "status": {"id": "2", "name": status},
                "completed_time": when(completed_ms) if completed_ms is not None else None,
                **{k: None for k in ("category", "subcategory", "priority", "group", "request_type", "site")},
                **{k: ({"name": v} if v else None) for k, v in named.items()},
            }
            return rid

    def delete(self, rid: str) -> None:
        with self._data_lock:
            del self.tickets[rid]

    def list_inputs(self) -> list[dict]:
        """The input_data of every list call, decoded."""
        return [json.loads(r.query["input_data"][0]) for r in self.calls("GET", r"/requests$")]

    def form_inputs(self, method: str, path_regex: str) -> list[dict]:
        return [json.loads(r.form()["input_data"][0]) for r in self.calls(method, path_regex)]

    # -- routing --------------------------------------------------------------------------------------------

    def route(self, req: Request) -> Reply:
        if req.path == "/oauth/v2/token":
            return self._token(req)
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
        if req.header("Accept") != ACCEPT:
            raise Problem(f"Accept must be {ACCEPT}, got {req.header('Accept')!r}")
        if self.portal_id is not None and req.header("PORTALID") != self.portal_id:
            raise Problem(f"PORTALID header must be {self.portal_id}, got {req.header('PORTALID')!r}")
        if self.edition == "onprem":
            if req.header("Authorization"):
                raise Problem("on-premises authenticates with the authtoken header, not Authorization")
            if req.header("authtoken") != self.api_key:
                return Reply(401, sdp_error(4001, "Invalid authtoken"))
        else:
            if req.header("authtoken"):
                raise Problem("Cloud authenticates with Authorization: Zoho-oauthtoken, not authtoken")
            scheme, _, token = (req.header("Authorization") or "").partition(" ")
            if scheme != "Zoho-oauthtoken":
                raise Problem(f"Authorization scheme must be Zoho-oauthtoken, got {scheme!r}")
            if not self.tokens or token != self.tokens[-1]:
                return Reply(401, sdp_error(4001, "Invalid OAuth token"))
        if req.method == "GET":
            if req.body:
                raise Problem("GET carries input_data as a query parameter, not a body")
        elif (req.header("Content-Type") or "").split(";")[0] != FORM:
            raise Problem(f"{req.method} bodies are {FORM}, got {req.header('Content-Type')!r}")
        elif set(req.form()) != {"input_data"}:
            raise Problem(f"the form holds exactly input_data, got {sorted(req.form())}")
        return None

    def _token(self, req: Request) -> Reply:
        form = {k: v[0] for k, v in req.form().items()}
        if req.method != "POST" or form != self.oauth:
            return Reply(200, {"error": "invalid_code"})
        with self._data_lock:
            self.tokens.append(f"1000.access{len(self.tokens) + 1}")
            return Reply(200, {"access_token": self.tokens[-1], "expires_in": 3600, "token_type": "Bearer",
                               "api_domain": "https://www.zohoapis.com"})

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
        if sort_field not in ("created_time", "completed_time", "id"):
            raise Problem(f"unexpected sort_field {sort_field!r}")
        if "get_total_count" in info and not isinstance(info["get_total_count"], bool):
            raise Problem("get_total_count is a boolean")
        criteria = info.get("search_criteria", [])
        criteria = [criteria] if isinstance(criteria, dict) else criteria
        if not isinstance(criteria, list):
            raise Problem("search_criteria is an object or a list of objects")
        with self._data_lock:
            matching = [t for t in self.tickets.values() if all(_match(t, c, i) for i, c in enumerate(criteria))]
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
        if req.query:
            raise Problem("GET /requests/{id} takes no parameters")
        with self._data_lock:
            ticket = self.tickets.get(rid)
            if ticket is None:
                return Reply(404, sdp_error(4007, f"Request {rid} does not exist"))
            return Reply(200, {"request": dict(ticket), "response_status": OK})

    def _edit(self, req: Request, rid: str) -> Reply:
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
                return Reply(404, sdp_error(4007, f"Request {rid} does not exist"))
            self.edits.setdefault(rid, []).append(fields)
            ticket.update({k: v for k, v in fields.items() if k != "udf_fields"})
            return Reply(200, {"request": dict(ticket), "response_status": OK})

    def _add_note(self, req: Request, rid: str) -> Reply:
        data = self._input(req)
        wrapper = "request_note" if self.edition == "cloud" else "note"
        if not isinstance(data, dict) or set(data) != {wrapper} or not isinstance(data[wrapper], dict):
            raise Problem(f'{self.edition} notes are {{"{wrapper}": {{...}}}}, got keys {sorted(data or {})}')
        note = data[wrapper]
        if not isinstance(note.get("description"), str) or not note["description"].strip():
            raise Problem("a note needs a description")
        for flag in ("show_to_requester", "notify_technician", "mark_first_response", "add_to_linked_requests"):
            if flag in note and not isinstance(note[flag], bool):
                raise Problem(f"{flag} is a boolean")
        with self._data_lock:
            if rid not in self.tickets:
                return Reply(404, sdp_error(4007, f"Request {rid} does not exist"))
            notes = self.notes.setdefault(rid, [])
            notes.append(note)
            return Reply(201, {wrapper: {"id": str(len(notes)), **note}, "response_status": OK})


def _match(ticket: dict, criterion: Any, index: int) -> bool:
    if not isinstance(criterion, dict):
        raise Problem("each search criterion is an object")
    allowed = {"field", "condition", "value", "values", "logical_operator"}
    if set(criterion) - allowed:
        raise Problem(f"unknown search criterion keys {sorted(set(criterion) - allowed)}")
    field, condition = criterion.get("field"), _CONDITIONS.get(str(criterion.get("condition")).lower())
    if field not in _CRITERIA_FIELDS or condition is None:
        raise Problem(f"the fake supports fields {sorted(_CRITERIA_FIELDS)} and comparisons, got {criterion!r}")
    if ("value" in criterion) == ("values" in criterion):
        raise Problem("a criterion has either value (one) or values (a list)")
    if "values" in criterion and (not isinstance(criterion["values"], list) or condition != "eq"):
        raise Problem("values is a list, for is/is not")
    operator = criterion.get("logical_operator")
    if index > 0 and str(operator).upper() != "AND":
        raise Problem("criteria after the first carry logical_operator (the fake supports AND)")
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
