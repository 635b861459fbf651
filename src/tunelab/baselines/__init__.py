"""Baselines: answers from a model without fine-tuning it, measured like any run.

A baseline module exposes ``Config``; ``task(cfg)`` (the stage whose task it does: "classify" or
"sft"), ``model_kind(cfg)`` and ``eval_options(cfg)`` (the :class:`EvalOptions` it uses), all three
depending on the config (a zero-shot baseline classifies when given labels, else generates);
``build(cfg) -> (model, tokenizer)`` (fails on bad inputs before loading the model where it can),
``check(cfg, model, tokenizer) -> dict`` (summary facts; raises on bad settings) and
``evaluate(loaded, name, file, options)``. A generating baseline also offers
``prompt(loaded, messages, max_new_tokens) -> messages``: the chat its model replies to for a
conversation (`tunelab generate`, `tunelab chat`). Optionally ``check_data(cfg, name, file)``
refuses a test file before any model is loaded (`tunelab eval`; RAG: a missing gold field). Its run
directory's config.yaml is ``{<registry name>: <its config>}``.
"""
from . import icl, majority, rag, zeroshot

BASELINES = {
    "zeroshot": zeroshot,
    "icl": icl,
    "majority": majority,
    "rag": rag,
}
