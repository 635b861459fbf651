"""The sweep file: a base run config, a search space over dotted config keys, an objective.

Everything here is checked before the first trial: unknown keys (with the run config's own
nearest-key suggestion), empty or inverted ranges, an objective the stage does not report, an eval
set that does not exist, `trials: 0`. Torch-free, like tunelab.config.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from ..config import _close_matches, _read_yaml, _set_dotted, validate_config
from ..core.errors import TunelabError
from ..core.schema import StrictModel
from ..methods import METHODS
from ..stages import STAGES

KINDS = ("log_uniform", "uniform", "int", "choice")


class Objective(StrictModel):
    metric: str = Field("eval_loss", description=(
        "A final metric of the run (eval_loss, eval_accuracy...) or `eval/SET/KEY`: KEY of `tunelab eval` on the "
        "sweep's eval set SET (e.g. eval/sms/f1)."))
    direction: Literal["minimize", "maximize"] = Field("minimize", description="Whether higher or lower is better.")


class SweepConfig(StrictModel):
    """One hyper-parameter sweep (Optuna study)."""

    base: str | dict = Field(description="The run config every trial starts from: a YAML path or an inline mapping.")
    space: dict[str, dict] = Field(description=(
        "Dotted run-config key -> {log_uniform: [lo, hi]} | {uniform: [lo, hi]} | {int: [lo, hi]} | {choice: [...]}. "
        "Method options (method.r) apply only to trials whose method has them."))
    objective: Objective = Field(default_factory=Objective, description="What the study optimises, and which way.")
    eval: dict[str, str] = Field(default_factory=dict, description="Named eval sets NAME: FILE for eval/NAME/KEY.")
    trials: int = Field(10, description="Trials the study runs in all (shared by every process on one study).")
    timeout: float | None = Field(None, gt=0, description="Stop starting trials after this many seconds.")
    seed: int = Field(0, description="Sampler seed.")
    sampler: Literal["tpe", "random", "grid"] = Field("tpe", description="tpe (default), random, or grid (choices only).")
    pruner: Literal["median", "successive_halving", "none"] = Field(
        "median", description="Stops trials whose intermediate eval metric is worse than the others' at the same step.")
    prune_on: str = Field("eval_loss", description="The eval metric reported at every evaluation during training.")
    output_dir: str | None = Field(None, description="The sweep directory (default sweeps/<sweep file stem>).")
    study_name: str | None = Field(None, description="Optuna study name (default: the sweep file stem).")
    storage: str | None = Field(None, description=(
        "Optuna storage URL (default sqlite:///<output_dir>/study.db); postgresql://... for many machines."))

    @field_validator("trials")
    @classmethod
    def _trials(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value


def load_sweep(source: str | Path | dict) -> tuple[SweepConfig, dict, Path]:
    """Read and check a sweep file; return it, the base run config as a dict, and the sweep directory."""
    if isinstance(source, dict):
        raw, origin, stem, here = copy.deepcopy(source), "sweep", "sweep", Path.cwd()
    else:
        path = Path(source)
        raw, origin, stem, here = _read_yaml(path), str(path), path.stem, path.parent
    try:
        sweep = SweepConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            hint = _close_matches(str(err["loc"][-1]), list(SweepConfig.model_fields), cutoff=0.5)
            raise TunelabError(f"{origin}: unknown key '{where}'" + (f"; did you mean '{hint[0]}'?" if hint else
                               f"; valid keys: {', '.join(SweepConfig.model_fields)}")) from None
        if err["type"] == "missing":
            raise TunelabError(f"{origin}: missing required key '{where}'") from None
        raise TunelabError(f"{origin}: {where}: {err['msg'].removeprefix('Value error, ')}") from None
    base = _base(sweep.base, here, origin)
    if sweep.output_dir is None:
        sweep = sweep.model_copy(update={"output_dir": str(Path("sweeps") / stem)})
    if sweep.study_name is None:
        sweep = sweep.model_copy(update={"study_name": stem})
    check_space(sweep, base, origin)
    check_objective(sweep, base, here, origin)
    return sweep, base, here


def _base(base: str | dict, here: Path, origin: str) -> dict:
    if isinstance(base, dict):
        return copy.deepcopy(base)
    path = Path(base)
    if not path.is_absolute() and not path.exists() and (here / path).exists():
        path = here / path  # relative to the sweep file, when not relative to the working directory
    if not path.is_file():
        raise TunelabError(f"{origin}: base: run config file not found: {base}")
    return _read_yaml(path)


# --------------------------------------------------------------------------- the space


def _distribution(key: str, spec: Any, origin: str) -> tuple[str, Any]:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        got = next(iter(spec)) if isinstance(spec, dict) and len(spec) == 1 else spec
        hint = _close_matches(str(got), KINDS, cutoff=0.5) if isinstance(got, str) else []
        raise TunelabError(f"{origin}: space.{key}: expected one of {{{', '.join(f'{k}: ...' for k in KINDS)}}} "
                           f"(got {got!r})" + (f"; did you mean '{hint[0]}'?" if hint else ""))
    kind, value = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(value, list) or not value:
            raise TunelabError(f"{origin}: space.{key}: choice needs a non-empty list (got {value!r})")
        return kind, value
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)):
        raise TunelabError(f"{origin}: space.{key}: {kind} needs [low, high] numbers (got {value!r})")
    low, high = value
    if not low < high:
        raise TunelabError(f"{origin}: space.{key}: {kind} range [{low}, {high}] is empty or inverted "
                           f"(low must be below high)")
    if kind == "log_uniform" and low <= 0:
        raise TunelabError(f"{origin}: space.{key}: log_uniform needs a low above 0 (got {low})")
    if kind == "int" and not all(float(v).is_integer() for v in value):
        raise TunelabError(f"{origin}: space.{key}: int needs whole numbers (got {value!r})")
    return kind, (int(low), int(high)) if kind == "int" else (float(low), float(high))


def distributions(sweep: SweepConfig, origin: str = "sweep") -> dict[str, tuple[str, Any]]:
    return {key: _distribution(key, spec, origin) for key, spec in sweep.space.items()}


def method_names(sweep: SweepConfig, base: dict) -> list[str]:
    """The methods trials can use: the choice of method.name, else the base's method."""
    spec = sweep.space.get("method.name")
    if spec is not None:
        return list(spec["choice"])
    method = base.get("method")
    return [method.get("name") if isinstance(method, dict) else method]


