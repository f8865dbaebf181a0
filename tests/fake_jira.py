"""A local fake of the Jira Cloud REST API v3 parts the connector uses, strict about the documented shapes.

Get issue (GET /rest/api/3/issue/{key}: the `fields` listed, comma-separated), edit issue (PUT
/rest/api/3/issue/{key}: {"fields", "update"}, 204 No Content; a field in both is a 400; the `notifyUsers` query
parameter), add comment (POST .../comment: an ADF `body`, optional `properties` and
`visibility`; 201 with the comment), get current user (GET /rest/api/3/myself, with `timeZone`), enhanced search
(POST /rest/api/3/search/jql: an explicit `fields` list, `maxResults`, `nextPageToken`; answers `issues`,
`nextPageToken` and `isLast`; without `fields` only ids come back, as on Jira; the JQL is evaluated), and the
removed /rest/api/3/search (410). Errors use Jira's {"errorMessages": [...], "errors": {...}} shape.

Like a real site it has a field configuration: the options of each select list (and the children of each option
of a cascading select), the priorities, the project's components. A value outside it is answered 400 as Jira
answers it, and recorded in `problems`: the connector (or its field map) would have failed on a real site.
"""
from __future__ import annotations

import base64
import itertools
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Mapping
from zoneinfo import ZoneInfo

from fake_vendor import FakeVendor, Problem, Reply, Request

_ISSUE = re.compile(r"^/rest/api/3/issue/([A-Z][A-Z0-9_]*-\d+)$")
_COMMENT = re.compile(r"^/rest/api/3/issue/([A-Z][A-Z0-9_]*-\d+)/comment$")
_EDIT_KEYS = {"fields", "update", "historyMetadata", "properties", "transition"}
# Edit issue: the documented query parameters (developer.atlassian.com, REST v3, "Edit issue")
_EDIT_QUERY = {"notifyUsers", "overrideScreenSecurity", "overrideEditableFlag", "returnIssue", "expand"}
_COMMENT_KEYS = {"body", "properties", "visibility"}
# Get issue: the documented query parameters (developer.atlassian.com, REST v3, "Get issue")
_GET_QUERY = {"fields", "fieldsByKeys", "expand", "properties", "updateHistory", "failFast"}
_SEARCH_KEYS = {"jql", "fields", "maxResults", "nextPageToken", "expand", "properties", "fieldsByKeys",
                "failFast", "reconcileIssues"}
_MISSING = "Issue does not exist or you do not have permission to see it."
# Edit issue, notifyUsers: "To disable the notification, administer Jira or administer project permissions are
# required"; Jira Cloud answers a user without them with this 403.
NOTIFY_FORBIDDEN = "To discard the user notification either admin or project admin permissions are required."
# Jira's default priority scheme ("Priorities" admin page): id, name
DEFAULT_PRIORITIES = (("1", "Highest"), ("2", "High"), ("3", "Medium"), ("4", "Low"), ("5", "Lowest"))


@dataclass
class Select:
    """A select list's options in the issue's field context; with `children`, a cascading select whose second
    level depends on the first (Jira admin: "Configure cascading select options")."""

    options: list[str] = field(default_factory=list)
    children: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def cascade(cls, children: Mapping[str, list[str]]) -> "Select":
        return cls(list(children), {k: list(v) for k, v in children.items()})


def _error(status: int, *messages: str, **errors: str) -> Reply:
    return Reply(status, {"errorMessages": list(messages), "errors": errors})


