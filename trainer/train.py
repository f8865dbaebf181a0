"""LoRA / QLoRA fine-tuning on labelled-ticket records.

Examples are laid out exactly as the decoder reads and writes them (triage_core.prompt): prompt, then the answer
segments, each tokenized on its own. Loss falls on the answer tokens only. Most examples rotate short natural
instructions instead of the explicit schema prompt (the seed's "implicit training"; cheaper, and it teaches the
task rather than one wording); `explicit_fraction` of them use the explicit prompt that inference uses.

Enum fields are trained the way they are decoded, among their allowed values only: the allowed values' tokens
form a trie, and at each point of the gold value where the trie branches the loss is cross-entropy over the
branches (the tokens that continue some allowed value, or close it), logit-adjusted by the prior mass of each
branch (Menon et al., 2021) so the majority label cannot win by frequency alone. That is teacher-forced
cross-entropy over the allowed values under the trie's factorisation, and costs no extra tokens: the logits at
the gold path are the ones token-level training computes anyway. Text fields (the summary) keep the
token-level loss.

Speed on CPU comes from: LoRA on the upper layers only (autograd then stops there: no backward pass through the
lower layers), batches grouped by length (little padding), and bf16 autocast over bf16 base weights.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from triage_core.descriptions import DESCRIPTIONS_FILE, save_descriptions
from triage_core.model import ADAPTER_META, LoadedModel, load_model
from triage_core.prompt import PromptCodec
from triage_core.taxonomy import Taxonomy

from .records import Record

log = logging.getLogger(__name__)

IGNORE = -100


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why."""


@dataclass(frozen=True)
class TrainSettings:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    upper_layers: int = 12
    # 0 = chosen from the number of records and labels (`budget`).
    learning_rate: float = 0.0
    epochs: float = 0.0
    max_steps: int = 0
    max_length: int = 320
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    seed: int = 13
    qlora: bool = False
    explicit_fraction: float = 0.2
    save_every: int = 100
    eval_limit: int = 200
    # Train on records that label only some fields (closed tickets rarely carry a summary): the missing fields
    # get a placeholder in the answer and no loss.
    partial_labels: bool = True
    # Enum fields: cross-entropy over the allowed values (False: token-level loss on the value's tokens).
    restricted_loss: bool = True
    # Logit adjustment of the restricted loss: tau * log prior(value) added to each value's score.
    prior_tau: float = 1.0
    # Describe each value of a long enum field by its training tickets' distinctive terms, in the explicit prompt
    # (the recipe derives them from the lexical expert; triage_core.descriptions).
    label_descriptions: bool = True

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], **overrides: Any) -> "TrainSettings":
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "target_modules" in values:
            values["target_modules"] = tuple(values["target_modules"])
        return cls(**values)


@dataclass
class Choice:
    """One branching point of an enum value: the logits at `position` choose among `tokens` (gold: `gold`)."""

    position: int  # index in input_ids whose next-token logits make this choice
    tokens: list[int]
    offsets: list[float]  # prior_tau * log(prior mass of each branch within this point's mass)
    gold: int


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    choices: list[Choice] = field(default_factory=list)


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    examples: int
    skipped: int
    train_tokens: int
    seconds: float
    final_loss: float
    meta: dict[str, Any] = field(default_factory=dict)


def data_hash(records: Sequence[Record]) -> str:
    """Order-independent hash of the training texts and labels."""
    digests = sorted(hashlib.sha256(json.dumps([r["text"], r.get("labels", {})], sort_keys=True,
                                               ensure_ascii=False).encode()).hexdigest() for r in records)
    return hashlib.sha256("".join(digests).encode()).hexdigest()[:16]


