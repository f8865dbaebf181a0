"""Closed-ticket import: CSV or JSONL exports of closed tickets -> labelled-ticket records (DESIGN.md).

Exports from a service desk are messy: unknown encodings, empty cells, the same ticket exported twice, and label
names that are not the taxonomy's. The import maps columns onto the record shape and checks every label against
the taxonomy. A label that does not fit is counted and reported, then removed (or its whole row dropped); it is
never silently kept, because a model trained on it would learn to write values the schema refuses. Anything
matched loosely (case or spacing) is reported as a normalisation for the same reason.

Rows are streamed, so a large export needs memory only for the duplicate check (a 16-byte digest per row).
`open_import` is the streaming form; `import_tickets` collects the records into the report.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import re
import sys
import unicodedata
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Iterator, Mapping, Sequence

import yaml

from triage_core.taxonomy import Taxonomy

from .records import Record

#: Record keys that are not labels; every other mapped field must be a taxonomy field.
RECORD_FIELDS = ("text", "id", "language", "closed_at")

#: A label map: field -> {value in the export: taxonomy value}.
LabelMap = dict[str, dict[str, str]]

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LABEL_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_EXAMPLES = 5
_JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
_JSONL_HEADER_ROWS = 100  # JSONL objects read ahead to learn the keys ("columns") before the mapping is checked


class ImportDataError(ValueError):
    """The export, the mapping or the label map cannot be used; the message is one line naming the problem."""


def norm_key(value: str) -> str:
    """Case-, width- and whitespace-insensitive form of a label or column name, for loose matching."""
    value = _LABEL_CONTROL.sub(" ", unicodedata.normalize("NFKC", value))
    return " ".join(value.split()).casefold()


# --- the mapping and label maps ---------------------------------------------------------------------------------

def parse_map_option(spec: str) -> tuple[str, list[str]]:
    """`field=COLUMN[+COLUMN...]` (from --map) -> (field, columns)."""
    name, sep, cols = spec.partition("=")
    name = name.strip()
    columns = [c.strip() for c in cols.split("+")]
    if not sep or not name or not all(columns):
        raise ImportDataError(f"--map {spec!r}: expected FIELD=COLUMN or FIELD=COLUMN+COLUMN")
    return name, columns


def _columns_value(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return parse_map_option(f"x={value}")[1]
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return [v.strip() for v in value]
    raise ImportDataError(f"{where}: expected a column name, 'A+B', or a list of column names")


def _label_table(raw: Any, where: str) -> LabelMap:
    """Check a {field: {old: new}} mapping read from YAML; keys are made text (YAML reads 0 as a number)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ImportDataError(f"{where}: expected a mapping of field to {{old value: new value}}")
    out: LabelMap = {}
    for fld, table in raw.items():
        if not isinstance(table, dict):
            raise ImportDataError(f"{where}.{fld}: expected a mapping of old value to new value")
        out[str(fld)] = {}
        for old, new in table.items():
            for v, what in ((old, "old value"), (new, "new value")):
                if isinstance(v, bool) or v is None:
                    raise ImportDataError(f"{where}.{fld}: {what} {v!r} was read by YAML as {v!r}; quote it")
                if not isinstance(v, (str, int, float)):
                    raise ImportDataError(f"{where}.{fld}: {what} {v!r} is not text")
            out[str(fld)][_cell_text(old)] = str(new)
    return out


def _read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImportDataError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise ImportDataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ImportDataError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None


def load_label_map_file(path: str | Path) -> LabelMap:
    """A --label-map-file: YAML {field: {old value: new value}}."""
    return _label_table(_read_yaml(path), str(path))


@dataclass
class MapFile:
    """A --map-file: the column mapping and the label map for one kind of export, kept together."""

    columns: dict[str, list[str]]
    labels: LabelMap


