"""OAuth 2.0 refresh-token auth for Zoho's APIs (Zoho Desk, ServiceDesk Plus Cloud).

Zoho issues access tokens that live an hour and allows only about ten per ten minutes per refresh token, so the
token is cached until shortly before it expires, shared by every thread, refreshed under a lock (one refresh for a
burst of requests) and dropped once on a 401. The accounts server is regional (accounts.zoho.com, .eu, .in,
.com.au, .jp, accounts.zohocloud.ca): it comes from config as a whole URL, never built from a region suffix.
Tokens never reach logs, reprs or exception messages.
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
        self.refreshes = 0  # how many tokens this process asked for (the vendor rations them)

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
            if self._token is None or self._clock() >= self._expires_at:
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
        if response.status_code != 200:
            retryable = response.status_code == 429 or response.status_code >= 500
            raise VendorError(f"Zoho token refresh answered {response.status_code}: {vendor_message(response)}",
                              retryable=retryable, status=response.status_code)
        try:
            data = response.json()
        except ValueError:
            raise VendorError("Zoho token refresh answered a body that is not JSON", retryable=True) from None
        token = data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            # Zoho answers 200 {"error": "invalid_code"} for a revoked or wrong refresh token.
            error = data.get("error") if isinstance(data, dict) else None
            raise VendorError(f"Zoho token refresh failed: {error or 'no access_token in the answer'}",
                              retryable=False, status=401)
        expires_in = data.get("expires_in", 3600)
        try:
            expires_in = float(expires_in)
        except (TypeError, ValueError):
            expires_in = 3600.0
        now = self._clock()
        self._token = token
        self._fetched_at = now
        self._expires_at = now + max(0.0, expires_in - EXPIRY_MARGIN)
        self.refreshes += 1
