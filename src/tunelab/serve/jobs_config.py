"""An OpenAI fine-tuning job request -> a tunelab run config (and the job object's settled fields).

Mapping: method.type supervised -> stage sft, dpo -> stage dpo (beta); n_epochs -> train.epochs;
batch_size -> train.batch_size; learning_rate_multiplier x the default lr -> train.lr; seed ->
train.seed; "auto" -> tunelab's defaults. The extension ``tunelab: {method: {...}, train: {...}}``
chooses the tunelab method (LoRA by default) and any other train setting.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..core.errors import TunelabError

DEFAULT_METHOD = {"name": "lora"}
_SUFFIX = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HYPER = {"supervised": ("n_epochs", "batch_size", "learning_rate_multiplier"),
          "dpo": ("n_epochs", "batch_size", "learning_rate_multiplier", "beta")}
_BODY = ("model", "training_file", "validation_file", "hyperparameters", "method", "suffix", "seed", "metadata",
         "integrations", "tunelab")


class RequestError(TunelabError):
    """A bad job request; ``param`` names the field, ``status`` is the HTTP status OpenAI uses."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


def _number(value, param: str, kind, low: float, integer: bool = False):
    if value == "auto" or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and int(value) != value):
        raise RequestError(f"{param} must be 'auto' or a {'whole ' if integer else ''}number, got {value!r}",
                           param=param, code="invalid_hyperparameters")
    if value <= low:
        raise RequestError(f"{param} must be greater than {low}, got {value!r}", param=param,
                           code="invalid_hyperparameters")
    return kind(value)


def method_of(body: dict) -> tuple[str, dict, str]:
    """(type, hyperparameters as sent, the param path they came from)."""
    method = body.get("method")
    if method is None:
        hyper = body.get("hyperparameters") or {}
        return "supervised", hyper, "hyperparameters"
    if not isinstance(method, dict) or method.get("type") not in _HYPER:
        raise RequestError("method.type must be 'supervised' or 'dpo'", param="method.type")
    kind = method["type"]
    section = method.get(kind) or {}
    if not isinstance(section, dict):
        raise RequestError(f"method.{kind} must be an object", param=f"method.{kind}")
    hyper = section.get("hyperparameters") or body.get("hyperparameters") or {}
    return kind, hyper, f"method.{kind}.hyperparameters"


def build(body: dict, job_id: str, run_root: str, train_file: str, eval_file: str | None) -> tuple[dict, dict]:
    """(run config dict, settled hyperparameters); raises RequestError naming the bad field."""
    from ..config import TrainConfig, validate_config

    unknown = sorted(set(body) - set(_BODY))
    if unknown:
        raise RequestError(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    kind, hyper, where = method_of(body)
    if not isinstance(hyper, dict):
        raise RequestError(f"{where} must be an object", param=where)
    for key in hyper:
        if key not in _HYPER[kind]:
            raise RequestError(f"{where}.{key} is not a {kind} hyperparameter (use: {', '.join(_HYPER[kind])})",
                               param=f"{where}.{key}")
    extension = body.get("tunelab") or {}
    if not isinstance(extension, dict) or set(extension) - {"method", "train"}:
        raise RequestError("tunelab must be an object with 'method' and/or 'train'", param="tunelab")
    train = dict(extension.get("train") or {})
    epochs = _number(hyper.get("n_epochs"), f"{where}.n_epochs", int, 0, integer=True)
    batch = _number(hyper.get("batch_size"), f"{where}.batch_size", int, 0, integer=True)
    multiplier = _number(hyper.get("learning_rate_multiplier"), f"{where}.learning_rate_multiplier", float, 0)
    beta = _number(hyper.get("beta"), f"{where}.beta", float, 0) if kind == "dpo" else None
    defaults = TrainConfig()
    if epochs is not None:
        train["epochs"] = epochs
    if batch is not None:
        train["batch_size"] = batch
    base_lr = train.get("lr", defaults.lr)
    if multiplier is not None:
        train["lr"] = base_lr * multiplier if isinstance(base_lr, (int, float)) else base_lr
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise RequestError(f"seed must be an integer, got {seed!r}", param="seed")
        train["seed"] = seed
    stage = {"name": "sft"} if kind == "supervised" else {"name": "dpo", **({"beta": beta} if beta else {})}
    method = extension.get("method") or DEFAULT_METHOD
    data = {"train": train_file, "format": "messages" if kind == "supervised" else "preference"}
    if eval_file:
        data["eval"] = eval_file
    raw = {"name": "run", "model": body["model"], "stage": stage, "method": method, "data": data,
           "train": train, "output_dir": run_root}
    try:
        config = validate_config(raw, origin="job")
    except TunelabError as exc:
        param = "tunelab.method" if "method" in str(exc) else ("tunelab.train" if "train" in str(exc) else None)
        raise RequestError(str(exc), param=param) from None
    settled = {"n_epochs": config.train.epochs if float(config.train.epochs) != int(config.train.epochs)
               else int(config.train.epochs),
               "batch_size": config.train.batch_size,
               "learning_rate_multiplier": multiplier if multiplier is not None else 1.0}
    if kind == "dpo":
        settled["beta"] = config.stage.beta
    return config.model_dump(mode="json"), settled


def check_model(model) -> None:
    """Anything tunelab's model resolver refuses (or a Hub id while offline) is an unknown model."""
    from ..models.loading import BUNDLED, resolve

    if not isinstance(model, str) or not model.strip():
        raise RequestError("Missing required parameter: 'model'", param="model")
    try:
        resolve(model)
    except TunelabError as exc:
        raise RequestError(str(exc), param="model", status=404, code="model_not_found") from None
    hub_id = model not in BUNDLED and not Path(model).expanduser().is_dir()
    if hub_id and os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise RequestError(f"model '{model}' is not a bundled model or a local directory, and the Hub is offline; "
                           f"bundled models: {', '.join(BUNDLED)}", param="model", status=404, code="model_not_found")


def check_suffix(suffix) -> None:
    if suffix is not None and (not isinstance(suffix, str) or not _SUFFIX.match(suffix)):
        raise RequestError("suffix must be 1-64 letters, digits, '-', '_' or '.'", param="suffix")