def build_examples(records: Sequence[Record], tokenizer: Any, taxonomy: Taxonomy, settings: TrainSettings,
                   instructions: Sequence[str] = (),
                   learnt: Mapping[str, Mapping[str, str]] | None = None) -> tuple[list[Example], int]:
    """Token ids and loss labels for each complete record; records missing a field are skipped (counted), or with
    `settings.partial_labels` trained with the missing fields masked out of the loss. `learnt` label descriptions
    go into the explicit prompt, as the Triager shows them."""
    rng = random.Random(settings.seed)
    priors = label_priors(records, taxonomy)
    explicit = PromptCodec(tokenizer, taxonomy, learnt=learnt)
    rotated = [PromptCodec(tokenizer, taxonomy, system=s) for s in instructions]
    examples, skipped = [], 0
    for record in records:
        labels = record.get("labels", {})
        missing = {name for name in taxonomy.field_names if name not in labels}
        if (missing and not settings.partial_labels) or len(missing) == len(taxonomy.field_names) \
                or taxonomy.check_labels(labels):
            skipped += 1
            continue
        codec = explicit if not rotated or rng.random() < settings.explicit_fraction else rng.choice(rotated)
        # With the restricted loss enum values are learnt among their allowed values and the JSON punctuation
        # is fed, never predicted: only text fields keep token targets, so the choices are not diluted.
        keep = {f.name for f in taxonomy.fields if not f.is_enum} if settings.restricted_loss else None
        answer, target, starts = _answer(explicit, taxonomy, labels, missing, keep)
        # max_length bounds what follows the system prompt, so the long explicit prompt never squeezes the ticket.
        room = settings.max_length - len(codec.head_ids) - len(codec.tail_ids) - len(answer)
        ticket = codec.encode_ticket(record["text"], max(0, room)).ids
        if room < 8 or not ticket:
            skipped += 1
            continue
        prompt = list(codec.prefix_ids) + codec.user_ids(ticket)
        choices = []
        if settings.restricted_loss:
            for f in taxonomy.enum_fields:
                if f.name not in missing:
                    choices += _branches(explicit, f, labels, len(prompt) + starts[f.name],
                                         priors.get(f.name, {}), settings.prior_tau)
        examples.append(Example(prompt + answer, [IGNORE] * len(prompt) + target, choices))
    return examples, skipped


def label_priors(records: Sequence[Record], taxonomy: Taxonomy) -> dict[str, dict[str, float]]:
    """Each enum field's share of every value in the training records (add-one smoothed)."""
    out: dict[str, dict[str, float]] = {}
    for f in taxonomy.enum_fields:
        counts = {v: 1.0 for v in f.values}
        for r in records:
            v = r.get("labels", {}).get(f.name)
            if v in counts:
                counts[v] += 1.0
        total = sum(counts.values())
        out[f.name] = {v: c / total for v, c in counts.items()}
    return out


def _branches(codec: PromptCodec, f: Any, labels: Mapping[str, str], start: int, prior: Mapping[str, float],
              tau: float) -> list[Choice]:
    """The branching points along the gold value's tokens in the trie of the allowed values (each value's
    tokens plus the token that closes it, so a value that is a prefix of another is still a choice)."""
    from triage_core.prompt import json_string_body

    index = codec.taxonomy.field_names.index(f.name)
    close = codec.encode(codec.punctuation(index + 1))[0]
    allowed = f.allowed(labels)
    seqs = {v: codec.encode(json_string_body(v)) + [close] for v in allowed}
    gold = seqs[labels[f.name]]
    mass = {v: prior.get(v, 1.0 / len(allowed)) for v in allowed}
    out = []
    alive = list(allowed)
    for j, tok in enumerate(gold):
        branch: dict[int, float] = {}
        for v in alive:
            branch[seqs[v][j]] = branch.get(seqs[v][j], 0.0) + mass[v]
        if len(branch) > 1:
            total = sum(branch.values())
            tokens = list(branch)
            out.append(Choice(position=start + j - 1, tokens=tokens,
                              offsets=[tau * math.log(branch[t] / total) for t in tokens], gold=tokens.index(tok)))
        alive = [v for v in alive if len(seqs[v]) > j + 1 and seqs[v][j] == tok]
    return out


def _filled(taxonomy: Taxonomy, labels: Mapping[str, str], missing: set[str]) -> dict[str, str]:
    """The labels with a placeholder for each missing field (the first allowed value, or empty text)."""
    filled = {k: v for k, v in labels.items() if k in taxonomy}
    for f in taxonomy.fields:
        if f.name in missing:
            filled[f.name] = "" if not f.is_enum else f.allowed(filled)[0] if f.parent is None or \
                filled.get(f.parent) in f.children else f.values[0]
    return filled


