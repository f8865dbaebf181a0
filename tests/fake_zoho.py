"""A local fake of Zoho Desk: the data centre's JWKS, the accounts server's token endpoint and the Desk API v1.

It answers in the shapes Zoho documents and refuses requests that break them (a missing `orgId` header, an
Authorization that is not `Zoho-oauthtoken <token>`, a PATCH attribute Zoho has no such name for, a comment
without isPublic/contentType, an extra query parameter on search), recording the reason in `problems`. Like a real
portal it refuses values its layout does not have (a priority, classification or category outside the picklist, a
subcategory outside its category, an unknown team or department, a team of another department) with 422
INVALID_DATA, and like the real accounts server it issues at most ten tokens per ten minutes and lets them expire.
It also delivers webhooks the way Zoho does: a JSON array of events with an RS256 JWT in `X-ZDesk-JWT`, counted as
received only on exactly 200 OK.

Every rule names the Zoho page it follows: the Desk API reference (desk.zoho.com/DeskAPIDocument, by section), the
webhook guide (desk.zoho.com/support/WebhookDocument.do) and the accounts server's OAuth pages
(zoho.com/accounts/protocol/oauth/...).
"""
from __future__ import annotations

import itertools
import json
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Mapping

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from fake_vendor import FakeVendor, Problem, Reply, Request

ORG_ID = "60012345678"
WEBHOOK_ID = "7000000123456"
CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN = "1000.CLIENTID", "client-secret-value", "1000.refresh-token-value"
#: Attributes the Update Ticket API takes that the connector may send (DeskAPIDocument#Tickets#Tickets_Updateaticket).
PATCHABLE = {"category", "subCategory", "priority", "classification", "teamId", "departmentId"}
#: Query parameters of Search tickets (DeskAPIDocument#Search#Search_TicketsSearchAPI).
SEARCH_PARAMS = {"from", "limit", "status", "sortBy", "modifiedTimeRange"}
NOT_FOUND = {"errorCode": "RESOURCE_NOT_FOUND", "message": "The requested resource does not exist."}
DEPARTMENT_ID = "4000000007043"
#: A new portal's picklists (Setup > Layouts and Fields): Zoho's default priorities plus "Urgent", and its default
#: classifications. Categories have no default values; tests set them with `set_categories`.
PRIORITIES = ("Low", "Medium", "High", "Urgent")
CLASSIFICATIONS = ("Question", "Problem", "Feature", "Others")


def invalid_data(*fields: str) -> dict:
    """Zoho's 422 answer for values the portal does not have (DeskAPIDocument#Errors: INVALID_DATA, fieldName as a
    JSON Pointer, errorType missing | duplicate | invalid)."""
    return {"errorCode": "INVALID_DATA", "message": "The data is invalid due to validation restrictions",
            "errors": [{"fieldName": f"/{f}", "errorType": "invalid", "errorMessage": ""} for f in fields]}


