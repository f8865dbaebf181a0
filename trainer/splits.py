"""Train/val/test splits that never put near-duplicates on both sides.

A held-out score only means something if the held-out tickets are not paraphrases of training tickets. Synthetic
tickets built from the same core phrasing, or an alert that fires every night with a different number in it, must
therefore land in the same split. `split_records` groups records first and assigns whole groups:

- a record with an explicit group key (the generator writes `"group"`: the scenario and core phrasing it was
  built from; or whatever `key(record)` returns) is grouped with every record sharing that key;
- a record without one (imported real tickets) is grouped by its text: word 3-gram shingles of the normalized
  text (digits folded), 32 min-hashes in 8 bands of 4; two records sharing a band are the same group (Jaccard
  similarity 0.7 gives about 9 chances in 10 to be grouped, 0.3 about 6 in 100). Hashes are blake2b and a fixed
  seed, never Python's hash(), so the grouping is the same on every run and machine.

Each group goes to train, val or test by a seeded hash of its name, so adding records never moves existing
groups to another split, and the same seed gives the same split.
"""
from __future__ import annotations

import hashlib
import math
import random
import re
import unicodedata
from typing import Any, Callable, Mapping, Sequence, TypeVar

R = TypeVar("R", bound=Mapping[str, Any])

SPLITS = ("train", "val", "test")
DEFAULT_RATIOS = (0.8, 0.1, 0.1)

_NON_WORD = re.compile(r"[^0-9a-z]+")
_DIGITS = re.compile(r"[0-9]+")
_SHINGLE = 3
_BANDS, _ROWS = 8, 4
_PRIME = (1 << 61) - 1
_coeff_rng = random.Random(20240613)  # fixed: the signature of a text must not change between runs
_COEFFS = tuple((_coeff_rng.randrange(1, _PRIME), _coeff_rng.randrange(_PRIME)) for _ in range(_BANDS * _ROWS))


def normalize_text(text: str) -> str:
    """Lower-case, accent-free, punctuation-free, single-spaced: what dedup and near-duplicate checks compare."""
    text = unicodedata.normalize("NFKD", text.casefold())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return _NON_WORD.sub(" ", text).strip()


def _hash64(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode("utf-8"), digest_size=8).digest(), "big")


def text_signature(text: str) -> list[str]:
    """The band keys of a text's min-hash signature: near-duplicate texts share at least one."""
    words = _DIGITS.sub("0", normalize_text(text)).split()
    if len(words) <= _SHINGLE:
        grams = {" ".join(words)}
    else:
        grams = {" ".join(words[i:i + _SHINGLE]) for i in range(len(words) - _SHINGLE + 1)}
    hashes = [_hash64(g) for g in sorted(grams)]
    mins = [min((a * h + b) % _PRIME for h in hashes) for a, b in _COEFFS]
    return [f"{band}:{_hash64(repr(mins[band * _ROWS:(band + 1) * _ROWS])):016x}" for band in range(_BANDS)]


def group_ids(records: Sequence[Mapping[str, Any]],
              key: Callable[[Mapping[str, Any]], str | None] | None = None) -> list[str]:
    """One group name per record; records with the same key, or near-duplicate texts without a key, share one.

    `key(record)` defaults to the record's "group" field; None means "group me by my text".
    """
    parent = list(range(len(records)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    labels: list[list[str]] = []
    for i, record in enumerate(records):
        k = key(record) if key is not None else record.get("group")
        mine = [f"={k}"] if k is not None else [f"~{b}" for b in text_signature(str(record.get("text", "")))]
        labels.append(mine)
        for label in mine:
            j = first.setdefault(label, i)
            if j != i:
                parent[find(i)] = find(j)
    # Name each group by its smallest label: independent of record order, so a group keeps its split.
    names: dict[int, str] = {}
    for i, mine in enumerate(labels):
        root, smallest = find(i), min(mine)
        if root not in names or smallest < names[root]:
            names[root] = smallest
    return [names[find(i)] for i in range(len(records))]


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3:
        raise ValueError(f"expected 3 ratios (train, val, test), got {len(ratios)}")
    values = tuple(float(r) for r in ratios)
    if any(not math.isfinite(r) or r < 0 for r in values):
        raise ValueError("ratios must be non-negative numbers")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"ratios must add up to 1 (they add up to {sum(values):g})")
    return values  # type: ignore[return-value]


def _bucket(group: str, seed: int, ratios: tuple[float, float, float]) -> int:
    u = _hash64(f"{seed}\x00{group}") / 2.0 ** 64
    edge = 0.0
    for i, r in enumerate(ratios):
        edge += r
        if r > 0 and u < edge:
            return i
    return max(i for i, r in enumerate(ratios) if r > 0)  # rounding at the top edge


def split_records(records: Sequence[R], seed: int = 13, ratios: Sequence[float] = DEFAULT_RATIOS,
                  key: Callable[[Mapping[str, Any]], str | None] | None = None) -> tuple[list[R], list[R], list[R]]:
    """Split records into (train, val, test), whole near-duplicate groups at a time, keeping their order.

    Ratios are shares of groups, so the record counts follow them only roughly when groups are few or uneven.
    """
    shares = _check_ratios(ratios)
    out: tuple[list[R], list[R], list[R]] = ([], [], [])
    for record, group in zip(records, group_ids(records, key), strict=True):
        out[_bucket(group, seed, shares)].append(record)
    return out
