"""The labelled-ticket record (DESIGN.md) and its JSONL files, shared by generation, import, training and eval."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from triage_core.records import Record as Record  # re-exported: the record shape lives in triage_core

SOURCES = ("synthetic", "jira", "zoho", "manageengine", "csv", "jsonl")


class RecordError(ValueError):
    """A record file or line is not in the record shape; the message names file and line."""


def check_record(item: Any, where: str) -> Record:
    if not isinstance(item, dict):
        raise RecordError(f"{where}: expected a JSON object")
    if not isinstance(item.get("text"), str) or not item["text"].strip():
        raise RecordError(f"{where}: 'text' must be a non-empty string")
    labels = item.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise RecordError(f"{where}: 'labels' must map field names to strings")
    return item  # type: ignore[return-value]


def read_records(path: str | Path) -> list[Record]:
    """Read a JSONL file of records; a bad line is an error naming it."""
    path = Path(path)
    out: list[Record] = []
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"{path}: not UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise RecordError(f"{path}: {exc.strerror}") from None
    for n, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise RecordError(f"{path}:{n}: not JSON ({exc.msg})") from None
        out.append(check_record(item, f"{path}:{n}"))
    return out


def iter_jsonl(records: Iterable[Record]) -> Iterator[str]:
    for r in records:
        yield json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n"


def write_records(path: str | Path, records: Iterable[Record]) -> int:
    """Write records as JSONL (atomically: a temp file renamed into place); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for line in iter_jsonl(records):
            fh.write(line)
            count += 1
    tmp.replace(path)
    return count