def applies(key: str, method: str) -> bool:
    """A method option (method.r) applies only to trials whose method has it; other keys always apply."""
    parts = key.split(".")
    if parts[0] != "method" or len(parts) != 2 or parts[1] == "name":
        return True
    module = METHODS.get(method)
    return module is not None and parts[1] in module.Config.model_fields


def _sample_value(kind: str, value: Any) -> Any:
    return value[0] if kind in ("choice", "int", "uniform", "log_uniform") else value


def apply_params(base: dict, params: dict[str, Any]) -> dict:
    """The run config of one trial: the base with each sampled value set at its dotted key."""
    raw = copy.deepcopy(base)
    if isinstance(raw.get("method"), str):
        raw["method"] = {"name": raw["method"]}  # the shorthand, expanded so options can land
    if "method.name" in params:  # first, so method.r lands in the chosen method's section
        module = METHODS.get(params["method.name"])
        fields = module.Config.model_fields if module else {}
        # options of the base's method that the chosen one lacks are dropped, not errors
        raw["method"] = {k: v for k, v in (raw.get("method") or {}).items() if k in fields}
        raw["method"]["name"] = params["method.name"]
    for key, value in params.items():
        if key != "method.name":
            _set_dotted(raw, key, value)
    return raw


def check_space(sweep: SweepConfig, base: dict, origin: str) -> None:
    if not sweep.space:
        raise TunelabError(f"{origin}: space is empty; give at least one key to search, e.g. train.lr")
    dists = distributions(sweep, origin)
    if "method.name" in dists and dists["method.name"][0] != "choice":
        raise TunelabError(f"{origin}: space.method.name must be a choice of method names")
    methods = method_names(sweep, base)
    for name in methods:
        if name not in METHODS:
            hint = _close_matches(str(name), METHODS)
            raise TunelabError(f"{origin}: space.method.name: unknown method '{name}'"
                               + (f" (did you mean '{hint[0]}'?)" if hint else "") + f"; choose from: {', '.join(METHODS)}")
    for key in dists:  # a method option no candidate method has is a misspelling
        parts = key.split(".")
        if parts[0] == "method" and len(parts) == 2 and parts[1] != "name" and not any(applies(key, m) for m in methods):
            options = sorted({f for m in methods for f in METHODS[m].Config.model_fields if f != "name"})
            hint = _close_matches(parts[1], options, cutoff=0.5)
            raise TunelabError(f"{origin}: space: unknown key '{key}' for method {', '.join(methods)}"
                               + (f"; did you mean 'method.{hint[0]}'?" if hint else f"; valid keys: {', '.join(options)}"))
    if sweep.sampler == "grid":
        bad = [k for k, (kind, _) in dists.items() if kind != "choice"]
        if bad:
            raise TunelabError(f"{origin}: sampler grid needs choice for every key (space.{bad[0]} is not)")
    for name in methods:  # every key valid in the run config, with the config's own error and suggestion
        params = {key: _sample_value(*dists[key]) for key in dists if applies(key, name)}
        params["method.name"] = name
        try:
            validate_config(apply_params(base, params), origin=f"{origin}: space")
        except TunelabError as exc:
            raise TunelabError(str(exc)) from None


