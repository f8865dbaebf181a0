"""The organisation's taxonomy: which fields the model fills and the values each may take.

The taxonomy file is the single source of labels. Everything else (the JSON Schema, the prompt, the decoder's
candidate sets, the trainer's label checks) is derived from the `Taxonomy` loaded here, so a malformed file is
refused at load time with the file, the key and the problem named.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

#: The fields the product knows by name; any other enum field is a custom field.
STANDARD_FIELDS = ("summary", "category", "subcategory", "priority", "assignment_group", "request_type")

_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TEXT_KEYS = {"type", "description", "max_length"}
_ENUM_KEYS = {"type", "description", "values", "parent"}
_MAX_VALUE_CHARS = 100


class TaxonomyError(ValueError):
    """The taxonomy file is malformed; the message names the file, the key and the problem."""


@dataclass(frozen=True, eq=False)
class Field:
    """One field of the triage result.

    `kind` is "text" (generated) or "enum" (chosen among `values`). A dependent enum has a `parent` and
    `children`, mapping each parent value to the values allowed under it; `values` is then their union.
    """

    name: str
    kind: str
    description: str = ""
    values: tuple[str, ...] = ()
    value_descriptions: Mapping[str, str] = field(default_factory=dict)
    parent: str | None = None
    children: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    max_length: int = 120

    @property
    def is_enum(self) -> bool:
        return self.kind == "enum"

    def allowed(self, chosen: Mapping[str, Any]) -> tuple[str, ...]:
        """Values allowed for this field given the fields already chosen (the parent's value)."""
        if self.parent is None:
            return self.values
        return self.children[chosen[self.parent]]


@dataclass(frozen=True, eq=False)
class Taxonomy:
    name: str
    fields: tuple[Field, ...]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {f.name: f for f in self.fields})

    def __getitem__(self, name: str) -> Field:
        return self._by_name[name]  # type: ignore[attr-defined]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name  # type: ignore[attr-defined]

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def enum_fields(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.is_enum)

    def labels(self) -> dict[str, Any]:
        """The label structure alone (no descriptions): what an adapter is trained to produce."""
        out: dict[str, Any] = {}
        for f in self.fields:
            if f.kind == "text":
                out[f.name] = {"type": "text"}
            elif f.parent:
                out[f.name] = {"parent": f.parent, "values": {k: list(v) for k, v in f.children.items()}}
            else:
                out[f.name] = {"values": list(f.values)}
        return out

    @property
    def label_hash(self) -> str:
        """Stable hash of the label structure; adapters record it so a mismatch is caught at load."""
        canonical = json.dumps(self.labels(), sort_keys=False, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def check_labels(self, labels: Mapping[str, Any]) -> list[str]:
        """Problems with a labelled record's labels (any subset of the fields); empty when all fit."""
        problems = []
        for key, value in labels.items():
            if key not in self:
                problems.append(f"unknown field {key!r}")
                continue
            f = self[key]
            if f.kind == "text":
                if not isinstance(value, str):
                    problems.append(f"{key}: expected text, got {type(value).__name__}")
                continue
            if f.parent and labels.get(f.parent) in f.children:
                allowed = f.children[labels[f.parent]]
            else:
                allowed = f.values
            if value not in allowed:
                problems.append(f"{key}: {value!r} is not an allowed value")
        return problems


def load_taxonomy(path: str | Path) -> Taxonomy:
    """Read and check a taxonomy YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaxonomyError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise TaxonomyError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TaxonomyError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    return parse_taxonomy(data, source=str(path))


def parse_taxonomy(data: Any, source: str = "<memory>") -> Taxonomy:
    """Build a `Taxonomy` from already-parsed YAML/JSON data, refusing anything malformed."""

    def fail(key: str, problem: str) -> TaxonomyError:
        return TaxonomyError(f"{source}: {key}: {problem}")

    if not isinstance(data, dict):
        raise fail("<top>", "expected a mapping with a 'fields' key")
    unknown = set(data) - {"name", "fields", "version", "description"}
    if unknown:
        raise fail(sorted(unknown)[0], "unknown top-level key (expected name, fields)")
    raw_fields = data.get("fields")
    if not isinstance(raw_fields, dict) or not raw_fields:
        raise fail("fields", "expected a non-empty mapping of field name to field definition")

    fields: list[Field] = []
    seen: dict[str, Field] = {}
    for name, spec in raw_fields.items():
        key = f"fields.{name}"
        if not isinstance(name, str) or not _FIELD_NAME.match(name):
            raise fail(key, "field names are lower-case letters, digits and underscores, starting with a letter")
        if spec is None or not isinstance(spec, dict):
            raise fail(key, "expected a mapping (type/values/parent/description)")
        description = spec.get("description", "") or ""
        if not isinstance(description, str):
            raise fail(f"{key}.description", "expected text")
        kind = spec.get("type", "enum" if "values" in spec else None)
        if kind == "text":
            extra = set(spec) - _TEXT_KEYS
            if extra:
                raise fail(f"{key}.{sorted(extra)[0]}", "not allowed on a text field")
            max_length = spec.get("max_length", 120)
            if not isinstance(max_length, int) or isinstance(max_length, bool) or not 1 <= max_length <= 2000:
                raise fail(f"{key}.max_length", "expected an integer between 1 and 2000")
            fld = Field(name=name, kind="text", description=description, max_length=max_length)
        elif kind == "enum":
            extra = set(spec) - _ENUM_KEYS
            if extra:
                raise fail(f"{key}.{sorted(extra)[0]}", "unknown key (expected values, parent, description)")
            if "values" not in spec:
                raise fail(f"{key}.values", "an enum field needs values")
            parent = spec.get("parent")
            if parent is None:
                values, descs = _parse_values(spec["values"], f"{key}.values", fail)
                fld = Field(name=name, kind="enum", description=description, values=values,
                            value_descriptions=descs)
            else:
                fld = _parse_dependent(name, description, parent, spec["values"], key, seen, fail)
        elif kind is None:
            raise fail(key, "needs either 'values' (an enum) or 'type: text'")
        else:
            raise fail(f"{key}.type", f"unknown type {kind!r} (expected text or enum)")
        seen[name] = fld
        fields.append(fld)

    tax_name = data.get("name", Path(source).stem)
    if not isinstance(tax_name, str) or not tax_name:
        raise fail("name", "expected text")
    return Taxonomy(name=tax_name, fields=tuple(fields), source=source)


def _parse_values(raw: Any, key: str, fail) -> tuple[tuple[str, ...], dict[str, str]]:
    if isinstance(raw, list):
        items = [(v, "") for v in raw]
    elif isinstance(raw, dict):
        items = list(raw.items())
    else:
        raise fail(key, "expected a list of values or a mapping of value to description")
    if not items:
        raise fail(key, "no values")
    values: list[str] = []
    descs: dict[str, str] = {}
    for value, desc in items:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise fail(key, f"value {value!r} is not text")
        value = str(value)
        if not value.strip() or value != value.strip():
            raise fail(key, f"value {value!r} is empty or has surrounding spaces")
        if len(value) > _MAX_VALUE_CHARS:
            raise fail(key, f"value {value[:30]!r}... is longer than {_MAX_VALUE_CHARS} characters")
        if any(ord(c) < 32 for c in value):
            raise fail(key, f"value {value!r} contains a control character")
        if value in descs:
            raise fail(key, f"value {value!r} appears twice")
        if desc is not None and not isinstance(desc, str):
            raise fail(f"{key}.{value}", "a description must be text")
        values.append(value)
        descs[value] = desc or ""
    return tuple(values), {k: v for k, v in descs.items() if v}


def _parse_dependent(name, description, parent, raw, key, seen, fail) -> Field:
    if parent not in seen:
        raise fail(f"{key}.parent", f"{parent!r} is not a field declared before {name!r}")
    parent_field = seen[parent]
    if not parent_field.is_enum:
        raise fail(f"{key}.parent", f"{parent!r} is not an enum field")
    if parent_field.parent is not None:
        raise fail(f"{key}.parent", f"{parent!r} itself depends on another field; one level is supported")
    if not isinstance(raw, dict):
        raise fail(f"{key}.values", f"expected a mapping of each {parent} value to its allowed values")
    children: dict[str, tuple[str, ...]] = {}
    descs: dict[str, str] = {}
    for parent_value, sub in raw.items():
        if str(parent_value) not in parent_field.values:
            raise fail(f"{key}.values.{parent_value}", f"not a value of {parent!r}")
        values, sub_descs = _parse_values(sub, f"{key}.values.{parent_value}", fail)
        children[str(parent_value)] = values
        for v, d in sub_descs.items():
            descs.setdefault(v, d)
    missing = [v for v in parent_field.values if v not in children]
    if missing:
        raise fail(f"{key}.values", f"no values listed under {parent} {missing[0]!r}")
    union: list[str] = []
    for values in children.values():
        union.extend(v for v in values if v not in union)
    ordered = {pv: children[pv] for pv in parent_field.values}
    return Field(name=name, kind="enum", description=description, values=tuple(union),
                 value_descriptions=descs, parent=parent, children=ordered)