def load_map_file(path: str | Path) -> MapFile:
    """Read YAML {columns: {field: "A+B" | [A, B]}, labels: {field: {old: new}}} (comments welcome)."""
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ImportDataError(f"{path}: expected a mapping with 'columns' and optionally 'labels'")
    unknown = set(data) - {"columns", "labels", "description"}
    if unknown:
        raise ImportDataError(f"{path}: unknown key {sorted(map(str, unknown))[0]!r} (expected columns, labels)")
    raw_cols = data.get("columns") or {}
    if not isinstance(raw_cols, dict):
        raise ImportDataError(f"{path}: columns: expected a mapping of field to column(s)")
    columns = {str(k): _columns_value(v, f"{path}: columns.{k}") for k, v in raw_cols.items()}
    return MapFile(columns=columns, labels=_label_table(data.get("labels"), f"{path}: labels"))


def parse_label_map_option(spec: str, taxonomy: Taxonomy | None = None) -> tuple[str, str, str]:
    """`field:OLD=NEW` (from --label-map) -> (field, old, new).

    An old value may itself contain '='; when a taxonomy is given, the split whose right side is an allowed
    value of the field is chosen, otherwise the first '='.
    """
    fld, sep, rest = spec.partition(":")
    fld = fld.strip()
    if not sep or not fld or "=" not in rest:
        raise ImportDataError(f"--label-map {spec!r}: expected FIELD:OLD=NEW, e.g. category:\"PCs\"=\"Hardware\"")
    splits = [(rest[:i], rest[i + 1:]) for i, c in enumerate(rest) if c == "="]
    old, new = splits[0]
    if taxonomy is not None and fld in taxonomy:
        fitting = [s for s in splits if s[1].strip() in taxonomy[fld].values]
        if len(fitting) == 1:
            old, new = fitting[0]
    if not old.strip():
        raise ImportDataError(f"--label-map {spec!r}: the old value is empty")
    return fld, old.strip(), new.strip()


def merge_label_maps(*maps: Mapping[str, Mapping[str, str]] | None) -> LabelMap:
    """Later maps override earlier ones, value by value."""
    out: LabelMap = {}
    for m in maps:
        for fld, table in (m or {}).items():
            out.setdefault(fld, {}).update(table)
    return out


def check_label_map(label_map: Mapping[str, Mapping[str, str]], taxonomy: Taxonomy) -> None:
    """Every field must be an enum field of the taxonomy and every target one of its values."""
    for fld, table in label_map.items():
        if fld not in taxonomy:
            raise ImportDataError(f"label map: {fld!r} is not a field of taxonomy {taxonomy.name!r} "
                                  f"(fields: {', '.join(taxonomy.field_names)})")
        f = taxonomy[fld]
        if not f.is_enum:
            raise ImportDataError(f"label map: {fld!r} is a text field; only enum labels can be mapped")
        for old, new in table.items():
            if new not in f.values:
                close = [v for v in f.values if norm_key(v) == norm_key(new)]
                hint = f"; did you mean {close[0]!r}?" if close else f" (allowed: {', '.join(f.values)})"
                raise ImportDataError(f"label map: {fld} {old!r} -> {new!r}: not a value of {fld}{hint}")


# --- reading the export -----------------------------------------------------------------------------------------

def detect_encoding(path: Path) -> str:
    """'utf-8-sig' (BOM), 'utf-16' (BOM), 'utf-8' if the whole file decodes as UTF-8, else 'cp1252'.

    cp1252 is the fallback because it is what Excel and older Windows ITSM exports write; any other
    encoding must be named with --encoding.
    """
    with path.open("rb") as fh:
        head = fh.read(4)
        if head.startswith(codecs.BOM_UTF8):
            return "utf-8-sig"
        if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
            return "utf-16"
        fh.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return "cp1252"
    return "utf-8"


class _ProgressReader(io.RawIOBase):
    """A raw byte stream that moves a progress bar by the bytes read (so the bar has a known total)."""

    def __init__(self, fh: IO[bytes], bar: Any) -> None:
        super().__init__()
        self._fh, self._bar = fh, bar

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._fh.readinto(buffer) or 0
        self._bar.update(n)
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


