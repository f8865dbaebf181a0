"""OAuth 2.0 refresh-token auth for Zoho's APIs (Zoho Desk, ServiceDesk Plus Cloud).

Zoho issues access tokens that live an hour and allows only ten per ten minutes per refresh token ("Refresh access
token", zoho.com/accounts/protocol/oauth/web-apps/access-token-expiry.html), so the token is cached until shortly
before it expires, shared by every thread, refreshed under a lock (one refresh for a burst of requests) and dropped
once on a 401. Past the limit Zoho answers "Access Denied" and blocks new tokens for the rest of the ten minutes:
that answer is temporary, so it is a retryable error with a growing delay, and the accounts server is not asked
again before the delay is over. The accounts server is regional (accounts.zoho.com, .eu, .in, .com.au, .jp,
.com.cn, .sa, .uk, accounts.zohocloud.ca; zoho.com/accounts/protocol/oauth/multi-dc.html): it comes from config as
a whole URL, never built from a region suffix. Tokens never reach logs, reprs or exception messages.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

import requests

from .http import VendorError, vendor_message

#: Refresh this many seconds before the vendor's expiry, so a token never dies in flight.
EXPIRY_MARGIN = 120.0
#: A 401 within this many seconds of a refresh is not worth another refresh (the credentials are wrong).
MIN_REFRESH_INTERVAL = 5.0
#: The first wait after Zoho refuses a token for its generation limit, doubled on each refusal up to DENIED_MAX
#: (the block lasts at most the rest of Zoho's ten-minute window).
DENIED_BACKOFF = 60.0
DENIED_MAX = 600.0


class ZohoRefreshAuth:
    """`Authorization: Zoho-oauthtoken <access token>`, from the refresh-token grant at `accounts_url`."""

    scheme = "Zoho-oauthtoken"

    def __init__(self, accounts_url: str, client_id: str, client_secret: str, refresh_token: str, *,
                 timeout: float = 10.0, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if not accounts_url.startswith(("https://", "http://")):
            raise ValueError(f"accounts URL must start with https://, got {accounts_url!r}")
        self.token_url = accounts_url.rstrip("/") + "/oauth/v2/token"
        self._client_id = client_id
        self._client_secret = client_secret
        self._refresh_token = refresh_token
        self.timeout = timeout
        self._session = session or requests.Session()
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self._fetched_at = -1e9
        self._denied_until = -1e9  # no token request before this instant (Zoho's generation limit)
        self._denials = 0  # refusals in a row, for the backoff
        self.refreshes = 0  # how many tokens this process got (the vendor rations them)

    def __repr__(self) -> str:
        return f"ZohoRefreshAuth({self.token_url!r})"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"{self.scheme} {self._access_token()}"}

    def invalidate(self) -> bool:
        with self._lock:
            if self._clock() - self._fetched_at < MIN_REFRESH_INTERVAL:
                return False  # we just got this token: a 401 now means the grant or scope is wrong
            self._token = None
            return True

    def _access_token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._expires_at:
                if now < self._denied_until:  # still inside Zoho's block: asking again would only fail
                    raise _denied(self._denied_until - now)
                self._refresh()
            assert self._token is not None
            return self._token

    def _refresh(self) -> None:
        form = {"refresh_token": self._refresh_token, "client_id": self._client_id,
                "client_secret": self._client_secret, "grant_type": "refresh_token"}
        try:
            response = self._session.post(self.token_url, data=form, timeout=self.timeout, allow_redirects=False)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise VendorError(f"Zoho accounts server unreachable: {type(exc).__name__}", retryable=True) from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and _is_generation_limit(data):  # answered with 200 or 400: both are temporary
            self._denials += 1
            wait = min(DENIED_MAX, DENIED_BACKOFF * 2 ** (self._denials - 1))
            self._denied_until = self._clock() + wait
            raise _denied(wait)
        if response.status_code != 200:
            retryable = response.status_code == 429 or response.status_code >= 500
            raise VendorError(f"Zoho token refresh answered {response.status_code}: {vendor_message(response)}",
                              retryable=retryable, status=response.status_code)
        if data is None:
            raise VendorError("Zoho token refresh answered a body that is not JSON", retryable=True)
        token = data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            # Zoho answers 200 {"error": "invalid_code"} for a revoked or wrong refresh token.
            error = data.get("error") if isinstance(data, dict) else None
            raise VendorError(f"Zoho token refresh failed: {error or 'no access_token in the answer'}",
                              retryable=False, status=401)
        lifetime = _lifetime(data)
        now = self._clock()
        self._token = token
        self._fetched_at = now
        self._expires_at = now + lifetime - min(EXPIRY_MARGIN, lifetime / 10)
        self._denials = 0
        self.refreshes += 1


def _lifetime(data: dict) -> float:
    """Seconds the token lives. `expires_in_sec` first: older accounts answers carry `expires_in` in milliseconds
    next to it (3600000 beside 3600), which taken as seconds would keep a dead token for forty days."""
    for key in ("expires_in_sec", "expires_in"):
        value = data.get(key)
        if isinstance(value, bool):
            continue
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            continue
        if 0 < seconds < float("inf"):
            return seconds
    return 3600.0


def _is_generation_limit(data: dict) -> bool:
    """Zoho's answer once the ten-tokens-per-ten-minutes limit is reached: {"error": "Access Denied",
    "error_description": "You have made too many requests continuously..."}."""
    error = str(data.get("error") or "").strip().lower().replace("_", " ")
    description = str(data.get("error_description") or "").lower()
    return error == "access denied" or "too many requests" in description or "generation limit" in description


def _denied(wait: float) -> VendorError:
    return VendorError(f"Zoho refused a new access token (Access Denied: the token generation limit, ten per ten "
                       f"minutes); trying again in {wait:.0f} s", retryable=True, retry_after=wait, status=429)
