"""connectors.settings.Settings: the one reader behind every connector factory's settings checks."""
import math

import pytest

from connectors.base import ConnectorConfigError, retriage_settings
from connectors.settings import Settings

KEY = "connectors.settings.acme"
DEFAULTS = {"base_url": None, "token_env": "ACME_TOKEN", "timeout": 10.0, "page_size": 100, "leeway": 60.0,
            "mode": "fast", "hosts": ["localhost"], "retriage": "off", "retriage_fields": []}


def reader(env=None, **settings) -> Settings:
    return Settings(settings, DEFAULTS, KEY, {"ACME_TOKEN": "s3cret"} if env is None else env)


def test_unknown_key_is_refused_before_anything_is_read():
    with pytest.raises(ConnectorConfigError) as err:
        reader(env={}, timeuot=5)  # the secret is missing too, but the typo is what the user must see first
    assert str(err.value) == (f"{KEY}.timeuot: unknown setting (expected base_url, token_env, timeout, page_size, "
                              "leeway, mode, hosts, retriage, retriage_fields)")


def test_defaults_apply_under_the_given_settings():
    s = reader(timeout=3, mode="slow")
    assert s["timeout"] == 3 and s["mode"] == "slow" and s["page_size"] == 100 and s["base_url"] is None
    assert dict(s) == {**DEFAULTS, "timeout": 3, "mode": "slow"} and len(s) == len(DEFAULTS)
    assert s.number("timeout") == 3.0 and isinstance(s.number("timeout"), float)
    assert retriage_settings(s, s.key).mode == "off"  # a Mapping, so the shared helpers read it as is


def test_text_is_stripped_and_optional_unless_required():
    assert reader(base_url="  https://acme.example ").text("base_url") == "https://acme.example"
    assert reader().text("base_url") is None
    for value in (None, "  ", 3):
        with pytest.raises(ConnectorConfigError, match=rf"^{KEY}\.base_url: expected a non-empty string, got "):
            reader(base_url=value).text("base_url", required=True)


def test_secret_comes_from_the_environment_and_its_absence_names_the_variable():
    assert reader().secret("token_env") == "s3cret"
    with pytest.raises(ConnectorConfigError) as err:
        reader(env={"ACME_TOKEN": ""}).secret("token_env", "it signs the callbacks")
    assert str(err.value) == f"{KEY}.token_env: environment variable ACME_TOKEN is not set; it signs the callbacks"
    assert "s3cret" not in str(err.value)
    with pytest.raises(ConnectorConfigError, match=rf"^{KEY}\.token_env: environment variable OTHER is not set$"):
        reader(token_env="OTHER").secret("token_env")
    for value in (None, "", 7):
        with pytest.raises(ConnectorConfigError,
                           match=rf"^{KEY}\.token_env: expected the name of an environment variable$"):
            reader(token_env=value).secret("token_env")
    assert reader(env={"X": "x"}, token_env=" X ").secret("token_env", var="X") == "x"  # a caller's own reading


@pytest.mark.parametrize("value", [0, -1, math.inf, math.nan, True, "10", None])
def test_number_must_be_positive_and_finite(value):
    with pytest.raises(ConnectorConfigError, match=rf"^{KEY}\.timeout: expected a positive number, got "):
        reader(timeout=value).number("timeout")
    with pytest.raises(ConnectorConfigError, match=r"expected a positive number of seconds, got "):
        reader(timeout=value).number("timeout", unit="seconds")


def test_number_options():
    assert reader(leeway=0).number("leeway", zero_ok=True) == 0.0
    with pytest.raises(ConnectorConfigError, match=r"leeway: expected a positive number, got -1"):
        reader(leeway=-1).number("leeway", zero_ok=True)
    assert reader(page_size=50).number("page_size", integer=True) == 50
    whole = reader(page_size=50.0).number("page_size", integer=True)
    assert whole == 50 and isinstance(whole, int)
    with pytest.raises(ConnectorConfigError, match=rf"^{KEY}\.page_size: expected a positive integer, got 2\.5$"):
        reader(page_size=2.5).number("page_size", integer=True)


def test_choice_names_the_allowed_values():
    assert reader(mode="slow").choice("mode", ("fast", "slow")) == "slow"
    with pytest.raises(ConnectorConfigError) as err:
        reader(mode="warp").choice("mode", ("fast", "slow"))
    assert str(err.value) == f"{KEY}.mode: expected one of fast, slow, got 'warp'"


def test_names_are_a_list_of_non_blank_strings():
    assert reader(hosts=[" a ", "b"]).names("hosts") == ["a", "b"]
    assert reader(hosts=[]).names("hosts", empty_ok=True) == []
    with pytest.raises(ConnectorConfigError, match=rf"^{KEY}\.hosts: expected a non-empty list of names$"):
        reader(hosts=[]).names("hosts")
    for value in ("localhost", ["ok", " "], [1], None):
        with pytest.raises(ConnectorConfigError, match=rf"^{KEY}\.hosts: expected a list of host names$"):
            reader(hosts=value).names("hosts", empty_ok=True, noun="host names")


def test_error_names_the_key():
    err = reader().error("field_map.priority", "no vendor value")
    assert isinstance(err, ConnectorConfigError) and str(err) == f"{KEY}.field_map.priority: no vendor value"