def _cell_text(value: Any) -> str:
    """A JSON/YAML value as the text a CSV cell would hold ("" for null; 1.0 -> "1")."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(value, list):
        return "\n".join(t for t in (_cell_text(v) for v in value) if t)
    return json.dumps(value, ensure_ascii=False)


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A JSON object as cells; nested objects also appear under dotted keys ("fields.priority.name")."""
    out: dict[str, str] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        out[name] = _cell_text(value)
    return out


@dataclass
class Table:
    """An export opened for reading: its columns and a stream of (row number, {column: cell text}).

    Row numbers count data rows from 1 (the CSV header is not a row); JSONL rows are line numbers.
    """

    path: Path
    format: str
    encoding: str
    encoding_detected: bool
    columns: tuple[str, ...]
    rows: Iterator[tuple[int, dict[str, str]]]
    delimiter: str | None = None
    warnings: list[str] = field(default_factory=list)
    unreadable: list[int] = field(default_factory=list)


def file_format(path: Path) -> str:
    """'jsonl', 'json' (one array of objects) or 'csv': by suffix, else by the first non-blank character."""
    with path.open("rb") as fh:
        start = fh.read(256).lstrip(codecs.BOM_UTF8 + b" \t\r\n")
    if path.suffix.lower() in _JSONL_SUFFIXES or start.startswith(b"{"):
        return "json" if start.startswith(b"[") else "jsonl"
    return "csv"


@contextmanager
def open_table(path: str | Path, encoding: str | None = None, progress: bool = False) -> Iterator[Table]:
    """Open a CSV or JSONL export; the encoding is detected unless given. Errors are `ImportDataError`."""
    from tqdm import tqdm

    path = Path(path)
    if not path.is_file():
        raise ImportDataError(f"{path}: file not found")
    if encoding:
        try:
            encoding = codecs.lookup(encoding).name
        except LookupError:
            raise ImportDataError(f"unknown encoding {encoding!r}") from None
    enc = encoding or detect_encoding(path)
    fmt = file_format(path)
    bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"reading {path.name}",
               file=sys.stderr, leave=False, disable=None if progress else True)
    raw = _ProgressReader(path.open("rb"), bar)
    try:
        text = io.TextIOWrapper(io.BufferedReader(raw, 1 << 16), encoding=enc, newline="", errors="strict")
    except LookupError as exc:  # a codec that is not a text encoding (rot13, base64)
        raw.close()
        bar.close()
        raise ImportDataError(f"--encoding {encoding}: {exc}") from None
    reader = {"csv": _csv_table, "jsonl": _jsonl_table, "json": _json_array_table}[fmt]
    try:
        yield reader(path, text, enc, encoding is None)
    except UnicodeDecodeError as exc:
        raise ImportDataError(f"{path}: cannot decode as {enc} (byte 0x{exc.object[exc.start]:02x}); "
                              "name the encoding with --encoding") from None
    finally:
        text.close()
        bar.close()


def _csv_table(path: Path, text: IO[str], enc: str, detected: bool) -> Table:
    # Ticket bodies can exceed the csv module's 128 KiB default field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 64 << 20))
    header_line = text.readline()
    while header_line and not header_line.strip():
        header_line = text.readline()
    if not header_line:
        raise ImportDataError(f"{path}: empty file, no header row")
    if path.suffix.lower() == ".tsv":
        delimiter = "\t"
    else:  # the candidate that splits the header most; Excel writes ';' in many European locales
        counts = {d: header_line.count(d) for d in (",", ";", "\t", "|")}
        delimiter = max(counts, key=lambda d: counts[d]) if max(counts.values()) else ","
    reader = csv.reader([header_line], delimiter=delimiter)
    header = next(reader)
    warnings: list[str] = []
    columns: list[str] = []
    for i, name in enumerate(header):
        name = name.replace("\ufeff", "").strip() or f"column {i + 1}"
        if name in columns:
            warnings.append(f"column {name!r} appears twice; the first is used")
            name = f"{name} ({i + 1})"
        columns.append(name)
    ragged = Counter()

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        n = 0
        for cells in csv.reader(text, delimiter=delimiter):
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue  # a blank line is not a row
            n += 1
            if len(cells) != len(columns):
                ragged[len(cells) > len(columns)] += 1
            yield n, dict(zip(columns, cells, strict=False))
        if ragged[False]:
            warnings.append(f"{ragged[False]} rows have fewer cells than the header (missing cells read as empty)")
        if ragged[True]:
            warnings.append(f"{ragged[True]} rows have more cells than the header (extra cells ignored)")

    return Table(path=path, format="csv", encoding=enc, encoding_detected=detected, columns=tuple(columns),
                 rows=rows(), delimiter=delimiter, warnings=warnings)


