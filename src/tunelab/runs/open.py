"""Open any run directory — trained or a baseline — validate it, and load it: the one place that does.

Every command and stage that takes a run (eval, generate, chat, score, merge, ``init_from``,
``stage.policy``, ``stage.reward_model``) asks here whether it is a finished run of the right kind.

A run directory holds ``config.yaml`` and, once finished, ``summary.json``. A trained run's config
is a :class:`RunConfig` (stage + method); a baseline's ``config.yaml`` has one top-level key that
names the baseline (``zeroshot: {...}``), as registered in ``tunelab.baselines``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..baselines import BASELINES
from ..config import RunConfig, load_config
from ..core.errors import TunelabError
from ..methods import METHODS
from ..models import CAUSAL_LM, load_model, resolve
from ..stages import STAGES
from ..stages.base import RunLink


@dataclass
class RunInfo:
    """A run directory, checked: its config, summary and the module that knows how to use it."""

    path: Path
    config: Any  # RunConfig for a trained run; the baseline's Config for a baseline
    summary: dict
    baseline: str | None = None  # the baseline's registry name; None for a trained run

    @property
    def owner(self):
        """The stage module (trained run) or baseline module: it builds, evaluates, scores."""
        return BASELINES[self.baseline] if self.baseline else STAGES[self.config.stage.name]

    @property
    def stage_name(self) -> str | None:
        return None if self.baseline else self.config.stage.name

    @property
    def model_kind(self) -> str:
        return self.owner.model_kind(self.config) if self.baseline else self.owner.MODEL_KIND

    @property
    def eval_options(self) -> tuple[str, ...]:
        """The options of `tunelab eval` its owner understands (a baseline's depend on its config)."""
        return self.owner.eval_options(self.config) if self.baseline else self.owner.EVAL_OPTIONS

    @property
    def describe(self) -> str:
        if self.baseline:
            return f"a {self.baseline} baseline ({'generation' if self.model_kind == CAUSAL_LM else 'classification'})"
        return f"a {self.config.stage.name} run"


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "config.yaml").is_file()


