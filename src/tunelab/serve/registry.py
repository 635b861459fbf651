"""The models a server serves: runs and base models by id, each base loaded once with its adapters attached.

A LoRA, (IA)³ or bottleneck-adapter run trained on a plain base attaches to that base as a named
route (peft's per-row ``adapter_names`` for LoRA, ``routing.Routing`` hooks for the others), so one
copy of the weights serves the bare base and all its adapters, and the engine can put rows for
different runs in one forward. Everything else -- full/freeze/head/prefix/prompt runs, DoRA or
``modules_to_save`` LoRA, runs with their own tokenizer or built from a linked policy, classify and
reward runs, baselines -- loads as a model of its own via ``runs.open.load``.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import TunelabError
from ..models import CAUSAL_LM

GENERATE, CLASSIFY, SCORE = "generate", "classify", "score"
SHARED_METHODS = ("lora", "ia3", "adapter")  # attach to a shared base (when nothing else stops them)
SOLO_METHODS = ("prefix", "prompt")  # peft feeds these through past_key_values / inputs_embeds: no shared cache


@dataclass
class ServedModel:
    id: str  # name clients send as "model"
    kind: str  # "generate" | "classify" | "score"
    base: str  # the resolved base model it runs on
    run_dir: Path | None  # None for a bare base model
    method: str | None  # lora / ia3 / adapter / full / ...; None for a bare base
    created: int  # unix seconds (load time, or the run's finished time)
    context_length: int  # max positions of the model
    labels: list[str] | None = None  # classify runs: class names in order


class UnknownModel(TunelabError):
    """A model id that is not served; the message lists the ids that are."""


class Backend:
    """One loaded model the engine runs forwards on. Rows choose a route: a LoRA adapter name
    (peft, per row), a hook route (``Routing``) or None for the bare model."""

    def __init__(self, model, tokenizer, base: str, batchable: bool = True):
        from .routing import Routing

        self.model, self.tokenizer, self.base = model, tokenizer, base
        self.batchable = batchable  # False: prefix/prompt tuning, generated one request at a time
        self.lora: set[str] = set()
        self.routing = Routing(dict(model.named_modules()))  # module names before any peft wrapping
        self.lock = threading.Lock()  # classify/score/solo generation: one call at a time per model

    def forward(self, routes: list[str | None], **inputs):
        """One forward for rows that may each take a different route; ``inputs`` as for the HF model."""
        import contextlib

        self.routing.set_rows(routes)
        context = contextlib.nullcontext()
        if self.lora:
            lora = [r if r in self.lora else "__base__" for r in routes]
            if len(set(lora)) > 1:
                inputs["adapter_names"] = lora  # peft's mixed batch: per-adapter sub-batches in every LoRA layer
            elif lora[0] == "__base__":
                context = self.model.disable_adapter()  # every row on the bare base: no LoRA work at all
            else:  # one adapter for every row: peft's plain path is cheaper than its mixed-batch one
                if self.model.active_adapter != lora[0]:
                    self.model.set_adapter(lora[0])
        try:
            with context:
                return self.model(**inputs)
        finally:
            self.routing.set_rows([])

    def attach_lora(self, route: str, run_dir: Path) -> None:
        from peft import PeftModel

        if not self.lora and not isinstance(self.model, PeftModel):
            self.model = PeftModel.from_pretrained(self.model, run_dir / "adapter", adapter_name=route).eval()
        else:
            self.model.load_adapter(run_dir / "adapter", adapter_name=route)
            self.model.eval()
        self.lora.add(route)

    def detach(self, route: str) -> None:
        if route in self.lora:
            self.lora.discard(route)
            if self.lora:  # peft keeps one adapter loaded at least; an unrouted last one costs nothing
                self.model.delete_adapter(route)
        self.routing.detach(route)


@dataclass
class _Entry:
    served: ServedModel
    backend: Backend | None  # generation (and the shared base); None for classify/score models
    route: str | None  # None: the backend's own model
    loaded: Any = None  # runs.open.Loaded: prompts of baselines, classify and score
    tokenizer: Any = None  # the run's own copy (its chat template) when it rides on a shared base
    removed: bool = False


class Registry:
    """Served models by id. ``runs``: run directories or model specs; ``names``: {run or spec as given: id};
    ``base``: every run must be trained from this base, which is served too."""

    def __init__(self, runs=(), base: str | None = None, names: dict[str, str] | None = None):
        self.lock = threading.RLock()  # the engine holds it for each step; add/remove take it to change routes
        self._entries: dict[str, _Entry] = {}
        self._bases: dict[str, Backend] = {}  # resolved base -> its shared backend
        self._base = base
        self._names = dict(names or {})
        if base is not None:
            self.add(base, self._names.get(base))
        for run in runs:
            self.add(run, self._names.get(str(run)))
        unused = set(self._names) - {str(r) for r in runs} - {base}
        if unused:
            raise TunelabError(f"names: {sorted(unused)} name no run or model given to serve")

    # ------------------------------------------------------------------ lookup

    def models(self) -> list[ServedModel]:
        with self.lock:
            return [e.served for e in self._entries.values()]

    def get(self, name) -> ServedModel:
        return self._entry(name).served

    def _entry(self, name) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            served = ", ".join(self._entries) or "none"
            raise UnknownModel(f"model '{name}' is not served here; served models: {served}")
        return entry

    def _kind(self, name, kind: str) -> _Entry:
        entry = self._entry(name)
        if entry.served.kind != kind:
            does = {GENERATE: "generates text", CLASSIFY: "classifies text", SCORE: "scores responses"}
            raise TunelabError(f"model '{name}' {does[entry.served.kind]}; it cannot be used to {kind}")
        return entry

    # ------------------------------------------------------------------ adding and removing

    def add(self, run_or_model, name: str | None = None) -> ServedModel:
        """Serve a run directory or model spec under ``name`` (default: the directory name / the spec)."""
        from ..runs.open import is_run_dir, open_run

        spec = str(run_or_model)
        if is_run_dir(spec):
            info = open_run(spec, "serve")
            run_id = name or Path(spec).resolve().name
            self._check_free(run_id, spec)
            return self._add_run(info, run_id)
        return self._add_base(spec, name)

    def remove(self, name) -> None:
        """Stop serving ``name``; requests in flight for it end with an error at the engine's next step."""
        with self.lock:
            entry = self._entry(name)
            entry.removed = True
            del self._entries[name]
            if entry.backend is not None and entry.route is not None:
                entry.backend.detach(entry.route)

    def _check_free(self, model_id: str, what: str) -> None:
        if model_id in self._entries:
            taken = self._entries[model_id].served
            by = taken.run_dir or taken.base
            raise TunelabError(f"model id '{model_id}' for {what} is already served (by {by}); "
                               f"give it another name")

    def _check_base(self, model: str, what: str) -> None:
        from ..models import resolve

        if self._base is not None and model != self._base and resolve(model) != resolve(self._base):
            raise TunelabError(f"{what} was trained from model '{model}', but this server serves runs on "
                               f"base '{self._base}'")

    def _add_base(self, spec: str, name: str | None) -> ServedModel:
        from ..models import resolve

        self._check_base(spec, f"model {spec}")
        key = resolve(spec)
        model_id = name or (Path(spec).name if Path(spec).expanduser().is_dir() else spec)
        with self.lock:
            self._check_free(model_id, f"model {spec}")
            bare = self._bare(self._bases.get(key))
            if bare is not None:
                raise TunelabError(f"model {spec} is already served as '{bare.served.id}'")
        backend = self._shared(spec)
        with self.lock:
            self._check_free(model_id, f"model {spec}")
            return self._serve_bare(backend, spec, model_id)

    def _bare(self, backend: Backend | None) -> _Entry | None:
        return next((e for e in self._entries.values()
                     if backend is not None and e.backend is backend and e.route is None), None)

    def _serve_bare(self, backend: Backend, spec: str, model_id: str) -> ServedModel:
        served = ServedModel(model_id, GENERATE, spec, None, None, int(time.time()), _context(backend.model, spec))
        self._entries[model_id] = _Entry(served, backend, None)
        return served

    def _shared(self, spec: str) -> Backend:
        """The one backend of a base model, loaded on first use."""
        from ..models import load_model, resolve

        key = resolve(spec)
        with self.lock:
            if key in self._bases:
                return self._bases[key]
        model, tokenizer = load_model(spec, CAUSAL_LM)  # outside the lock: the engine keeps running
        with self.lock:
            return self._bases.setdefault(key, Backend(model.eval(), tokenizer, spec))

    def _add_run(self, info, run_id: str) -> ServedModel:
        from ..runs.open import load

        path, cfg = info.path, info.config
        what = f"run {path}"
        base_spec = cfg.model if not info.baseline else getattr(cfg, "model", None)
        if base_spec is not None:
            self._check_base(base_spec, what)
        created = _finished(info.summary, path)
        method = cfg.method.name if not info.baseline else info.baseline
        backend = self._shared(cfg.model) if _may_share(info) else None
        if backend is not None and _shares_base(info, backend.tokenizer):
            tokenizer = _run_tokenizer(path) if (path / "tokenizer").exists() else backend.tokenizer
            with self.lock:
                self._check_free(run_id, what)
                if method == "lora":
                    backend.attach_lora(run_id, path)
                elif method == "ia3":
                    backend.routing.attach_ia3(run_id, path)
                else:
                    backend.routing.attach_bottleneck(run_id, path)
                served = ServedModel(run_id, GENERATE, cfg.model, path, method, created,
                                     _context(backend.model, cfg.model))
                self._entries[run_id] = _Entry(served, backend, run_id, tokenizer=tokenizer)
                if self._bare(backend) is None and cfg.model not in self._entries:
                    self._serve_bare(backend, cfg.model, cfg.model)  # the bare base is servable too
            return served
        loaded = load(path)
        kind = _kind_of(info)
        labels = None
        if kind == CLASSIFY:
            labels = list(cfg.stage.labels if not info.baseline else cfg.labels)
        backend = None
        if kind == GENERATE:
            backend = Backend(loaded.model, loaded.tokenizer, base_spec or str(path),
                              batchable=info.baseline is not None or cfg.method.name not in SOLO_METHODS)
        served = ServedModel(run_id, kind, base_spec or str(path), path, method, created,
                             _context(loaded.model, base_spec))
        served.labels = labels
        with self.lock:
            self._check_free(run_id, what)
            self._entries[run_id] = _Entry(served, backend, None, loaded)
        return served

    # ------------------------------------------------------------------ text in, text out

    def tokenizer(self, name):
        entry = self._entry(name)
        if entry.tokenizer is not None:
            return entry.tokenizer
        return entry.backend.tokenizer if entry.backend is not None else entry.loaded.tokenizer

    def chat_prompt(self, name, messages: list[dict], max_tokens: int = 128) -> list[int]:
        """Token ids of ``messages`` in the model's chat template, ending with the assistant's turn opening.

        A baseline run (zeroshot/icl/rag) builds its own conversation first, as ``Loaded.generate`` does;
        ``max_tokens`` is the reply budget it keeps free in the context."""
        from ..data.tokenize import ensure_chat_template

        entry = self._kind(name, GENERATE)
        hook = getattr(entry.loaded.info.owner, "prompt", None) \
            if entry.loaded is not None and entry.loaded.info is not None and entry.loaded.info.baseline else None
        if hook is not None:
            messages = hook(entry.loaded, messages, max_tokens)
        tokenizer = self.tokenizer(name)
        ensure_chat_template(tokenizer)
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # a BatchEncoding (transformers 5 may return a dict)
            ids = ids["input_ids"]
        return list(ids)

    def encode(self, name, text: str) -> list[int]:
        return list(self.tokenizer(name)(text, add_special_tokens=False)["input_ids"])

    def decode(self, name, ids) -> str:
        return self.tokenizer(name).decode(list(ids), skip_special_tokens=True)

    def classify(self, name, texts: list[str]) -> list[dict]:
        """[{"label", "probabilities": {label: p}}] per text, from a classify run."""
        from ..inference.classify import predict_proba

        entry = self._kind(name, CLASSIFY)
        loaded, labels = entry.loaded, entry.served.labels
        with self._model_lock(entry):
            if hasattr(loaded.model, "predict_proba"):  # a baseline's own classifier (majority)
                probs = loaded.model.predict_proba(list(texts))
            else:
                probs = predict_proba(loaded.model, loaded.tokenizer, list(texts), loaded.config.train.max_length)
        out = []
        for row in probs.tolist():
            best = max(range(len(labels)), key=row.__getitem__)
            out.append({"label": labels[best], "probabilities": dict(zip(labels, row))})
        return out

    def score(self, name, prompts: list[str], responses: list[str]) -> list[float]:
        """Rewards for responses to prompts, from a reward run."""
        if len(prompts) != len(responses):
            raise TunelabError(f"score: {len(prompts)} prompts but {len(responses)} responses; give one prompt per response")
        entry = self._kind(name, SCORE)
        with self._model_lock(entry):
            return entry.loaded.score(list(prompts), list(responses))

    def _model_lock(self, entry: _Entry):
        if entry.backend is not None:
            return entry.backend.lock
        lock = getattr(entry.loaded, "_serve_lock", None)
        if lock is None:
            lock = entry.loaded._serve_lock = threading.Lock()
        return lock


