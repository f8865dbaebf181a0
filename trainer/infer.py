"""`ticket-triage taxonomy infer`: draft a taxonomy from the labels found in labelled closed tickets.

A team that already labels tickets (by hand in its ITSM) has its taxonomy in its data. This reads an export with
the same column mapping as the import, counts every label value, and writes a taxonomy YAML whose comments carry
the counts and flag rare values, so the draft can be reviewed (merge, rename, describe) rather than written from
scratch. The draft always loads with `triage_core.taxonomy.load_taxonomy`: values are sanitised to its rules.
"""
from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from triage_core.taxonomy import STANDARD_FIELDS, parse_taxonomy

from .importer import RECORD_FIELDS, ImportDataError, norm_key, open_table, resolve_columns

_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_VALUE_CHARS = 100  # the taxonomy's limit on a value
_PLACEHOLDER = "Other"


def sanitise_value(raw: str) -> tuple[str, bool]:
    """(value, truncated): control characters and runs of spaces become one space, trimmed to 100 characters."""
    value = " ".join(_CONTROL.sub(" ", raw).split())
    if len(value) > _MAX_VALUE_CHARS:
        return value[:_MAX_VALUE_CHARS].rstrip(), True
    return value, False


def _q(value: str) -> str:
    """A YAML double-quoted scalar: 'yes', '0', 'null' or 'a: b' stay text when the file is read back."""
    return yaml.safe_dump(value, default_style='"', allow_unicode=True, width=1 << 30).strip()


def _tickets(n: int) -> str:
    return f"{n:,} ticket" + ("" if n == 1 else "s")


@dataclass
class InferredTaxonomy:
    """The drafted YAML and the counts behind it (after merging spellings that differ only in case/spacing)."""

    yaml: str
    path: str
    encoding: str
    rows_read: int = 0
    rows_labelled: int = 0
    columns: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, Counter] = field(default_factory=dict)
    children: dict[str, Counter] = field(default_factory=dict)
    rare: dict[str, list[str]] = field(default_factory=dict)
    variants: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    truncated: Counter = field(default_factory=Counter)
    orphans: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.path, "encoding": self.encoding, "rows_read": self.rows_read,
            "rows_labelled": self.rows_labelled, "columns": self.columns,
            "fields": {f: {"values": dict(c.most_common()), "rare": self.rare.get(f, []),
                           "variants": self.variants.get(f, {}), "truncated": self.truncated[f]}
                       for f, c in self.counts.items()},
            "children": {p: dict(c.most_common()) for p, c in self.children.items()},
            "subcategory_without_category": dict(self.orphans.most_common()),
            "yaml": self.yaml,
        }


def _merge_spellings(counter: Counter) -> tuple[Counter, dict[str, str], dict[str, list[str]]]:
    """Merge values equal up to case/spacing under their most frequent spelling.

    Returns the merged counts, spelling -> canonical, and canonical -> the other spellings seen.
    """
    groups: dict[str, list[tuple[str, int]]] = {}
    for value, n in counter.most_common():
        groups.setdefault(norm_key(value), []).append((value, n))
    merged: Counter = Counter()
    canonical: dict[str, str] = {}
    variants: dict[str, list[str]] = {}
    for members in groups.values():
        head = members[0][0]
        for value, n in members:
            merged[head] += n
            canonical[value] = head
        if len(members) > 1:
            variants[head] = [f"{v} ({n})" for v, n in members[1:]]
    return merged, canonical, variants


