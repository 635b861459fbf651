"""The model card (README.md) of a pushed run: the Hub's YAML metadata, including the run's evaluation
results as ``model-index``, and a body that says how the run was trained and how to load it.

Built with huggingface_hub's ``ModelCard``/``ModelCardData``/``EvalResult`` so the Hub parses it as
it parses its own cards.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..models import CAUSAL_LM

# Bundled models that are (dequantised or packaged copies of) Hub models: their Hub id and licence.
# Only a real Hub id may go into `base_model` (the Hub rejects metadata naming a model it does not have).
HUB_BASES: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "minilm-l6": ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0"),
}
# What an adapter's user must know about a bundled base that is not bit-for-bit the Hub model.
_BASE_NOTES = {
    "smollm2-135m": ("tunelab's `smollm2-135m` is dequantised from the Q4_1 GGUF of that model, so this adapter was "
                     "trained on slightly different weights than the Hub's: on the Hub model it gives close, not "
                     "identical, outputs (the merged upload, `tunelab push --merged`, carries the exact weights)."),
}
# Trainer timing figures: not evaluation results of the model.
_NOT_RESULTS = ("_runtime", "_samples_per_second", "_steps_per_second")
# The train.* settings the card lists (the full config travels as tunelab/config.yaml).
_TRAIN_KEYS = ("epochs", "max_steps", "lr", "batch_size", "grad_accum", "max_length", "scheduler", "warmup_ratio",
               "weight_decay", "packing", "precision", "seed")
CONFIG_FILE = "tunelab/config.yaml"  # where the run's config goes in the uploaded folder


def looks_like_hub_id(spec: str) -> bool:
    """``owner/name`` and not a local path (the same rule tunelab's data and model loading use)."""
    return (spec.count("/") == 1 and Path(spec).suffix == "" and not spec.startswith((".", "/", "~"))
            and not Path(spec).expanduser().exists())


def hub_base(model: str) -> str | None:
    """The Hub id of a run's base model, or None when it has none (a random test model, a local directory)."""
    if model in HUB_BASES:
        return HUB_BASES[model][0]
    return model if looks_like_hub_id(model) else None


def default_license(model: str) -> str:
    return HUB_BASES[model][1] if model in HUB_BASES else "other"


def eval_metrics(summary: dict) -> dict[str, float]:
    """The run's evaluation results as summary.json holds them: ``eval_*`` figures, timings left out."""
    out = {}
    for key, value in summary.get("metrics", {}).items():
        if not key.startswith("eval_") or key.endswith(_NOT_RESULTS):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = value
    return out


def _data_sources(cfg) -> list[str]:
    paths = [source.path for _, source in cfg.data.sources()]
    return paths + ([cfg.data.eval] if cfg.data.eval else [])


def _eval_dataset(cfg) -> tuple[str, str, str]:
    """(type, name, split) of the data the run's eval metrics were measured on."""
    if cfg.data.eval:
        source = cfg.data.eval
        return (source if looks_like_hub_id(source) else Path(source).name), source, "eval"
    first = cfg.data.sources()[0][1].path
    held_out = f"{cfg.data.eval_fraction:g} of train held out (seed {cfg.train.seed})"
    return (first if looks_like_hub_id(first) else Path(first).name), first, held_out


def task_of(info) -> str:
    return "text-generation" if info.model_kind == CAUSAL_LM else "text-classification"


def eval_results(info, model_name: str):
    """One ``EvalResult`` per evaluation metric of the run."""
    from huggingface_hub import EvalResult

    task = task_of(info)
    dataset_type, dataset_name, split = _eval_dataset(info.config)
    return [EvalResult(task_type=task, dataset_type=dataset_type, dataset_name=dataset_name, dataset_split=split,
                       metric_type=key[len("eval_"):], metric_name=key.replace("_", " "), metric_value=value)
            for key, value in eval_metrics(info.summary).items()]


def build_card(info, repo_id: str, content: str, license: str | None = None):
    """The ``ModelCard`` of run ``info`` pushed as ``content`` ("adapter": peft files, "model": transformers)."""
    from huggingface_hub import ModelCard, ModelCardData

    cfg, summary = info.config, info.summary
    name = repo_id.split("/")[-1]
    base = hub_base(cfg.model)
    datasets = [d for d in _data_sources(cfg) if looks_like_hub_id(d)]
    tags = ["tunelab", cfg.stage.name, cfg.method.name] + (["peft"] if content == "adapter" else [])
    data = ModelCardData(
        base_model=base, library_name="peft" if content == "adapter" else "transformers",
        license=license or default_license(cfg.model), tags=tags, datasets=datasets or None,
        pipeline_tag=task_of(info), model_name=name, eval_results=eval_results(info, name) or None,
    )
    body = _body(info, repo_id, content, base, summary)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _body(info, repo_id: str, content: str, base: str | None, summary: dict) -> str:
    cfg = info.config
    name = repo_id.split("/")[-1]
    base_text = f"[{base}](https://huggingface.co/{base})" if base else f"`{cfg.model}`"
    if base and cfg.model in HUB_BASES:
        base_text += f" (tunelab's bundled `{cfg.model}`)"
    elif not base:
        base_text += " (not on the Hub: a tunelab bundled model or a local directory)"
    what = ("a peft adapter: load it on the base model" if content == "adapter"
            else "the whole model (the method folded into plain transformers weights)")
    lines = [f"# {name}", "",
             f"Fine-tuned from {base_text} with tunelab — stage `{cfg.stage.name}`, "
             f"method `{cfg.method.name}`. This repository holds {what}.", ""]
    if content == "adapter" and cfg.model in _BASE_NOTES:
        lines += [_BASE_NOTES[cfg.model], ""]
    lines += ["## How it was trained", "", "| setting | value |", "|---|---|",
              f"| stage | `{cfg.stage.name}` |", f"| method | `{cfg.method.name}` |", f"| base model | `{cfg.model}` |"]
    for key, value in cfg.method.model_dump(mode="json", exclude={"name"}).items():
        lines.append(f"| method.{key} | `{value}` |")
    for key, value in cfg.stage.model_dump(mode="json", exclude={"name"}).items():
        if value not in (None, [], {}):
            lines.append(f"| stage.{key} | `{value}` |")
    train = cfg.train.model_dump(mode="json")
    lines += [f"| train.{key} | `{train[key]}` |" for key in _TRAIN_KEYS if train.get(key) is not None]
    if summary.get("trainable_params") is not None:
        lines.append(f"| trainable parameters | {summary['trainable_params']:,} of {summary.get('total_params', 0):,} "
                     f"({summary.get('trainable_percent', 0):g}%) |")
    for key, label in (("steps", "optimizer steps"), ("train_examples", "training examples"),
                       ("eval_examples", "eval examples"), ("train_seconds", "training time (s)"),
                       ("finished_at", "finished")):
        if summary.get(key) is not None:
            lines.append(f"| {label} | {summary[key]} |")
    lines += ["", "### Data", ""]
    for key, source in cfg.data.sources():
        share = f" (fraction {source.fraction:g})" if source.fraction is not None else ""
        lines.append(f"- {key}: `{source.path}`{share}")
    lines.append(f"- eval: `{cfg.data.eval}`" if cfg.data.eval else
                 f"- eval: {cfg.data.eval_fraction:g} of the first training source, held out (seed {cfg.train.seed})")
    metrics = eval_metrics(summary)
    if metrics:
        lines += ["", "## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value:.6g} |" for key, value in metrics.items()]
    lines += ["", "## Use it", "", "```python", *_usage(info, repo_id, content, base), "```"]
    lines += ["", "## Reproduce", "",
              f"The run's full config is `{CONFIG_FILE}`; with the data files above at those paths "
              "(or overridden, e.g. `data.train=my.jsonl`), tunelab trains it again:", "", "```bash",
              f"tunelab train {CONFIG_FILE} output_dir=runs", "```", ""]
    return "\n".join(lines)


def _usage(info, repo_id: str, content: str, base: str | None) -> list[str]:
    auto = "AutoModelForCausalLM" if info.model_kind == CAUSAL_LM else "AutoModelForSequenceClassification"
    if content == "model":
        return [f"from transformers import {auto}, AutoTokenizer", "",
                f'model = {auto}.from_pretrained("{repo_id}")', f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")']
    base_ref = f'"{base}"' if base else f'tunelab.models.resolve("{info.config.model}")'
    return [f"from transformers import {auto}, AutoTokenizer", "from peft import PeftModel",
            *(["import tunelab.models  # the base is tunelab's, not on the Hub"] if not base else []), "",
            f"base = {auto}.from_pretrained({base_ref})",
            f'model = PeftModel.from_pretrained(base, "{repo_id}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")']
