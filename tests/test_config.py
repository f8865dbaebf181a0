from __future__ import annotations

import pytest
import yaml

from triage_core import ConfigError, load_config
from triage_core.config import DEFAULTS

from conftest import ROOT


def test_default_yaml_matches_embedded_defaults():
    data = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    assert set(data) == set(DEFAULTS)
    for section in DEFAULTS:
        assert data[section] == DEFAULTS[section], section


def test_defaults_without_a_file():
    cfg = load_config(env={})
    assert cfg["model"]["base"] == "smollm2-135m-instruct"
    assert cfg.taxonomy_path == ROOT / "config" / "taxonomy.yaml"


def test_file_then_env_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  threads: 1\n  adapter: adapters/x\ndecoding:\n  batch_size: 4\n")
    cfg = load_config(path, env={"TRIAGE_DECODING_BATCH_SIZE": "2", "TRIAGE_MODEL_LOAD_IN_4BIT": "true"})
    assert cfg["model"]["threads"] == 1
    assert cfg["decoding"]["batch_size"] == 2
    assert cfg["model"]["load_in_4bit"] is True
    assert cfg.path(cfg["model"]["adapter"]) == tmp_path / "adapters" / "x"
    # The user wrote the adapter path, so it resolves against their file; the taxonomy they did not write is
    # the shipped one, wherever their file lives.
    assert cfg.taxonomy_path == ROOT / "config" / "taxonomy.yaml"


@pytest.mark.parametrize("text, message", [
    ("model:\n  thread: 2\n", "model.thread: unknown setting"),
    ("model:\n  threads: two\n", "model.threads: expected int"),
    ("decoding: 3\n", "decoding: expected a mapping"),
    ("model:\n  dtype: int8\n", "model.dtype"),
    ("decoding:\n  batch_size: 0\n", "decoding.batch_size"),
    ("[1, 2]\n", "expected a mapping"),
])
def test_bad_config_names_the_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert str(err.value).startswith(str(path))
    assert message in str(err.value)


def test_bad_env_override_names_the_variable():
    with pytest.raises(ConfigError, match="TRIAGE_MODEL_THREADS: model.threads"):
        load_config(env={"TRIAGE_MODEL_THREADS": "many"})


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", env={})
