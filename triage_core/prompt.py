"""The prompt and the answer's token layout, shared by inference and training.

Inference uses the "explicit" prompt: a system message that spells out the schema (fields in order, allowed
values), then the ticket as the user message. The system turn never changes, so its KV cache is computed once.
Field descriptions are always shown; value descriptions only for short lists (at most `VALUE_DESCRIPTION_LIMIT`
values, such as priority), where they carry the meaning. Long lists stay names only: that keeps the prompt at
about half the tokens, which every decode step attends over and every explicit training example pays for.
An adapter may carry descriptions learnt from its training tickets (triage_core.descriptions): those fields list
every value with its description, since there the names alone say nothing.

The answer is laid out as alternating segments: JSON punctuation with key names (`{"summary": "`,
`", "category": "`, ..., `"}`) and values. Each segment is tokenized on its own, and training tokenizes the
same way, so the tokens the decoder feeds and scores are exactly the tokens the adapter was trained on.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .taxonomy import Taxonomy

_SENTINEL = "\u2063TICKET\u2063"
VALUE_DESCRIPTION_LIMIT = 4
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BLANK_RUNS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")


def system_prompt(taxonomy: Taxonomy, learnt: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """The explicit-schema instruction: every field, in order, with its allowed values (and `learnt`
    descriptions of them, where the adapter has some)."""
    learnt = learnt or {}
    lines = [
        "You triage IT service desk tickets. Read the ticket and answer with one JSON object that has exactly "
        "these fields, in this order:"
    ]
    for f in taxonomy.fields:
        head = f"- {f.name}"
        if f.kind == "text":
            desc = f.description or "free text"
            lines.append(f"{head}: text, {desc} (at most {f.max_length} characters)")
            continue
        if f.description:
            head += f" ({f.description})"
        if f.parent:
            lines.append(f"{head}: depends on {f.parent}:")
            for parent_value, values in f.children.items():
                lines.append(f"  {parent_value}: {', '.join(values)}")
            continue
        own = f.value_descriptions if len(f.values) <= VALUE_DESCRIPTION_LIMIT else {}
        notes = {**learnt.get(f.name, {}), **own}
        if notes:
            lines.append(f"{head}: one of")
            for v in f.values:
                d = notes.get(v)
                lines.append(f"  {v}: {d}" if d else f"  {v}")
        else:
            lines.append(f"{head}: one of {', '.join(f.values)}")
    lines.append("Use only the values listed. Answer with the JSON object only.")
    return "\n".join(lines)


def clean_ticket_text(text: str) -> str:
    """Drop control characters and long runs of blank lines; keep everything a reader would see."""
    text = _CONTROL.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n"))
    return _BLANK_RUNS.sub("\n\n", text).strip()


def json_string_body(value: str) -> str:
    """The characters between the quotes of a JSON string literal."""
    return json.dumps(value, ensure_ascii=False)[1:-1]


@dataclass(frozen=True)
class EncodedTicket:
    ids: list[int]
    truncated: bool
    original_tokens: int


class PromptCodec:
    """Turns tickets and answers into token ids for one tokenizer, taxonomy and system prompt."""

    def __init__(self, tokenizer: Any, taxonomy: Taxonomy, system: str | None = None,
                 learnt: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.tokenizer = tokenizer
        self.taxonomy = taxonomy
        self.system = system if system is not None else system_prompt(taxonomy, learnt)
        prefix, head, tail = self._split_template(self.system)
        self.prefix_ids = self.encode(prefix)
        self.head_ids = self.encode(head)
        self.tail_ids = self.encode(tail)

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _split_template(self, system: str) -> tuple[str, str, str]:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            full = tok.apply_chat_template(
                [{"role": "system", "content": system}, {"role": "user", "content": _SENTINEL}],
                tokenize=False, add_generation_prompt=True)
            sys_only = tok.apply_chat_template([{"role": "system", "content": system}], tokenize=False)
            if isinstance(full, str) and _SENTINEL in full:
                if isinstance(sys_only, str) and full.startswith(sys_only):
                    head, tail = full[len(sys_only):].split(_SENTINEL, 1)
                    return sys_only, head, tail
                before, tail = full.split(_SENTINEL, 1)
                return before, "", tail
        return f"### Instructions\n{system}\n\n", "### Ticket\n", "\n\n### Triage\n"

    def encode_ticket(self, text: str, max_tokens: int) -> EncodedTicket:
        """The ticket's own tokens, cut to `max_tokens` (the head of a ticket carries its subject)."""
        ids = self.encode(clean_ticket_text(text))
        return EncodedTicket(ids=ids[:max_tokens], truncated=len(ids) > max_tokens, original_tokens=len(ids))

    def user_ids(self, ticket_ids: Sequence[int]) -> list[int]:
        """Everything after the cached prefix, up to where the answer starts."""
        return [*self.head_ids, *ticket_ids, *self.tail_ids]

    # --- the answer -------------------------------------------------------------------------------------

    def punctuation(self, index: int) -> str:
        """The fixed text before field `index` (or after the last field, for index == len(fields))."""
        names = self.taxonomy.field_names
        if index == 0:
            return '{"' + names[0] + '": "'
        if index == len(names):
            return '"}'
        return '", "' + names[index] + '": "'

    def answer_segments(self, ticket: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        """(field name or None for punctuation, text) pieces of the answer, in order."""
        out: list[tuple[str | None, str]] = []
        for i, name in enumerate(self.taxonomy.field_names):
            out.append((None, self.punctuation(i)))
            out.append((name, json_string_body(str(ticket[name]))))
        out.append((None, self.punctuation(len(self.taxonomy.field_names))))
        return out

    def encode_answer(self, ticket: Mapping[str, Any]) -> list[int]:
        ids: list[int] = []
        for _, text in self.answer_segments(ticket):
            ids.extend(self.encode(text))
        return ids

    def answer_text(self, ticket: Mapping[str, Any]) -> str:
        return "".join(text for _, text in self.answer_segments(ticket))
