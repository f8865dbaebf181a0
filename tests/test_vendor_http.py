"""The layer every vendor connector shares: the HTTP client's retry rule, Zoho token refresh, field maps, polling."""
from __future__ import annotations

import time

import pytest

from connectors import oauth
from connectors.base import ConnectorConfigError, PollResult
from connectors.fieldmap import FieldMap
from connectors.http import StaticAuth, VendorClient, VendorError
from connectors.oauth import ZohoRefreshAuth
from connectors.polling import PollRunner
from triage_core.policy import Policy
from triage_core.queue import InboundTicket, JobQueue
from triage_core.store import Store
from triage_core.taxonomy import parse_taxonomy

from fake_vendor import FakeVendor, Problem, Reply


class Api(FakeVendor):
    """Answers {"path": ...} to anything, and a Zoho-style token endpoint that counts refreshes."""

    def __init__(self):
        super().__init__()
        self.tokens = 0

    def route(self, req):
        if req.path == "/oauth/v2/token":
            form = req.form()
            if form.get("grant_type") != ["refresh_token"] or form.get("refresh_token") != ["r-1"]:
                raise Problem(f"bad token request {sorted(form)}")
            self.tokens += 1
            return Reply(200, {"access_token": f"tok-{self.tokens}", "expires_in": 3600,
                               "api_domain": "https://www.zohoapis.com", "token_type": "Bearer"})
        return Reply(200, {"path": req.path, "auth": req.header("Authorization")})


@pytest.fixture
def api():
    fake = Api()
    yield fake
    fake.close()


def client(api, auth=None, **kw) -> VendorClient:
    return VendorClient("Fake", api.url, auth or StaticAuth.bearer("t"), backoff=0.01, **kw)


def test_transient_failures_are_retried_and_retry_after_honoured(api):
    api.fail_next("GET", "/x", 429, {"message": "slow down"}, {"Retry-After": "1"})
    api.fail_next("GET", "/x", None)  # connection dropped
    api.fail_next("GET", "/x", 503, {})
    t0 = time.monotonic()
    assert client(api).json("GET", "/x")["path"] == "/x"
    assert time.monotonic() - t0 >= 1.0
    assert len(api.calls("GET", "/x")) == 4


@pytest.mark.parametrize("status, retryable", [(400, False), (403, False), (404, False), (409, False),
                                               (500, True)])
def test_other_statuses_are_not_retried(api, status, retryable):
    api.fail_next("PUT", "/y", status, {"errorMessages": ["Issue does not exist or you do not have permission"]})
    with pytest.raises(VendorError) as err:
        client(api).request("PUT", "/y", json_body={})
    assert len(api.calls("PUT", "/y")) == 1
    assert err.value.retryable is retryable and err.value.status == status
    assert "Issue does not exist" in str(err.value)


def test_retries_give_up_with_a_retryable_error(api):
    api.fail_next("GET", "/z", 502, "bad gateway", times=10)
    with pytest.raises(VendorError) as err:
        client(api, attempts=3).request("GET", "/z")
    assert err.value.retryable and err.value.status == 502
    assert len(api.calls("GET", "/z")) == 3


def test_long_retry_after_goes_to_the_queue_not_a_sleeping_worker(api):
    api.fail_next("GET", "/slow", 429, {}, {"Retry-After": "120"})
    with pytest.raises(VendorError) as err:
        client(api, max_wait=5).request("GET", "/slow")
    assert err.value.retryable and err.value.retry_after == 120
    assert len(api.calls("GET", "/slow")) == 1


def test_rate_limit_backoff_and_reset_header_are_per_client(api):
    """Jira's 429 etiquette is opt-in: a client without it waits the general backoff, and reads no reset header."""
    reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    for _ in range(2):
        api.fail_next("GET", "/rl", 429, {}, {"X-RateLimit-Reset": reset})
    t0 = time.monotonic()
    client(api).request("GET", "/rl")  # the general 0.01 s backoff, as before
    assert time.monotonic() - t0 < 0.5 and len(api.calls("GET", "/rl$")) == 3
    api.fail_next("GET", "/rl2", 429, {})
    t0 = time.monotonic()
    client(api, rate_limit_backoff=0.5).request("GET", "/rl2")
    assert 0.5 * 0.7 - 0.01 <= time.monotonic() - t0 <= 0.5 * 1.3 + 0.3
    api.fail_next("GET", "/rl3", 429, {}, {"X-RateLimit-Reset": reset})
    with pytest.raises(VendorError) as err:  # a minute away: longer than max_wait, handed to the queue
        client(api, reset_header="X-RateLimit-Reset", max_wait=5).request("GET", "/rl3")
    assert err.value.status == 429 and 55 <= err.value.retry_after <= 60 and len(api.calls("GET", "/rl3$")) == 1


def test_absolute_urls_are_refused(api):
    with pytest.raises(ValueError):
        client(api).request("GET", "http://elsewhere.example/x")