def _jsonl_table(path: Path, text: IO[str], enc: str, detected: bool) -> Table:
    unreadable: list[int] = []

    def parsed() -> Iterator[tuple[int, dict[str, str]]]:
        for n, line in enumerate(text, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if not isinstance(obj, dict):
                unreadable.append(n)
                continue
            yield n, _flatten(obj)

    stream = parsed()
    ahead = []
    for item in stream:
        ahead.append(item)
        if len(ahead) >= _JSONL_HEADER_ROWS:
            break
    columns: dict[str, None] = {}
    for _, row in ahead:
        columns.update(dict.fromkeys(row))

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        yield from ahead
        yield from stream

    return Table(path=path, format="jsonl", encoding=enc, encoding_detected=detected, columns=tuple(columns),
                 rows=rows(), unreadable=unreadable)


def _json_array_table(path: Path, text: IO[str], enc: str, detected: bool) -> Table:
    """A .json export holding one array of objects (read whole: JSON arrays cannot be streamed line by line)."""
    try:
        items = json.load(text)
    except ValueError as exc:
        raise ImportDataError(f"{path}: not JSON ({exc})") from None
    if not isinstance(items, list):
        raise ImportDataError(f"{path}: expected an array of objects or one object per line")
    unreadable = [n for n, obj in enumerate(items, 1) if not isinstance(obj, dict)]
    rows = [(n, _flatten(obj)) for n, obj in enumerate(items, 1) if isinstance(obj, dict)]
    columns: dict[str, None] = {}
    for _, row in rows[:_JSONL_HEADER_ROWS]:
        columns.update(dict.fromkeys(row))
    return Table(path=path, format="jsonl", encoding=enc, encoding_detected=detected, columns=tuple(columns),
                 rows=iter(rows), unreadable=unreadable)


def resolve_columns(mapping: Mapping[str, Sequence[str]], columns: Sequence[str], path: Path | str
                    ) -> dict[str, list[str]]:
    """Each field's columns as named in the file; a missing column is an error listing those available.

    Names match exactly, else case- and space-insensitively. 'A+B' that is itself a column name is one column.
    """
    loose: dict[str, list[str]] = {}
    for c in columns:
        loose.setdefault(norm_key(c), []).append(c)

    def find(name: str) -> str | None:
        if name in columns:
            return name
        hits = loose.get(norm_key(name), [])
        return hits[0] if len(hits) == 1 else None

    out: dict[str, list[str]] = {}
    for fld, wanted in mapping.items():
        whole = find("+".join(wanted)) if len(wanted) > 1 else None
        if whole:
            out[fld] = [whole]
            continue
        found = []
        for name in wanted:
            col = find(name)
            if col is None:
                shown = ", ".join(repr(c) for c in columns[:40])
                more = f" ... ({len(columns) - 40} more)" if len(columns) > 40 else ""
                raise ImportDataError(f"{Path(path).name}: no column {name!r} (mapped to {fld}); "
                                      f"available: {shown}{more}")
            found.append(col)
        out[fld] = found
    return out


# --- the import -------------------------------------------------------------------------------------------------

def clean_text(value: str) -> str:
    """Ticket text as written to the record: CRLF -> LF, control characters removed, outer space stripped."""
    return _CONTROL.sub("", value.replace("\r\n", "\n").replace("\r", "\n")).strip()


def _closed_at(value: str) -> str | None:
    """ISO-8601, or None when the value is not an unambiguous date (day/month order is never guessed)."""
    value = value.strip()
    try:
        return datetime.fromisoformat(value).isoformat()
    except ValueError:
        pass
    for fmt in ("%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y/%m/%d"):
        try:
            return datetime.strptime(value, fmt).isoformat()
        except ValueError:
            continue
    return None


def _pairs(counter: Counter) -> list[dict[str, Any]]:
    return [{"from": old, "to": new, "count": n} for (old, new), n in counter.most_common()]


@dataclass
class ImportReport:
    """What an import read, wrote and dropped, and why; `records` is filled by `import_tickets` only.

    Label counts (`empty`, `mapped`, `normalised`, `out_of_taxonomy`, `wrong_parent`) cover the rows that had
    text and were not duplicates; `kept`/`kept_values` cover the records written.
    """

    path: str
    format: str
    source: str
    encoding: str = ""
    encoding_detected: bool = True
    delimiter: str | None = None
    columns: dict[str, list[str]] = field(default_factory=dict)
    label_fields: list[str] = field(default_factory=list)
    drop_rows: bool = False
    rows_read: int = 0
    written: int = 0
    dropped: Counter = field(default_factory=Counter)
    kept: Counter = field(default_factory=Counter)
    kept_values: dict[str, Counter] = field(default_factory=dict)
    empty: Counter = field(default_factory=Counter)
    mapped: dict[str, Counter] = field(default_factory=dict)
    normalised: dict[str, Counter] = field(default_factory=dict)
    out_of_taxonomy: dict[str, Counter] = field(default_factory=dict)
    wrong_parent: dict[str, Counter] = field(default_factory=dict)
    duplicate_conflicts: Counter = field(default_factory=Counter)
    conflict_examples: list[str] = field(default_factory=list)
    unparsed_dates: int = 0
    date_examples: list[str] = field(default_factory=list)
    unreadable_rows: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)

    @property
    def labels_dropped(self) -> Counter:
        """Per field: labels removed because they are not (or not under their parent) in the taxonomy."""
        out: Counter = Counter()
        for fld, c in self.out_of_taxonomy.items():
            out[fld] += sum(c.values())
        for fld, c in self.wrong_parent.items():
            out[fld] += sum(c.values())
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report (without the records)."""
        return {
            "file": self.path, "format": self.format, "source": self.source, "encoding": self.encoding,
            "encoding_detected": self.encoding_detected, "delimiter": self.delimiter, "columns": self.columns,
            "drop_rows": self.drop_rows, "rows_read": self.rows_read, "written": self.written,
            "dropped": dict(self.dropped.most_common()),
            "labels": {
                fld: {
                    "kept": self.kept[fld], "empty": self.empty[fld], "dropped": self.labels_dropped[fld],
                    "values": dict(self.kept_values.get(fld, Counter()).most_common()),
                    "mapped": _pairs(self.mapped.get(fld, Counter())),
                    "normalised": _pairs(self.normalised.get(fld, Counter())),
                    "out_of_taxonomy": dict(self.out_of_taxonomy.get(fld, Counter()).most_common()),
                    "wrong_parent": [{"parent": p, "value": v, "count": n}
                                     for (p, v), n in self.wrong_parent.get(fld, Counter()).most_common()],
                } for fld in self.label_fields
            },
            "duplicate_conflicts": dict(self.duplicate_conflicts), "conflict_examples": self.conflict_examples,
            "unparsed_dates": self.unparsed_dates, "date_examples": self.date_examples,
            "unreadable_rows": self.unreadable_rows[:100], "warnings": self.warnings,
        }

    def format_text(self) -> str:
        """The report for people: counts with the reasons, most frequent first."""
        def pct(n: int, of: int) -> str:
            return f"{n:,} ({n / of:.0%})" if of else f"{n:,}"

        enc = f"{self.encoding} ({'detected' if self.encoding_detected else 'as given'})"
        lines = [f"read {self.rows_read:,} rows from {self.path} ({self.format}, encoding {enc}"
                 + (f", delimiter {self.delimiter!r}" if self.delimiter not in (None, ",") else "") + ")",
                 f"wrote {pct(self.written, self.rows_read)} records"]
        if self.dropped:
            lines.append("dropped rows: " + ", ".join(f"{reason.replace('_', ' ')} {n:,}"
                                                     for reason, n in self.dropped.most_common()))
        for fld in self.label_fields:
            lines.append(f"{fld}: kept on {pct(self.kept[fld], self.written)} records; "
                         f"empty {self.empty[fld]:,}, dropped (not in taxonomy) {self.labels_dropped[fld]:,}")
            values = self.kept_values.get(fld)
            if values:
                lines.append("    values: " + ", ".join(f"{v} {n:,}" for v, n in values.most_common(12))
                             + (f", ... ({len(values) - 12} more)" if len(values) > 12 else ""))
            for title, counter in (("mapped", self.mapped), ("normalised (case/spacing)", self.normalised)):
                if counter.get(fld):
                    lines.append(f"    {title}: " + ", ".join(f"{old!r} -> {new!r} {n:,}"
                                                             for (old, new), n in counter[fld].most_common()))
            if self.out_of_taxonomy.get(fld):
                lines.append("    NOT IN TAXONOMY: " + ", ".join(
                    f"{v!r} {n:,}" for v, n in self.out_of_taxonomy[fld].most_common(20))
                    + (f", ... ({len(self.out_of_taxonomy[fld]) - 20} more values)"
                       if len(self.out_of_taxonomy[fld]) > 20 else ""))
            if self.wrong_parent.get(fld):
                lines.append("    NOT UNDER ITS PARENT: " + ", ".join(
                    f"{v!r} under {p!r} {n:,}" for (p, v), n in self.wrong_parent[fld].most_common(20)))
        if self.duplicate_conflicts:
            lines.append("duplicates with conflicting labels (first kept): "
                         + ", ".join(f"{f} {n:,}" for f, n in self.duplicate_conflicts.most_common()))
            lines.extend(f"    {e}" for e in self.conflict_examples)
        if self.unparsed_dates:
            lines.append(f"closed_at not ISO-8601, left out: {self.unparsed_dates:,} "
                         f"(e.g. {', '.join(map(repr, self.date_examples))})")
        if self.unreadable_rows:
            lines.append(f"unreadable lines: {', '.join(map(str, self.unreadable_rows[:10]))}"
                         + (" ..." if len(self.unreadable_rows) > 10 else ""))
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


class Import:
    """One import in progress: the export is open and the mapping checked; `records()` streams the result.

    Use through `open_import`, which closes the file.
    """

    def __init__(self, table: Table, columns: dict[str, list[str]], taxonomy: Taxonomy, label_map: LabelMap,
                 drop_rows: bool, source: str) -> None:
        self.table, self.columns, self.taxonomy = table, columns, taxonomy
        self.label_map = label_map
        self.loose_map = {fld: {norm_key(k): v for k, v in table_.items()} for fld, table_ in label_map.items()}
        self.drop_rows = drop_rows
        self.source = source
        # Parents before children, whatever the order of --map.
        self.label_fields = [f for f in taxonomy.field_names if f in columns]
        self.report = ImportReport(path=str(table.path), format=table.format, source=source,
                                   encoding=table.encoding, encoding_detected=table.encoding_detected,
                                   delimiter=table.delimiter, columns=columns, label_fields=self.label_fields,
                                   drop_rows=drop_rows)
        self._seen: dict[bytes, tuple[int, tuple[tuple[str, str], ...]]] = {}
        self._mojibake = 0
        self._too_long: Counter = Counter()

    def _cells(self, row: Mapping[str, str], fld: str) -> str:
        return row.get(self.columns[fld][0], "")

    def _label(self, fld: str, raw: str, chosen: Mapping[str, str]) -> tuple[str, str | None, Any]:
        """(outcome, value or None, detail) for one label cell: exact, mapped, normalised, out, parent."""
        f = self.taxonomy[fld]
        if not f.is_enum:
            value = clean_text(raw)
            if len(value) > f.max_length:
                self._too_long[fld] += 1
            return "exact", value, None
        value = raw
        outcome = "exact"
        table = self.label_map.get(fld, {})
        if raw in table or raw.strip() in table:
            value = table.get(raw, table.get(raw.strip()))
            outcome = "exact" if value == raw else "mapped"  # an identity entry documents, it changes nothing
        elif norm_key(raw) in self.loose_map.get(fld, {}):
            value, outcome = self.loose_map[fld][norm_key(raw)], "mapped"
        elif raw not in f.values:
            loose = [v for v in f.values if norm_key(v) == norm_key(raw)]
            if len(loose) != 1:
                return "out", None, raw.strip()
            value, outcome = loose[0], "normalised"
        if f.parent and f.parent in chosen and value not in f.children.get(chosen[f.parent], ()):
            return "parent", None, (chosen[f.parent], value)
        return outcome, value, None

    def records(self) -> Iterator[Record]:
        """The records, streamed; the report is complete once this is exhausted."""
        rep = self.report
        text_cols = self.columns["text"]
        for n, row in self.table.rows:
            rep.rows_read += 1
            text = "\n".join(p for p in (clean_text(row.get(c, "")) for c in text_cols) if p)
            if not text:
                rep.dropped["empty_text"] += 1
                continue
            labels: dict[str, str] = {}
            outcomes: list[tuple[str, str, Any]] = []
            for fld in self.label_fields:
                raw = self._cells(row, fld)
                if not raw.strip():
                    outcomes.append(("empty", fld, None))
                    continue
                outcome, value, detail = self._label(fld, raw, labels)
                outcomes.append((outcome, fld, (raw, value) if value is not None else detail))
                if value is not None:
                    labels[fld] = value
            key = hashlib.blake2b(norm_key(text).encode("utf-8"), digest_size=16).digest()
            if key in self._seen:
                rep.dropped["duplicate"] += 1
                self._note_conflict(n, labels, *self._seen[key])
                continue
            self._seen[key] = (n, tuple(labels.items()))
            out_of_taxonomy = False
            for outcome, fld, detail in outcomes:
                if outcome == "empty":
                    rep.empty[fld] += 1
                elif outcome == "mapped":
                    rep.mapped.setdefault(fld, Counter())[detail] += 1
                elif outcome == "normalised":
                    rep.normalised.setdefault(fld, Counter())[detail] += 1
                elif outcome == "out":
                    rep.out_of_taxonomy.setdefault(fld, Counter())[detail] += 1
                    out_of_taxonomy = True
                elif outcome == "parent":
                    rep.wrong_parent.setdefault(fld, Counter())[detail] += 1
                    out_of_taxonomy = True
            if out_of_taxonomy and self.drop_rows:
                rep.dropped["label_not_in_taxonomy"] += 1
                continue
            if self.label_fields and not labels:
                rep.dropped["no_labels"] += 1  # a record without labels teaches nothing
                continue
            problems = self.taxonomy.check_labels(labels)
            assert not problems, problems  # every label above was checked against the taxonomy
            record = self._record(row, text, labels)
            rep.written += 1
            for fld, value in labels.items():
                rep.kept[fld] += 1
                if self.taxonomy[fld].is_enum:
                    rep.kept_values.setdefault(fld, Counter())[value] += 1
            if self.table.encoding == "cp1252" and ("Ã" in text or "â€" in text):
                self._mojibake += 1
            yield record
        self._finish()

    def _record(self, row: Mapping[str, str], text: str, labels: dict[str, str]) -> Record:
        record: Record = {}
        if "id" in self.columns and (ident := clean_text(self._cells(row, "id"))):
            record["id"] = ident
        record["text"] = text
        if "language" in self.columns and (lang := self._cells(row, "language").strip()):
            record["language"] = lang.lower()
        record["labels"] = labels
        record["source"] = self.source
        if "closed_at" in self.columns and (raw := self._cells(row, "closed_at").strip()):
            when = _closed_at(raw)
            if when is None:
                self.report.unparsed_dates += 1
                if len(self.report.date_examples) < 3:
                    self.report.date_examples.append(raw)
            else:
                record["closed_at"] = when
        return record

    def _note_conflict(self, n: int, labels: Mapping[str, str], first: int,
                       kept: tuple[tuple[str, str], ...]) -> None:
        kept_labels = dict(kept)
        for fld, value in labels.items():
            if fld in kept_labels and kept_labels[fld] != value:
                self.report.duplicate_conflicts[fld] += 1
                if len(self.report.conflict_examples) < _MAX_EXAMPLES:
                    self.report.conflict_examples.append(
                        f"row {n} repeats row {first}: {fld} {value!r}, kept {kept_labels[fld]!r}")

    def _finish(self) -> None:
        rep = self.report
        rep.unreadable_rows = list(self.table.unreadable)
        if rep.unreadable_rows:
            rep.dropped["unreadable"] += len(rep.unreadable_rows)
            rep.rows_read += len(rep.unreadable_rows)
        rep.warnings = list(self.table.warnings)
        for fld, n in self._too_long.items():
            rep.warnings.append(f"{n} {fld} labels are longer than its max_length "
                                f"({self.taxonomy[fld].max_length}); kept, but the model writes at most that much")
        if self._mojibake:
            rep.warnings.append(f"{self._mojibake} records decoded as cp1252 look like UTF-8 text ('Ã', 'â€'): "
                                "mixed encodings? try --encoding utf-8 to find the bad rows")


@contextmanager
def open_import(path: str | Path, mapping: Mapping[str, Sequence[str]], taxonomy: Taxonomy,
                label_map: Mapping[str, Mapping[str, str]] | None = None, drop_rows: bool = False,
                encoding: str | None = None, source: str | None = None, progress: bool = False
                ) -> Iterator[Import]:
    """Open an export for import, checking the mapping and label map first (errors before any output)."""
    if "text" not in mapping:
        raise ImportDataError("map the ticket text, e.g. --map text=\"Short description+Description\"")
    for fld, cols in mapping.items():
        if fld not in RECORD_FIELDS and fld not in taxonomy:
            raise ImportDataError(f"--map {fld}: not a record field ({', '.join(RECORD_FIELDS)}) nor a field of "
                                  f"taxonomy {taxonomy.name!r} ({', '.join(taxonomy.field_names)})")
        if fld != "text" and len(cols) > 1:
            raise ImportDataError(f"--map {fld}: only text may join several columns")
    label_map = {fld: dict(t) for fld, t in (label_map or {}).items()}
    check_label_map(label_map, taxonomy)
    with open_table(path, encoding=encoding, progress=progress) as table:
        columns = resolve_columns(mapping, table.columns, table.path)
        yield Import(table, columns, taxonomy, label_map, drop_rows, source or table.format)


def import_tickets(path: str | Path, mapping: Mapping[str, Sequence[str]], taxonomy: Taxonomy,
                   label_map: Mapping[str, Mapping[str, str]] | None = None, drop_rows: bool = False,
                   encoding: str | None = None, source: str | None = None) -> ImportReport:
    """Import an export into memory: the report, with the records in `report.records`."""
    with open_import(path, mapping, taxonomy, label_map=label_map, drop_rows=drop_rows, encoding=encoding,
                     source=source) as imp:
        imp.report.records = list(imp.records())
    return imp.report
