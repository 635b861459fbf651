"""Baselines: answers from a model without fine-tuning it, measured like any run.

A baseline module exposes ``Config``, ``MODEL_KIND``, ``TASK`` (the stage whose task it does),
``build(cfg) -> (model, tokenizer)``, ``check(cfg, model, tokenizer) -> dict`` (summary facts;
raises on bad settings), ``evaluate(loaded, name, file, options)`` and ``EVAL_OPTIONS``. Its run
directory's config.yaml is ``{<registry name>: <its config>}``.
"""
from . import zeroshot

BASELINES = {
    "zeroshot": zeroshot,
}
