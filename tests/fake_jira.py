"""A local fake of the Jira Cloud REST API v3 parts the connector uses, strict about the documented shapes.

Edit issue (PUT /rest/api/3/issue/{key}: {"fields", "update"}, 204 No Content; a field in both is a 400),
add comment (POST .../comment: an ADF `body`, optional `properties` and `visibility`; 201 with the comment),
enhanced search (POST /rest/api/3/search/jql: an explicit `fields` list, `maxResults`, `nextPageToken`; answers
`issues`, `nextPageToken` and `isLast`; without `fields` only ids come back, as on Jira), and the removed
/rest/api/3/search (410). Errors use Jira's {"errorMessages": [...], "errors": {...}} shape.
"""
from __future__ import annotations

import base64
import itertools
import re

from fake_vendor import FakeVendor, Problem, Reply, Request

_ISSUE = re.compile(r"^/rest/api/3/issue/([A-Z][A-Z0-9_]*-\d+)$")
_COMMENT = re.compile(r"^/rest/api/3/issue/([A-Z][A-Z0-9_]*-\d+)/comment$")
_EDIT_KEYS = {"fields", "update", "historyMetadata", "properties", "transition"}
_COMMENT_KEYS = {"body", "properties", "visibility"}
_SEARCH_KEYS = {"jql", "fields", "maxResults", "nextPageToken", "expand", "properties", "fieldsByKeys",
                "failFast", "reconcileIssues"}
_MISSING = "Issue does not exist or you do not have permission to see it."


def _error(status: int, *messages: str, **errors: str) -> Reply:
    return Reply(status, {"errorMessages": list(messages), "errors": errors})


class FakeJira(FakeVendor):
    """Issues live in `issues` (key -> {"id", "key", "fields"}); `closed` is what search/jql pages through."""

    def __init__(self, *, email: str = "bot@example.com", token: str = "api-token", bearer: str | None = None,
                 custom_fields: tuple[str, ...] = (), closed: list[dict] | None = None):
        super().__init__()
        if bearer:
            self.authorization = f"Bearer {bearer}"
        else:
            self.authorization = "Basic " + base64.b64encode(f"{email}:{token}".encode()).decode()
        self.custom_fields = set(custom_fields)
        self.issues: dict[str, dict] = {}
        self.comments: dict[str, list[dict]] = {}
        self.closed = list(closed or [])
        self._ids = itertools.count(10000)
        self._pages: dict[str, int] = {}

    def reset(self) -> None:
        """Forget every request, issue, comment and scripted failure (one server serves a whole module)."""
        with self._lock:
            self.requests.clear()
            self.problems.clear()
            self._script.clear()
        self.issues.clear()
        self.comments.clear()
        self.closed.clear()
        self._pages.clear()

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
        if req.method == "PUT" and (m := _ISSUE.match(req.path)):
            return self._edit(m[1], req.json())
        if req.method == "POST" and (m := _COMMENT.match(req.path)):
            return self._comment(m[1], req.json())
        if req.method == "POST" and req.path == "/rest/api/3/search/jql":
            return self._search(req.json())
        raise Problem("no such endpoint")

    # -- PUT /rest/api/3/issue/{key} -------------------------------------------------------------------------

    def _edit(self, key: str, body) -> Reply:
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
        errors = {}
        for name, value in fields.items():
            if name == "priority":
                _option(value, ("name", "id"), "priority")
            elif name == "components":
                if not isinstance(value, list) or not all(isinstance(c, dict) and set(c) in ({"name"}, {"id"})
                                                          for c in value):
                    raise Problem(f"components must be a list of {{name}} or {{id}}, got {value!r}")
            elif name in self.custom_fields:
                _option(value, ("value", "id"), name, child_ok=True)
            else:
                errors[name] = (f"Field '{name}' cannot be set. It is not on the appropriate screen, or unknown.")
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
            return _error(400, **errors)
        issue["fields"].update(fields)
        for op in update.get("labels", []):
            labels = issue["fields"]["labels"]
            if "add" in op and op["add"] not in labels:
                labels.append(op["add"])
            elif "remove" in op and op["remove"] in labels:
                labels.remove(op["remove"])
        return Reply(204)

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
        if token is not None and token not in self._pages:
            return _error(400, "The provided next page token is invalid or expired.")
        start = self._pages[token] if token else 0
        page = self.closed[start:start + size]
        wanted = body.get("fields")
        if wanted is not None and not (isinstance(wanted, list) and all(isinstance(f, str) for f in wanted)):
            raise Problem("fields must be a list of field ids")
        issues = []
        for issue in page:
            out = {"id": issue["id"], "key": issue["key"], "self": f"{self.url}/rest/api/3/issue/{issue['id']}"}
            if wanted:  # without a fields list Jira returns ids only
                out["fields"] = {f: issue["fields"][f] for f in wanted if f in issue["fields"]}
            issues.append(out)
        reply = {"issues": issues, "isLast": start + size >= len(self.closed)}
        if not reply["isLast"]:
            next_token = f"tok-{len(self._pages) + 1}"
            self._pages[next_token] = start + size
            reply["nextPageToken"] = next_token
        return Reply(200, reply)


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
