"""Label descriptions learnt from a team's own tickets, kept in the adapter folder.

A label such as `GRP_12` or `Q07` means nothing to a language model. The recipe describes each value of a long
enum field by the terms that set its training tickets apart (the lexical expert's heaviest word n-grams), and the
explicit prompt lists them beside the value, for training and inference alike, so the LM reads what the team's
own history says each group handles. Short lists (priority, request type) keep their names: they speak for
themselves, and the taxonomy's own descriptions already cover them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

#: File in the adapter folder: {field: {value: "term, term, term"}}.
DESCRIPTIONS_FILE = "label_descriptions.json"
#: Terms per value: three while the list is short enough for the prompt, two beyond `LONG_LIST`.
TERMS, LONG_TERMS, LONG_LIST = 3, 2, 30

Descriptions = Mapping[str, Mapping[str, str]]


def save_descriptions(folder: str | Path, descriptions: Descriptions) -> None:
    path = Path(folder) / DESCRIPTIONS_FILE
    path.write_text(json.dumps(descriptions, ensure_ascii=False, indent=1, sort_keys=True), encoding="utf-8")


def load_descriptions(folder: str | Path | None) -> dict[str, dict[str, str]]:
    """The adapter's learnt descriptions; none for an adapter trained without them (it keeps its own prompt)."""
    if folder is None:
        return {}
    path = Path(folder) / DESCRIPTIONS_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of field -> value -> description")
    return {str(f): {str(v): str(d) for v, d in values.items()} for f, values in data.items()}