class Accounts:
    """Zoho's accounts server token endpoint for one client and refresh token, rationed and expiring as documented.

    "Refresh access token" (zoho.com/accounts/protocol/oauth/web-apps/access-token-expiry.html): a refresh token
    makes at most ten access tokens in ten minutes, after which token creation is blocked for the rest of the ten
    minutes, answered with HTTP 200 {"error": "Access Denied"} (Zoho's "Token limits"); each access token is valid
    for one hour. `lifetime`, `limit` and `window` shrink those for tests. `legacy_expiry` answers the older shape
    with `expires_in` in milliseconds beside `expires_in_sec`."""

    def __init__(self, client_id: str, client_secret: str, refresh_token: str, *, lifetime: float = 3600.0,
                 limit: int = 10, window: float = 600.0, legacy_expiry: bool = False):
        self.credentials = (client_id, client_secret, refresh_token)
        self.lifetime, self.limit, self.window, self.legacy_expiry = lifetime, limit, window, legacy_expiry
        self.issued: dict[str, float] = {}  # access token -> when it dies (time.monotonic)
        self.order: list[str] = []  # tokens in the order they were issued
        self.denied = 0  # token requests refused for the generation limit
        self._grants: list[float] = []  # when each token of the current window was issued
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def answer(self, req: Request) -> Reply:
        """POST /oauth/v2/token with the refresh-token grant as a form."""
        form_type = (req.header("Content-Type") or "").startswith("application/x-www-form-urlencoded")
        if req.method != "POST" or not form_type:
            raise Problem("the token endpoint takes a POSTed form")  # access-token-expiry.html: POST, form fields
        if req.query:
            raise Problem("credentials belong in the form body, not the URL")
        form = {k: v[0] for k, v in req.form().items()}
        if form.get("grant_type") != "refresh_token":
            raise Problem(f"grant_type {form.get('grant_type')!r}")  # access-token-expiry.html: "refresh_token"
        if (form.get("client_id"), form.get("client_secret"), form.get("refresh_token")) != self.credentials:
            return Reply(200, {"error": "invalid_code"})  # Zoho answers 200 for a bad or revoked grant
        with self._lock:
            now = time.monotonic()
            self._grants = [t for t in self._grants if now - t < self.window]
            if len(self._grants) >= self.limit:  # access-token-expiry.html: ten tokens per ten minutes
                self.denied += 1
                return Reply(200, {"error": "Access Denied", "status": "failure",
                                   "error_description": "You have made too many requests continuously. "
                                                        "Please try again after some time."})
            self._grants.append(now)
            token = f"1000.access{next(self._ids)}"
            self.issued[token] = now + self.lifetime
            self.order.append(token)
        body: dict[str, Any] = {"access_token": token, "api_domain": "https://www.zohoapis.com",
                                "token_type": "Bearer"}
        if self.legacy_expiry:  # the older answer: expires_in in milliseconds, expires_in_sec in seconds
            body |= {"expires_in_sec": self.lifetime, "expires_in": int(self.lifetime * 1000)}
        else:
            body["expires_in"] = self.lifetime
        return Reply(200, body)

    def valid(self, token: str) -> bool:
        """Issued here and not expired ("Each access token is valid for one hour")."""
        with self._lock:
            return time.monotonic() < self.issued.get(token, float("-inf"))

    def expire_all(self) -> None:
        with self._lock:
            self.issued = dict.fromkeys(self.issued, float("-inf"))


@dataclass
class Delivery:
    """One webhook delivery as Zoho saw it: `ok` only for exactly 200 OK (WebhookDocument.do)."""

    status: int
    ok: bool
    body: str


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def zoho_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(epoch))


