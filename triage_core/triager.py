"""The Triager: raw ticket text in, a schema-valid ticket with per-field confidences out."""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .combine import VIEWS, Combination, pool
from .config import Config, load_config
from .decoding import DecodedFields, SchemaDecoder
from .descriptions import load_descriptions
from .lexical import ExpertError, LexicalExpert
from .model import LoadedModel, ModelError, load_model
from .prompt import PromptCodec
from .schema import SchemaViolation, validate_ticket
from .taxonomy import Taxonomy, load_taxonomy

log = logging.getLogger(__name__)


class TriageError(RuntimeError):
    """A ticket could not be triaged into a valid result; nothing is guessed."""


class EmptyTicketError(TriageError, ValueError):
    """The ticket has no text to triage."""


@dataclass
class TriageResult:
    """The result shape of DESIGN.md, plus the full distributions and whether the text was truncated."""

    ticket: dict[str, str]
    confidence: dict[str, float]
    model: dict[str, str | None]
    latency_ms: int
    distributions: dict[str, dict[str, float]] = field(default_factory=dict)
    truncated: bool = False
    #: What each single source would have chosen ("lm", "lexical"), for evaluation side by side.
    views: dict[str, dict[str, str]] = field(default_factory=dict)
    view_confidence: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self, distributions: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ticket": dict(self.ticket),
            "confidence": {k: round(v, 4) for k, v in self.confidence.items()},
            "model": dict(self.model),
            "latency_ms": self.latency_ms,
        }
        if self.truncated:
            out["truncated"] = True
        if distributions:
            out["distributions"] = {f: {v: round(p, 6) for v, p in d.items()} for f, d in self.distributions.items()}
        return out


@dataclass(frozen=True)
class DecodingSettings:
    max_ticket_tokens: int = 768
    summary_max_tokens: int = 32
    lookup_tokens: int = 6
    batch_size: int = 8

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "DecodingSettings":
        return cls(**{k: data[k] for k in ("max_ticket_tokens", "summary_max_tokens", "lookup_tokens", "batch_size")})


