"""The CLI prints no third-party warnings (bitsandbytes kernels, transformers deprecations) unless --verbose.

A real `ticket-triage triage` process each time: the warnings come from importing and loading the model, which a
test process that has loaded it already would not show again."""
from __future__ import annotations

import os
import subprocess

import pytest

from test_cli import EXE

pytestmark = pytest.mark.slow

NOISE = ("Warning:", "WARNING bitsandbytes", "WARNING transformers", "warnings.warn")


def run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run([EXE, *args, "triage", "--json", "Printer on floor 3 jams on every page"], env=env,
                          capture_output=True, text=True, timeout=300)


def test_no_third_party_warnings_unless_verbose():
    quiet = run()
    assert quiet.returncode == 0, quiet.stderr
    assert '"ticket"' in quiet.stdout
    assert not [n for n in NOISE if n in quiet.stderr], quiet.stderr
    loud = run("--verbose")
    assert loud.returncode == 0, loud.stderr
    assert [n for n in NOISE if n in loud.stderr], "nothing to hide: the test shows nothing"