def open_run(path: str | Path, what: str = "run", finished: bool = True) -> RunInfo:
    """Check that ``path`` is a (finished) run directory and read it; ``what`` prefixes every error."""
    path = Path(path)
    if not path.exists():
        raise TunelabError(f"{what}: {path} does not exist")
    if not path.is_dir():
        raise TunelabError(f"{what}: {path} is a file, not a run directory")
    if not (path / "config.yaml").is_file():
        raise TunelabError(f"{what}: {path} is not a run directory (no config.yaml)")
    try:
        raw = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise TunelabError(f"{what}: {path}/config.yaml is not readable YAML ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise TunelabError(f"{what}: {path}/config.yaml is not a run config")
    summary_file = path / "summary.json"
    if finished and not summary_file.is_file():
        raise TunelabError(f"{what}: run {path} has not finished (no summary.json); "
                           "resume it with `tunelab train CONFIG --resume`")
    try:
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TunelabError(f"{what}: {path}/summary.json is corrupt") from None
    baseline = next((name for name in BASELINES if name in raw), None)
    if baseline:
        module = BASELINES[baseline]
        try:
            config = module.Config.model_validate(raw[baseline])
        except Exception as exc:  # pydantic's ValidationError: a hand-edited or foreign config
            raise TunelabError(f"{what}: {path}/config.yaml is not a valid {baseline} config "
                               f"({str(exc).splitlines()[0]})") from None
        return RunInfo(path, config, summary, baseline)
    return RunInfo(path, load_config(path / "config.yaml"), summary)


def check_link(info: RunInfo, link: RunLink, what: str, model: str | None) -> None:
    """Is the run ``info`` what ``link`` asks for (its stage or model kind, its base model)?"""
    if link.stage and info.stage_name != link.stage:
        raise TunelabError(f"{what}: {info.path} is {info.describe}; it must be {link.what}")
    if link.model_kind and (info.baseline or info.model_kind != link.model_kind):
        raise TunelabError(f"{what}: {info.path} is {info.describe}; it must be {link.what}")
    if link.same_model and model is not None and info.config.model != model \
            and resolve(info.config.model) != resolve(model):
        raise TunelabError(f"{what}: run {info.path} was trained from model '{info.config.model}', "
                           f"this run uses '{model}'")


def check_links(cfg: RunConfig, overrides: dict[str, str] | None = None) -> dict[str, RunInfo]:
    """Open and check every run the stage of ``cfg`` links to (before anything is loaded)."""
    infos = {}
    for link in getattr(STAGES[cfg.stage.name], "LINKS", ()):
        value = (overrides or {}).get(link.field) or getattr(cfg.stage, link.field)
        what = f"stage.{link.field}"
        if not value:
            if link.required:
                raise TunelabError(f"{what} is not set: a {cfg.stage.name} run needs {link.what} "
                                   f"(set {what}=RUN_DIR)")
            continue
        info = open_run(value, what)
        check_link(info, link, what, cfg.model)
        infos[link.field] = info
    return infos


def load_links(cfg: RunConfig, only_model: bool = False, overrides: dict[str, str] | None = None) -> dict:
    """The linked runs of ``cfg``, loaded: {field: Loaded}. ``only_model``: just those the model is built from."""
    links = {link.field: link for link in getattr(STAGES[cfg.stage.name], "LINKS", ())}
    return {name: load(info.path) for name, info in check_links(cfg, overrides).items()
            if not only_model or links[name].builds_model}


@dataclass
class Loaded:
    """A model ready for use; ``config``/``run_dir``/``info`` are set when it came from a run."""

    model: Any
    tokenizer: Any
    config: Any = None
    run_dir: Path | None = None
    info: RunInfo | None = None
    links: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)  # what its owner builds once per load (ICL: the demonstration pool)

    def generate(self, prompt: str | list[dict], max_new_tokens: int = 128, temperature: float = 0.0,
                 top_p: float = 0.9, seed: int = 0) -> str:
        """Reply to a user prompt (or a list of chat messages) with the model's chat template."""
        from ..inference.generate import generate

        if self.info is not None and self.info.model_kind != CAUSAL_LM:
            raise TunelabError(f"run {self.run_dir} is {self.info.describe}: its model scores or classifies text "
                               "and cannot generate; use `tunelab eval` (or `tunelab score`)")
        hook = getattr(self.info.owner, "prompt", None) if self.info is not None and self.info.baseline else None
        if hook is not None:  # a baseline's own prompt: its instruction, its demonstrations
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            prompt = hook(self, messages, max_new_tokens)
        return generate(self.model, self.tokenizer, prompt, max_new_tokens, temperature, top_p, seed)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """Scores of responses to prompts, from a run whose stage scores (a reward model)."""
        scorer = getattr(self.info.owner, "score", None) if self.info is not None else None
        if scorer is None:
            what = self.info.describe if self.info is not None else "not a run"
            raise TunelabError(f"{self.run_dir or 'model'} is {what}, not a reward model; only reward runs score responses")
        return scorer(self, prompts, responses)


def load_scorer(path: str | Path) -> Loaded:
    """A finished run whose stage scores responses (a reward model), checked before anything is loaded."""
    info = open_run(path, "score")
    if not hasattr(info.owner, "score"):
        raise TunelabError(f"score: {path} is {info.describe}, not a reward model; only reward runs score responses")
    return load(path)


def load_generator(run_or_model: str | Path, what: str = "generate") -> Loaded:
    """A finished run whose model generates text (or any model spec), checked before anything is loaded."""
    if is_run_dir(run_or_model):
        info = open_run(run_or_model, what)
        if info.model_kind != CAUSAL_LM:
            raise TunelabError(f"{what}: {run_or_model} is {info.describe}: its model scores or classifies text "
                               "and cannot generate; use `tunelab eval` (or `tunelab score`)")
    return load(run_or_model)


def load(run_or_model: str | Path) -> Loaded:
    """``tunelab.load``: a finished run directory (base + trained weights) or any model spec."""
    path = Path(run_or_model)
    if not is_run_dir(path):
        if path.is_dir() and not (path / "config.json").exists():
            raise TunelabError(f"{path} is neither a run directory (no config.yaml) nor a model directory "
                               "(no config.json)")
        model, tokenizer = load_model(str(run_or_model), CAUSAL_LM)
        return Loaded(model.eval(), tokenizer)
    info = open_run(path)
    if info.baseline:
        model, tokenizer = info.owner.build(info.config)
        return Loaded(model.eval(), tokenizer, info.config, path, info)
    cfg = info.config
    links = load_links(cfg, only_model=True)
    base, tokenizer = STAGES[cfg.stage.name].build_model(cfg, links)  # e.g. a classifier with the run's labels
    if (path / "tokenizer").exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    model = METHODS[cfg.method.name].load(base, path, cfg.method)
    return Loaded(model.eval(), tokenizer, cfg, path, info, links)