def _answer(codec: PromptCodec, taxonomy: Taxonomy, labels: Mapping[str, str], missing: set[str],
            keep: set[str] | None = None) -> tuple[list[int], list[int], dict[str, int]]:
    """Answer token ids, their loss targets and where each value starts.

    A missing field's placeholder gets IGNORE targets; with `keep`, so does every segment not of those fields.
    """
    ids: list[int] = []
    target: list[int] = []
    starts: dict[str, int] = {}
    for name, text in codec.answer_segments(_filled(taxonomy, labels, missing)):
        piece = codec.encode(text)
        if name is not None:
            starts[name] = len(ids)
        ids += piece
        trained = name not in missing and (keep is None or name in keep)
        target += piece if trained else [IGNORE] * len(piece)
    return ids, target, starts


def length_grouped_batches(examples: Sequence[Example], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffle, sort by length within windows of 50 batches, cut into batches, shuffle the batches."""
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(examples[i].input_ids))
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for r, e in enumerate(examples):
        n = len(e.input_ids)
        ids[r, :n] = torch.tensor(e.input_ids)
        labels[r, :n] = torch.tensor(e.labels)
        mask[r, :n] = 1
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    choices = [(r, c) for r, e in enumerate(examples) for c in e.choices]
    if choices:
        k = max(len(c.tokens) for _, c in choices)
        tokens = torch.zeros((len(choices), k), dtype=torch.long)
        offsets = torch.full((len(choices), k), float("-inf"))
        for i, (_, c) in enumerate(choices):
            tokens[i, : len(c.tokens)] = torch.tensor(c.tokens)
            offsets[i, : len(c.tokens)] = torch.tensor(c.offsets)
        batch.update(choice_row=torch.tensor([r for r, _ in choices]),
                     choice_pos=torch.tensor([c.position for _, c in choices]), choice_tokens=tokens,
                     choice_offsets=offsets, choice_gold=torch.tensor([c.gold for _, c in choices]))
    return batch


def answer_loss(model: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Token-level cross-entropy over the answer tokens that carry targets, plus the restricted loss at the enum
    values' branching points (cross-entropy over the allowed branches, logit-adjusted), averaged together.

    The vocabulary projection is applied only where a target is predicted: the prompt makes up most of each
    example, and projecting it onto 49k logits would cost a fifth of the model's compute for nothing.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    losses = []
    if bool(keep.any()):
        logits = base.lm_head(hidden[:, :-1][keep]).float()
        losses.append(torch.nn.functional.cross_entropy(logits, targets[keep], reduction="none"))
    if "choice_row" in batch:
        logits = base.lm_head(hidden[batch["choice_row"], batch["choice_pos"]]).float()
        scores = logits.gather(1, batch["choice_tokens"]) + batch["choice_offsets"]
        losses.append(torch.nn.functional.cross_entropy(scores, batch["choice_gold"], reduction="none"))
    return torch.cat(losses).mean()


def prepare_model(model_cfg: Mapping[str, Any], settings: TrainSettings, init_adapter: str | Path | None = None,
                  taxonomy_hash: str | None = None) -> LoadedModel:
    """The base (4-bit for QLoRA) with trainable LoRA weights: fresh, or continued from `init_adapter`."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    cfg = dict(model_cfg)
    cfg["load_in_4bit"] = settings.qlora
    cfg["adapter"] = None
    if init_adapter:
        loaded = load_model(cfg, adapter=init_adapter, taxonomy_hash=taxonomy_hash, trainable=True)
        return loaded
    loaded = load_model(cfg, adapter=None, trainable=True)
    model = loaded.model
    if settings.qlora:
        # Casts norms to fp32 and makes inputs require grads, per the PEFT QLoRA recipe; gradient checkpointing
        # is off (sequences are short and it would only trade our scarce CPU time for memory we have).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    n_layers = model.config.num_hidden_layers
    layers = None
    if 0 < settings.upper_layers < n_layers:
        layers = list(range(n_layers - settings.upper_layers, n_layers))
    lora = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=list(settings.target_modules), layers_to_transform=layers,
                      bias="none", task_type="CAUSAL_LM")
    loaded.model = get_peft_model(model, lora)
    return loaded


