"""The JSON Schema (draft 2020-12) derived from a taxonomy, and validation of triage results against it."""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping

from jsonschema import Draft202012Validator

from .taxonomy import Taxonomy

DIALECT = "https://json-schema.org/draft/2020-12/schema"


class SchemaViolation(ValueError):
    """A ticket does not validate against the taxonomy's schema."""


def json_schema(taxonomy: Taxonomy) -> dict[str, Any]:
    """Enums, every field required, nothing else allowed, a dependent value only under its own parent."""
    properties: dict[str, Any] = {}
    conditions: list[dict[str, Any]] = []
    for f in taxonomy.fields:
        if f.kind == "text":
            prop: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": f.max_length}
        else:
            prop = {"type": "string", "enum": list(f.values)}
        if f.description:
            prop["description"] = f.description
        properties[f.name] = prop
        if f.parent:
            for parent_value, allowed in f.children.items():
                conditions.append({
                    "if": {"properties": {f.parent: {"const": parent_value}}, "required": [f.parent]},
                    "then": {"properties": {f.name: {"enum": list(allowed)}}},
                })
    schema: dict[str, Any] = {
        "$schema": DIALECT,
        "$id": f"urn:ticket-triage:taxonomy:{taxonomy.name}:{taxonomy.label_hash}",
        "title": f"Triaged ticket ({taxonomy.name})",
        "type": "object",
        "properties": properties,
        "required": list(taxonomy.field_names),
        "additionalProperties": False,
    }
    if conditions:
        schema["allOf"] = conditions
    return schema


@lru_cache(maxsize=16)
def _validator(taxonomy: Taxonomy) -> Draft202012Validator:
    schema = json_schema(taxonomy)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def validate_ticket(taxonomy: Taxonomy, ticket: Mapping[str, Any]) -> None:
    """Raise `SchemaViolation` naming every problem when `ticket` is not valid for `taxonomy`."""
    errors = sorted(_validator(taxonomy).iter_errors(dict(ticket)), key=lambda e: list(e.path))
    if errors:
        parts = [f"{'/'.join(map(str, e.path)) or '<ticket>'}: {e.message}" for e in errors]
        raise SchemaViolation("; ".join(parts))
