from __future__ import annotations

import pytest
import yaml
from jsonschema import Draft202012Validator

from triage_core import SchemaViolation, TaxonomyError, json_schema, load_taxonomy, parse_taxonomy, validate_ticket

from conftest import ROOT

DEFAULT = ROOT / "config" / "taxonomy.yaml"


def ticket(**over):
    base = {"summary": "VPN drops", "category": "Network", "subcategory": "VPN", "priority": "High",
            "assignment_group": "Network Operations", "request_type": "Incident"}
    base.update(over)
    return base


def test_default_taxonomy_shape():
    tax = load_taxonomy(DEFAULT)
    assert tax.field_names == ("summary", "category", "subcategory", "priority", "assignment_group", "request_type")
    assert len(tax["category"].values) == 8
    assert all(3 <= len(v) <= 6 for v in tax["subcategory"].children.values())
    assert tax["priority"].values == ("Low", "Medium", "High", "Critical")
    assert tax["request_type"].values == ("Incident", "Service Request")
    assert 7 <= len(tax["assignment_group"].values) <= 10
    assert "VPN" in tax["subcategory"].children["Network"]
    assert "Password Reset" in tax["subcategory"].children["Access"]


def test_schema_is_draft_2020_12_and_strict():
    tax = load_taxonomy(DEFAULT)
    schema = json_schema(tax)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert schema["required"] == list(tax.field_names)
    validate_ticket(tax, ticket())
    with pytest.raises(SchemaViolation, match="priority"):
        validate_ticket(tax, ticket(priority="URGENT"))
    with pytest.raises(SchemaViolation, match="Additional properties"):
        validate_ticket(tax, {**ticket(), "note": "x"})
    with pytest.raises(SchemaViolation, match="required"):
        validate_ticket(tax, {k: v for k, v in ticket().items() if k != "category"})
    with pytest.raises(SchemaViolation):
        validate_ticket(tax, ticket(summary=""))


def test_subcategory_only_under_its_own_category():
    tax = load_taxonomy(DEFAULT)
    validate_ticket(tax, ticket(category="Hardware", subcategory="Printer / Scanner"))
    with pytest.raises(SchemaViolation, match="subcategory"):
        validate_ticket(tax, ticket(category="Hardware", subcategory="VPN"))
    # "Other" exists under several categories and is valid under each of them.
    validate_ticket(tax, ticket(category="Workplace", subcategory="Other"))


def test_label_hash_ignores_descriptions_but_not_values():
    data = yaml.safe_load(DEFAULT.read_text())
    base = parse_taxonomy(data)
    data["fields"]["category"]["description"] = "changed words"
    assert parse_taxonomy(data).label_hash == base.label_hash
    data["fields"]["priority"]["values"]["Urgent"] = "new"
    assert parse_taxonomy(data).label_hash != base.label_hash


def test_custom_fields_and_subset():
    tax = parse_taxonomy({"fields": {"assignment_group": {"values": [f"G{i}" for i in range(20)]},
                                     "site": {"values": ["Madrid", "Leeds"]}}})
    validate_ticket(tax, {"assignment_group": "G7", "site": "Leeds"})
    with pytest.raises(SchemaViolation):
        validate_ticket(tax, {"assignment_group": "G7"})


@pytest.mark.parametrize("text, key, problem", [
    ("fields: []", "fields", "non-empty mapping"),
    ("fields:\n  category:\n    values: []", "fields.category.values", "no values"),
    ("fields:\n  category:\n    values: [A, A]", "fields.category.values", "appears twice"),
    ("fields:\n  category:\n    values: [A]\n    colour: red", "fields.category.colour", "unknown key"),
    ("fields:\n  Category:\n    values: [A]", "fields.Category", "lower-case"),
    ("fields:\n  summary:\n    type: text\n    max_length: 0", "fields.summary.max_length", "integer"),
    ("fields:\n  summary:\n    type: txt", "fields.summary.type", "unknown type"),
    ("fields:\n  sub:\n    parent: category\n    values: {A: [x]}", "fields.sub.parent", "not a field declared"),
    ("fields:\n  category:\n    values: [A, B]\n  sub:\n    parent: category\n    values: {A: [x]}",
     "fields.sub.values", "no values listed under category 'B'"),
    ("fields:\n  category:\n    values: [A]\n  sub:\n    parent: category\n    values: {A: [x], Z: [y]}",
     "fields.sub.values.Z", "not a value of 'category'"),
    ("fields:\n  category:\n    values: [' A']", "fields.category.values", "surrounding spaces"),
    ("fields: {category: {values: [A]}}\nlabels: 3", "labels", "unknown top-level key"),
    ("- just a list", "<top>", "expected a mapping"),
    ("fields:\n  category: [A, B]", "fields.category", "expected a mapping"),
])
def test_malformed_taxonomy_names_file_key_and_problem(tmp_path, text, key, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(TaxonomyError) as err:
        load_taxonomy(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert problem in message


def test_unreadable_taxonomy_files(tmp_path):
    with pytest.raises(TaxonomyError, match="file not found"):
        load_taxonomy(tmp_path / "missing.yaml")
    bad = tmp_path / "tab.yaml"
    bad.write_text("fields:\n\t- x: [")
    with pytest.raises(TaxonomyError, match="not valid YAML"):
        load_taxonomy(bad)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("fields: {category: {values: [Caf\xe9]}}".encode("cp1252"))
    with pytest.raises(TaxonomyError, match="not UTF-8"):
        load_taxonomy(latin)


def test_check_labels_reports_problems():
    tax = load_taxonomy(DEFAULT)
    assert tax.check_labels({"category": "Network", "subcategory": "VPN"}) == []
    problems = tax.check_labels({"category": "Network", "subcategory": "Printer / Scanner", "colour": "red"})
    assert any("subcategory" in p for p in problems) and any("colour" in p for p in problems)
