"""The README as a newcomer follows it (issue 16): the bootstrap sequence from an export to a daemon serving the new
adapter, with the shipped files untouched; nothing overwritten silently; small configs anywhere; errors that name
the fix. Every command is a real `ticket-triage` subprocess in an empty folder, with no TRIAGE_* variable leaking in
from the developer's shell."""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click
import pytest
import requests

from triage_core.config import ConfigError, load_config

from conftest import ROOT

BIN = Path(sys.executable).parent
EXE = str(BIN / "ticket-triage")
ENDAVA = ROOT.parent / "shared" / "data" / "endava_topic_group.csv"


def clean_env(**extra: str) -> dict[str, str]:
    """The user's environment without any TRIAGE_* variable, the venv first on PATH, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600):
    proc = subprocess.run([EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=clean_env(**(env or {})))
    return proc.returncode, proc.stdout, proc.stderr


def errors(stderr: str) -> list[str]:
    """The lines of stderr that are not progress bars or warnings from libraries."""
    return [line for line in stderr.splitlines() if line.strip() and "\r" not in line and "%|" not in line]


def closed_csv(path: Path, rows: int = 120) -> Path:
    """A slice of the Endava set shaped like the README's export (Subject, Description, Assignment group)."""
    if not ENDAVA.is_file():
        pytest.skip(f"{ENDAVA} is not there (the shared evaluation sets)")
    with ENDAVA.open(newline="", encoding="utf-8") as f:
        source = list(csv.DictReader(f))[:rows]
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["Subject", "Description", "Assignment group"])
        for r in source:
            out.writerow([r["title"], r["body"], r["topic_group"]])
    return path


