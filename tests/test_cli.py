"""The `ticket-triage` command as a user runs it: a real subprocess, real model, one-line errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXE = shutil.which("ticket-triage", path=str(Path(sys.executable).parent)) or "ticket-triage"


def run(*args, stdin: bytes | None = None, env: dict | None = None):
    proc = subprocess.run([EXE, *args], input=stdin, capture_output=True, timeout=300,
                          env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def test_help_lists_subcommands():
    code, out, _ = run("--help")
    assert code == 0
    assert "triage" in out and "taxonomy" in out


@pytest.mark.slow
def test_triage_text_json():
    code, out, err = run("triage", "--json", "Outlook crashes when I open a shared calendar")
    assert code == 0, err
    data = json.loads(out)
    assert set(data) == {"ticket", "confidence", "model", "latency_ms"}
    from triage_core import load_config, load_taxonomy, validate_ticket

    config = load_config(env={})
    taxonomy = load_taxonomy(config.taxonomy_path)
    validate_ticket(taxonomy, data["ticket"])  # the whole ticket, against the taxonomy's JSON Schema
    assert set(data["ticket"]) == set(taxonomy.field_names) and data["ticket"]["summary"].strip()
    assert set(data["confidence"]) == {f.name for f in taxonomy.enum_fields}
    assert all(0.0 < p <= 1.0 for p in data["confidence"].values())
    shipped = json.loads((config.path(config["model"]["adapter"]) / "triage_adapter.json").read_text())
    assert data["model"] == {"base": "SmolLM2-135M-Instruct", "adapter": f"{shipped['name']}@{shipped['version']}"}
    assert isinstance(data["latency_ms"], int) and data["latency_ms"] > 0


@pytest.mark.slow
def test_triage_stdin_and_human_output():
    code, out, err = run("triage", "-", stdin="El wifi de la sala 2 no funciona".encode())
    assert code == 0, err
    assert "category:" in out and "confidence" not in out and "%" in out


@pytest.mark.slow
def test_triage_file_jsonl(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "A-1", "text": "cannot log in to SAP"}\n\n"printer jam on floor 2"\n')
    code, out, err = run("triage", "--file", str(path))
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [d["id"] for d in lines] == ["A-1", "3"]


@pytest.mark.parametrize("args, stdin, message", [
    (("triage", ""), None, "empty text"),
    (("triage", "-"), b"   \n", "empty text"),
    (("triage", "-"), b"caf\xe9 machine broken", "not UTF-8"),
    (("triage",), None, "give the ticket text"),
    (("triage", "--adapter", "/nonexistent/adapter", "VPN down"), None, "does not exist"),
])
def test_bad_input_is_one_line_error(args, stdin, message):
    code, out, err = run(*args, stdin=stdin)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and message in lines[0]


def test_bad_jsonl_line_names_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "ok"}\n{"text": \n')
    code, _, err = run("triage", "--file", str(path))
    assert code != 0 and f"{path}:2: not JSON" in err


@pytest.mark.slow
def test_long_text_is_truncated_with_a_warning():
    code, out, err = run("triage", "--json", "Disk full on file server. " * 300,
                         env={"TRIAGE_DECODING_MAX_TICKET_TOKENS": "64"})
    assert code == 0, err
    assert "warning:" in err and "only the first 64" in err
    assert json.loads(out)["truncated"] is True


def test_bad_config_stops_with_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  treads: 2\n")
    code, _, err = run("--config", str(cfg), "triage", "VPN down")
    assert code != 0 and "model.treads: unknown setting" in err


def test_taxonomy_check_and_schema(tmp_path):
    code, out, _ = run("taxonomy", "check", "--json")
    assert code == 0 and json.loads(out)["fields"]["category"] == 8
    code, out, _ = run("taxonomy", "schema")
    assert code == 0 and json.loads(out)["additionalProperties"] is False
    bad = tmp_path / "bad.yaml"
    bad.write_text("fields:\n  category:\n    values: []\n")
    code, _, err = run("taxonomy", "check", str(bad))
    assert code != 0 and "fields.category.values: no values" in err
