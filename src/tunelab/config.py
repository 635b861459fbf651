"""The typed run config: one pydantic model, YAML on disk, dotted ``KEY=VALUE`` overrides."""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from .core.errors import TunelabError
from .core.schema import StrictModel
from .data.config import TRAIN_TAGS, DataConfig, DataSource, ReplayConfig  # noqa: F401 (the data section)
from .methods import METHODS
from .stages import STAGES


class EarlyStopping(StrictModel):
    """Stop when an eval metric has not improved for `patience` evaluations (transformers' EarlyStoppingCallback)."""

    metric: str = Field("eval_loss", description=(
        "An eval metric the stage reports during training (eval_loss; eval_accuracy for reward/dpo; ...)."))
    patience: int = Field(3, ge=1, description="Evaluations without improvement before the run stops.")
    min_delta: float = Field(0.0, ge=0.0, description="A change smaller than this is not an improvement.")
    direction: Literal["auto", "minimize", "maximize"] = Field(
        "auto", description="`auto`: minimize metrics named *loss or *perplexity, maximize the others.")

    @field_validator("metric")
    @classmethod
    def _prefixed(cls, value: str) -> str:
        return value if value.startswith("eval_") else f"eval_{value}"  # as the Trainer names eval metrics

    @property
    def greater_is_better(self) -> bool:
        if self.direction != "auto":
            return self.direction == "maximize"
        return not self.metric.endswith(("loss", "perplexity"))


class TrainConfig(StrictModel):
    """Optimisation settings (passed to transformers' Trainer)."""

    epochs: float = Field(1.0, gt=0, description="Passes over the training data.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use epochs).")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate (LoRA: ~1e-4..5e-4; full: ~1e-5..5e-5).")
    batch_size: int = Field(4, ge=1, description="Examples per device per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    merge_accumulation: Literal["auto", "always", "never"] = Field("auto", description=(
        "Run accumulated micro-batches as fewer, bigger ones: the same rows in the same optimizer steps, the "
        "same loss and gradients up to rounding, each operation over more tokens at once, more activation "
        "memory. `auto`: on a CPU, stages sft and pretrain with packing, up to 1,024 token slots "
        "(rows × max_length) per micro-batch, not with train.row_threads; `always`: one micro-batch per "
        "optimizer step; `never`: train.batch_size × train.grad_accum as given."))
    max_length: int = Field(512, ge=8, description="Tokens per example; longer examples are truncated.")
    seed: int = Field(42, description="Seed for data order, splits and initialisation.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="`auto`: bf16 autocast where it is faster (CUDA with bf16, CPUs with AMX), else fp32."
    )
    base_dtype: Literal["auto", "fp32", "bf16"] = Field("auto", description=(
        "Dtype of the frozen base weights of methods that freeze them (lora, ia3, adapter, prefix, prompt, freeze); "
        "trainable parameters, their gradients and optimizer state stay fp32. `bf16`: half the weight memory and "
        "no per-step weight casts, the step runs under bf16 autocast; `auto`: bf16 when train.precision makes the "
        "step compute in bf16, else fp32. Methods full and head always keep fp32."))
    compile: bool = Field(False, description=(
        "torch.compile each transformer block for the training steps (dynamic shapes, packed attention left "
        "eager): fewer, fused kernels per step for a one-off compile at the first step (about 50 s for "
        "smollm2-135m on 2 cores, less with a warm cache); pays off on long runs. Not for stage rlhf."))
    fast_dropout: bool = Field(True, description=(
        "While training on a CPU, draw dropout masks (a BERT backbone's, an adapter's) from numpy's PCG64 instead of "
        "PyTorch's bernoulli_, ~5x faster (the same rate, repeatable under train.seed); false: PyTorch's own "
        "dropout, bit-identical with runs made before it existed."))
    row_threads: int = Field(1, ge=1, description=(
        "On a CPU, one process: split each micro-batch's rows over this many threads, each running its "
        "forward and backward on one core. Faster where a small model's matmuls cannot keep the cores busy "
        "(smollm2-135m on 2 cores); every thread holds its rows' activations at once. Needs stage sft or "
        "pretrain, a method other than prefix or prompt, no dropout, train.batch_size >= row_threads; not with "
        "train.compile. Use with train.batch_size = row_threads × the rows you would accumulate."))
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0, description="Share of steps spent warming up linearly.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    logging_steps: int = Field(5, ge=1, description="Log train loss every N optimizer steps.")
    save_steps: int = Field(100, ge=0, description="Checkpoint every N optimizer steps (0: no checkpoints).")
    save_total_limit: int = Field(2, ge=1, description="Keep only the newest N checkpoints.")
    eval_batch_size: int = Field(8, ge=1, description="Examples per eval batch.")
    packing: bool = Field(
        True, description="pretrain/sft: pack several examples per row (attention kept per example) to cut padding."
    )
    deepspeed: str | None = Field(
        None, description="GPU clusters: path to a DeepSpeed JSON config, passed to the Trainer (see docs/distributed.md)."
    )
    fsdp: str | None = Field(
        None, description="GPU clusters: FSDP mode for the Trainer, e.g. 'full_shard auto_wrap' (see docs/distributed.md)."
    )
    fsdp_config: dict | None = Field(None, description="Extra FSDP options passed to the Trainer (fsdp_config).")
    eval_before: bool = Field(True, description="Evaluate once before training, so every run reports before/after.")
    eval_steps: int | None = Field(None, ge=1, description=(
        "Evaluate every N optimizer steps (unset: once per epoch), so early stopping and sweeps see progress "
        "within one epoch."))
    early_stopping: EarlyStopping | None = Field(None, description=(
        "Stop the run when `metric` has not improved by `min_delta` for `patience` evaluations."))
    load_best: bool = Field(False, description=(
        "End the run with the weights of its best evaluation (by early_stopping.metric, else eval_loss); "
        "summary.json records the step and metric."))
    report_to: list[Literal["tensorboard", "mlflow", "trackio"]] = Field(default_factory=list, description=(
        "Experiment trackers to log to (transformers' integrations); empty: none. TensorBoard logs land in "
        "RUN/tensorboard; MLflow uses MLFLOW_TRACKING_URI, else a local store OUTPUT_DIR/mlflow.db."))

    @field_validator("report_to", mode="before")
    @classmethod
    def _none(cls, value: Any) -> Any:
        if value in (None, "none", ["none"]):
            return []
        return [value] if isinstance(value, str) else value

    @property
    def best_metric(self) -> EarlyStopping:
        """The metric (and its direction) that ranks evaluations for load_best and early stopping."""
        return self.early_stopping or EarlyStopping()

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, value: int) -> int:
        if value == 0 or value < -1:  # the Trainer would silently train for train.epochs instead
            raise ValueError("must be -1 (train for train.epochs) or a positive number of steps")
        return value


