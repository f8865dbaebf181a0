"""Field maps: how a taxonomy label is spelled in a vendor's system (a name, an id, an option).

Every vendor connector takes one from its settings (`field_map`) and checks it against the taxonomy when the
daemon starts, so a label the model may choose but nobody mapped is a start-up error, not a failed write-back at
3 a.m. Shape, per taxonomy field:

    field_map:
      category: same                     # the vendor's names are the labels themselves
      priority: {Low: Low, Medium: Medium, High: High, Critical: Highest}
      assignment_group: {Service Desk: "10001", Network Team: "10002"}
      subcategory:                       # a dependent field: flat (same for every parent) or nested by parent
        Hardware: {Laptop / Desktop: Laptops, Other: Other hardware}
        Software: same

A field left out of the map is not written to the vendor at all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from triage_core.taxonomy import Taxonomy

from .base import ConnectorConfigError

SAME = "same"


@dataclass(frozen=True)
class FieldMap:
    """Taxonomy label -> vendor value, per field. `nested` fields are keyed by their parent's label first."""

    fields: Mapping[str, Any] = field(default_factory=dict)
    key: str = "field_map"

    @classmethod
    def from_settings(cls, raw: Any, key: str) -> "FieldMap":
        """Shape checks only; `check` needs the taxonomy. `key` names the setting in error messages."""
        if raw is None:
            return cls({}, key)
        if not isinstance(raw, Mapping):
            raise ConnectorConfigError(f"{key}: expected a mapping of taxonomy field to value map")
        out: dict[str, Any] = {}
        for name, spec in raw.items():
            out[str(name)] = _spec(spec, f"{key}.{name}", nested_ok=True)
        return cls(out, key)

    def __contains__(self, name: object) -> bool:
        return name in self.fields

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.fields)

    def check(self, taxonomy: Taxonomy, required: Iterable[str] = ()) -> None:
        """Every label of every mapped field must map; `required` fields must be in the map. One error lists all."""
        problems: list[str] = []
        for name in required:
            if name not in self.fields:
                problems.append(f"{self.key}.{name}: missing (this connector needs it)")
        for name, spec in self.fields.items():
            if name not in taxonomy:
                problems.append(f"{self.key}.{name}: no such field in taxonomy {taxonomy.name!r}")
                continue
            tf = taxonomy[name]
            if not tf.is_enum:
                problems.append(f"{self.key}.{name}: {name} is free text, only enum fields are mapped")
                continue
            if spec == SAME:
                continue
            if tf.parent is not None and self.is_nested(name):
                for parent_value, _sub in spec.items():
                    if parent_value not in tf.children:
                        problems.append(f"{self.key}.{name}.{parent_value}: not a {tf.parent} label")
                for parent_value, allowed in tf.children.items():
                    sub = spec.get(parent_value)
                    if sub is None:
                        problems.append(f"{self.key}.{name}.{parent_value}: missing")
                    elif sub != SAME:
                        problems += _unmapped(sub, allowed, f"{self.key}.{name}.{parent_value}")
            else:
                problems += _unmapped(spec, tf.values, f"{self.key}.{name}")
        if problems:
            raise ConnectorConfigError("; ".join(problems))

    def is_nested(self, name: str) -> bool:
        spec = self.fields.get(name)
        return isinstance(spec, Mapping) and bool(spec) and all(
            isinstance(v, Mapping) or v == SAME for v in spec.values())

    def vendor(self, name: str, label: str, parent: str | None = None) -> Any:
        """The vendor's value for `label` of field `name`; `parent` is the parent field's label for nested maps.

        Raises KeyError when the field or label is not mapped (callers check `name in field_map` first)."""
        spec = self.fields[name]
        if self.is_nested(name):
            if parent is None:
                raise KeyError(f"{self.key}.{name} is nested by parent label: give the parent")
            spec = spec[parent]
        return label if spec == SAME else spec[label]

    def label(self, name: str, vendor_value: Any, parent: str | None = None) -> str | None:
        """The taxonomy label a vendor value stands for (corrections, closed tickets); None when not mapped.

        Strings compare case-insensitively; for nested maps `parent` (the parent's label) picks the sub-map,
        and without it the first match under any parent is taken."""
        if name not in self.fields or vendor_value is None or vendor_value == "":
            return None
        spec = self.fields[name]
        if not self.is_nested(name):
            subs = [spec]
        elif parent is None:
            subs = list(spec.values())
        else:
            subs = [spec[parent]] if parent in spec else []
        for sub in subs:
            if sub == SAME:
                return str(vendor_value)
            for lab, value in sub.items():
                if _same(value, vendor_value):
                    return lab
        return None


def _spec(spec: Any, key: str, nested_ok: bool) -> Any:
    if spec == SAME:
        return SAME
    if not isinstance(spec, Mapping) or not spec:
        raise ConnectorConfigError(f"{key}: expected '{SAME}' or a non-empty mapping of label to vendor value")
    out: dict[str, Any] = {}
    for label, value in spec.items():
        if isinstance(value, Mapping) or value == SAME and nested_ok:
            if not nested_ok:
                raise ConnectorConfigError(f"{key}.{label}: nested too deep")
            out[str(label)] = _spec(value, f"{key}.{label}", nested_ok=False)
        elif isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            raise ConnectorConfigError(f"{key}.{label}: expected a vendor name or id, got {value!r}")
        else:
            out[str(label)] = value
    return out


def _unmapped(spec: Mapping[str, Any], allowed: Iterable[str], key: str) -> list[str]:
    allowed = tuple(allowed)
    out = [f"{key}: no vendor value for label {label!r}" for label in allowed if label not in spec]
    out += [f"{key}.{label}: not a label of the taxonomy" for label in spec if label not in allowed]
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.casefold() == b.casefold()
    return str(a) == str(b)