def _kind_of(info) -> str:
    if info.model_kind == CAUSAL_LM:
        return GENERATE
    if hasattr(info.owner, "score"):
        return SCORE
    if info.baseline == "zeroshot":
        raise TunelabError(f"serve: {info.path} is a zero-shot classification baseline; serving it is not "
                           "supported (serve its model for chat, or a trained classify run)")
    return CLASSIFY


def _may_share(info) -> bool:
    return not info.baseline and info.model_kind == CAUSAL_LM and info.config.method.name in SHARED_METHODS


def _run_tokenizer(path: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def _shares_base(info, base_tokenizer) -> bool:
    """Whether a run is its base plus hook/LoRA weights only, so it can ride on the shared base."""
    import json

    if not _may_share(info):
        return False
    cfg, path = info.config, info.path
    from ..stages import STAGES

    if any(link.builds_model and getattr(cfg.stage, link.field, None) for link in getattr(STAGES[cfg.stage.name], "LINKS", ())):
        return False  # built on a merged policy run, not on the plain base
    if (path / "tokenizer").exists() and len(_run_tokenizer(path)) != len(base_tokenizer):
        return False  # tokens added in training: its own embeddings too
    config_file = path / "adapter" / "adapter_config.json"
    if not config_file.is_file():
        return False
    saved = json.loads(config_file.read_text())
    if cfg.method.name == "lora":
        return not saved.get("use_dora") and not saved.get("modules_to_save")  # peft cannot route these per row
    if cfg.method.name == "ia3":
        return not saved.get("modules_to_save")
    from safetensors import safe_open

    with safe_open(str(path / "adapter" / "adapter_model.safetensors"), "pt") as handle:
        return all(".adapter." in key for key in handle.keys())  # nothing but bottleneck weights


def _context(model, spec: str | None) -> int:
    from ..models import max_positions

    value = None
    if spec is not None:
        try:
            value = max_positions(spec)
        except TunelabError:
            value = None
    config = getattr(model, "config", None)
    return int(value or getattr(config, "max_position_embeddings", None) or 2048)


def _finished(summary: dict, path: Path) -> int:
    stamp = summary.get("finished_at")
    if isinstance(stamp, str):
        try:
            return int(time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")))
        except ValueError:
            pass
    marker = path / "summary.json"
    return int(marker.stat().st_mtime) if marker.exists() else int(time.time())