def shipped_hashes() -> dict[str, str]:
    files = [ROOT / "config" / "taxonomy.yaml", ROOT / "config" / "default.yaml",
             *sorted(p for p in (ROOT / "adapters" / "default-it").rglob("*") if p.is_file())]
    return {str(p.relative_to(ROOT)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def readme_blocks(section: str) -> list[str]:
    """The ```sh blocks of one README section, as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 4)
    return re.findall(r"```sh\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- nothing is overwritten silently ---------------------------------------------------------------------------

def test_infer_and_import_refuse_to_overwrite_without_force(tmp_path):
    data = tmp_path / "closed.csv"
    data.write_text("Subject,Group\nVPN down,Network\nPrinter jams,Hardware\nVPN slow,Network\n")
    mine = tmp_path / "taxonomy.yaml"
    mine.write_text("# my reviewed taxonomy\n")
    code, _, err = cli("taxonomy", "infer", "--data", str(data), "--map", "text=Subject",
                       "--map", "assignment_group=Group", "-o", str(mine), cwd=tmp_path)
    assert code != 0 and len(errors(err)) == 1
    assert f"--out {mine}: the file exists; pass --force" in err
    assert mine.read_text() == "# my reviewed taxonomy\n"
    code, out, err = cli("taxonomy", "infer", "--data", str(data), "--map", "text=Subject",
                         "--map", "assignment_group=Group", "-o", str(mine), "--force", cwd=tmp_path)
    assert code == 0, err
    assert "Network" in mine.read_text() and "wrote" in out

    records = tmp_path / "closed.jsonl"
    records.write_text("keep me\n")
    code, _, err = cli("import", str(data), "--map", "text=Subject", "--map", "assignment_group=Group",
                       "--taxonomy", str(mine), "-o", str(records), cwd=tmp_path)
    assert code != 0 and "pass --force" in err and records.read_text() == "keep me\n"
    test_out = tmp_path / "test.jsonl"
    test_out.write_text("mine too\n")
    code, _, err = cli("import", str(data), "--map", "text=Subject", "--map", "assignment_group=Group",
                       "--taxonomy", str(mine), "-o", str(tmp_path / "new.jsonl"), "--test-out", str(test_out),
                       cwd=tmp_path)
    assert code != 0 and f"--test-out {test_out}: the file exists" in err
    assert test_out.read_text() == "mine too\n" and not (tmp_path / "new.jsonl").exists()


# --- small configs anywhere ------------------------------------------------------------------------------------

def test_a_small_config_outside_config_finds_the_shipped_files(tmp_path):
    mine = tmp_path / "some" / "dir" / "mine.yaml"
    mine.parent.mkdir(parents=True)
    mine.write_text("policy: {shadow: true}\n")
    cfg = load_config(mine, env={})
    assert cfg["policy"]["shadow"] is True
    assert cfg.taxonomy_path == ROOT / "config" / "taxonomy.yaml"
    assert cfg.path(cfg["model"]["adapter"]) == ROOT / "adapters" / "default-it"
    # Paths the user writes resolve against the user's file; the other default still names the shipped file.
    mine.write_text("policy: {shadow: true}\nmodel: {adapter: ours/adapter}\n")
    cfg = load_config(mine, env={})
    assert cfg.path(cfg["model"]["adapter"]) == mine.parent / "ours" / "adapter"
    assert cfg.taxonomy_path == ROOT / "config" / "taxonomy.yaml"
    # As a user runs it, from another folder.
    code, out, err = cli("taxonomy", "check", cwd=tmp_path, env={"TRIAGE_CONFIG": str(mine)})
    assert code == 0, err
    assert out.startswith(f"{ROOT / 'config' / 'taxonomy.yaml'}: ok, taxonomy 'default-it'")


def test_config_dir_names_where_the_shipped_files_are(tmp_path):
    (tmp_path / "taxonomy.yaml").write_text((ROOT / "config" / "taxonomy.yaml").read_text())
    cfg = load_config(env={"TRIAGE_CONFIG_DIR": str(tmp_path)})
    assert cfg.taxonomy_path == tmp_path / "taxonomy.yaml"
    assert cfg.path(cfg["model"]["adapter"]) == tmp_path.parent / "adapters" / "default-it"


# --- bad values stop start-up naming the key; unknown variables are warned about ---------------------------------

def test_an_out_of_range_port_stops_serve_naming_the_variable(tmp_path):
    code, out, err = cli("serve", cwd=tmp_path, env={"TRIAGE_SERVER_PORT": "99999"})
    assert code != 0 and "listening" not in out + err
    assert errors(err) == ["error: environment TRIAGE_SERVER_PORT: server.port: must be between 1 and 65535, "
                           "got 99999"]
    mine = tmp_path / "mine.yaml"
    mine.write_text("server: {port: 0}\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(mine))}: server.port: must be between 1 and 65535"):
        load_config(mine, env={})


@pytest.mark.parametrize("env, message", [
    ({"TRIAGE_MODEL_DTYPE": "int8"}, "environment TRIAGE_MODEL_DTYPE: model.dtype: expected bfloat16"),
    ({"TRIAGE_POLICY_DEFAULT_THRESHOLD": "1.5"}, "environment TRIAGE_POLICY_DEFAULT_THRESHOLD: "
                                                 "policy.default_threshold: must be between 0 and 1"),
    ({"TRIAGE_QUEUE_MAX_ATTEMPTS": "0"}, "environment TRIAGE_QUEUE_MAX_ATTEMPTS: queue.max_attempts: must be at "
                                         "least 1"),
])
def test_value_errors_name_the_variable_that_set_them(env, message):
    with pytest.raises(ConfigError) as err:
        load_config(env=env)
    assert str(err.value).startswith(message) and "<defaults>" not in str(err.value)


def test_a_misspelt_setting_is_warned_about_and_secrets_are_not(tmp_path, caplog):
    mine = tmp_path / "mine.yaml"
    mine.write_text("server: {api_token_env: TRIAGE_DESK_TOKEN}\n"
                    "connectors: {settings: {jira: {secret_env: TRIAGE_SERVER_HOOK}}}\n")
    env = {"TRIAGE_SERVER_PROT": "9000", "TRIAGE_POLICY_SHADOWW": "true", "TRIAGE_MODLE_DTYPE": "float32",
           "TRIAGE_API_TOKEN": "x", "TRIAGE_DESK_TOKEN": "x", "TRIAGE_SERVER_HOOK": "x",
           "TRIAGE_JIRA_API_TOKEN": "x", "TRIAGE_GENERIC_SECRET": "x", "TRIAGE_ZOHO_CLIENT_ID": "x",
           "TRIAGE_TEST_SLOW": "1", "TRIAGE_CONFIG_DIR": str(ROOT / "config"), "TRIAGE_SERVER_PORT": "9001"}
    with caplog.at_level(logging.WARNING, logger="triage_core.config"):
        cfg = load_config(mine, env=env)
    assert cfg["server"]["port"] == 9001
    warned = sorted(re.findall(r"environment (TRIAGE_\w+) matches no setting", caplog.text))
    assert warned == ["TRIAGE_MODLE_DTYPE", "TRIAGE_POLICY_SHADOWW", "TRIAGE_SERVER_PROT"]
    assert "TRIAGE_SERVER_PROT matches no setting and is ignored (did you mean TRIAGE_SERVER_PORT?)" in caplog.text
    # The command line shows it (logging at its default level), and goes on.
    code, out, err = cli("taxonomy", "check", cwd=tmp_path, env={"TRIAGE_SERVER_PROT": "9000",
                                                                 "TRIAGE_JIRA_API_TOKEN": "x"})
    assert code == 0 and "ok, taxonomy" in out
    assert "TRIAGE_SERVER_PROT matches no setting" in err and "TRIAGE_JIRA_API_TOKEN" not in err


# --- PostgreSQL without its driver: one line everywhere ---------------------------------------------------------

@pytest.mark.parametrize("args", [("db", "upgrade"), ("jobs", "list"), ("jobs", "retry", "--all"),
                                  ("models", "list"), ("models", "rollback"), ("retrain", "--now"), ("serve",)])
def test_postgres_without_psycopg_is_one_line_naming_the_extra(tmp_path, args):
    # psycopg is installed for the PostgreSQL tests: hide it from the child, as a machine without it would.
    hidden = tmp_path / "no-psycopg"
    hidden.mkdir()
    (hidden / "psycopg.py").write_text('raise ModuleNotFoundError("No module named \'psycopg\'", name="psycopg")\n')
    code, out, err = cli(*args, cwd=tmp_path,
                         env={"TRIAGE_DATABASE_URL": "postgresql+psycopg://triage:pw@db.example/triage",
                              "PYTHONPATH": str(hidden)})
    assert code != 0
    assert errors(err) == ["error: database.url db.example/triage: the database driver 'psycopg' is not "
                           "installed; pip install 'ticket-triage[postgres]'"]
    assert "pw" not in err and "Traceback" not in err


# --- jobs, models, train, bench: errors that name the fix -------------------------------------------------------

def test_jobs_retry_of_an_unknown_or_live_id_is_an_error(tmp_path):
    from triage_core.queue import InboundTicket, JobQueue
    from triage_core.store import Store

    store = Store(f"sqlite:///{tmp_path / 'triage.db'}")
    store.upgrade()
    job = JobQueue(store).submit(InboundTicket(connector="generic", ref="T-1", event_key="e1", text="VPN down"))
    store.dispose()
    code, out, err = cli("jobs", "retry", "999", cwd=tmp_path)
    assert code != 0 and "re-queued" not in out
    assert errors(err) == ["error: no job with id 999 (see `ticket-triage jobs list`)"]
    code, out, err = cli("jobs", "retry", str(job.job_id), cwd=tmp_path)
    assert code != 0 and f"not dead: {job.job_id} (queued)" in err


def test_models_add_refuses_an_adapter_of_another_taxonomy_and_registers_a_matching_one(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("name: other\nfields:\n  assignment_group:\n    values: [Desk A, Desk B]\n")
    shipped = ROOT / "adapters" / "default-it"
    code, _, err = cli("models", "add", str(shipped), "--taxonomy", str(other), cwd=tmp_path)
    assert code != 0 and len(errors(err)) == 1
    assert "was trained for taxonomy 76a3952f" in err and str(other) in err
    code, _, err = cli("models", "add", str(tmp_path), cwd=tmp_path)
    assert code != 0 and "has no adapter_config.json" in err

    code, out, err = cli("models", "add", str(shipped), "--json", cwd=tmp_path)
    assert code == 0, err
    added = json.loads(out)
    assert added["tag"] == "default-it@2" and added["status"] == "challenger"
    assert added["adapter_path"] == str(shipped) and added["taxonomy_hash"] == "76a3952f90ec2924"
    assert added["metrics"]["data"]["records"] == 2341
    code, _, err = cli("models", "add", str(shipped), cwd=tmp_path)
    assert code != 0 and "default-it@2 is already registered" in err
    code, out, err = cli("models", "promote", "default-it@2", cwd=tmp_path)
    assert code == 0 and "default-it@2 is the champion" in out
    code, out, _ = cli("models", "list", "--json", cwd=tmp_path)
    assert [(m["tag"], m["status"]) for m in json.loads(out)] == [("default-it@2", "champion")]


def test_partial_labels_off_names_the_setting_that_fixes_it(tmp_path):
    data = tmp_path / "closed.jsonl"
    data.write_text("".join(json.dumps({"text": t, "labels": {"category": c}}) + "\n"
                            for t, c in [("VPN drops", "Network"), ("Printer jams", "Hardware")]))
    code, _, err = cli("train", "--data", str(data), "--out", str(tmp_path / "a"), cwd=tmp_path,
                       env={"TRIAGE_TRAIN_PARTIAL_LABELS": "false"})
    assert code != 0 and len(errors(err)) == 1
    assert "no usable training records" in err
    assert "TRIAGE_TRAIN_PARTIAL_LABELS=true" in err and "train.partial_labels" in err
    assert not (tmp_path / "a").exists()


def test_every_train_and_eval_option_has_help():
    from trainer.train_cli import eval_command, train_command

    for command in (train_command, eval_command):
        missing = [p.name for p in command.params if isinstance(p, click.Option) and not p.help]
        assert missing == [], f"{command.name}: options without help: {missing}"


def test_retrain_curve_takes_its_data_path(tmp_path):
    script = str(ROOT / "bench" / "retrain_curve.py")
    proc = subprocess.run([sys.executable, script, str(tmp_path / "nope.csv")], capture_output=True, text=True,
                          env=clean_env())
    assert proc.returncode == 2
    assert f"{tmp_path / 'nope.csv'}: file not found; give the path to endava_topic_group.csv" in proc.stderr
    proc = subprocess.run([sys.executable, script], capture_output=True, text=True, env=clean_env())
    assert proc.returncode == 2 and "required: data" in proc.stderr


GROUPS = {"taxonomy", "models", "jobs", "db"}
CHEAP = {("taxonomy", "check"), ("taxonomy", "schema"), ("db", "upgrade"), ("jobs", "list"), ("jobs", "retry"),
         ("models", "list")}


def readme_commands() -> list[str]:
    """Every `ticket-triage ...` command line in the README (code blocks and inline code), alternatives skipped."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            m = re.search(r"(?:^|\s)(?:\.venv/bin/)?ticket-triage\s+(.*)", line.split(" #")[0])
            if m:
                found.append(m.group(1).strip())
    found += re.findall(r"`(?:\.venv/bin/)?ticket-triage ([^`]+)`", text)
    return [c for c in found if "|" not in c]


def test_every_readme_command_and_option_exists(tmp_path):
    commands = readme_commands()
    assert any(c.startswith("models add") for c in commands) and len(commands) > 15
    helps: dict[tuple[str, ...], str] = {}
    for command in commands:
        words = command.split()
        path = tuple(words[:2]) if words[0] in GROUPS and len(words) > 1 else (words[0],)
        if path not in helps:
            code, out, err = cli(*path, "--help", cwd=tmp_path)
            assert code == 0, f"ticket-triage {' '.join(path)}: {err}"
            helps[path] = out
        for option in re.findall(r"(?:^|\s)(--[a-z][a-z0-9-]*|-o)(?==|\s|$)", command):
            assert re.search(rf"(?:^|[\s,/]){re.escape(option)}\b", helps[path]), \
                f"README: ticket-triage {command}: {' '.join(path)} has no {option}"
    # The cheap ones (no model, no input file) run as written in an empty folder.
    cheap = [c for c in commands if tuple(c.split()[:2]) in CHEAP]
    assert len(cheap) >= 5
    for command in cheap:
        code, out, err = cli(*command.split(), cwd=tmp_path)
        assert code == 0, f"README: ticket-triage {command}: {err}"
    assert (tmp_path / "triage.db").is_file()  # the default database, in the folder the user is in


# --- the retraining window --------------------------------------------------------------------------------------

class ClosedSource:
    def __init__(self, records):
        self.records = records
        self.asked = []

    def closed_tickets(self, since):
        self.asked.append(since)
        return [r for r in self.records if datetime.fromisoformat(r["closed_at"]) > since]


def started(store, run_id: int) -> datetime:
    """When a retraining run started, as recorded (UTC)."""
    from triage_core.store import RetrainRun

    with store.session(readonly=True) as s:
        at = s.get(RetrainRun, run_id).started_at
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def test_a_run_that_does_not_promote_leaves_its_window_for_the_next(tmp_path, taxonomy):
    from trainer.retrain import Retrainer
    from triage_core.store import RetrainRun, Store, utcnow

    config = load_config(env={}, overrides={
        "database": {"url": f"sqlite:///{tmp_path / 'triage.db'}"},
        "retrain": {"min_records": 1000, "lookback_days": 30, "output_dir": str(tmp_path / "runs")}})
    store = Store(config["database"]["url"])
    store.upgrade()
    now = datetime.now(timezone.utc)
    source = ClosedSource([{"id": f"J-{i}", "text": f"VPN drops on laptop {i}", "source": "jira",
                            "labels": {"category": "Network"}, "closed_at": (now - timedelta(days=2)).isoformat()}
                           for i in range(5)])
    first = Retrainer(config, store, {"jira": source}).run()
    assert first.state == "kept" and "not enough data" in first.decision
    second = Retrainer(config, store, {"jira": source}).run()
    assert second.counts["sources"]["jira"] == 5  # the first run's tickets are gathered again
    # Its window still reaches back lookback_days, before those tickets, not to the start of the first run.
    assert source.asked[1] < now - timedelta(days=29) < started(store, first.id)

    # A promoted run moves the window to its start; a later kept run (challenger not promoted) does not.
    promoted_at, kept_at = utcnow() - timedelta(hours=5), utcnow() - timedelta(hours=1)
    with store.session() as s:
        s.add(RetrainRun(state="promoted", owner="t", since=promoted_at - timedelta(days=1), counts={},
                         metrics={}, started_at=promoted_at, finished_at=promoted_at))
        s.add(RetrainRun(state="kept", owner="t", since=promoted_at, counts={}, metrics={}, started_at=kept_at,
                         finished_at=kept_at, decision="category macro-F1 0.1 < champion 0.5 - 0.02"))
    assert Retrainer(config, store, {}).since().replace(tzinfo=None) == promoted_at.replace(tzinfo=None)
    third = Retrainer(config, store, {"jira": source}).run()
    assert source.asked[-1].replace(tzinfo=None) == promoted_at.replace(tzinfo=None)
    assert third.counts["since"] == source.asked[-1].isoformat()
    store.dispose()


# --- slow: the model is loaded -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_trained_challenger_that_is_kept_leaves_its_window_for_the_next_run(tmp_path, taxonomy):
    from trainer.retrain import Retrainer
    from trainer.synthetic import generate
    from triage_core.registry import ModelRegistry
    from triage_core.store import Store

    def config(**retrain):
        return load_config(env={}, overrides={
            "database": {"url": f"sqlite:///{tmp_path / 'triage.db'}"}, "train": {"batch_size": 2, "max_length": 256},
            "retrain": {"max_steps": 2, "min_records": 10, "min_holdout": 4, "holdout_fraction": 0.25,
                        "lookback_days": 30, "output_dir": str(tmp_path / "runs"), "synthetic_per_label": 0,
                        "threads": 1, **retrain}})

    start = datetime.now(timezone.utc) - timedelta(days=3)
    source = ClosedSource([{"id": f"J-{i}", "text": r["text"], "source": "jira", "closed_at":
                            (start + timedelta(minutes=i)).isoformat(),
                            "labels": {k: v for k, v in r["labels"].items() if k != "summary"}}
                           for i, r in enumerate(generate(taxonomy, 16, seed=11))])
    store = Store(config()["database"]["url"])
    store.upgrade()
    kept = Retrainer(config(margin=-1.0), store, {"jira": source}).run(timeout=900)  # must gain a full point
    assert kept.state == "kept" and "macro-F1" in kept.decision and kept.challenger
    assert ModelRegistry(store).champion() is None
    again = Retrainer(config(min_records=1000), store, {"jira": source}).run()
    assert again.counts["sources"]["jira"] == 16 == kept.counts["sources"]["jira"]
    assert source.asked[1] < start < started(store, kept.id)  # the lookback window again, not the kept run's
    store.dispose()


@pytest.mark.slow
def test_train_resume_without_a_checkpoint_says_so(tmp_path):
    from trainer.synthetic import generate
    from triage_core.taxonomy import load_taxonomy

    tax = load_taxonomy(ROOT / "config" / "taxonomy.yaml")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in generate(tax, 8, seed=3)))
    code, _, err = cli("train", "--data", str(data), "--out", str(tmp_path / "a"), "--resume", "--no-lexical",
                       "--max-steps", "1", "--batch-size", "2", cwd=tmp_path)
    assert code == 0, err
    assert f"warning: --resume: no checkpoint in {tmp_path / 'a' / 'checkpoints'}; training from the start" in err
    assert (tmp_path / "a" / "triage_adapter.json").is_file()


