"""The built wheel carries everything the daemon needs at run time, and an installed copy works from any folder.

The wheel is built from a copy of the working tree (so no build/ leftovers of the checkout leak into it) and
installed without dependencies into a fresh virtualenv outside the checkout; that virtualenv reaches the
already-installed dependencies (torch included: no second download) through a .pth line naming this
interpreter's site-packages, which adds them to sys.path without running the checkout's editable hook.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import triage_core

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("triage_core", "connectors", "trainer")


def source_files() -> list[str]:
    """The working tree's files as git sees them (tracked, and untracked ones it does not ignore)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the wheel is built from the files git lists")
    src = tmp_path_factory.mktemp("src")
    for name in source_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(dist), str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (found,) = dist.glob("ticket_triage-*.whl")
    return found


def test_the_wheel_carries_the_code_the_migrations_the_config_and_the_shipped_adapter(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    code = [f for f in source_files() if f.endswith(".py") and f.split("/")[0] in PACKAGES]
    assert code and [f for f in code if f not in names] == []
    shipped = {"config": [f for f in source_files() if f.startswith("config/")],
               "migrations": [f for f in source_files() if f.startswith("migrations/")],
               "adapters": [f for f in source_files() if f.startswith("adapters/default-it/")]}
    assert all(shipped.values())
    missing = [f for files in shipped.values() for f in files if f"triage_core/shipped/{f}" not in names]
    assert missing == []
    versions = sorted(Path(f).name for f in shipped["migrations"] if f.startswith("migrations/versions/"))
    assert len(versions) >= 4 and all(f"triage_core/shipped/migrations/versions/{v}" in names for v in versions)
    assert not [n for n in names if n.startswith(("tests/", "bench/", "config/", "migrations/", "adapters/"))]


def test_the_wheel_metadata_names_the_version_and_the_licence(wheel):
    with zipfile.ZipFile(wheel) as z:
        info = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(info).decode())
        licence = z.read(info.replace("METADATA", "licenses/LICENSE")).decode()
    assert meta["Name"] == "ticket-triage" and meta["Version"] == triage_core.__version__
    assert wheel.name.startswith(f"ticket_triage-{triage_core.__version__}-py3-none-any")
    assert "Apache-2.0" in (meta.get("License-Expression") or meta.get("License") or "")
    assert "Apache License" in licence and "Version 2.0" in licence
    assert "psycopg[binary]>=3.1; extra == \"postgres\"" in meta.get_all("Requires-Dist")


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtualenv outside the checkout with the wheel in it; its bin/ folder."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=300, capture_output=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    # After the install, so pip saw an empty environment: the dependencies already installed here.
    (site / "zz_reuse_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def run(bin_dir: Path, cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TRIAGE_", "PYTHON"))}
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**clean, **(env or {})})


@pytest.mark.slow
def test_an_installed_wheel_upgrades_a_new_database_triages_and_checks_its_taxonomy(installed, tmp_path):
    """From a temporary folder: `db upgrade` on a new SQLite file (every migration), `triage` with the shipped
    adapter, `taxonomy check`; all of it from inside the installed package, nothing from the checkout."""
    from alembic.script import ScriptDirectory

    from triage_core.store import alembic_config

    where = run(installed, tmp_path, "python", "-c", "import json, triage_core; "
                "from triage_core.config import default_config_dir; from triage_core.store import migrations_dir; "
                "print(json.dumps([triage_core.__file__, str(default_config_dir()), str(migrations_dir())]))")
    assert where.returncode == 0, where.stderr
    package, config_dir, migrations = (Path(p) for p in json.loads(where.stdout))
    venv = installed.parent
    for path in (package, config_dir, migrations):
        assert venv in path.parents and ROOT not in path.parents, path

    db = tmp_path / "new.db"
    up = run(installed, tmp_path, "ticket-triage", "db", "upgrade", env={"TRIAGE_DATABASE_URL": f"sqlite:///{db}"})
    assert up.returncode == 0, up.stderr
    import sqlite3

    with sqlite3.connect(db) as conn:
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert revision == [(ScriptDirectory.from_config(alembic_config()).get_current_head(),)]
    assert {"inbound_events", "jobs", "connector_cursors", "retrain_runs", "locks"} <= tables

    out = run(installed, tmp_path, "ticket-triage", "triage", "--json", "Printer on floor 3 jams on every page")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    adapter = json.loads((ROOT / "adapters" / "default-it" / "triage_adapter.json").read_text())
    assert result["model"]["adapter"] == f"{adapter['name']}@{adapter['version']}"
    assert set(result["ticket"]) >= {"summary", "category", "priority"}

    check = run(installed, tmp_path, "ticket-triage", "taxonomy", "check")
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith(f"{config_dir / 'taxonomy.yaml'}: ok, taxonomy 'default-it'")
    assert not list(tmp_path.glob("*.egg-info")) and not (tmp_path / "config").exists()