def infer_taxonomy(path: str | Path, mapping: Mapping[str, Sequence[str]], min_count: int = 5,
                   label_map: Mapping[str, Mapping[str, str]] | None = None, encoding: str | None = None,
                   name: str | None = None, progress: bool = False) -> InferredTaxonomy:
    """Draft a taxonomy from the mapped label columns of an export (text, id, language, closed_at are ignored).

    `label_map` renames values before counting (to merge labels the draft flagged); subcategory becomes
    `parent: category` when both are mapped; `summary` is a text field.
    """
    label_fields = [f for f in mapping if f not in RECORD_FIELDS]
    if not label_fields:
        raise ImportDataError("map at least one label column, e.g. --map assignment_group=\"Assignment group\"")
    for fld in label_fields:
        if not _FIELD_NAME.match(fld):
            raise ImportDataError(f"--map {fld}: field names are lower-case letters, digits and underscores")
        if len(mapping[fld]) > 1:
            raise ImportDataError(f"--map {fld}: a label comes from one column")
    order = [f for f in STANDARD_FIELDS if f in label_fields] + [f for f in label_fields
                                                                   if f not in STANDARD_FIELDS]
    enum_fields = [f for f in order if f != "summary"]
    dependent = "subcategory" in enum_fields and "category" in enum_fields
    loose_map = {f: {norm_key(k): v for k, v in t.items()} for f, t in (label_map or {}).items()}

    counts: dict[str, Counter] = {f: Counter() for f in enum_fields}
    pairs: Counter = Counter()
    orphans: Counter = Counter()
    truncated: Counter = Counter()
    summary_lengths: list[int] = []
    rows_read = rows_labelled = 0
    with open_table(path, encoding=encoding, progress=progress) as table:
        columns = resolve_columns({f: mapping[f] for f in order}, table.columns, table.path)
        for _, row in table.rows:
            rows_read += 1
            found: dict[str, str] = {}
            for fld in order:
                raw = row.get(columns[fld][0], "")
                if fld == "summary":
                    if raw.strip():
                        summary_lengths.append(len(" ".join(raw.split())))
                        found[fld] = raw
                    continue
                table_ = (label_map or {}).get(fld, {})
                if raw in table_ or raw.strip() in table_:
                    raw = table_.get(raw, table_.get(raw.strip(), raw))
                elif norm_key(raw) in loose_map.get(fld, {}):
                    raw = loose_map[fld][norm_key(raw)]
                value, cut = sanitise_value(raw)
                if not value:
                    continue
                truncated[fld] += cut
                counts[fld][value] += 1
                found[fld] = value
            if found:
                rows_labelled += 1
            if dependent and "subcategory" in found:
                if "category" in found:
                    pairs[(found["category"], found["subcategory"])] += 1
                else:
                    orphans[found["subcategory"]] += 1
        encoding_used = table.encoding
    for fld in enum_fields:
        if not counts[fld]:
            raise ImportDataError(f"{fld}: column {columns[fld][0]!r} has no values in {Path(path).name}")

    result = InferredTaxonomy(yaml="", path=str(path), encoding=encoding_used, rows_read=rows_read,
                              rows_labelled=rows_labelled, columns=columns, truncated=truncated)
    canon: dict[str, dict[str, str]] = {}
    for fld in enum_fields:
        result.counts[fld], canon[fld], variants = _merge_spellings(counts[fld])
        if variants:
            result.variants[fld] = variants
    if dependent:
        for (cat, sub), n in pairs.items():
            result.children.setdefault(canon["category"][cat], Counter())[canon["subcategory"][sub]] += n
        for sub, n in orphans.items():
            result.orphans[canon["subcategory"][sub]] += n
    for fld in enum_fields:
        rare = [v for v, n in result.counts[fld].items() if n < min_count]
        if rare:
            result.rare[fld] = rare

    result.yaml = _render(result, order, dependent, min_count, summary_lengths,
                          name or f"inferred-{Path(path).stem}")
    try:  # the draft must be usable as written; a failure here is a bug in this module
        parse_taxonomy(yaml.safe_load(result.yaml), source="<inferred>")
    except Exception as exc:  # pragma: no cover
        raise RuntimeError(f"inferred taxonomy does not load: {exc}") from exc
    return result


def _render(res: InferredTaxonomy, order: list[str], dependent: bool, min_count: int,
            summary_lengths: list[int], name: str) -> str:
    def comment(n: int) -> str:
        if n < min_count:
            return f"  # RARE: {_tickets(n)}, consider merging"
        return f"  # {_tickets(n)}"

    def variant_note(fld: str, value: str, indent: str) -> list[str]:
        others = res.variants.get(fld, {}).get(value)
        return [f"{indent}# also written as: {', '.join(others)}"] if others else []

    name = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "inferred"
    lines = [
        f"# Drafted by `ticket-triage taxonomy infer` from {Path(res.path).name}: {res.rows_read:,} rows "
        f"({res.rows_labelled:,} with a label), encoding {res.encoding}.",
        "# Counts are tickets carrying each value. Before using it: merge rare values (a label map does that on",
        "# import), rename opaque values, and add descriptions (they are shown to the model), then run",
        "# `ticket-triage taxonomy check` on this file.",
        f"name: {_q(name)}",
        "fields:",
    ]
    for fld in order:
        col = res.columns[fld][0]
        lines.append(f"  {fld}:")
        if fld == "summary":
            lines.append(f"    # from column {col!r}")
            lines.append("    type: text")
            if summary_lengths:
                p95 = sorted(summary_lengths)[int(0.95 * (len(summary_lengths) - 1))]
                lines.append(f"    max_length: {max(120, min(2000, p95))}  # observed: median "
                             f"{int(statistics.median(summary_lengths))}, 95th percentile {p95}, longest "
                             f"{max(summary_lengths)} characters")
            else:
                lines.append("    max_length: 120")
            continue
        counter = res.counts[fld]
        lines.append(f"    # from column {col!r}: {len(counter)} values on {_tickets(sum(counter.values()))}"
                     + (f", {len(res.rare.get(fld, []))} rare (< {min_count})" if res.rare.get(fld) else ""))
        if res.truncated[fld]:
            lines.append(f"    # {_tickets(res.truncated[fld])} had a value longer than {_MAX_VALUE_CHARS} "
                         "characters, cut here: map the originals with a label map on import")
        if fld == "subcategory" and dependent:
            lines.append("    parent: category")
            if res.orphans:
                lines.append(f"    # {_tickets(sum(res.orphans.values()))} had a subcategory but no category "
                             "and are not placed below")
            lines.append("    values:")
            for cat in res.counts["category"]:
                lines.append(f"      {_q(cat)}:")
                subs = res.children.get(cat)
                if not subs:
                    lines.append(f"        {_q(_PLACEHOLDER)}: \"\"  # placeholder: no subcategory was "
                                 "seen under this category")
                    continue
                for sub, n in subs.most_common():
                    lines.extend(variant_note("subcategory", sub, "        "))
                    lines.append(f"        {_q(sub)}: \"\"" + comment(n))
            unplaced = [s for s in res.orphans if not any(s in c for c in res.children.values())]
            if unplaced:
                lines.append(f"    # never seen under a category, so left out: {', '.join(unplaced[:20])}")
            continue
        lines.append("    values:")
        for value, n in counter.most_common():
            lines.extend(variant_note(fld, value, "      "))
            lines.append(f"      {_q(value)}: \"\"" + comment(n))
    return "\n".join(lines) + "\n"
