"""The contract every training stage (objective) honours.

A stage module exposes:
  - ``Config``: a :class:`StageConfig` subclass whose ``name`` is a ``Literal``;
  - ``MODEL_KIND``: ``"causal-lm"`` or ``"sequence-classification"``;
  - ``ACCEPTS``: the data formats it trains on;
  - ``build_datasets(cfg, tokenizer) -> (train, eval)``: tokenised examples (may fill in
    settings learned from the data, e.g. classify's ``stage.labels``);
  - ``build_model(cfg, links) -> (model, tokenizer)``: the base model this stage trains, built from
    the config and the runs it links to (called after ``build_datasets``, and again by ``tunelab.load``);
  - ``collate(tokenizer)``: a collator turning examples into a batch;
  - ``compute_loss(model, batch, num_items_in_batch) -> (loss, outputs)``: how a batch becomes a loss;
  - ``evaluate(loaded, name, file, options) -> dict``: its own evaluation of a finished run on one
    test file (``tunelab eval``); ``EVAL_OPTIONS`` names the options of :class:`EvalOptions` it uses;
  - ``KEY_METRIC``: the metric name shown by ``tunelab runs``;
  - optionally ``LINKS``: the :class:`RunLink` fields of its config that name other finished runs
    (a policy, a reward model); the training path opens, checks and loads them and hands them down;
  - optionally ``LOSS_IS_NLL = True``: the eval loss is a per-token NLL, so runs report perplexity;
  - optionally ``make_loss(cfg, model, tokenizer, links) -> loss_fn``: a loss with state (a frozen
    reference, a reward model; dpo, rlhf), used instead of ``compute_loss``; it may offer
    ``pop_metrics(training) -> dict`` to log more than the loss (accuracy, reward, KL, ...);
  - optionally ``inherit(cfg, previous)``: settings a run started with ``init_from`` takes from
    the earlier run's config (classify's labels), raising a TunelabError if the two disagree;
  - optionally ``score(loaded, prompts, responses) -> list[float]``: the stage's model scores
    responses (``tunelab score``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..core.schema import StrictModel


class StageConfig(StrictModel):
    name: str


@dataclass(frozen=True)
class RunLink:
    """A field of a stage's config that names another finished run the stage needs."""

    field: str  # the key under `stage:`, e.g. "policy"
    what: str  # what the linked run must be, for messages: "a language-model run"
    model_kind: str | None = None  # the linked run's model kind must be this ...
    stage: str | None = None  # ... or its stage exactly this one
    same_model: bool = True  # trained from the same base model as this run
    required: bool = False
    builds_model: bool = False  # needed to build the model itself (else only the loss and evaluation)


@dataclass
class EvalOptions:
    """Options of `tunelab eval`; a stage lists the ones it understands in ``EVAL_OPTIONS``."""

    batch_size: int = 16
    max_rows: int | None = None  # score only the first N rows of the file
    threshold: float | None = None  # two-label classifiers: predict positive when P >= threshold
    positive: str | None = None  # two-label classifiers: the positive label
    generate: int = 0  # generation tasks: greedy replies to the first N rows, scored by ROUGE-L (0 = none)
    max_new_tokens: int = 64  # cap per generated reply; 64 covers a short answer, not an essay
    links: dict = field(default_factory=dict)  # loaded runs the stage links to (e.g. reward_model)


def cap(rows: list, options: EvalOptions) -> list:
    return rows[: options.max_rows] if options.max_rows else rows