class FakeJira(FakeVendor):
    """Issues live in `issues` (key -> {"id", "key", "fields"}); `closed` is what search/jql searches.

    `fields`: custom field id -> `Select` (strict); `custom_fields`: ids whose values are not checked (older tests
    that only read). `time_zone`: the API user's profile zone (None: hidden, JQL then uses `site_zone`).
    `project_admin`: whether the API user may send notifyUsers=false. `notified`: keys whose watchers got mail."""

    def __init__(self, *, email: str = "bot@example.com", token: str = "api-token", bearer: str | None = None,
                 custom_fields: tuple[str, ...] = (), fields: Mapping[str, Select] | None = None,
                 priorities: tuple[tuple[str, str], ...] = DEFAULT_PRIORITIES, components: tuple[str, ...] = (),
                 closed: list[dict] | None = None, time_zone: str | None = "UTC", site_zone: str = "UTC",
                 project_admin: bool = True):
        super().__init__()
        if bearer:
            self.authorization = f"Bearer {bearer}"
        else:
            self.authorization = "Basic " + base64.b64encode(f"{email}:{token}".encode()).decode()
        self.fields: dict[str, Select] = dict(fields or {})
        self.custom_fields = set(custom_fields) | set(self.fields)
        self.priorities = dict(priorities)  # id -> name
        self.components = set(components)
        self.time_zone, self.site_zone, self.project_admin = time_zone, site_zone, project_admin
        self.issues: dict[str, dict] = {}
        self.comments: dict[str, list[dict]] = {}
        self.notified: list[str] = []
        self.closed = list(closed or [])
        self._ids = itertools.count(10000)
        self._pages: dict[str, tuple[str, int]] = {}
        self._option_ids: dict[tuple[str, str | None, str], str] = {}
        for name, select in self.fields.items():
            for option in select.options:
                self.option_id(name, option)
                for child in select.children.get(option, []):
                    self.option_id(name, child, parent=option)

    def option_id(self, name: str, value: str, parent: str | None = None) -> str:
        """The id Jira gives an option (a child option with its parent's value), created on first use."""
        key = (name, parent, value)
        if key not in self._option_ids:
            self._option_ids[key] = str(10100 + len(self._option_ids))
        return self._option_ids[key]

    def _take(self, req: Request):
        req.at = time.monotonic()  # arrival time of every request, scripted or not: tests measure backoff gaps
        return super()._take(req)

    def reset(self) -> None:
        """Forget every request, issue, comment and scripted failure (one server serves a whole module)."""
        with self._lock:
            self.requests.clear()
            self.problems.clear()
            self._script.clear()
        self.issues.clear()
        self.comments.clear()
        self.notified.clear()
        self.closed.clear()
        self._pages.clear()
        self.time_zone, self.site_zone, self.project_admin = "UTC", "UTC", True

    def add_issue(self, key: str, **fields) -> dict:
        issue = {"id": str(next(self._ids)), "key": key, "fields": {"labels": [], "components": [], **fields}}
        self.issues[key] = issue
        return issue

    def route(self, req: Request) -> Reply:
        if req.header("Authorization") != self.authorization:
            self.problems.append(f"{req.method} {req.path}: wrong or missing Authorization")
            return _error(401, "Client must be authenticated to access this resource.")
        if "application/json" not in (req.header("Accept") or ""):
            raise Problem("Accept: application/json is required")
        if req.path in ("/rest/api/3/search", "/rest/api/2/search"):
            return _error(410, "The requested API has been removed. Please migrate to the /rest/api/3/search/jql "
                               "API.")
        if req.method in ("PUT", "POST"):
            if (req.header("Content-Type") or "").split(";")[0].strip() != "application/json":
                raise Problem("Content-Type: application/json is required")
        if req.method == "GET" and (m := _ISSUE.match(req.path)):
            return self._get(m[1], req.query)
        if req.method == "PUT" and (m := _ISSUE.match(req.path)):
            return self._edit(m[1], req.json(), req.query)
        if req.method == "POST" and (m := _COMMENT.match(req.path)):
            return self._comment(m[1], req.json())
        if req.method == "POST" and req.path == "/rest/api/3/search/jql":
            return self._search(req.json())
        if req.method == "GET" and req.path == "/rest/api/3/myself":
            return self._myself()
        raise Problem("no such endpoint")

    def refuse(self, req_path: str, status: int, **errors: str) -> Reply:
        """Jira's own 400 for a value outside the site's configuration, kept in `problems` too."""
        for name, message in errors.items():
            self.problems.append(f"PUT {req_path}: Jira refuses {name}: {message}")
        return _error(status, **errors)

    # -- GET /rest/api/3/myself ------------------------------------------------------------------------------

    def _myself(self) -> Reply:
        """Get current user (REST v3 "Myself"): timeZone is the profile's, absent when the privacy settings hide it."""
        me = {"accountId": "bot-account", "accountType": "atlassian", "displayName": "Triage bot", "active": True,
              "self": f"{self.url}/rest/api/3/user?accountId=bot-account", "locale": "en_US"}
        if self.time_zone:
            me["timeZone"] = self.time_zone
        return Reply(200, me)

    # -- GET /rest/api/3/issue/{key} -------------------------------------------------------------------------

    def _get(self, key: str, query: Mapping[str, list[str]]) -> Reply:
        """Get issue: the issue with the fields named in `fields` (comma-separated; all without it)."""
        if not set(query) <= _GET_QUERY or any(len(v) != 1 for v in query.values()):
            raise Problem(f"get-issue query parameters must be among {sorted(_GET_QUERY)}, once each, got {query!r}")
        issue = self.issues.get(key)
        if issue is None:
            return _error(404, _MISSING)
        wanted = [f for f in query["fields"][0].split(",") if f] if "fields" in query else list(issue["fields"])
        return Reply(200, {"id": issue["id"], "key": key, "self": f"{self.url}/rest/api/3/issue/{issue['id']}",
                           "fields": {f: issue["fields"].get(f) for f in wanted}})

    # -- PUT /rest/api/3/issue/{key} -------------------------------------------------------------------------

    def _edit(self, key: str, body, query: Mapping[str, list[str]]) -> Reply:
        if not set(query) <= _EDIT_QUERY or any(len(v) != 1 for v in query.values()):
            raise Problem(f"edit query parameters must be among {sorted(_EDIT_QUERY)}, once each, got {query!r}")
        notify = query.get("notifyUsers", ["true"])[0]
        if notify not in ("true", "false"):
            raise Problem(f"notifyUsers must be true or false, got {notify!r}")
        if not isinstance(body, dict) or not set(body) <= _EDIT_KEYS:
            raise Problem(f"edit body must be an object with {sorted(_EDIT_KEYS)}, got {body!r}")
        fields, update = body.get("fields", {}), body.get("update", {})
        if not isinstance(fields, dict) or not isinstance(update, dict):
            raise Problem("fields and update must be objects")
        both = set(fields) & set(update)
        if both:
            return _error(400, **{f: "Field cannot be set in both 'fields' and 'update'." for f in both})
        issue = self.issues.get(key)
        if issue is None:
            return _error(404, _MISSING)
        if notify == "false" and not self.project_admin:  # Edit issue: notifyUsers needs Administer Projects
            return _error(403, NOTIFY_FORBIDDEN)
        errors = {}
        for name, value in fields.items():
            problem = self._field_problem(name, value)
            if problem:
                errors[name] = problem
        for name, ops in update.items():
            if name != "labels" or not isinstance(ops, list):
                raise Problem(f"update.{name}: only a list of label operations is expected here")
            for op in ops:
                if not (isinstance(op, dict) and len(op) == 1 and set(op) <= {"add", "remove"}
                        and isinstance(next(iter(op.values())), str)):
                    raise Problem(f"update.labels: expected {{add: <label>}} or {{remove: <label>}}, got {op!r}")
                label = next(iter(op.values()))
                if not label or any(c.isspace() for c in label):
                    errors["labels"] = "The label can't contain spaces."
        if errors:
            return self.refuse(f"/rest/api/3/issue/{key}", 400, **errors)
        issue["fields"].update(fields)
        for op in update.get("labels", []):
            labels = issue["fields"]["labels"]
            if "add" in op and op["add"] not in labels:
                labels.append(op["add"])
            elif "remove" in op and op["remove"] in labels:
                labels.remove(op["remove"])
        if notify == "true":
            self.notified.append(key)  # watchers get "issue updated" mail
        return Reply(204)

    def _field_problem(self, name: str, value) -> str | None:
        """Jira's message for a value the site does not have, None when it has it (shapes are Problems)."""
        if name == "priority":
            _option(value, ("name", "id"), "priority")
            known = self.priorities if "id" in value else set(self.priorities.values())
            # Edit issue with a priority outside the priority scheme: 400 on the priority field
            return None if next(iter(value.values())) in known else "The priority selected is invalid."
        if name == "components":
            if not isinstance(value, list) or not all(isinstance(c, dict) and set(c) in ({"name"}, {"id"})
                                                      for c in value):
                raise Problem(f"components must be a list of {{name}} or {{id}}, got {value!r}")
            # Edit issue: a component must exist in the issue's project (project settings, "Components")
            bad = next((c["name"] for c in value if c.get("name") not in self.components), None)
            return None if bad is None else f"Component name '{bad}' is not valid"
        if name in self.custom_fields:
            _option(value, ("value", "id"), name, child_ok=True)
            return self._option_problem(name, value)
        return f"Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."

    def _option_problem(self, name: str, value: dict) -> str | None:
        """A select option must be one of the field context's options, a cascade child one of its parent's
        children (Jira admin "Configure cascading select options"; Edit issue answers "Option value ... is not
        valid"). Fields given only by name (`custom_fields`) accept any option."""
        select = self.fields.get(name)
        if select is None:
            return None
        by = "id" if "id" in value else "value"
        parent = self._resolve(name, None, select.options, value[by], by)
        if parent is None:
            return f"Option {by} '{value[by]}' is not valid"
        child = value.get("child")
        if child is None:
            return None
        by_child = "id" if "id" in child else "value"
        if self._resolve(name, parent, select.children.get(parent, []), child[by_child], by_child) is None:
            return f"Option {by_child} '{child[by_child]}' is not valid for parent option '{parent}'"
        return None

    def _resolve(self, name: str, parent: str | None, options: list[str], given: str, by: str) -> str | None:
        for option in options:
            if (self.option_id(name, option, parent) if by == "id" else option) == given:
                return option
        return None

    # -- POST /rest/api/3/issue/{key}/comment ----------------------------------------------------------------

    def _comment(self, key: str, body) -> Reply:
        if not isinstance(body, dict) or "body" not in body or not set(body) <= _COMMENT_KEYS:
            raise Problem(f"comment must be an object with body (and {sorted(_COMMENT_KEYS)}), got {body!r}")
        _check_adf(body["body"])
        properties = body.get("properties", [])
        if not isinstance(properties, list) or not all(isinstance(p, dict) and set(p) == {"key", "value"}
                                                       for p in properties):
            raise Problem(f"properties must be a list of {{key, value}}, got {properties!r}")
        visibility = body.get("visibility")
        if visibility is not None and not (isinstance(visibility, dict) and visibility.get("type") in ("role", "group")
                                           and set(visibility) <= {"type", "value", "identifier"}):
            raise Problem(f"visibility must be {{type: role | group, value}}, got {visibility!r}")
        if key not in self.issues:
            return _error(404, _MISSING)
        internal = any(p["key"] == "sd.public.comment" and p["value"] == {"internal": True} for p in properties)
        comment = {"id": str(next(self._ids)), "self": f"{self.url}/rest/api/3/issue/{key}/comment",
                   "author": {"accountId": "bot-account", "displayName": "Triage bot"}, "body": body["body"],
                   "created": "2024-05-01T10:00:00.000+0000", "updated": "2024-05-01T10:00:00.000+0000",
                   "jsdPublic": not internal and visibility is None, "properties": properties}
        if visibility:
            comment["visibility"] = visibility
        self.comments.setdefault(key, []).append(comment)
        return Reply(201, comment)

    # -- POST /rest/api/3/search/jql -------------------------------------------------------------------------

    def _search(self, body) -> Reply:
        if not isinstance(body, dict) or not set(body) <= _SEARCH_KEYS:
            raise Problem(f"search body keys must be among {sorted(_SEARCH_KEYS)}, got {body!r}")
        if not isinstance(body.get("jql"), str) or not body["jql"].strip():
            return _error(400, "The JQL query is required.")
        if "startAt" in body:
            raise Problem("search/jql pages with nextPageToken, not startAt")
        size = body.get("maxResults", 50)
        if not isinstance(size, int) or not 1 <= size <= 5000:
            raise Problem(f"maxResults must be 1..5000, got {size!r}")
        token = body.get("nextPageToken")
        if token is not None and (token not in self._pages or self._pages[token][0] != body["jql"]):
            return _error(400, "The provided next page token is invalid or expired.")
        try:
            found = Jql(body["jql"], ZoneInfo(self.time_zone or self.site_zone)).run(self.closed)
        except JqlError as exc:
            self.problems.append(f"POST /rest/api/3/search/jql: {exc}")
            return _error(400, f"Error in the JQL Query: {exc}")
        start = self._pages[token][1] if token else 0
        page = found[start:start + size]
        wanted = body.get("fields")
        if wanted is not None and not (isinstance(wanted, list) and all(isinstance(f, str) for f in wanted)):
            raise Problem("fields must be a list of field ids")
        issues = []
        for issue in page:
            out = {"id": issue["id"], "key": issue["key"], "self": f"{self.url}/rest/api/3/issue/{issue['id']}"}
            if wanted:  # without a fields list Jira returns ids only
                out["fields"] = {f: issue["fields"][f] for f in wanted if f in issue["fields"]}
            issues.append(out)
        reply = {"issues": issues, "isLast": start + size >= len(found)}
        if not reply["isLast"]:
            next_token = f"tok-{len(self._pages) + 1}"
            self._pages[next_token] = (body["jql"], start + size)
            reply["nextPageToken"] = next_token
        return Reply(200, reply)