@pytest.mark.slow
def test_the_readme_bootstrap_sequence_ends_with_the_daemon_serving_the_new_adapter(tmp_path):
    """Every command of "Start from your own history", as written, from an empty folder: export -> taxonomy ->
    records -> adapter -> eval -> switch-over -> serve, on 120 real tickets with a two-step training budget."""
    before = shipped_hashes()
    work = tmp_path / "desk"
    work.mkdir()
    closed_csv(work / "closed.csv")
    blocks = readme_blocks("Start from your own history")
    script = "\n".join(blocks)
    lines = script.rstrip().splitlines()
    assert lines[-1].split("#")[0].strip() == "ticket-triage serve", "the sequence ends by serving"
    port, token = free_port(), "t0ken"
    env = {"TRIAGE_TRAIN_MAX_STEPS": "2", "TRIAGE_SERVER_PORT": str(port), "TRIAGE_API_TOKEN": token,
           "TRIAGE_GENERIC_SECRET": "s3cret", "TRIAGE_POLICY_SHADOW": "true"}
    setup = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines[:-1])], cwd=work,
                           capture_output=True, text=True, timeout=1800, env=clean_env(**env))
    assert setup.returncode == 0, setup.stderr[-3000:]
    desk = work / "our-desk"
    assert {p.name for p in desk.iterdir()} >= {"taxonomy.yaml", "closed.jsonl", "test.jsonl", "adapter", "report",
                                                "config.yaml"}
    assert re.search(r"^model: SmolLM2-135M-Instruct \+ adapter@\d+$", setup.stdout, flags=re.M), setup.stdout
    assert "{'base'" not in setup.stdout
    assert "is the champion" in setup.stdout
    meta = json.loads((desk / "adapter" / "triage_adapter.json").read_text())
    tag = f"{meta['name']}@{meta['version']}"

    # The README's last line, with what its `export` set: the daemon on the new taxonomy and adapter.
    serve_env = clean_env(**env, TRIAGE_CONFIG="our-desk/config.yaml")
    daemon = subprocess.Popen(["bash", "-c", lines[-1]], cwd=work, env=serve_env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 600
        while True:
            assert daemon.poll() is None, daemon.stdout.read()[-3000:]
            try:
                if requests.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # gunicorn queues connections while it loads
                pass
            assert time.time() < deadline, "the daemon did not become ready"
            time.sleep(0.5)
        auth = {"Authorization": f"Bearer {token}"}
        # No Content-Type header at all (as `curl -d` without -H): the JSON body is read anyway.
        r = requests.post(url + "/v1/triage", data=json.dumps({"text": "please reset my vpn password"}).encode(),
                          headers=auth, timeout=120)
        assert "Content-Type" not in r.request.headers
        assert r.status_code == 200, r.text
        result = r.json()
        assert result["model"]["adapter"] == tag
        from triage_core.taxonomy import load_taxonomy

        desk_tax = load_taxonomy(desk / "taxonomy.yaml")
        assert set(result["ticket"]) == set(desk_tax.field_names)
        assert result["ticket"]["assignment_group"] in desk_tax["assignment_group"].values
        bad = requests.post(url + "/v1/triage", data=b"text=hello", timeout=30,
                            headers={**auth, "Content-Type": "application/x-www-form-urlencoded"})
        assert bad.status_code == 400 and "application/x-www-form-urlencoded" in bad.json()["error"]
        ready = requests.get(url + "/readyz", timeout=30).json()
        assert ready["model_info"]["adapter"] == tag
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            log, _ = daemon.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            log, _ = daemon.communicate()
    assert f"listening on http://127.0.0.1:{port}" in log and f"+ {tag}" in log
    assert "shadow mode is on (policy.shadow)" in log

    code, out, err = cli("models", "list", "--json", cwd=work, env={"TRIAGE_CONFIG": "our-desk/config.yaml"})
    assert code == 0, err
    models = json.loads(out)
    assert [(m["tag"], m["status"], m["adapter_path"]) for m in models] == [(tag, "champion",
                                                                             str(desk / "adapter"))]
    # The human `triage` output shows alternatives with --distributions.
    code, out, err = cli("triage", "--distributions", "the printer on floor 3 jams", cwd=work,
                         env={"TRIAGE_CONFIG": "our-desk/config.yaml"})
    assert code == 0, err
    assert re.search(r"assignment_group: .+\n\s+also: .+ \(\d+%\)", out), out
    assert shipped_hashes() == before
