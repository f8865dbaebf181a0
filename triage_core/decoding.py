"""Schema-guided decoding: the answer is written field by field, so it is valid by construction.

The JSON punctuation and key names are fed to the model, never sampled. An enum field is chosen by scoring every
allowed value under the model (all candidates of all tickets of a batch in one forward pass on the cached
context) and taking the most likely; the value's probability normalised over the allowed values is its
confidence. A dependent field (subcategory) is scored only among the values allowed under the chosen parent. A
text field (summary) is generated greedily, restricted to tokens that keep the JSON string valid, with a length
cap, and sped up by prompt-lookup drafting (summaries reuse the ticket's words).

Rows of a batch advance in lock-step over one KV cache. Rows that feed fewer tokens than others in a step are
right-padded, and padded or rejected positions are simply masked out of the attention mask for later steps, so
no row ever needs the cache cropped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from .prompt import PromptCodec, json_string_body
from .taxonomy import Field


@dataclass
class DecodedFields:
    """One ticket's decoded values, with each enum field's full distribution over its allowed values."""

    values: dict[str, str] = field(default_factory=dict)
    distributions: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The LM's own distribution per enum field, before a chooser pooled it with other evidence.
    lm_distributions: dict[str, dict[str, float]] = field(default_factory=dict)


#: (field, row in the batch, the LM's distribution over the allowed values, values chosen so far)
#: -> (the distribution to report, the value to choose). Lets the Triager pool other evidence into each choice
#: before it is fed to the model, so a dependent field is scored under the pooled parent value.
Chooser = Callable[[Field, int, Mapping[str, float], Mapping[str, str]], tuple[dict[str, float], str]]


@dataclass
class _Rows:
    """The lock-step state of a batch: cache, what each row may attend to, next position, next-token logits."""

    cache: Any
    mask: torch.Tensor  # [B, T] bool: cache positions each row attends to
    pos: torch.Tensor  # [B] long: the position id of each row's next token
    logits: torch.Tensor | None = None  # [B, V] float32: distribution of each row's next token


class SchemaDecoder:
    """Decodes tickets for one model + codec; holds the system prompt's KV cache (computed once)."""

    def __init__(self, model: Any, codec: PromptCodec, summary_max_tokens: int = 32, lookup_tokens: int = 6,
                 restricted: bool = False):
        self.model = model
        #: Score a value as its adapter was trained (trainer.train's restricted loss): at each point where the
        #: allowed values' tokens branch, normalise over the branches only; where they do not branch, the
        #: token is the only way on and costs nothing. Off: full-vocabulary token log-probabilities.
        self.restricted = restricted
        self.codec = codec
        self.taxonomy = codec.taxonomy
        self.summary_max_tokens = summary_max_tokens
        self.lookup_tokens = lookup_tokens
        tok = codec.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        self.device = next(model.parameters()).device
        fields = self.taxonomy.fields
        self._punct = [codec.encode(codec.punctuation(i)) for i in range(len(fields) + 1)]
        self._values = {
            f.name: {v: codec.encode(json_string_body(v)) for v in f.values} for f in fields if f.is_enum
        }
        self._text_masks: dict[int, torch.Tensor] = {}
        self._blank: torch.Tensor | None = None
        self._token_text: list[str] | None = None
        self._prefix_cache = None
        self._prefix_len = 0

    # --- public ------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def decode(self, tickets: Sequence[Sequence[int]], chooser: Chooser | None = None) -> list[DecodedFields]:
        """Decode a batch of encoded tickets (their own token ids, already truncated).

        Without a `chooser` each enum field takes the LM's most likely allowed value.
        """
        if not tickets:
            return []
        rows = self._start(len(tickets))
        out = [DecodedFields() for _ in tickets]
        # Tokens each row still has to feed before the next field's value: they ride along in the next pass.
        pending = [self.codec.user_ids(t) + self._punct[0] for t in tickets]
        for i, f in enumerate(self.taxonomy.fields):
            after = self._punct[i + 1]
            if f.is_enum:
                self._choose(rows, f, out, pending, close_id=after[0], chooser=chooser)
                pending = [self._values[f.name][d.values[f.name]] + after for d in out]
            else:
                self._feed(rows, pending)
                self._generate_text(rows, f, tickets, out, close_id=after[0])
                pending = [list(after) for _ in tickets]
        return out

    # --- the steps ---------------------------------------------------------------------------------------

    def _start(self, batch: int) -> _Rows:
        if self._prefix_cache is None:
            ids = torch.tensor([self.codec.prefix_ids], device=self.device)
            self._prefix_cache = self.model(input_ids=ids, use_cache=True).cache
            self._prefix_len = ids.shape[1]
        cache = _gather(self._prefix_cache, torch.zeros(batch, dtype=torch.long, device=self.device), self.model)
        return _Rows(cache=cache,
                     mask=torch.ones(batch, self._prefix_len, dtype=torch.bool, device=self.device),
                     pos=torch.full((batch,), self._prefix_len, dtype=torch.long, device=self.device))

    def _forward(self, rows: _Rows, ids: torch.Tensor, offsets: torch.Tensor, attend: torch.Tensor,
                 valid: torch.Tensor, keep: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass of new tokens `ids` [B, W] at positions `rows.pos + offsets`.

        `attend` [B, W, W] says which new tokens each new token sees (besides the cache positions its row
        attends to); `valid` [B, W] marks real tokens. The cache grows by W; `rows.mask` is extended with `valid`.
        Logits are projected only at the positions in `keep` (all when None): the vocabulary projection is a
        fifth of the model. Returns (logits [B, len(keep), V] float32, column of each position or -1 [W]).
        """
        b, w = ids.shape
        ctx = rows.mask.unsqueeze(1).expand(b, w, rows.mask.shape[1])
        full = torch.cat([ctx, attend & valid.unsqueeze(1)], dim=2).unsqueeze(1)
        column = torch.full((w,), -1, dtype=torch.long)
        if keep is None:
            keep = list(range(w))
        column[torch.tensor(keep, dtype=torch.long)] = torch.arange(len(keep))
        res = self.model(input_ids=ids, attention_mask=full, position_ids=rows.pos.unsqueeze(1) + offsets,
                         cache=rows.cache, use_cache=True,
                         logits_to_keep=torch.tensor(keep, dtype=torch.long, device=self.device))
        rows.mask = torch.cat([rows.mask, valid], dim=1)
        return res.logits.float(), column

    def _feed(self, rows: _Rows, seqs: list[list[int]], all_logits: bool = False) -> torch.Tensor | None:
        """Append each row's tokens (possibly none); the next-token logits follow each row's last token.

        With `all_logits` the logits of every position come back ([B, W, V]), for verifying drafts.
        """
        ids, valid = self._pad(seqs)
        b, w = ids.shape
        lengths = valid.sum(dim=1)
        last_pos = (lengths - 1).clamp(min=0)
        keep = None if all_logits else sorted(set(last_pos.tolist()))
        offsets = torch.arange(w, device=self.device).expand(b, w)
        causal = torch.ones(w, w, dtype=torch.bool, device=self.device).tril().expand(b, w, w)
        logits, column = self._forward(rows, ids, offsets, causal, valid, keep)
        last = logits[torch.arange(b, device=self.device), column[last_pos.cpu()].to(self.device)]
        rows.logits = last if rows.logits is None else torch.where((lengths > 0).unsqueeze(1), last, rows.logits)
        rows.pos = rows.pos + lengths
        return logits if all_logits else None

    def _pad(self, seqs: list[list[int]], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        w = max(1, width or 0, max(len(s) for s in seqs))
        ids = torch.full((len(seqs), w), self.pad_id, dtype=torch.long)
        valid = torch.zeros(len(seqs), w, dtype=torch.bool)
        for r, s in enumerate(seqs):
            if s:
                ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
                valid[r, : len(s)] = True
        return ids.to(self.device), valid.to(self.device)

    def _choose(self, rows: _Rows, f: Field, out: list[DecodedFields], lead: list[list[int]],
                close_id: int, chooser: Chooser | None = None) -> None:
        """Feed each row's `lead` and score all allowed values of `f` in the same pass, as a tree.

        Three steps: lay the pass out (`_Tree`), score each row's candidates and choose, then crop the candidate
        region away again; the chosen value is fed as part of the next lead.
        """
        cands = [[(v, self._values[f.name][v] + [close_id]) for v in f.allowed(d.values)] for d in out]
        tree = _Tree.layout(lead, cands, self.pad_id)
        logits, column = self._forward(rows, tree.ids.to(self.device), tree.offsets.to(self.device),
                                       tree.attend.to(self.device), tree.valid.to(self.device), tree.keep)
        logp = torch.log_softmax(logits, dim=-1)
        first = torch.log_softmax(rows.logits, dim=-1) if rows.logits is not None else None
        for r, d in enumerate(out):
            n_lead = len(lead[r])
            if self.restricted:
                start = logits[r, column[n_lead - 1]] if n_lead else rows.logits[r]  # type: ignore[index]
                names, scores = _trie_scores(cands[r], start, lambda at, j, r=r: logits[r, column[at + j - 1]],
                                             tree.lead_w)
            else:
                names, scores = self._token_scores(cands[r], logp, first, r, n_lead, column, tree.lead_w)
            lm = _softmax(names, scores)
            d.lm_distributions[f.name] = lm
            if chooser is None:
                d.distributions[f.name], d.values[f.name] = lm, names[max(range(len(scores)), key=scores.__getitem__)]
            else:
                d.distributions[f.name], d.values[f.name] = chooser(f, r, lm, d.values)
        self._crop(rows, tree, logits, column)

    def _crop(self, rows: _Rows, tree: _Tree, logits: torch.Tensor, column: torch.Tensor) -> None:
        """Keep the lead in the cache, drop the candidates; the next step reads on from each lead's last token."""
        keep = rows.mask.shape[1] - tree.cand_w
        rows.cache.crop(-tree.cand_w)  # transformers 5: a negative count removes that many positions
        rows.mask = rows.mask[:, :keep]
        lengths = tree.lead_valid.sum(dim=1).to(self.device)
        fed = lengths > 0
        last_col = column[(lengths.cpu() - 1).clamp(min=0)].clamp(min=0).to(self.device)
        last = logits[torch.arange(len(lengths), device=self.device), last_col]
        rows.logits = last if rows.logits is None else torch.where(fed.unsqueeze(1), last, rows.logits)
        rows.pos = rows.pos + lengths

    @staticmethod
    def _token_scores(cands, logp, first, r, n_lead, column, lead_w) -> tuple[list[str], list[float]]:
        """Each candidate's full-vocabulary log-probability, token by token (adapters of the token-level loss)."""
        start_dist = logp[r, column[n_lead - 1]] if n_lead else first[r]
        at = lead_w
        names, scores = [], []
        for value, tokens in cands:
            total = float(start_dist[tokens[0]])
            for j in range(1, len(tokens)):
                total += float(logp[r, column[at + j - 1], tokens[j]])
            names.append(value)
            scores.append(total)
            at += len(tokens)
        return names, scores

    def _generate_text(self, rows: _Rows, f: Field, tickets: Sequence[Sequence[int]], out: list[DecodedFields],
                       close_id: int) -> None:
        """Greedy, JSON-string-safe generation with a cap; drafts from the ticket verified in the same pass."""
        allowed = self._text_mask(close_id, rows.logits.shape[-1])
        blank = self._blank_tokens(rows.logits.shape[-1])
        n = len(tickets)
        generated: list[list[int]] = [[] for _ in range(n)]
        has_text = [False] * n
        done = [False] * n
        cap = self.summary_max_tokens

        def pick(logit_row: torch.Tensor, b: int) -> int:
            scores = logit_row.masked_fill(~allowed, float("-inf"))
            if not has_text[b]:
                scores[close_id] = float("-inf")
            return int(scores.argmax())

        nxt = [pick(rows.logits[b], b) for b in range(n)]
        while True:
            seqs: list[list[int]] = []
            for b in range(n):
                if not done[b] and (nxt[b] == close_id or len(generated[b]) >= cap):
                    done[b] = True
                if done[b]:
                    seqs.append([])
                    continue
                draft = self._draft(tickets[b], generated[b] + [nxt[b]], allowed, close_id,
                                    cap - len(generated[b]) - 1)
                seqs.append([nxt[b], *draft])
            if all(done):
                break
            start_len = rows.mask.shape[1]
            pos_before = rows.pos.clone()
            logits = self._feed(rows, seqs, all_logits=True)
            for b, seq in enumerate(seqs):
                if not seq:
                    continue
                accepted = 1
                generated[b].append(seq[0])
                has_text[b] = has_text[b] or not bool(blank[seq[0]])
                pred = pick(logits[b, 0], b)
                while accepted < len(seq) and pred == seq[accepted] and pred != close_id:
                    generated[b].append(pred)
                    has_text[b] = has_text[b] or not bool(blank[pred])
                    pred = pick(logits[b, accepted], b)
                    accepted += 1
                if accepted < len(seq):  # rejected draft positions: keep them in the cache, masked out
                    rows.mask[b, start_len + accepted : start_len + len(seq)] = 0
                rows.pos[b] = pos_before[b] + accepted
                rows.logits[b] = logits[b, accepted - 1]
                nxt[b] = pred
        tok = self.codec.tokenizer
        for b in range(n):
            text = tok.decode(generated[b], skip_special_tokens=True)
            out[b].values[f.name] = clip_text(text, f.max_length)

    def _draft(self, ticket: Sequence[int], context: list[int], allowed: torch.Tensor, close_id: int,
               room: int) -> list[int]:
        """Prompt lookup: the ticket tokens that followed the latest occurrence of the last 2 (or 1) tokens."""
        k = min(self.lookup_tokens, room)
        if k <= 0 or not ticket:
            return []
        for n in (2, 1):
            if len(context) < n:
                continue
            key = context[-n:]
            for i in range(len(ticket) - n, -1, -1):
                if list(ticket[i : i + n]) == key:
                    draft = []
                    for t in ticket[i + n : i + n + k]:
                        if not bool(allowed[t]) or t == close_id:
                            break
                        draft.append(int(t))
                    if draft:
                        return draft
                    break
        return []

    # --- token tables ------------------------------------------------------------------------------------

    def _pieces(self) -> list[str]:
        """Each vocabulary token's text, decoded once for both token tables."""
        if self._token_text is None:
            tok = self.codec.tokenizer
            self._token_text = [tok.decode([i]) for i in range(len(tok))]
        return self._token_text

    def _text_mask(self, close_id: int, vocab: int) -> torch.Tensor:
        """Tokens allowed inside a JSON string here: no quote, backslash or control character, no specials."""
        if close_id not in self._text_masks:
            allowed = torch.zeros(vocab, dtype=torch.bool)
            special = set(self.codec.tokenizer.all_special_ids)
            for i, piece in enumerate(self._pieces()[:vocab]):
                if i in special:
                    continue
                if piece and not any(c in '"\\' or ord(c) < 32 or c in "\u2028\u2029" for c in piece):
                    allowed[i] = True
            allowed[close_id] = True
            self._text_masks[close_id] = allowed.to(self.device)
        return self._text_masks[close_id]

    def _blank_tokens(self, vocab: int) -> torch.Tensor:
        if self._blank is None:
            blank = torch.zeros(vocab, dtype=torch.bool)
            for i, piece in enumerate(self._pieces()[:vocab]):
                blank[i] = not piece.strip() or piece.strip() == "\ufffd"
            self._blank = blank
        return self._blank


@dataclass
class _Tree:
    """One scoring pass laid out: per row [lead, padded][value 1 + close][value 2 + close]...

    Each candidate sees the lead and itself, never the other candidates, and all candidates sit at the same
    positions (offsets continue from the row's own lead length).
    """

    ids: torch.Tensor
    valid: torch.Tensor
    offsets: torch.Tensor
    attend: torch.Tensor
    keep: list[int]  # columns whose logits are needed: each lead's last token, every candidate token but the last
    lead_w: int
    cand_w: int
    lead_valid: torch.Tensor  # the lead region of `valid`: which rows fed tokens this step

    @classmethod
    def layout(cls, lead: list[list[int]], cands: list[list[tuple[str, list[int]]]], pad_id: int) -> _Tree:
        b = len(lead)
        lead_w = max(1, max(len(s) for s in lead))
        cand_w = max(sum(len(c) for _, c in row) for row in cands)
        w = lead_w + cand_w
        ids = torch.full((b, w), pad_id, dtype=torch.long)
        valid = torch.zeros(b, w, dtype=torch.bool)
        offsets = torch.zeros(b, w, dtype=torch.long)
        attend = torch.zeros(b, w, w, dtype=torch.bool)
        lead_causal = torch.ones(lead_w, lead_w, dtype=torch.bool).tril()
        keep = {len(s) - 1 for s in lead if s}
        for r in range(b):
            n_lead = len(lead[r])
            ids[r, :n_lead] = torch.tensor(lead[r], dtype=torch.long)
            valid[r, :n_lead] = True
            offsets[r, :lead_w] = torch.arange(lead_w)
            attend[r, :lead_w, :lead_w] = lead_causal
            at = lead_w
            for _, tokens in cands[r]:
                n = len(tokens)
                ids[r, at : at + n] = torch.tensor(tokens, dtype=torch.long)
                valid[r, at : at + n] = True
                offsets[r, at : at + n] = n_lead + torch.arange(n)
                attend[r, at : at + n, :lead_w] = True
                attend[r, at : at + n, at : at + n] = torch.ones(n, n, dtype=torch.bool).tril()
                keep.update(range(at, at + n - 1))
                at += n
        # The lead's padding is attended by nobody (valid masks it); pad queries see only their row's context.
        return cls(ids=ids, valid=valid, offsets=offsets, attend=attend, keep=sorted(keep), lead_w=lead_w,
                   cand_w=cand_w, lead_valid=valid[:, :lead_w].clone())


def _softmax(names: list[str], scores: list[float]) -> dict[str, float]:
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    norm = sum(weights)
    return {v: wgt / norm for v, wgt in zip(names, weights, strict=True)}


def _trie_scores(cands: Sequence[tuple[str, list[int]]], start: torch.Tensor,
                 logits_at: Callable[[int, int], torch.Tensor], first_at: int) -> tuple[list[str], list[float]]:
    """Each candidate's log-probability under the trie of all candidates' tokens, normalised over the branches.

    `start` holds the logits before the first token; `logits_at(at, j)` those before token j of the candidate
    whose block starts at `at` (the blocks follow each other from `first_at`).
    """
    branches: dict[tuple[int, ...], list[int]] = {}
    for _, tokens in cands:
        for j, tok in enumerate(tokens):
            nxt = branches.setdefault(tuple(tokens[:j]), [])
            if tok not in nxt:
                nxt.append(tok)
    names, scores = [], []
    at = first_at
    for value, tokens in cands:
        total = 0.0
        for j, tok in enumerate(tokens):
            options = branches[tuple(tokens[:j])]
            if len(options) > 1:
                row = start if j == 0 else logits_at(at, j)
                total += float(row[tok] - torch.logsumexp(row[options], dim=0))
        names.append(value)
        scores.append(total)
        at += len(tokens)
    return names, scores


def clip_text(text: str, max_length: int) -> str:
    """Tidy a generated text value and cap its length at a word boundary."""
    text = " ".join(text.replace("\ufffd", " ").split())
    if len(text) > max_length:
        cut = text[:max_length]
        if " " in cut[max_length // 2 :]:
            cut = cut[: cut.rfind(" ")]
        text = cut.rstrip(" ,;:-")
    return text


def _gather(cache: Any, index: torch.Tensor, model: Any) -> Any:
    """A new cache holding the rows `index` (repeats allowed) of `cache`; `cache` itself is left untouched."""
    from transformers import DynamicCache

    new = DynamicCache(config=model.config)
    for i, layer in enumerate(cache.layers):
        new.update(layer.keys.index_select(0, index), layer.values.index_select(0, index), i)
    return new
