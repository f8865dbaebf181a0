"""Ticket text and identifiers checked once, where they enter the daemon (webhooks, polls, the API, the CLI).

Why here and not in the model code: a problem that is visible in the input (a lone surrogate that no encoder
accepts, a text of control characters only) must be answered at intake, with a 4xx, not found by the tokenizer or
the database minutes later as a dead job. Text is repaired when a reader loses nothing (lone surrogates become
U+FFFD, control characters other than tab and newline are dropped, NFC); identifiers are refused instead, because
a repaired id would name another ticket on the way back.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Any

#: Control characters a reader never sees (C0 except tab/newline/carriage return, DEL, C1).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


class TextProblem(ValueError):
    """Input that cannot be used as it is; `field` names it, the message says why in one line."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class EmptyText(TextProblem):
    """Text with no letter or digit in it: nothing a model (or a person) could triage."""


def clean_text(value: str) -> str:
    """`value` as valid, NFC-normalised Unicode without invisible control characters (never raises)."""
    value = _SURROGATE.sub(REPLACEMENT, value)
    value = _CONTROL.sub("", value.replace("\r\n", "\n"))
    return unicodedata.normalize("NFC", value)


def has_content(text: str) -> bool:
    """Whether `text` holds at least one letter or digit, in any script."""
    return any(ch.isalnum() for ch in text)


def ticket_text(value: Any, field: str = "text") -> str:
    """A ticket's text, cleaned; `EmptyText` when nothing triageable is left, `TextProblem` when not a string."""
    if not isinstance(value, str):
        raise TextProblem(field, f"expected a string, got {type(value).__name__}")
    text = clean_text(value).strip()
    if not has_content(text):
        raise EmptyText(field, "empty (no letters or digits), nothing to triage")
    return text


def unicode_problem(value: str) -> str | None:
    """Why `value` is not valid Unicode text (a lone surrogate), or None."""
    found = _SURROGATE.search(value)
    if found is None:
        return None
    return f"invalid Unicode: lone surrogate U+{ord(found.group()):04X} at character {found.start()}"


def identifier(value: str, field: str) -> str:
    """An id as given, or `TextProblem`: ids are matched byte for byte by the vendor, so they are never repaired."""
    problem = unicode_problem(value)
    if problem is None and any(unicodedata.category(ch) == "Cc" for ch in value):
        problem = "control characters are not allowed"
    if problem is not None:
        raise TextProblem(field, problem)
    return value


def check_strings(value: Any, field: str) -> None:
    """Raise `TextProblem` when any string in a JSON-like value (keys included) is not valid Unicode."""
    if isinstance(value, str):
        problem = unicode_problem(value)
        if problem is not None:
            raise TextProblem(field, problem)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_strings(key, field)
            check_strings(item, f"{field}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_strings(item, f"{field}[{i}]")


__all__ = ["TextProblem", "EmptyText", "clean_text", "has_content", "ticket_text", "unicode_problem", "identifier",
           "check_strings"]