def _union(registry: dict, what: str):
    configs = tuple(module.Config for module in registry.values())
    return Annotated[Union[configs], Field(discriminator="name", description=f"The {what}, with its options.")]


MethodSection = _union(METHODS, "adaptation method")
StageSection = _union(STAGES, "training stage")


class RunConfig(StrictModel):
    """One fine-tuning run."""

    name: str | None = Field(None, description="Run name; the run directory is `output_dir/name`.")
    model: str = Field(description="Bundled name (see `tunelab models`), local model directory, or Hub id.")
    stage: StageSection
    method: MethodSection
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    output_dir: str = Field("runs", description="Parent directory of run directories.")
    init_from: str | None = Field(
        None, description="A finished run directory (same model, stage and method) whose trained weights this run starts from."
    )

    @field_validator("stage", "method", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `method: lora` is shorthand for `method: {name: lora}`.
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _default_name(self) -> "RunConfig":
        if not self.name:
            model = Path(self.model).name if Path(self.model).exists() else self.model.split("/")[-1]
            object.__setattr__(self, "name", f"{self.stage.name}-{self.method.name}-{model}")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / str(self.name)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------- loading


def load_config(source: str | Path | dict, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML file (or a dict), apply ``KEY=VALUE`` overrides, validate."""
    if isinstance(source, dict):
        raw = copy.deepcopy(source)  # overrides must not leak into the caller's dict
    else:
        raw = _read_yaml(Path(source))
    for item in overrides or []:
        key, value = _parse_override(item)
        _set_dotted(raw, key, value)
    return validate_config(raw, origin=str(source) if not isinstance(source, dict) else "config")


def validate_config(raw: dict, origin: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        # A misspelt key also makes its section miss a required key: name the misspelling, it has a fix.
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        raise TunelabError(f"{origin}: {_describe_error(first, raw)}") from None


def _read_yaml(path: Path) -> dict:
    import yaml  # here, not at import: validating a dict config needs no YAML parser

    if path.is_dir():
        raise TunelabError(f"config file {path} is a directory; give a run config YAML file")
    if not path.is_file():
        raise TunelabError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise TunelabError(f"config file {path} is not UTF-8 text (a YAML file is expected)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise TunelabError(f"bad YAML in {path}:{where}: {problem}") from None
    if not isinstance(data, dict):
        raise TunelabError(f"bad config {path}: expected a mapping of keys at the top level")
    return data


def _parse_override(item: str) -> tuple[str, Any]:
    import yaml

    if "=" not in item:
        raise TunelabError(f"override '{item}' is not KEY=VALUE (e.g. train.epochs=1)")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = re.sub(r"\[(\d+)\]", r".\1", key).split(".")  # data.train[1].fraction, as errors name it
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):  # an item of data.train's list of sources
            index = _list_index(node, part, key)
            if isinstance(node[index], str):
                node[index] = {"path": node[index]}
            node = node[index]
            continue
        child = node.get(part)
        if isinstance(child, str) and part in ("method", "stage"):
            child = {"name": child}  # expand the shorthand so method.r=8 can land
        elif isinstance(child, str) and part == "replay" and node is raw.get("data"):
            child = {"train": child}  # likewise data.replay.fraction=0.2 on `replay: email.jsonl`
        if not isinstance(child, (dict, list)) or (isinstance(child, list) and not parts[depth + 1].isdigit()):
            child = {}
        node[part] = child
        node = child
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key)] = value
    elif node is raw and last in ("method", "stage") and isinstance(value, str) and isinstance(node.get(last), dict):
        node[last]["name"] = value  # `method=lora` after `method.r=8` names the section, keeping its options
    else:
        node[last] = value


def _list_index(items: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise TunelabError(f"override '{key}': '{part}' is not an item of a list of {len(items)} "
                           f"(items count from 0, e.g. data.train[1].fraction=0.2)")
    return int(part)


def _models_in(annotation) -> list:
    """The config classes inside a field's type (through Optional, unions, Annotated and lists)."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, StrictModel):
        return [annotation]
    return [found for arg in typing.get_args(annotation) for found in _models_in(arg)]


def _section_class(cls, field: str, raw_section: Any):
    """The config class a nested key lives in (resolving method/stage by their name)."""
    registry = {"method": METHODS, "stage": STAGES}.get(field) if cls is RunConfig else None
    if registry is not None:
        name = raw_section.get("name") if isinstance(raw_section, dict) else raw_section
        module = registry.get(name)
        return module.Config if module else None
    found = _models_in(cls.model_fields[field].annotation)
    return found[0] if found else None


def _describe_error(err: dict, raw: dict) -> str:
    """Turn one pydantic error into a line that names the key and suggests a fix."""
    loc = list(err["loc"])
    cls, node = RunConfig, raw
    keys: list[str] = []  # the keys walked, without list indices
    dotted = parent = ""  # the location as written, e.g. data.train[1].fraction; and above its last key
    i = 0
    while i < len(loc):
        part = loc[i]
        if isinstance(part, int):  # an item of a list of sections (data.train's sources)
            dotted += f"[{part}]"
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else {}
            i += 1
            continue
        part = str(part)
        parent, dotted = dotted, f"{dotted}.{part}" if dotted else part
        keys.append(part)
        if i == len(loc) - 1 or cls is None:
            break
        field_cls = _section_class(cls, part, node.get(part) if isinstance(node, dict) else None) \
            if part in cls.model_fields else None
        node = node.get(part, {}) if isinstance(node, dict) else {}
        following = loc[i + 1]
        if cls is RunConfig and part in ("method", "stage") and isinstance(node, dict) and following == node.get("name"):
            i += 1  # pydantic puts the union tag in the location; it is not a key
        elif cls is DataConfig and part == "train" and following in TRAIN_TAGS:
            i += 1  # likewise data.train's form (one file, or a list of sources)
        cls = field_cls
        i += 1
    kind = err["type"]
    if kind == "extra_forbidden" and cls is not None:
        valid = list(cls.model_fields)
        hint = _close_matches(keys[-1], valid, n=1, cutoff=0.5)
        where = f"{parent}." if parent else ""
        suggestion = f"; did you mean '{where}{hint[0]}'?" if hint else f"; valid keys: {', '.join(valid)}"
        if len(keys) == 2 and keys[0] in ("method", "stage"):
            section = raw.get(keys[0])
            chosen = section.get("name") if isinstance(section, dict) else section
            owner = f" for {keys[0]} '{chosen}'"
            registry = METHODS if keys[0] == "method" else STAGES
            others = [name for name, module in registry.items() if keys[-1] in module.Config.model_fields]
            if others:  # e.g. method.r with method: full -- an exact match elsewhere beats a fuzzy hint
                suggestion = f"; '{keys[-1]}' is an option of {keys[0]} {', '.join(others)} (valid keys: {', '.join(valid)})"
        else:
            owner = f" for {_words(cls.__name__.removesuffix('Config'))}" if cls is not RunConfig else ""
        return f"unknown key '{dotted}'{owner}{suggestion}"
    if kind == "union_tag_invalid":
        registry = METHODS if keys[0] == "method" else STAGES
        got = err.get("input", {}).get("name") if isinstance(err.get("input"), dict) else err.get("input")
        hint = _close_matches(str(got), list(registry), n=1)
        more = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"unknown {keys[0]} '{got}'{more}; choose from: {', '.join(registry)}"
    if kind == "missing":
        return f"missing required key '{dotted}'"
    if kind == "string_type" and keys[-2:] == ["data", "train"]:
        return f"data.train: expected a file path or Hub dataset id, or a list of sources (got {err.get('input')!r})"
    message = err["msg"].removeprefix("Value error, ")  # our validators' own messages need no prefix
    message = message[:1].lower() + message[1:]  # keep the case of names and paths inside it
    value = err.get("input")
    got = "" if isinstance(value, dict) else f" (got {value!r})"  # a whole section is too long to repeat
    return f"{dotted}: {message}{got}"


def _words(name: str) -> str:
    """DataSource -> 'data source'."""
    return "".join(f" {c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))


def _close_matches(word: str, candidates, n: int = 1, cutoff: float = 0.6) -> list[str]:
    import difflib  # only when an error needs a suggestion

    return difflib.get_close_matches(word, list(candidates), n=n, cutoff=cutoff)