class Triager:
    """Thread-safe: calls are serialised, since one model instance uses all the threads it is given.

    Where the adapter folder carries a lexical expert and combination parameters, each enum field is chosen
    from their pooled, calibrated distribution (triage_core.combine); otherwise from the LM's alone. `use_expert`
    False forces the LM alone (how the recipe scores its held-out tickets before fitting the pooling).

    :param loaded: the base model with its adapter (`triage_core.model`); `from_config` loads it.
    :param taxonomy: the labels to choose among; the adapter's expert, pooling and descriptions apply only to the
        taxonomy it was trained for.
    :param settings: decoding limits (ticket and summary tokens, batch size); the defaults when None.
    :param use_expert: False to ignore the adapter's lexical expert and pooling.

    One ticket, or several batched (results in input order; each always validates against the taxonomy)::

        triager = Triager.from_config(load_config())      # or from_config(config, adapter="adapters/it")
        result = triager.triage("VPN drops every few minutes since this morning")
        result.ticket["category"], result.confidence["category"]   # "Network", 0.93
        results = triager.triage_many(texts, batch_size=8)
    """

    def __init__(self, loaded: LoadedModel, taxonomy: Taxonomy, settings: DecodingSettings | None = None,
                 use_expert: bool = True):
        self.loaded = loaded
        self.taxonomy = taxonomy
        self.settings = settings or DecodingSettings()
        # What the recipe fitted for the adapter's own labels (descriptions, expert, pooling) applies to that
        # taxonomy only; the base LM with its adapter may still be pointed at another one (zero-shot).
        own = loaded.adapter_meta.get("taxonomy_hash") in (None, taxonomy.label_hash)
        # The LM reads the label descriptions it was trained with (none for adapters trained without them).
        try:
            learnt = load_descriptions(loaded.adapter_dir) if own else {}
        except (OSError, ValueError) as exc:
            raise ModelError(f"model.adapter: {exc}") from None
        self.codec = PromptCodec(loaded.tokenizer, taxonomy, learnt=learnt)
        # An adapter trained with the restricted loss is scored the same way (trainer.train).
        restricted = bool(loaded.adapter_meta.get("hyperparameters", {}).get("restricted_loss"))
        self.decoder = SchemaDecoder(loaded.model, self.codec, summary_max_tokens=self.settings.summary_max_tokens,
                                     lookup_tokens=self.settings.lookup_tokens, restricted=restricted)
        self.expert: LexicalExpert | None = None
        self.combination = Combination()
        if loaded.adapter_dir and use_expert and own:
            try:
                self.expert = LexicalExpert.load(loaded.adapter_dir, taxonomy.label_hash)
                self.combination = Combination.load(loaded.adapter_dir) or Combination()
            except (ExpertError, ValueError) as exc:
                raise ModelError(f"model.adapter: {exc}") from None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config | None = None, adapter: str | os.PathLike | None = None,
                    use_expert: bool = True) -> "Triager":
        """Load taxonomy, base model and adapter as `config` says (the defaults when None)."""
        config = config or load_config()
        taxonomy = load_taxonomy(config.taxonomy_path)
        model_cfg = dict(config["model"])
        # An adapter given by the caller (command line) is a path as typed; one from the config file is
        # relative to the config's folder.
        adapter_path = adapter if adapter is not None else config.path(model_cfg.get("adapter"))
        loaded = load_model(model_cfg, adapter=adapter_path, taxonomy_hash=taxonomy.label_hash)
        return cls(loaded, taxonomy, DecodingSettings.from_mapping(config["decoding"]), use_expert=use_expert)

    @property
    def model_info(self) -> dict[str, str | None]:
        return {"base": self.loaded.base_name, "adapter": self.loaded.adapter_name}

    def triage(self, text: str) -> TriageResult:
        return self.triage_many([text])[0]

    def triage_many(self, texts: Iterable[str], batch_size: int | None = None) -> list[TriageResult]:
        """Triage several tickets, batching similar lengths together; results come back in input order."""
        texts = list(texts)
        size = batch_size or self.settings.batch_size
        encoded = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"ticket {i}: expected text, got {type(text).__name__}")
            enc = self.codec.encode_ticket(text, self.settings.max_ticket_tokens)
            if not enc.ids:
                raise EmptyTicketError(f"ticket {i}: empty text, nothing to triage")
            if enc.truncated:
                log.warning("ticket %d: %d tokens, truncated to the first %d (decoding.max_ticket_tokens)",
                            i, enc.original_tokens, self.settings.max_ticket_tokens)
            encoded.append(enc)
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i].ids))
        results: list[TriageResult | None] = [None] * len(texts)
        with self._lock:
            for start in range(0, len(order), size):
                chunk = order[start : start + size]
                t0 = time.perf_counter()
                lexical = self.expert.predict([texts[i] for i in chunk]) if self.expert else [{} for _ in chunk]
                decoded = self.decoder.decode([encoded[i].ids for i in chunk], chooser=self._chooser(lexical))
                # Each ticket's share of its batch's time, not the whole batch's.
                share = int(round((time.perf_counter() - t0) * 1000 / len(chunk)))
                for i, d, lex in zip(chunk, decoded, lexical, strict=True):
                    results[i] = self._result(d, lex, share, encoded[i].truncated)
        return results  # type: ignore[return-value]

    def _chooser(self, lexical: list[dict[str, dict[str, float]]]):
        """Pool each field's LM distribution with the expert's (the "combined" view), or calibrate the LM's."""
        view = "combined" if self.expert else "lm"
        priors = self.combination.priors

        def choose(f, row, lm, chosen):
            return pool(self.combination.params(view, f.name), f.allowed(chosen), lm, lexical[row].get(f.name),
                        priors.get(f.name))
        return choose

    def _views(self, decoded: DecodedFields, lexical: dict[str, dict[str, float]]
               ) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, float]]]:
        """What the LM alone and the expert alone choose, each field among the values allowed by the result."""
        views: dict[str, dict[str, str]] = {}
        conf: dict[str, dict[str, float]] = {}
        for view in VIEWS[:2] if self.expert else ():
            views[view], conf[view] = {}, {}
            for f in self.taxonomy.enum_fields:
                allowed = f.allowed(decoded.values)
                dist, value = pool(self.combination.params(view, f.name), allowed, decoded.lm_distributions[f.name],
                                   lexical.get(f.name), self.combination.priors.get(f.name))
                views[view][f.name], conf[view][f.name] = value, dist[value]
        return views, conf

    def _result(self, decoded: DecodedFields, lexical: dict[str, dict[str, float]], latency_ms: int,
                truncated: bool) -> TriageResult:
        ticket = {name: decoded.values[name] for name in self.taxonomy.field_names}
        try:
            validate_ticket(self.taxonomy, ticket)
        except SchemaViolation as exc:
            raise TriageError(f"the decoded ticket does not validate against the taxonomy schema: {exc}") from None
        confidence = {name: decoded.distributions[name][ticket[name]] for name in decoded.distributions}
        views, view_conf = self._views(decoded, lexical)
        return TriageResult(ticket=ticket, confidence=confidence, model=self.model_info, latency_ms=latency_ms,
                            distributions=decoded.distributions, truncated=truncated, views=views,
                            view_confidence=view_conf)