class FakeZoho(FakeVendor):
    def __init__(self) -> None:
        super().__init__()
        self.keys = {"k1": rsa_key()}  # kid -> private key; the JWKS serves their public halves
        self.tickets: dict[str, dict] = {}
        self.comments: dict[str, list[dict]] = {}
        self.tags: dict[str, list[str]] = {}
        self.threads: dict[str, list[dict]] = {}  # ticket id -> its threads (emails in and out), oldest first
        self.accounts = Accounts(CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN)
        self.picklists: dict[str, set[str]] = {"priority": set(PRIORITIES), "classification": set(CLASSIFICATIONS),
                                               "category": set()}
        self.subcategories: dict[str, set[str]] = {}  # category -> its dependent subCategory values
        self.departments: set[str] = {DEPARTMENT_ID}
        self.teams: dict[str, str] = {}  # teamId -> the departmentId it belongs to
        self.deliveries: list[Delivery] = []
        self.subscribed = True
        self._ids = itertools.count(1)

    # --- what tests set up ------------------------------------------------------------------------------------

    def add_ticket(self, ticket_id: str, subject: str, description: str = "", **fields: Any) -> dict:
        """A ticket as GET /api/v1/tickets/{id} returns it."""
        now = zoho_time(time.time())
        ticket = {"id": ticket_id, "ticketNumber": str(100 + len(self.tickets)), "subject": subject,
                  "description": description, "departmentId": "4000000007043", "status": "Open",
                  "statusType": "Open", "channel": "Email", "email": "carol@zylker.com", "contactId": "4000000008692",
                  "category": None, "subCategory": None, "priority": None, "classification": None, "teamId": None,
                  "createdTime": now, "modifiedTime": now, "closedTime": None, "language": "English", "cf": {}}
        ticket.update(fields)
        self.tickets[ticket_id] = ticket
        return ticket

    def add_thread(self, ticket_id: str, content: str, *, direction: str = "in") -> dict:
        """A thread on the ticket as GET .../threads/{id} returns it (DeskAPIDocument#Threads#Threads_Getathread):
        `in` is an email from the customer, `out` an agent's reply; `content` is HTML."""
        ticket = self.tickets[ticket_id]
        thread = {"id": str(1892000000900000 + next(self._ids)), "channel": "EMAIL", "direction": direction,
                  "content": content, "contentType": "text/html", "summary": content[:100],
                  "author": {"name": "Carol" if direction == "in" else "Agent", "email": ticket["email"],
                             "type": "END_USER" if direction == "in" else "AGENT"},
                  "isDescriptionThread": False, "visibility": "public", "createdTime": zoho_time(time.time())}
        self.threads.setdefault(ticket_id, []).append(thread)
        ticket["modifiedTime"] = thread["createdTime"]
        return thread

    def thread_event(self, ticket_id: str, thread: dict) -> dict:
        """The Ticket_Thread_Add event Zoho delivers for `thread` (WebhookDocument.do: the thread as payload)."""
        payload = {k: thread[k] for k in ("id", "channel", "direction", "summary", "author", "createdTime")}
        return {"eventType": "Ticket_Thread_Add", "orgId": ORG_ID, "eventTime": str(int(time.time() * 1000)),
                "payload": {**payload, "ticketId": ticket_id}}

    def expire_tokens(self) -> None:
        """Every access token issued so far is now refused (expired or revoked on Zoho's side)."""
        self.accounts.expire_all()

    def set_categories(self, categories: Mapping[str, Iterable[str]]) -> None:
        """The portal's category picklist and each category's dependent subCategory values."""
        self.picklists["category"] = set(categories)
        self.subcategories = {c: set(subs) for c, subs in categories.items()}

    def add_team(self, team_id: str, department_id: str = DEPARTMENT_ID) -> None:
        self.departments.add(department_id)
        self.teams[team_id] = department_id

    def deliver(self, url: str, *events: dict, token: str | None = None) -> Delivery:
        """POST one delivery to `url` as Zoho does and judge the answer as Zoho does (WebhookDocument.do): anything
        but 200 OK, or no answer within five seconds, is a failed delivery; 410 Gone removes the subscription."""
        if not self.subscribed:
            raise AssertionError("the webhook was removed after a 410 Gone: Zoho delivers nothing more")
        body, headers = self.delivery(*events, token=token)
        try:
            response = requests.post(url, data=body, headers=headers, timeout=5)
        except requests.RequestException:
            delivery = Delivery(0, False, "no answer within 5 s")
        else:
            delivery = Delivery(response.status_code, response.status_code == 200, response.text)
            if response.status_code == 410:
                self.subscribed = False
        self.deliveries.append(delivery)
        return delivery

    @property
    def failed_deliveries(self) -> list[Delivery]:
        return [d for d in self.deliveries if not d.ok]

    def token(self, claims: dict | None = None, *, kid: str = "k1", key: Any = None, alg: str = "RS256",
              **overrides: Any) -> str:
        """A delivery JWT: Zoho's claims for ORG_ID / WEBHOOK_ID, valid for five minutes, unless overridden."""
        now = int(time.time())
        body = {"iss": f"orgId:{ORG_ID}", "aud": f"webhookId:{WEBHOOK_ID}", "iat": now, "exp": now + 300}
        body.update(claims or {})
        body.update(overrides)
        if alg == "none":
            return jwt.encode(body, None, algorithm="none", headers={"kid": kid})
        return jwt.encode(body, key if key is not None else self.keys[kid], algorithm=alg, headers={"kid": kid})

    def delivery(self, *events: dict, token: str | None = None) -> tuple[bytes, dict[str, str]]:
        return json.dumps(list(events)).encode(), {"Content-Type": "application/json",
                                                   "X-ZDesk-JWT": token if token is not None else self.token()}

    # --- the vendor ---------------------------------------------------------------------------------------------

    def route(self, req: Request) -> Reply:
        if req.path == "/.well-known/jwks.json" and req.method == "GET":
            # WebhookDocument.do, "Securing webhooks": the data centre's public keys verify X-ZDesk-JWT
            if req.header("Authorization") or req.header("orgId"):
                raise Problem("the JWKS is public: no credentials or org id belong on that request")
            return Reply(200, {"keys": [self._jwk(kid, k) for kid, k in self.keys.items()]})
        if req.path == "/oauth/v2/token":
            return self.accounts.answer(req)
        if req.path.startswith("/api/v1/"):
            return self._desk(req)
        raise Problem("no such endpoint")

    def _jwk(self, kid: str, key: Any) -> dict:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}

    def _desk(self, req: Request) -> Reply:
        scheme, _, token = (req.header("Authorization") or "").partition(" ")
        if scheme != "Zoho-oauthtoken" or not token:  # DeskAPIDocument#OauthTokens: "Zoho-oauthtoken <token>"
            raise Problem("Authorization must be 'Zoho-oauthtoken <access token>'")
        if not self.accounts.valid(token):  # DeskAPIDocument#Errors: INVALID_OAUTH, "invalid or expired"
            return Reply(401, {"errorCode": "INVALID_OAUTH", "message": "The OAuth Token you provided is invalid."})
        if req.header("orgId") != ORG_ID:  # DeskAPIDocument#Introduction: orgId is mandatory on every call
            raise Problem(f"orgId header must be the organisation id, got {req.header('orgId')!r}")
        if req.path == "/api/v1/tickets/search" and req.method == "GET":
            return self._search(req)
        thread = re.fullmatch(r"/api/v1/tickets/([0-9]+)/threads/([0-9]+)", req.path)
        if thread and req.method == "GET":  # DeskAPIDocument#Threads#Threads_Getathread
            found = [t for t in self.threads.get(thread.group(1), []) if t["id"] == thread.group(2)]
            return Reply(200, found[0]) if found else Reply(404, NOT_FOUND)
        m = re.fullmatch(r"/api/v1/tickets/([0-9]+)(/associateTag|/comments)?", req.path)
        if not m:
            raise Problem("no such endpoint")
        ticket = self.tickets.get(m.group(1))
        action = (req.method, m.group(2))
        if action not in {("GET", None), ("PATCH", None), ("POST", "/associateTag"), ("POST", "/comments")}:
            raise Problem("no such method on this endpoint")
        if ticket is None:  # DeskAPIDocument#Errors: RESOURCE_NOT_FOUND, HTTP 404
            return Reply(404, NOT_FOUND)
        if req.method == "GET":  # DeskAPIDocument#Tickets#Tickets_Getaticket
            return Reply(200, ticket)
        body = self._json(req)
        if action == ("PATCH", None):  # DeskAPIDocument#Tickets#Tickets_Updateaticket
            if not body or set(body) - PATCHABLE:
                raise Problem(f"update attributes {sorted(body)} (allowed here: {sorted(PATCHABLE)})")
            if not all(isinstance(v, str) and v for v in body.values()):
                raise Problem("update values must be non-empty strings")
            refused = self._refused(ticket, body)
            if refused:
                return Reply(422, invalid_data(*refused))
            ticket.update(body, modifiedTime=zoho_time(time.time()))
            return Reply(200, ticket)
        if action == ("POST", "/associateTag"):  # DeskAPIDocument#Tickets#Tickets_Associatetags
            tags = body.get("tags")
            if set(body) != {"tags"} or not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
                raise Problem('associateTag takes {"tags": ["name", ...]}')
            self.tags.setdefault(ticket["id"], []).extend(tags)
            return Reply(200, {"data": [{"name": t, "id": str(next(self._ids))} for t in tags]})
        # DeskAPIDocument#TicketsComments#TicketsComments_Createticketcomment
        if set(body) - {"isPublic", "content", "contentType"} or not isinstance(body.get("isPublic"), bool) \
                or body.get("contentType") not in ("plainText", "html") or not isinstance(body.get("content"), str) \
                or not body["content"]:
            raise Problem('a comment is {"isPublic": bool, "contentType": "plainText"|"html", "content": "..."}')
        comment = {"id": str(next(self._ids)), "commentedTime": zoho_time(time.time()),
                   "commenterId": "1892000000042001", **body}
        self.comments.setdefault(ticket["id"], []).append(comment)
        return Reply(200, comment)

    def _refused(self, ticket: dict, body: dict) -> list[str]:
        """Attributes whose value the portal's layout does not have, in Zoho's order of checking."""
        after = {**ticket, **body}
        refused = [attr for attr in ("priority", "classification", "category")  # picklists (Setup > Layouts)
                   if attr in body and body[attr] not in self.picklists[attr]]
        if "subCategory" in body and body["subCategory"] not in self.subcategories.get(after["category"], ()):
            refused.append("subCategory")  # a dependent picklist: only the values mapped to the category
        if "departmentId" in body and body["departmentId"] not in self.departments:
            refused.append("departmentId")  # DeskAPIDocument#Departments: an id of this organisation
        if "teamId" in body and self.teams.get(body["teamId"]) != after["departmentId"]:
            refused.append("teamId")  # DeskAPIDocument#Teams: a team belongs to one department
        return refused

    def _json(self, req: Request) -> dict:
        """DeskAPIDocument#Errors: UNSUPPORTED_MEDIA_TYPE (415) for a body that is not JSON."""
        if not (req.header("Content-Type") or "").startswith("application/json"):
            raise Problem("JSON bodies need Content-Type: application/json")
        body = req.json()
        if not isinstance(body, dict):
            raise Problem("expected a JSON object")
        return body

    def _search(self, req: Request) -> Reply:
        """DeskAPIDocument#Search#Search_TicketsSearchAPI: from 0..4999, limit 1..100, 204 when nothing matches."""
        params = {k: v[0] for k, v in req.query.items()}
        if set(params) - SEARCH_PARAMS:
            raise Problem(f"extra query parameter {sorted(set(params) - SEARCH_PARAMS)[0]!r} is present in the input")
        start, limit = int(params.get("from", 0)), int(params.get("limit", 10))
        if not 0 <= start <= 4999 or not 1 <= limit <= 100:
            raise Problem("from is 0..4999 and limit 1..100")
        rows = [t for t in self.tickets.values() if "status" not in params or t["status"] == params["status"]]
        if "modifiedTimeRange" in params:
            low, high = (_parse(v) for v in params["modifiedTimeRange"].split(","))
            rows = [t for t in rows if low <= _parse(t["modifiedTime"]) <= high]
        if params.get("sortBy") == "modifiedTime":
            rows.sort(key=lambda t: t["modifiedTime"])
        page = [{k: v for k, v in t.items() if k != "description"} for t in rows[start:start + limit]]
        return Reply(200, {"data": page}) if page else Reply(204, None)  # Zoho answers 204 when nothing matches


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value)
