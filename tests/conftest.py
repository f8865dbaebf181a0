"""Shared fixtures. Model tests use the real bundled model (SmolLM2-135M-Instruct); it is loaded once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from triage_core import Triager, load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def config():
    return load_config(env={})


@pytest.fixture(scope="session")
def triager(config):
    return Triager.from_config(config)


@pytest.fixture(scope="session")
def taxonomy(triager):
    return triager.taxonomy