def test_static_401_is_final(api):
    api.fail_next("GET", "/a", 401, {"message": "bad token"})
    with pytest.raises(VendorError) as err:
        client(api).request("GET", "/a")
    assert err.value.status == 401 and not err.value.retryable
    assert len(api.calls("GET", "/a")) == 1


def test_zoho_token_is_cached_refreshed_once_on_401_and_never_shown(api):
    auth = ZohoRefreshAuth(api.url, "cid", "csecret", "r-1")
    c = client(api, auth)
    assert c.json("GET", "/a")["auth"] == "Zoho-oauthtoken tok-1"
    assert c.json("GET", "/b")["auth"] == "Zoho-oauthtoken tok-1"
    assert api.tokens == 1
    auth._fetched_at -= 60  # the token is not brand new any more
    api.fail_next("GET", "/c", 401, {"errorCode": "INVALID_OAUTH"})
    assert c.json("GET", "/c")["auth"] == "Zoho-oauthtoken tok-2"
    assert api.tokens == 2
    api.fail_next("GET", "/d", 401, {"errorCode": "INVALID_OAUTH"}, times=2)
    with pytest.raises(VendorError) as err:  # a fresh token refused again: final, and no token storm
        c.json("GET", "/d")
    assert err.value.status == 401 and api.tokens == 2
    assert "tok-" not in repr(auth) and "r-1" not in repr(auth) and "csecret" not in repr(auth)
    token_call = api.calls("POST", "/oauth/v2/token")[0]
    assert token_call.query == {}  # secrets in the form body, not in a URL that proxies log


def test_zoho_invalid_refresh_token_is_a_clear_final_error(api):
    api.fail_next("POST", "/oauth/v2/token", 200, {"error": "invalid_code"})
    with pytest.raises(VendorError) as err:
        client(api, ZohoRefreshAuth(api.url, "cid", "s", "r-1")).request("GET", "/a")
    assert "invalid_code" in str(err.value) and not err.value.retryable


def test_zoho_token_expiry_refreshes_before_the_vendor_refuses(api):
    now = [1000.0]
    auth = ZohoRefreshAuth(api.url, "cid", "s", "r-1", clock=lambda: now[0])
    auth.headers()
    now[0] += 3600 - 60  # inside the safety margin before expiry
    assert auth.headers()["Authorization"] == "Zoho-oauthtoken tok-2"


ACCESS_DENIED = {"error": "Access Denied", "status": "failure",
                 "error_description": "You have made too many requests continuously. Please try again after some time."}


@pytest.mark.parametrize("status", [200, 400])  # Zoho documents 200; some data centres answer 400
def test_zoho_token_generation_limit_waits_without_asking_again(api, status):
    now = [1000.0]
    auth = ZohoRefreshAuth(api.url, "cid", "s", "r-1", clock=lambda: now[0])
    api.fail_next("POST", "/oauth/v2/token", status, ACCESS_DENIED, times=2)
    token_calls = lambda: len(api.calls("POST", "/oauth/v2/token"))
    with pytest.raises(VendorError) as err:
        auth.headers()
    assert err.value.retryable and err.value.retry_after == oauth.DENIED_BACKOFF and err.value.status == 429
    assert "generation limit" in str(err.value)
    now[0] += oauth.DENIED_BACKOFF - 1  # still inside the wait: refused here, Zoho is not asked
    with pytest.raises(VendorError) as err:
        auth.headers()
    assert err.value.retryable and err.value.retry_after == pytest.approx(1.0) and token_calls() == 1
    now[0] += 1  # the wait is over: asked again, refused again, so the next wait doubles
    with pytest.raises(VendorError) as err:
        auth.headers()
    assert err.value.retry_after == 2 * oauth.DENIED_BACKOFF and token_calls() == 2
    now[0] += 2 * oauth.DENIED_BACKOFF
    assert auth.headers() == {"Authorization": "Zoho-oauthtoken tok-1"} and token_calls() == 3
    api.fail_next("POST", "/oauth/v2/token", 200, ACCESS_DENIED)
    now[0] += 3600  # expired; a refusal after a success starts the backoff over
    with pytest.raises(VendorError) as err:
        auth.headers()
    assert err.value.retry_after == oauth.DENIED_BACKOFF


def test_zoho_token_generation_limit_is_retried_by_the_client_not_parked(api, monkeypatch):
    monkeypatch.setattr(oauth, "DENIED_BACKOFF", 0.2)
    api.fail_next("POST", "/oauth/v2/token", 200, ACCESS_DENIED)
    c = client(api, ZohoRefreshAuth(api.url, "cid", "s", "r-1"))
    t0 = time.monotonic()
    assert c.json("GET", "/a")["auth"] == "Zoho-oauthtoken tok-1"
    assert time.monotonic() - t0 >= 0.2 and len(api.calls("POST", "/oauth/v2/token")) == 2


