"""One reader for a connector's settings, so that each `from_config` keeps only what is vendor-specific.

Like requests' `merge_setting`, a connector's settings are its DEFAULTS with the configured values over them; the
reader refuses a key the connector does not know before anything else is read (a typo must not silently fall back
to a default), and its checks raise `ConnectorConfigError` naming the key (`connectors.settings.<name>.<key>`) and
never a secret's value. A vendor's own rules (URL shapes, id formats, ranges) stay in its factory, which reads the
merged value with `settings[name]` and raises `settings.error(name, message)`.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Mapping

from .base import ConnectorConfigError


class Settings(Mapping[str, Any]):
    """A connector's merged settings (`defaults` overlaid by `settings`) under the config key `key`, with the
    environment `env` its secrets are read from. A mapping, so `retriage_settings` and friends read it as is."""

    def __init__(self, settings: Mapping[str, Any], defaults: Mapping[str, Any], key: str,
                 env: Mapping[str, str] | None = None):
        for name in settings:
            if name not in defaults:
                raise ConnectorConfigError(f"{key}.{name}: unknown setting (expected {', '.join(defaults)})")
        self.key = key
        self._values = {**defaults, **settings}
        self._env: Mapping[str, str] = env if env is not None else {}

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def error(self, name: str, message: str) -> ConnectorConfigError:
        """The error for setting `name`: "<key>.<name>: <message>"."""
        return ConnectorConfigError(f"{self.key}.{name}: {message}")

    def text(self, name: str, required: bool = False) -> str | None:
        """A non-blank string, stripped; None when unset and not `required`."""
        value = self[name]
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.error(name, f"expected a non-empty string, got {value!r}")
        return value.strip()

    def env_name(self, name: str) -> str:
        """The name of an environment variable (a `*_env` setting), as given."""
        var = self[name]
        if not isinstance(var, str) or not var:
            raise self.error(name, "expected the name of an environment variable")
        return var

    def secret(self, name: str, why: str | None = None, *, var: str | None = None) -> str:
        """The value of the environment variable that setting `name` names: secrets live in the environment, never
        in the config file. `why` (what it is for) is added to the error when it is unset; `var` is the variable's
        name when the caller has read it its own way already (default: `env_name(name)`)."""
        var = self.env_name(name) if var is None else var
        value = self._env.get(var, "")
        if not value:
            raise self.error(name, f"environment variable {var} is not set" + (f"; {why}" if why else ""))
        return value

    def number(self, name: str, *, integer: bool = False, zero_ok: bool = False,
               unit: str | None = None) -> Any:
        """A finite positive number (`zero_ok`: or zero), as a float, or as an int when `integer` (a whole float
        such as YAML's 5.0 is taken); `unit` only words the error ("a positive number of seconds")."""
        value = self[name]
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value < math.inf \
                or not (value >= 0 if zero_ok else value > 0) or (integer and not whole):
            wanted = f"a positive {'integer' if integer else 'number'}" + (f" of {unit}" if unit else "")
            raise self.error(name, f"expected {wanted}, got {value!r}")
        return int(value) if integer else float(value)

    def choice(self, name: str, allowed: tuple[str, ...]) -> str:
        """One of `allowed`."""
        value = self[name]
        if value not in allowed:
            raise self.error(name, f"expected one of {', '.join(allowed)}, got {value!r}")
        return value

    def names(self, name: str, *, empty_ok: bool = False, noun: str = "names") -> list[str]:
        """A list of non-blank strings, each stripped (a bare string is refused: YAML's `x` is not `[x]`)."""
        value = self[name]
        if not isinstance(value, (list, tuple)) or not (value or empty_ok) or not all(
                isinstance(v, str) and v.strip() for v in value):
            raise self.error(name, f"expected a {'' if empty_ok else 'non-empty '}list of {noun}")
        return [v.strip() for v in value]
