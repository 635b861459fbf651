"""The compare file: shared data and test sets, and the approaches to try on them (torch-free).

An approach is a baseline (``kind: zeroshot|icl|rag`` plus that baseline's settings) or a trained
run (``kind: train``, the default: any run-config keys, over the file's ``defaults`` and shared
``data.train``). ``then:`` chains further training steps into one approach (the next step starts
from the previous one: ``init_from`` when stage and method stay, the merged model otherwise);
``after: NAME`` starts an approach from another approach's finished run, and reports how much of
that run's source-domain metric it keeps.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ..baselines import BASELINES
from ..config import RunConfig, _close_matches, _describe_error
from ..core.errors import TunelabError
from ..core.schema import StrictModel

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
APPROACH_KEYS = ("name", "kind", "then", "after", "test_rows")  # compare's own keys; the rest belong to the run or baseline


class CompareData(StrictModel):
    """Data every approach shares."""

    train: Any = Field(None, description="Training data for trained approaches (any `data.train` form) and ICL demonstrations.")
    test: dict[str, str] = Field(description="Test sets NAME: FILE; every approach is scored on every one.")
    test_rows: int | dict[str, int] | None = Field(
        None, description="Score only the first N rows of each test set (an int, or {NAME: N})."
    )

    @field_validator("test")
    @classmethod
    def _names(cls, test: dict[str, str]) -> dict[str, str]:
        if not test:
            raise ValueError("give at least one test set NAME: FILE")
        bad = [name for name in test if not _NAME.match(name)]
        if bad:
            raise ValueError(f"test set name '{bad[0]}' may use only letters, digits, '_', '-' and '.'")
        return test


class Forgetting(StrictModel):
    """What a fine-tune may lose."""

    text: str | None = Field(None, description="General text (text format) whose perplexity change LM approaches report.")
    max_rows: int = Field(40, ge=1, description="Documents of `text` scored.")
    max_length: int = Field(256, ge=8, description="Tokens per document scored.")
    source: str | None = Field(None, description="Shift scenarios: the test set of the source domain, whose metric an `after:` approach should keep.")


class CompareConfig(StrictModel):
    """`tunelab compare FILE`: try several ways of solving one task, measured on the same test sets."""

    name: str | None = Field(None, description="Title of the comparison (default: the file's stem).")
    output_dir: str = Field("runs/compare", description="Directory of this comparison: runs, evaluations, compare.json, report.")
    data: CompareData
    primary: str | None = Field(None, description="The test set the recommendation ranks by (default: the first).")
    metric: str | None = Field(
        None, description="Metric the recommendation ranks by, e.g. f1, accuracy, macro.f1, rouge_l, perplexity "
                          "(default: f1 for classifiers, perplexity for language models)."
    )
    generate: int = Field(0, ge=0, description="Generation tasks: rows per test set answered by generation for ROUGE-L.")
    max_new_tokens: int = Field(64, ge=1, description="Generation tasks: tokens generated per answer.")
    batch_size: int = Field(16, ge=1, description="Examples per evaluation batch.")
    forgetting: Forgetting = Field(default_factory=Forgetting)
    defaults: dict = Field(default_factory=dict, description="Run-config keys every trained approach starts from.")
    approaches: list[dict] = Field(description="The approaches, in table order.")

    @field_validator("approaches")
    @classmethod
    def _some(cls, approaches: list[dict]) -> list[dict]:
        if not approaches:
            raise ValueError("list at least one approach")
        return approaches

    @model_validator(mode="after")
    def _test_names(self) -> "CompareConfig":
        for key, value in (("primary", self.primary), ("forgetting.source", self.forgetting.source)):
            if value is not None and value not in self.data.test:
                raise ValueError(f"{key} '{value}' is not a test set ({', '.join(self.data.test)})")
        return self

    @property
    def primary_test(self) -> str:
        return self.primary or next(iter(self.data.test))


class Approach:
    """One approach, resolved: its steps (run configs, or one baseline config) and what it starts from."""

    def __init__(self, name: str, kind: str, steps: list, after: str | None, test_rows=None):
        self.name, self.kind, self.steps, self.after = name, kind, steps, after
        self.test_rows = test_rows  # this approach's own cap on scored rows (a slow baseline), else data.test_rows

    @property
    def is_baseline(self) -> bool:
        return self.kind != "train"


def _deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("stage", "method"):
            out[key] = _deep_merge(out[key], value)
        elif key in ("stage", "method") and isinstance(out.get(key), dict) and isinstance(value, dict) \
                and value.get("name", out[key].get("name")) == out[key].get("name"):
            out[key] = {**out[key], **value}  # same method: options add up; another method: replaced
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_approaches(cfg: CompareConfig, origin: str) -> list[Approach]:
    """Validate every approach (with the run config's key suggestions), before anything runs."""
    out_dir = Path(cfg.output_dir)
    seen: dict[str, Approach] = {}
    for i, raw in enumerate(cfg.approaches):
        where = f"{origin}: approaches[{i}]"
        if not isinstance(raw, dict):
            raise TunelabError(f"{where}: expected a mapping with at least a name")
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise TunelabError(f"{where}: needs a name of letters, digits, '_', '-', '.' (got {name!r})")
        where = f"{origin}: approach '{name}'"
        if name in seen:
            raise TunelabError(f"{where}: the name is used twice")
        kind = raw.get("kind", "train")
        if kind != "train" and kind not in BASELINES:
            hint = _close_matches(str(kind), ["train", *BASELINES], n=1)
            more = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise TunelabError(f"{where}: unknown kind '{kind}'{more}; choose from: train, {', '.join(BASELINES)}")
        after = raw.get("after")
        if after is not None and after not in seen:
            raise TunelabError(f"{where}: after '{after}' is not an approach listed before it"
                               + (f" ({', '.join(seen)})" if seen else ""))
        if after is not None and seen[after].is_baseline:
            raise TunelabError(f"{where}: after '{after}' is a baseline; only a trained approach can be continued")
        test_rows = _test_rows(raw.get("test_rows"), cfg, where)
        settings = {k: v for k, v in raw.items() if k not in APPROACH_KEYS}
        if kind != "train":
            if "then" in raw or after is not None:
                raise TunelabError(f"{where}: a {kind} baseline trains nothing, so it takes no then/after")
            seen[name] = Approach(name, kind, [_baseline_config(cfg, kind, settings, where)], None, test_rows)
            continue
        chain = raw.get("then") or []
        chain = [chain] if isinstance(chain, dict) else chain
        if not isinstance(chain, list) or not all(isinstance(step, dict) for step in chain):
            raise TunelabError(f"{where}: then must be a mapping of run-config keys, or a list of them")
        base = _deep_merge({"data": {"train": cfg.data.train}} if cfg.data.train is not None else {}, cfg.defaults)
        steps, current = [], _deep_merge(base, settings)
        for s, step in enumerate([{}] + chain):
            current = _deep_merge(current, step) if s else current
            run_name = name if not chain else f"{name}.{s + 1}"
            raw_run = {**current, "name": run_name, "output_dir": str(out_dir / "runs")}
            step_where = where if not s else f"{where}, then[{s - 1}]"
            steps.append(_run_config(raw_run, step_where))
        seen[name] = Approach(name, kind, steps, after, test_rows)
    return list(seen.values())


def _test_rows(value, cfg: CompareConfig, where: str):
    """An approach's ``test_rows``: a positive int, or {test set: positive int} over known test sets."""
    if value is None:
        return None
    items = value.items() if isinstance(value, dict) else [(None, value)]
    for name, n in items:
        if name is not None and name not in cfg.data.test:
            raise TunelabError(f"{where}: test_rows names '{name}', which is not a test set ({', '.join(cfg.data.test)})")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise TunelabError(f"{where}: test_rows must be a positive number of rows (got {n!r})")
    return value


def _run_config(raw: dict, where: str) -> RunConfig:
    raw = {k: v for k, v in raw.items() if k != "init_from"} if raw.get("init_from") is None else raw
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise TunelabError(f"{where}: {_describe_error(exc.errors()[0], raw)}") from None


def _baseline_config(cfg: CompareConfig, kind: str, settings: dict, where: str):
    module = BASELINES[kind]
    fields = module.Config.model_fields
    if "train" in fields and "train" not in settings and isinstance(cfg.data.train, str):
        settings = {**settings, "train": cfg.data.train}  # ICL draws its demonstrations from the shared data
    try:
        return module.Config.model_validate(settings)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            hint = _close_matches(key, list(fields), n=1, cutoff=0.5)
            more = f"; did you mean '{hint[0]}'?" if hint else f"; valid keys: {', '.join(['name', 'kind', *fields])}"
            raise TunelabError(f"{where}: unknown key '{key}' for a {kind} baseline{more}") from None
        if err["type"] == "missing":
            raise TunelabError(f"{where}: a {kind} baseline needs '{key}'") from None
        message = err["msg"].removeprefix("Value error, ")
        raise TunelabError(f"{where}: {key}: {message} (got {err.get('input')!r})") from None


def load_compare_config(source: str | Path | dict, overrides: list[str] | None = None) -> tuple[CompareConfig, list[Approach]]:
    """Read and validate a compare file (YAML path or dict) and every approach in it."""
    from ..config import _parse_override, _read_yaml, _set_dotted

    raw = copy.deepcopy(source) if isinstance(source, dict) else _read_yaml(Path(source))
    origin = "compare" if isinstance(source, dict) else str(source)
    for item in overrides or []:
        key, value = _parse_override(item)
        _set_dotted(raw, key, value)
    if not isinstance(source, dict):
        raw.setdefault("name", Path(source).stem)
    try:
        cfg = CompareConfig.model_validate(raw)
    except ValidationError as exc:
        raise TunelabError(f"{origin}: {_describe_compare_error(exc.errors()[0])}") from None
    return cfg, resolve_approaches(cfg, origin)


def _describe_compare_error(err: dict) -> str:
    loc = [str(p) for p in err["loc"]]
    dotted = ".".join(loc)
    if err["type"] == "extra_forbidden":
        owner = {"data": CompareData, "forgetting": Forgetting}.get(loc[0]) if len(loc) > 1 else CompareConfig
        valid = list(owner.model_fields) if owner else []
        hint = _close_matches(loc[-1], valid, n=1, cutoff=0.5)
        prefix = ".".join(loc[:-1]) + "." if len(loc) > 1 else ""
        more = f"; did you mean '{prefix}{hint[0]}'?" if hint else f"; valid keys: {', '.join(valid)}"
        return f"unknown key '{dotted}'{more}"
    if err["type"] == "missing":
        return f"missing required key '{dotted}'"
    message = err["msg"].removeprefix("Value error, ")
    return f"{dotted}: {message} (got {err.get('input')!r})" if dotted else message
