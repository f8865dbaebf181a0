"""Closed-ticket import and taxonomy inference (trainer.importer, trainer.infer, trainer.import_cli). No model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from trainer.import_cli import import_command, infer_command
from trainer.importer import (
    ImportDataError,
    check_label_map,
    import_tickets,
    load_map_file,
    parse_label_map_option,
    parse_map_option,
)
from trainer.infer import infer_taxonomy
from trainer.records import read_records
from triage_core.taxonomy import load_taxonomy

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TAXONOMY = ROOT / "config" / "taxonomy.yaml"
DATA = ROOT.parent / "shared" / "data"
ENDAVA = DATA / "endava_topic_group.csv"
MULTILANG = DATA / "support_tickets_multilang.csv"


@pytest.fixture(scope="module")
def tax():
    return load_taxonomy(DEFAULT_TAXONOMY)


def write_csv(path: Path, rows: list[list[str]], encoding: str = "utf-8", delimiter: str = ",") -> Path:
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


def run_import(args: list[str]):
    return CliRunner().invoke(import_command, [*args, "--taxonomy", str(DEFAULT_TAXONOMY)])


TEXT = {"text": ["Short description", "Description"]}


# --- encodings --------------------------------------------------------------------------------------------------

def test_cp1252_is_detected_and_decoded(tmp_path, tax):
    path = write_csv(tmp_path / "export.csv", [
        ["Short description", "Description", "Category"],
        ["Imprimante cassée", "Le bac à papier est bloqué, coût 40 €", "Hardware"],
        ["Zugang für Jürgen", "Passwort läuft ab", "Access"],
    ], encoding="cp1252")
    report = import_tickets(path, {**TEXT, "category": ["Category"]}, tax)
    assert report.encoding == "cp1252" and report.encoding_detected
    assert report.records[0]["text"] == "Imprimante cassée\nLe bac à papier est bloqué, coût 40 €"
    assert report.records[1]["labels"] == {"category": "Access"}
    assert "encoding cp1252 (detected)" in report.format_text()


def test_utf8_with_bom_and_forced_encoding(tmp_path, tax):
    rows = [["Short description", "Description"], ["VPN kaputt", "Größe"]]
    path = write_csv(tmp_path / "bom.csv", rows, encoding="utf-8-sig")
    report = import_tickets(path, TEXT, tax)  # the BOM must not stick to the first column name
    assert report.encoding == "utf-8-sig"
    assert report.records[0]["text"] == "VPN kaputt\nGröße"

    latin = write_csv(tmp_path / "latin.csv", rows, encoding="latin-1")
    forced = import_tickets(latin, TEXT, tax, encoding="latin-1")
    assert forced.encoding == "iso8859-1" and not forced.encoding_detected
    assert forced.records[0]["text"] == "VPN kaputt\nGröße"

    # Excel's "Unicode text": UTF-16 with a BOM, tab-separated.
    utf16 = write_csv(tmp_path / "unicode.txt", rows, encoding="utf-16", delimiter="\t")
    report16 = import_tickets(utf16, TEXT, tax)
    assert (report16.encoding, report16.delimiter) == ("utf-16", "\t")
    assert report16.records[0]["text"] == "VPN kaputt\nGröße"

    result = run_import([str(path), "--map", "text=Short description", "--encoding", "no-such-codec"])
    assert result.exit_code != 0 and "unknown encoding" in result.stderr


def test_undecodable_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"text\nok\n\x81\x8d broken\n")  # bytes that are neither UTF-8 nor cp1252
    result = run_import([str(path), "--map", "text=text"])
    assert result.exit_code != 0
    assert "cannot decode as cp1252" in result.stderr and "--encoding" in result.stderr
    assert result.stderr.count("\n") == 1


def test_semicolon_delimited_export(tmp_path, tax):
    path = write_csv(tmp_path / "excel.csv", [["Short description", "Description", "Priority"],
                                              ["Laptop defekt", "Bildschirm schwarz", "High"]], delimiter=";")
    report = import_tickets(path, {**TEXT, "priority": ["Priority"]}, tax)
    assert report.delimiter == ";" and report.records[0]["labels"] == {"priority": "High"}


# --- empty cells, duplicates ------------------------------------------------------------------------------------

def test_empty_cells_and_empty_text(tmp_path, tax):
    path = write_csv(tmp_path / "t.csv", [
        ["Short description", "Description", "Category", "Priority"],
        ["", "Printer jams", "Hardware", ""],           # empty part skipped, empty label absent
        ["Mouse broken", "", "", "Low"],
        ["", "   ", "Hardware", "High"],                # no text: dropped and counted
        ["", "", "", ""],                               # an empty row from Excel: no text either
    ])
    report = import_tickets(path, {**TEXT, "category": ["Category"], "priority": ["Priority"]}, tax)
    assert [r["text"] for r in report.records] == ["Printer jams", "Mouse broken"]
    assert report.records[0]["labels"] == {"category": "Hardware"}
    assert report.records[1]["labels"] == {"priority": "Low"}
    assert report.rows_read == 4 and report.written == 2
    assert report.dropped == {"empty_text": 2}
    assert report.empty["category"] == 1 and report.empty["priority"] == 1
    assert report.kept["category"] == 1 and report.labels_dropped["category"] == 0


def test_duplicates_keep_the_first_and_report_conflicts(tmp_path, tax):
    path = write_csv(tmp_path / "t.csv", [
        ["Short description", "Description", "Category"],
        ["VPN down", "Cannot connect", "Network"],
        ["vpn  DOWN", "cannot connect ", "Network"],    # same text up to case and spacing
        ["VPN down", "Cannot connect", "Hardware"],     # same text, another label
        ["Other ticket", "x", "Network"],
    ])
    report = import_tickets(path, {**TEXT, "category": ["Category"]}, tax)
    assert report.written == 2 and report.dropped == {"duplicate": 2}
    assert report.records[0]["labels"] == {"category": "Network"}
    assert report.duplicate_conflicts == {"category": 1}
    assert report.conflict_examples == ["row 3 repeats row 1: category 'Hardware', kept 'Network'"]
    assert report.kept_values["category"] == {"Network": 2}


# --- labels outside the taxonomy --------------------------------------------------------------------------------

@pytest.fixture()
def messy(tmp_path) -> Path:
    return write_csv(tmp_path / "messy.csv", [
        ["Short description", "Description", "Category", "Type"],
        ["Laptop broken", "Screen black", "PCs", "0"],
        ["New starter", "Account for Ann", "Access", "1"],
        ["Printer", "Paper jam", "PCs", "0"],
        ["Wi-fi", "Slow", " network ", "0"],           # case/spacing only: normalised, and reported
        ["Lunch", "Menu", "Canteen", "1"],
    ])


def test_out_of_taxonomy_labels_are_reported_and_dropped(messy, tax):
    report = import_tickets(messy, {**TEXT, "category": ["Category"], "request_type": ["Type"]}, tax)
    assert report.out_of_taxonomy["category"] == {"PCs": 2, "Canteen": 1}
    # A code such as 0/1 only becomes a taxonomy value through a label map.
    assert report.out_of_taxonomy["request_type"] == {"0": 3, "1": 2}
    assert report.normalised["category"] == {(" network ", "Network"): 1}
    # The bad label is removed and the record kept with its other labels; one left with none is dropped.
    assert [r["labels"] for r in report.records] == [{"category": "Access"}, {"category": "Network"}]
    assert report.written == 2 and report.dropped == {"no_labels": 3}
    assert all(not tax.check_labels(r["labels"]) for r in report.records)
    text = report.format_text()
    assert "NOT IN TAXONOMY: 'PCs' 2, 'Canteen' 1" in text and "normalised (case/spacing)" in text
    data = report.to_dict()
    assert data["labels"]["category"]["out_of_taxonomy"] == {"PCs": 2, "Canteen": 1}
    assert data["labels"]["category"]["dropped"] == 3


def test_label_map_and_drop_rows(messy, tax):
    mapping = {**TEXT, "category": ["Category"], "request_type": ["Type"]}
    labels = {"category": {"PCs": "Hardware"}, "request_type": {"0": "Incident", "1": "Service Request"}}
    report = import_tickets(messy, mapping, tax, label_map=labels)
    assert report.records[0]["labels"] == {"category": "Hardware", "request_type": "Incident"}
    assert report.mapped["category"] == {("PCs", "Hardware"): 2}
    assert report.out_of_taxonomy["category"] == {"Canteen": 1}
    assert report.records[4]["labels"] == {"request_type": "Service Request"}

    strict = import_tickets(messy, mapping, tax, label_map=labels, drop_rows=True)
    assert strict.written == 4 and strict.dropped == {"label_not_in_taxonomy": 1}
    assert "Lunch\nMenu" not in [r["text"] for r in strict.records]


def test_label_map_cli_options_and_errors(messy, tmp_path):
    out = tmp_path / "out.jsonl"
    mapfile = tmp_path / "labels.yaml"
    mapfile.write_text("category:\n  Canteen: Workplace\nrequest_type:\n  0: Incident\n  '1': Service Request\n")
    result = run_import([str(messy), "--out", str(out), "--map", "text=Short description+Description",
                         "--map", "category=Category", "--map", "request_type=Type",
                         "--label-map", "category:PCs=Hardware", "--label-map-file", str(mapfile), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["written"] == 5 and report["labels"]["category"]["out_of_taxonomy"] == {}
    assert report["labels"]["category"]["values"] == {"Hardware": 2, "Access": 1, "Network": 1, "Workplace": 1}
    records = read_records(out)
    assert records[4]["labels"] == {"category": "Workplace", "request_type": "Service Request"}
    assert records[0]["source"] == "csv"

    bad = run_import([str(messy), "--map", "text=Description", "--map", "category=Category",
                      "--label-map", "category:PCs=hardware"])
    assert bad.exit_code != 0 and "did you mean 'Hardware'?" in bad.stderr
    unknown = run_import([str(messy), "--map", "text=Description", "--map", "colour=Category"])
    assert unknown.exit_code != 0 and "colour" in unknown.stderr


def test_label_map_option_parsing(tax):
    assert parse_map_option("text=Short description+Description") == (
        "text", ["Short description", "Description"])
    assert parse_label_map_option('category:PCs=Hardware', tax) == ("category", "PCs", "Hardware")
    # An '=' inside the old value: the split that lands on a taxonomy value wins.
    assert parse_label_map_option("request_type:a=b=Incident", tax) == ("request_type", "a=b", "Incident")
    with pytest.raises(ImportDataError):
        parse_label_map_option("category-PCs-Hardware", tax)
    with pytest.raises(ImportDataError):
        check_label_map({"category": {"x": "Nope"}}, tax)


def test_subcategory_must_sit_under_its_category(tmp_path, tax):
    path = write_csv(tmp_path / "t.csv", [["text", "cat", "sub"], ["a", "Network", "VPN"],
                                           ["b", "Hardware", "VPN"], ["c", "", "VPN"]])
    report = import_tickets(path, {"text": ["text"], "category": ["cat"], "subcategory": ["sub"]}, tax)
    assert report.records[0]["labels"] == {"category": "Network", "subcategory": "VPN"}
    assert report.records[1]["labels"] == {"category": "Hardware"}
    assert report.records[2]["labels"] == {"subcategory": "VPN"}  # no category to contradict it
    assert report.wrong_parent["subcategory"] == {("Hardware", "VPN"): 1}


def test_rows_left_without_labels_are_dropped_and_counted(tmp_path, tax):
    path = write_csv(tmp_path / "t.csv", [["text", "group"], ["a", "GRP-17"], ["b", "Service Desk"]])
    report = import_tickets(path, {"text": ["text"], "assignment_group": ["group"]}, tax)
    assert report.written == 1 and report.dropped == {"no_labels": 1}
    # With no label field mapped at all, unlabelled records are what was asked for.
    assert import_tickets(path, {"text": ["text"]}, tax).written == 2


# --- the mapping, JSONL, other record fields --------------------------------------------------------------------

def test_missing_column_is_a_one_line_error(tmp_path):
    path = write_csv(tmp_path / "t.csv", [["Short description", "Description"], ["a", "b"]])
    result = run_import([str(path), "--map", "text=Short description+Body"])
    assert result.exit_code != 0
    assert result.stderr.strip() == ("error: t.csv: no column 'Body' (mapped to text); "
                                     "available: 'Short description', 'Description'")
    assert run_import([str(path), "--map", "category=Description"]).exit_code != 0  # text is not mapped
    missing = run_import([str(tmp_path / "nope.csv"), "--map", "text=x"])
    assert missing.exit_code != 0 and "file not found" in missing.stderr


def test_jsonl_input_with_nested_keys_and_record_fields(tmp_path, tax):
    path = tmp_path / "export.jsonl"
    lines = [
        {"key": "IT-1", "summary": "VPN", "description": "drops", "fields": {"priority": {"name": "High"}},
         "resolved": "2024-03-01T10:00:00Z", "lang": "EN"},
        {"key": "IT-2", "summary": "Mail", "description": None, "fields": {"priority": {"name": "Low"}},
         "resolved": "03/04/2024", "lang": "de"},
        {"key": 3, "summary": "x", "description": "y", "fields": {"priority": {"name": "Medium"}}},
        {"key": 4, "summary": "unlabelled", "fields": {"priority": None}},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\nnot json\n"
                    + "\n".join(json.dumps(x) for x in lines[2:]) + "\n")
    mapping = {"id": ["key"], "text": ["summary", "description"], "priority": ["fields.priority.name"],
               "closed_at": ["resolved"], "language": ["lang"]}
    report = import_tickets(path, mapping, tax)
    assert report.format == "jsonl" and report.source == "jsonl"
    assert report.records[0] == {"id": "IT-1", "text": "VPN\ndrops", "language": "en",
                                 "labels": {"priority": "High"}, "source": "jsonl",
                                 "closed_at": "2024-03-01T10:00:00+00:00"}
    assert "closed_at" not in report.records[1] and report.unparsed_dates == 1  # day/month is never guessed
    assert report.records[2]["id"] == "3" and report.records[2]["labels"] == {"priority": "Medium"}
    assert report.unreadable_rows == [3] and report.rows_read == 5
    assert report.dropped == {"unreadable": 1, "no_labels": 1} and report.empty["priority"] == 1


def test_json_array_export(tmp_path, tax):
    path = tmp_path / "export.json"
    path.write_text(json.dumps([{"title": "VPN", "prio": "Low"}, {"title": "Mail", "prio": "Urgent"}]))
    report = import_tickets(path, {"text": ["title"], "priority": ["prio"]}, tax)
    assert [r["text"] for r in report.records] == ["VPN"] and report.source == "jsonl"
    assert report.out_of_taxonomy["priority"] == {"Urgent": 1} and report.dropped == {"no_labels": 1}


# --- map files and the real data --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["endava", "support_multilang"])
def test_shipped_map_files_fit_the_default_taxonomy(name, tax):
    mf = load_map_file(ROOT / "config" / "maps" / f"{name}.yaml")
    assert "text" in mf.columns
    check_label_map(mf.labels, tax)
    assert all(f in tax or f in ("text", "id", "language", "closed_at") for f in mf.columns)


def test_map_file_with_command_line_overrides(tmp_path, messy):
    mapfile = tmp_path / "map.yaml"
    mapfile.write_text("columns:\n  text: Description\n  category: Category\n"
                       "labels:\n  category:\n    PCs: Software\n")
    result = run_import([str(messy), "--map-file", str(mapfile), "--map", "text=Short description",
                         "--label-map", "category:PCs=Hardware", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["columns"]["text"] == ["Short description"]
    assert report["labels"]["category"]["mapped"] == [{"from": "PCs", "to": "Hardware", "count": 2}]


def test_real_endava_file_through_its_map(tmp_path):
    out = tmp_path / "endava.jsonl"
    result = run_import([str(ENDAVA), "--map-file", str(ROOT / "config" / "maps" / "endava.yaml"),
                         "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rows_read"] == 3805 and report["written"] == 3805 and report["dropped"] == {}
    assert report["encoding"] == "utf-8"
    cat = report["labels"]["category"]
    assert cat["out_of_taxonomy"] == {"HR Support": 900, "Miscellaneous": 581, "Internal Project": 191}
    assert cat["kept"] == 3805 - 900 - 581 - 191
    assert cat["values"] == {"Hardware": 746 + 306, "Access": 660, "Data & Storage": 308, "Software": 113}
    assert report["labels"]["request_type"]["values"] == {"Service Request": 3805}
    records = read_records(out)
    assert len(records) == 3805 and records[0]["source"] == "csv"


def test_real_multilang_file_through_its_map(tax):
    mf = load_map_file(ROOT / "config" / "maps" / "support_multilang.yaml")
    report = import_tickets(MULTILANG, mf.columns, tax, label_map=mf.labels)
    assert report.written == 1167
    assert report.kept["request_type"] == report.kept["priority"] == 1167
    assert report.kept_values["request_type"] == {"Incident": 720, "Service Request": 447}
    assert sum(report.out_of_taxonomy["assignment_group"].values()) + report.kept["assignment_group"] == 1167
    assert {r["language"] for r in report.records} == {"en", "de", "es", "pt", "fr"}


# --- taxonomy infer ---------------------------------------------------------------------------------------------

def test_infer_counts_rare_flags_and_parent_child(tmp_path):
    rows = [["Subject", "Category", "Subcategory", "Summary"]]
    rows += [[f"t{i}", "Network", "VPN", "vpn down"] for i in range(6)]
    rows += [[f"u{i}", "network ", "Wi-Fi", "wifi"] for i in range(2)]        # a case/spacing variant
    rows += [[f"v{i}", "Hardware", "Other", "x"] for i in range(5)]
    rows += [[f"w{i}", "Software", "Other", ""] for i in range(3)]            # 'Other' under two parents
    rows += [["y", "Printers", "", ""], ["z", "", "VPN", ""]]
    path = write_csv(tmp_path / "labelled.csv", rows)
    mapping = {"text": ["Subject"], "category": ["Category"], "subcategory": ["Subcategory"],
               "summary": ["Summary"]}
    result = infer_taxonomy(path, mapping, min_count=5)
    assert result.counts["category"] == {"Network": 8, "Hardware": 5, "Software": 3, "Printers": 1}
    assert result.variants["category"] == {"Network": ["network (2)"]}
    assert result.rare == {"category": ["Software", "Printers"], "subcategory": ["Wi-Fi"]}
    out = tmp_path / "taxonomy.yaml"
    out.write_text(result.yaml)
    tax = load_taxonomy(out)
    assert tax.field_names == ("summary", "category", "subcategory")
    assert tax["summary"].kind == "text"
    sub = tax["subcategory"]
    assert sub.parent == "category"
    assert sub.children["Network"] == ("VPN", "Wi-Fi")
    assert sub.children["Hardware"] == ("Other",) and sub.children["Software"] == ("Other",)
    assert sub.children["Printers"] == ("Other",)  # a placeholder, commented as such
    assert '"Network": ""  # 8 tickets' in result.yaml
    assert '"Software": ""  # RARE: 3 tickets, consider merging' in result.yaml
    assert "placeholder: no subcategory was seen" in result.yaml
    assert "1 ticket had a subcategory but no category" in result.yaml


def test_infer_forty_opaque_groups_only_assignment_group(tmp_path):
    groups = [f"GRP-{i:03d}" for i in range(40)] + ["yes", "0", "null", "a: b # c", "x" * 130, "tab\there"]
    rows = [["Ticket", "Assignment group"]]
    for i, g in enumerate(groups):
        rows += [[f"ticket {i}-{k}", g] for k in range(1 + i % 7)]
    path = write_csv(tmp_path / "groups.csv", rows, encoding="cp1252")
    out = tmp_path / "tax.yaml"
    result = CliRunner().invoke(infer_command, ["--data", str(path), "--map", "text=Ticket",
                                                "--map", "assignment_group=Assignment group", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "assignment_group 46 values" in result.stdout
    tax = load_taxonomy(out)
    assert tax.field_names == ("assignment_group",)
    values = tax["assignment_group"].values
    assert len(values) == 46 and {"GRP-000", "yes", "0", "null", "a: b # c", "tab here"} <= set(values)
    assert "x" * 100 in values and all(len(v) <= 100 for v in values)
    text = out.read_text()
    assert text.count("# RARE:") == sum(1 for i in range(46) if 1 + i % 7 < 5)

    printed = CliRunner().invoke(infer_command, ["--data", str(path), "--map", "assignment_group=Assignment group",
                                                 "--min-count", "2"])
    assert printed.exit_code == 0 and yaml.safe_load(printed.stdout)["fields"]["assignment_group"]["values"]


def test_infer_from_real_data_loads(tmp_path):
    out = tmp_path / "endava.yaml"
    result = CliRunner().invoke(infer_command, ["--data", str(ENDAVA), "--map", "category=topic_group",
                                                "--map", "request_type=ticket_type", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    tax = load_taxonomy(out)
    assert len(tax["category"].values) == 8 and tax["request_type"].values == ("1",)
    assert json.loads(result.stdout)["fields"]["category"]["values"]["HR Support"] == 900


def test_infer_errors(tmp_path):
    path = write_csv(tmp_path / "t.csv", [["Ticket", "Group"], ["a", ""]])
    no_labels = CliRunner().invoke(infer_command, ["--data", str(path), "--map", "text=Ticket"])
    assert no_labels.exit_code != 0 and "map at least one label" in no_labels.stderr
    empty = CliRunner().invoke(infer_command, ["--data", str(path), "--map", "assignment_group=Group"])
    assert empty.exit_code != 0 and "has no values" in empty.stderr
    missing = CliRunner().invoke(infer_command, ["--data", str(path), "--map", "category=Cat"])
    assert missing.exit_code != 0 and "available: 'Ticket', 'Group'" in missing.stderr