# --------------------------------------------------------------------------- the objective


def train_metrics(stage_name: str) -> list[str]:
    """The final metrics every run of a stage reports in summary.json (beyond what its loss may add)."""
    stage = STAGES[stage_name]
    found = ["eval_loss", "train_loss", stage.KEY_METRIC]
    if getattr(stage, "LOSS_IS_NLL", False):
        found.append("eval_perplexity")
    return list(dict.fromkeys(found))


def classification_keys(labels: list) -> list[str]:
    """The dotted keys `tunelab eval` reports for a classifier with these labels (from the report itself)."""
    import numpy as np

    from ..core.metrics import classification_report

    labels = [str(label) for label in labels] or ["0", "1"]
    probs = np.full((len(labels), len(labels)), 1.0 / len(labels))
    report = classification_report(labels, np.arange(len(labels)), probs,
                                   sorted(range(len(labels)), key=lambda i: labels[i])[1] if len(labels) == 2 else None)
    keys: list[str] = []

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, (int, float)) and not isinstance(node, bool) and math.isfinite(float(node)):
            keys.append(prefix)

    walk("", report)
    return keys


def check_objective(sweep: SweepConfig, base: dict, here: Path, origin: str) -> None:
    cfg = validate_config(copy.deepcopy(base), origin=f"{origin}: base")
    metric = sweep.objective.metric
    for name, file in sweep.eval.items():
        path = Path(file)
        if not path.exists() and not (here / path).exists():
            raise TunelabError(f"{origin}: eval.{name}: file not found: {file}")
    if metric.startswith("eval/"):
        parts = metric.split("/", 2)
        if len(parts) != 3 or not parts[2]:
            raise TunelabError(f"{origin}: objective.metric '{metric}': expected eval/SET/KEY, e.g. eval/sms/f1")
        _, name, key = parts
        if name not in sweep.eval:
            known = ", ".join(sweep.eval) or "none: add `eval: {NAME: FILE}`"
            raise TunelabError(f"{origin}: objective.metric '{metric}': no eval set '{name}' (eval sets: {known})")
        if cfg.stage.name == "classify":
            keys = classification_keys(list(getattr(cfg.stage, "labels", None) or []))
            if key not in keys:
                hint = _close_matches(key, keys, cutoff=0.5)
                raise TunelabError(f"{origin}: objective.metric '{metric}': a classifier's eval does not report "
                                   f"'{key}'" + (f"; did you mean '{hint[0]}'?" if hint else f" (it reports: {', '.join(keys)})"))
    else:
        known = train_metrics(cfg.stage.name)
        if metric not in known:
            hint = _close_matches(metric, known, cutoff=0.5)
            raise TunelabError(f"{origin}: objective.metric '{metric}' is not reported by stage {cfg.stage.name} "
                               f"(it reports: {', '.join(known)}; or eval/SET/KEY on a named eval set)"
                               + (f"; did you mean '{hint[0]}'?" if hint else ""))
    prune_on = sweep.prune_on if sweep.prune_on.startswith("eval_") else f"eval_{sweep.prune_on}"
    if sweep.pruner != "none" and prune_on not in ("eval_loss", STAGES[cfg.stage.name].KEY_METRIC):
        raise TunelabError(f"{origin}: prune_on '{sweep.prune_on}' is not reported during training by stage "
                           f"{cfg.stage.name} (use eval_loss)")