class JqlError(Exception):
    """JQL the fake cannot evaluate: the test fails rather than the fake guessing."""


_TOKEN = re.compile(r'\s*(?:(?P<str>"[^"]*"|\'[^\']*\')|(?P<op>>=|<=|!=|=|>|<)|(?P<paren>[()])'
                    r'|(?P<word>[^\s()=<>!"\']+))')
_RELATIVE = re.compile(r"^([+-]?)(\d+)([mhdw])$")  # JQL fields, date fields: "-5d", "-90m" (m is minutes)
_DATE_FORMATS = ("%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M", "%Y-%m-%d", "%Y/%m/%d")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class Jql:
    """The subset of JQL the connector sends: clauses joined by AND (parentheses allowed) on `project` (=, !=) and
    `resolved`/`resolutiondate` (>=, >, <=, <), then `ORDER BY resolved ASC|DESC`. A date literal is read in the
    API user's profile time zone ("JQL fields" reference: Resolved); a relative date counts from now."""

    def __init__(self, text: str, zone: ZoneInfo):
        self.zone = zone
        self.tokens = self._tokenize(text)
        self.pos = 0
        self.where = self._and()
        self.order = self._order()
        if self.pos != len(self.tokens):
            raise JqlError(f"unexpected {self.tokens[self.pos][1]!r}")

    def run(self, issues: list[dict]) -> list[dict]:
        found = [i for i in issues if self.where(i)]
        if self.order:
            _, descending = self.order
            found.sort(key=lambda i: _resolved(i) or datetime.min.replace(tzinfo=timezone.utc), reverse=descending)
        return found

    @staticmethod
    def _tokenize(text: str) -> list[tuple[str, str]]:
        tokens, pos = [], 0
        while pos < len(text.rstrip()):
            m = _TOKEN.match(text, pos)
            if not m:
                raise JqlError(f"cannot read {text[pos:]!r}")
            kind = m.lastgroup
            tokens.append((kind, m[kind]))
            pos = m.end()
        return tokens

    def _peek(self, word: str) -> bool:
        return self.pos < len(self.tokens) and self.tokens[self.pos][1].upper() == word

    def _take(self) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise JqlError("the query ends too early")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def _and(self) -> Callable[[dict], bool]:
        terms = [self._term()]
        while self._peek("AND"):
            self._take()
            terms.append(self._term())
        return lambda issue: all(t(issue) for t in terms)

    def _term(self) -> Callable[[dict], bool]:
        if self._peek("("):
            self._take()
            inner = self._and()
            if self._take()[1] != ")":
                raise JqlError("missing )")
            return inner
        name, op, value = self._take()[1].lower(), self._take(), self._take()
        if op[0] != "op":
            raise JqlError(f"expected an operator after {name}, got {op[1]!r}")
        literal = value[1][1:-1] if value[0] == "str" else value[1]
        if name == "project" and op[1] in ("=", "!="):
            return lambda issue: (issue["key"].split("-")[0] == literal) == (op[1] == "=")
        if name in ("resolved", "resolutiondate") and op[1] in (">=", ">", "<=", "<"):
            when = self._instant(literal)
            compare = {">=": lambda a: a >= when, ">": lambda a: a > when, "<=": lambda a: a <= when,
                       "<": lambda a: a < when}[op[1]]
            return lambda issue: (r := _resolved(issue)) is not None and compare(r)
        raise JqlError(f"the fake does not evaluate {name} {op[1]}")

    def _instant(self, literal: str) -> datetime:
        if m := _RELATIVE.match(literal):
            amount = int(m[2]) * (-1 if m[1] == "-" else 1)
            return datetime.now(timezone.utc) + timedelta(**{_UNITS[m[3]]: amount})
        for fmt in _DATE_FORMATS:
            try:
                return datetime.strptime(literal, fmt).replace(tzinfo=self.zone)
            except ValueError:
                continue
        raise JqlError(f"{literal!r} is not a JQL date")

    def _order(self) -> tuple[str, bool] | None:
        if not self._peek("ORDER"):
            return None
        self._take()
        if self._take()[1].upper() != "BY":
            raise JqlError("expected ORDER BY")
        name = self._take()[1].lower()
        if name not in ("resolved", "resolutiondate"):
            raise JqlError(f"the fake orders only by resolved, not {name}")
        descending = False
        if self._peek("ASC") or self._peek("DESC"):
            descending = self._take()[1].upper() == "DESC"
        return name, descending


