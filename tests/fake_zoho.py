"""A local fake of Zoho Desk: the data centre's JWKS, the accounts server's token endpoint and the Desk API v1.

It answers in the shapes Zoho documents and refuses requests that break them (a missing `orgId` header, an
Authorization that is not `Zoho-oauthtoken <token>`, a PATCH attribute Zoho has no such name for, a comment
without isPublic/contentType, an extra query parameter on search), recording the reason in `problems`. It also
signs webhook deliveries the way Zoho does: a JSON array of events with an RS256 JWT in `X-ZDesk-JWT`.
"""
from __future__ import annotations

import itertools
import json
import re
import time
from datetime import datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from fake_vendor import FakeVendor, Problem, Reply, Request

ORG_ID = "60012345678"
WEBHOOK_ID = "7000000123456"
CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN = "1000.CLIENTID", "client-secret-value", "1000.refresh-token-value"
#: Attributes the Update Ticket API takes that the connector may send.
PATCHABLE = {"category", "subCategory", "priority", "classification", "teamId", "departmentId"}
SEARCH_PARAMS = {"from", "limit", "status", "sortBy", "modifiedTimeRange"}
NOT_FOUND = {"errorCode": "RESOURCE_NOT_FOUND", "message": "The requested resource does not exist."}


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
        self.valid_tokens: set[str] = set()
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

    def expire_tokens(self) -> None:
        """Every access token issued so far is now refused (expired or revoked on Zoho's side)."""
        self.valid_tokens.clear()

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
            if req.header("Authorization") or req.header("orgId"):
                raise Problem("the JWKS is public: no credentials or org id belong on that request")
            return Reply(200, {"keys": [self._jwk(kid, k) for kid, k in self.keys.items()]})
        if req.path == "/oauth/v2/token":
            return self._token(req)
        if req.path.startswith("/api/v1/"):
            return self._desk(req)
        raise Problem("no such endpoint")

    def _jwk(self, kid: str, key: Any) -> dict:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}

    def _token(self, req: Request) -> Reply:
        form_type = (req.header("Content-Type") or "").startswith("application/x-www-form-urlencoded")
        if req.method != "POST" or not form_type:
            raise Problem("the token endpoint takes a POSTed form")
        if req.query:
            raise Problem("credentials belong in the form body, not the URL")
        form = {k: v[0] for k, v in req.form().items()}
        if form.get("grant_type") != "refresh_token":
            raise Problem(f"grant_type {form.get('grant_type')!r}")
        if (form.get("client_id"), form.get("client_secret"), form.get("refresh_token")) != \
                (CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN):
            return Reply(200, {"error": "invalid_code"})  # Zoho answers 200 for a bad or revoked grant
        token = f"1000.access{next(self._ids)}"
        self.valid_tokens.add(token)
        return Reply(200, {"access_token": token, "api_domain": "https://www.zohoapis.com", "token_type": "Bearer",
                           "expires_in": 3600})

    def _desk(self, req: Request) -> Reply:
        scheme, _, token = (req.header("Authorization") or "").partition(" ")
        if scheme != "Zoho-oauthtoken" or not token:
            raise Problem("Authorization must be 'Zoho-oauthtoken <access token>'")
        if token not in self.valid_tokens:
            return Reply(401, {"errorCode": "INVALID_OAUTH", "message": "The OAuth Token you provided is invalid."})
        if req.header("orgId") != ORG_ID:
            raise Problem(f"orgId header must be the organisation id, got {req.header('orgId')!r}")
        if req.path == "/api/v1/tickets/search" and req.method == "GET":
            return self._search(req)
        m = re.fullmatch(r"/api/v1/tickets/([0-9]+)(/associateTag|/comments)?", req.path)
        if not m:
            raise Problem("no such endpoint")
        ticket = self.tickets.get(m.group(1))
        action = (req.method, m.group(2))
        if action not in {("GET", None), ("PATCH", None), ("POST", "/associateTag"), ("POST", "/comments")}:
            raise Problem("no such method on this endpoint")
        if ticket is None:
            return Reply(404, NOT_FOUND)
        if req.method == "GET":
            return Reply(200, ticket)
        body = self._json(req)
        if action == ("PATCH", None):
            if not body or set(body) - PATCHABLE:
                raise Problem(f"update attributes {sorted(body)} (allowed here: {sorted(PATCHABLE)})")
            if not all(isinstance(v, str) and v for v in body.values()):
                raise Problem("update values must be non-empty strings")
            ticket.update(body, modifiedTime=zoho_time(time.time()))
            return Reply(200, ticket)
        if action == ("POST", "/associateTag"):
            tags = body.get("tags")
            if set(body) != {"tags"} or not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
                raise Problem('associateTag takes {"tags": ["name", ...]}')
            self.tags.setdefault(ticket["id"], []).extend(tags)
            return Reply(200, {"data": [{"name": t, "id": str(next(self._ids))} for t in tags]})
        if set(body) - {"isPublic", "content", "contentType"} or not isinstance(body.get("isPublic"), bool) \
                or body.get("contentType") not in ("plainText", "html") or not isinstance(body.get("content"), str) \
                or not body["content"]:
            raise Problem('a comment is {"isPublic": bool, "contentType": "plainText"|"html", "content": "..."}')
        comment = {"id": str(next(self._ids)), "commentedTime": zoho_time(time.time()),
                   "commenterId": "1892000000042001", **body}
        self.comments.setdefault(ticket["id"], []).append(comment)
        return Reply(200, comment)

    def _json(self, req: Request) -> dict:
        if not (req.header("Content-Type") or "").startswith("application/json"):
            raise Problem("JSON bodies need Content-Type: application/json")
        body = req.json()
        if not isinstance(body, dict):
            raise Problem("expected a JSON object")
        return body

    def _search(self, req: Request) -> Reply:
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