def budget(settings: TrainSettings, examples: int) -> TrainSettings:
    """Fill in epochs and learning rate left at 0 from the number of examples.

    Measured on the bootstrap path (bench/accuracy.py, 2 CPU cores): a fresh adapter needs about 1,000
    examples seen to learn a team's labels, and at such short budgets a high rate (2e-3) beats the usual 3e-4 by
    a wide margin; more data gets fewer passes, so 1,500 tickets still train within minutes.
    """
    epochs = settings.epochs or min(4.0, max(0.5, 1000 / max(1, examples)))
    seen = epochs * examples
    lr = settings.learning_rate or (2e-3 if seen <= 2400 else 1e-3)
    return replace(settings, epochs=round(epochs, 3), learning_rate=lr)


def _checkpoints(out_dir: Path) -> list[Path]:
    ck = out_dir / "checkpoints"
    if not ck.is_dir():
        return []
    return sorted((p for p in ck.glob("step-*") if (p / "trainer_state.pt").is_file()),
                  key=lambda p: int(p.name.split("-")[1]))


def train(records: Sequence[Record], taxonomy: Taxonomy, model_cfg: Mapping[str, Any], settings: TrainSettings,
          out_dir: str | Path, *, name: str | None = None, version: str | None = None,
          init_adapter: str | Path | None = None, resume: bool = False,
          instructions: Sequence[str] = (), progress: bool = True, tensorboard: bool = True,
          on_step: Callable[[int, float], None] | None = None,
          learnt: Mapping[str, Mapping[str, str]] | None = None) -> TrainResult:
    """Train a LoRA adapter on `records` and save it, with its metadata (and the `learnt` label descriptions its
    prompt showed), into `out_dir`.

    A pipeline of named steps: examples, budget, schedule, optimiser, resume, loop, save, metadata.
    """
    out_dir = Path(out_dir)
    torch.manual_seed(settings.seed)
    random.seed(settings.seed)
    loaded = prepare_model(model_cfg, settings, init_adapter, taxonomy.label_hash)
    examples, skipped = build_examples(records, loaded.tokenizer, taxonomy, settings, instructions, learnt)
    if not examples:
        raise TrainingError(f"no usable training records ({skipped} skipped: missing fields or labels outside "
                            "the taxonomy)")
    settings = budget(settings, len(examples))
    schedule = step_schedule(examples, settings)
    total_steps = len(schedule) // settings.grad_accum
    optimizer, scheduler = _optimiser(loaded.model, settings, total_steps)
    start_step = _resume(out_dir, loaded.model, optimizer, scheduler) if resume else 0
    run = _Loop(loaded, settings, examples, schedule, out_dir, optimizer, scheduler, on_step)
    run.go(start_step, total_steps, progress, _tensorboard(out_dir) if tensorboard else None)
    _save(out_dir, loaded.model, learnt)
    meta = {
        "name": name or out_dir.name,
        "version": version or datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S"),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base": model_cfg["base"],
        "base_display": loaded.base_name,
        "taxonomy_name": taxonomy.name,
        "taxonomy_hash": taxonomy.label_hash,
        "init_adapter": str(init_adapter) if init_adapter else None,
        "data": {"hash": data_hash(records), "records": len(records), "examples": len(examples),
                 "skipped": skipped},
        "hyperparameters": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
        "label_descriptions": sorted(learnt or {}),
        "training": {"steps": total_steps, "seconds": round(run.seconds, 1), "train_tokens": run.tokens,
                     "tokens_per_second": round(run.tokens / run.seconds, 1) if run.seconds else None,
                     "final_loss": round(run.loss, 4)},
        "metrics": {},
    }
    write_meta(out_dir, meta)
    return TrainResult(adapter_dir=out_dir, steps=total_steps, examples=len(examples), skipped=skipped,
                       train_tokens=run.tokens, seconds=run.seconds, final_loss=run.loss, meta=meta)


def step_schedule(examples: Sequence[Example], settings: TrainSettings) -> list[list[int]]:
    """The batches of every optimiser step (times grad_accum), in order: each epoch a fresh, seeded order."""
    batches = length_grouped_batches(examples, settings.batch_size, settings.seed)
    per_epoch = math.ceil(len(batches) / settings.grad_accum)
    total_steps = settings.max_steps or max(1, math.ceil(per_epoch * settings.epochs))
    needed = total_steps * settings.grad_accum
    schedule, epoch = list(batches), 1
    while len(schedule) < needed:
        schedule.extend(length_grouped_batches(examples, settings.batch_size, settings.seed + epoch))
        epoch += 1
    return schedule[:needed]