def _resolved(issue: dict) -> datetime | None:
    """An issue's resolutiondate as Jira writes it: 2024-05-01T09:30:00.000+0000."""
    value = issue["fields"].get("resolutiondate")
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z") if isinstance(value, str) else None


def _option(value, keys: tuple[str, ...], name: str, child_ok: bool = False) -> None:
    """A select option by exactly one of `keys` ({"value": ...} or {"id": ...}), with an optional cascade child."""
    if not isinstance(value, dict):
        raise Problem(f"{name}: expected an object, got {value!r}")
    plain = {k: v for k, v in value.items() if k != "child" or not child_ok}
    if len(plain) != 1 or next(iter(plain)) not in keys or not isinstance(next(iter(plain.values())), str):
        raise Problem(f"{name}: expected exactly one of {keys} as a string, got {value!r}")
    if "child" in value and child_ok:
        _option(value["child"], keys, f"{name}.child")


def _check_adf(doc) -> None:
    """The ADF shape Jira validates: a doc of version 1 whose nodes have types and whose texts are non-empty."""
    if not (isinstance(doc, dict) and doc.get("type") == "doc" and doc.get("version") == 1
            and isinstance(doc.get("content"), list)):
        raise Problem(f"comment body must be an ADF document {{type: doc, version: 1, content: [...]}}, got {doc!r}")
    stack = list(doc["content"])
    while stack:
        node = stack.pop()
        if not isinstance(node, dict) or not isinstance(node.get("type"), str):
            raise Problem(f"ADF node without a type: {node!r}")
        if node["type"] == "text" and not (isinstance(node.get("text"), str) and node["text"]):
            raise Problem("ADF text nodes must have non-empty text")
        stack.extend(node.get("content") or [])
