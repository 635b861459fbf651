"""The contract every training stage (objective) honours.

A stage module exposes:
  - ``Config``: a :class:`StageConfig` subclass whose ``name`` is a ``Literal``;
  - ``MODEL_KIND``: ``"causal-lm"`` or ``"sequence-classification"``;
  - ``build_datasets(cfg, tokenizer) -> (train, eval)``: tokenised examples (may fill in
    settings learned from the data, e.g. classify's ``stage.labels``);
  - ``build_model(cfg) -> (model, tokenizer)``: the base model this stage trains, built from
    the config alone (called after ``build_datasets``, and again by ``tunelab.load``);
  - ``collate(tokenizer)``: a collator turning examples into a batch;
  - ``compute_loss(model, batch) -> (loss, outputs)``: how a batch becomes a loss;
  - ``KEY_METRIC``: the metric name shown by ``tunelab runs``;
  - optionally ``LOSS_IS_NLL = True``: the eval loss is a per-token NLL, so runs report perplexity;
  - optionally ``make_loss(cfg, model, tokenizer) -> loss_fn``: a loss with state (a frozen
    reference, a reward model; dpo, rlhf), used instead of ``compute_loss``; it may offer
    ``pop_metrics(training) -> dict`` to log more than the loss (accuracy, reward, KL, ...).
"""
from __future__ import annotations

from ..schema import StrictModel


class StageConfig(StrictModel):
    name: str