def _optimiser(model: Any, settings: TrainSettings, total_steps: int) -> tuple[Any, Any]:
    """AdamW over the LoRA weights with linear warm-up and linear decay to zero."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    warmup = max(1, int(total_steps * settings.warmup_ratio))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)


def _resume(out_dir: Path, model: Any, optimizer: Any, scheduler: Any) -> int:
    """Load the latest checkpoint in `out_dir` (weights, optimiser, schedule, RNG); the step to go on from."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    found = _checkpoints(out_dir)
    if not found:
        return 0
    state = torch.load(found[-1] / "trainer_state.pt", weights_only=False)
    set_peft_model_state_dict(model, load_file(str(found[-1] / "adapter_model.safetensors")))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    log.info("resuming from %s at step %d", found[-1], state["step"])
    return int(state["step"])


def _tensorboard(out_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed; no TensorBoard logs")
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


@dataclass
class _Loop:
    """The optimisation loop, with what it measured (tokens, seconds, last loss) kept for the metadata."""

    loaded: LoadedModel
    settings: TrainSettings
    examples: Sequence[Example]
    schedule: Sequence[Sequence[int]]
    out_dir: Path
    optimizer: Any
    scheduler: Any
    on_step: Callable[[int, float], None] | None = None
    tokens: int = 0
    seconds: float = 0.0
    loss: float = float("nan")

    def go(self, start_step: int, total_steps: int, progress: bool, writer: Any) -> None:
        from tqdm import tqdm

        model, settings = self.loaded.model, self.settings
        params = [p for group in self.optimizer.param_groups for p in group["params"]]  # the LoRA weights
        use_autocast = not settings.qlora and next(model.parameters()).dtype == torch.bfloat16
        model.train()
        t0 = time.perf_counter()
        bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", disable=not progress)
        for step in range(start_step, total_steps):
            self.optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro in range(settings.grad_accum):
                batch = collate([self.examples[i] for i in self.schedule[step * settings.grad_accum + micro]],
                                self.loaded.tokenizer.pad_token_id)
                self.tokens += int(batch["attention_mask"].sum())
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_autocast):
                    loss = answer_loss(model, batch) / settings.grad_accum
                loss.backward()
                step_loss += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            self.optimizer.step()
            self.scheduler.step()
            self.loss = step_loss
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}")
            self._report(step + 1, writer)
            if (step + 1) % settings.save_every == 0 and step + 1 < total_steps:
                self._checkpoint(step + 1)
        bar.close()
        if writer:
            writer.close()
        self.seconds = time.perf_counter() - t0
        model.eval()

    def _report(self, step: int, writer: Any) -> None:
        if writer:
            writer.add_scalar("train/loss", self.loss, step)
            writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], step)
        if self.on_step:
            self.on_step(step, self.loss)

    def _checkpoint(self, step: int) -> None:
        ck = self.out_dir / "checkpoints" / f"step-{step}"
        self.loaded.model.save_pretrained(str(ck))
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(), "step": step}, ck / "trainer_state.pt")
        for old in _checkpoints(self.out_dir)[:-2]:
            shutil.rmtree(old, ignore_errors=True)


def _save(out_dir: Path, model: Any, learnt: Mapping[str, Mapping[str, str]] | None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    _shrink(out_dir / "adapter_model.safetensors")
    (out_dir / DESCRIPTIONS_FILE).unlink(missing_ok=True)  # a re-trained folder must not keep stale ones
    if learnt:
        save_descriptions(out_dir, learnt)


def _shrink(weights: Path) -> None:
    """Store the LoRA weights in bf16: half the size to ship, and inference casts them to its dtype anyway."""
    from safetensors.torch import load_file, save_file

    if not weights.is_file():
        return
    tensors = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights), metadata={"format": "pt"})


def write_meta(adapter_dir: str | Path, meta: Mapping[str, Any]) -> None:
    path = Path(adapter_dir) / ADAPTER_META
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
