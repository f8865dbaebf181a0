"""The labelled-ticket record of DESIGN.md: the shape a `ClosedTicketSource` yields and trainer reads and writes.

It lives in triage_core so that connectors (which must not import trainer) and trainer name one type; trainer.records
re-exports it with the JSONL readers and writers.
"""
from __future__ import annotations

from typing import TypedDict


class Record(TypedDict, total=False):
    id: str
    text: str
    language: str
    labels: dict[str, str]
    source: str
    closed_at: str
    group: str  # optional: the near-duplicate group (synthetic scenario phrasing); keeps paraphrases in one split


__all__ = ["Record"]