def test_zoho_expires_in_sec_wins_over_expires_in():
    class Legacy(Api):
        def route(self, req):  # the older accounts answer: expires_in in milliseconds beside expires_in_sec
            if req.path == "/oauth/v2/token":
                self.tokens += 1
                return Reply(200, {"access_token": f"tok-{self.tokens}", "expires_in_sec": 600,
                                   "expires_in": 600_000, "token_type": "Bearer"})
            return super().route(req)

    api = Legacy()
    try:
        now = [0.0]
        auth = ZohoRefreshAuth(api.url, "cid", "s", "r-1", clock=lambda: now[0])
        assert auth.headers()["Authorization"] == "Zoho-oauthtoken tok-1"
        now[0] += 600 - 30  # inside the margin (a tenth of the lifetime) before the 600 s expiry
        assert auth.headers()["Authorization"] == "Zoho-oauthtoken tok-2"
    finally:
        api.close()


TAXONOMY = parse_taxonomy({"name": "t", "fields": {
    "category": {"values": ["Hardware", "Network"]},
    "subcategory": {"parent": "category", "values": {"Hardware": ["Laptop", "Other"], "Network": ["VPN", "Other"]}},
    "priority": {"values": ["Low", "High"]},
}})


def test_field_map_checks_every_label_at_start_up():
    ok = FieldMap.from_settings({"category": "same", "priority": {"Low": "4", "High": 2},
                                 "subcategory": {"Hardware": {"Laptop": "Laptops", "Other": "Misc HW"},
                                                 "Network": "same"}}, "connectors.settings.x.field_map")
    ok.check(TAXONOMY, required=["priority"])
    assert ok.vendor("priority", "High") == 2 and ok.vendor("category", "Network") == "Network"
    assert ok.vendor("subcategory", "Other", parent="Hardware") == "Misc HW"
    assert ok.vendor("subcategory", "VPN", parent="Network") == "VPN"
    assert ok.label("priority", "4") == "Low" and ok.label("priority", 2) == "High"
    assert ok.label("subcategory", "misc hw", parent="Hardware") == "Other"
    assert ok.label("priority", "Highest") is None
    bad = FieldMap.from_settings({"priority": {"Low": "4", "Urgent": "1"},
                                  "subcategory": {"Hardware": {"Laptop": "L"}}}, "fm")
    with pytest.raises(ConnectorConfigError) as err:
        bad.check(TAXONOMY, required=["category"])
    msg = str(err.value)
    for part in ("fm.category: missing", "fm.priority: no vendor value for label 'High'",
                 "fm.priority.Urgent: not a label", "fm.subcategory.Hardware: no vendor value for label 'Other'",
                 "fm.subcategory.Network: missing"):
        assert part in msg
    with pytest.raises(ConnectorConfigError):
        FieldMap.from_settings({"priority": {"Low": None}}, "fm")
    with pytest.raises(ConnectorConfigError):
        FieldMap.from_settings({"summary": "same"}, "fm").check(parse_taxonomy(
            {"name": "s", "fields": {"summary": {"type": "text"}}}))


class Source:
    """A poller over a list of (created, id) tickets: the cursor is the last `created:id` seen."""

    poll_interval = 60.0

    def __init__(self):
        self.tickets: list[tuple[int, str]] = []
        self.fail = False

    def poll(self, cursor):
        if self.fail:
            raise VendorError("vendor down", retryable=True)
        after = tuple(int(x) if i == 0 else x for i, x in enumerate(cursor.split(":"))) if cursor else (0, "")
        new = sorted(t for t in self.tickets if t > after)
        tickets = [InboundTicket(connector="src", ref=ref, event_key=f"created:{ref}", text=f"ticket {ref}")
                   for _, ref in new]
        return PollResult(tickets, f"{new[-1][0]}:{new[-1][1]}" if new else None)

    def parse_webhook(self, body, headers, query):
        return []

    def write_back(self, ticket, plan, result):
        raise NotImplementedError


def test_poll_cursor_survives_a_restart_without_repeats_or_gaps(tmp_path):
    url = f"sqlite:///{tmp_path / 'poll.db'}"
    source = Source()
    source.tickets = [(1, "a"), (2, "b")]

    def runner():
        store = Store(url)
        store.upgrade()
        return PollRunner("src", source, store, JobQueue(store), Policy()), store

    first, store = runner()
    first.run()
    assert (first.stats.queued, store.cursor("src")) == (2, "2:b")
    source.tickets += [(2, "c"), (3, "d")]  # "c" shares b's timestamp
    source.fail = True
    first.run()  # an outage keeps the cursor
    assert store.cursor("src") == "2:b" and first.stats.errors == 1
    source.fail = False
    store.dispose()
    second, store = runner()  # a restart: a new process reads the cursor from the database
    second.run()
    assert second.stats.queued == 2 and second.stats.duplicates == 0
    assert sorted(j.ticket_ref for j in JobQueue(store).list()) == ["a", "b", "c", "d"]
    assert store.cursor("src") == "3:d"
    store.dispose()
