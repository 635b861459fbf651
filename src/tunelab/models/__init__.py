"""Models: resolve a spec (bundled name, directory, Hub id) and load it; the layers methods add.

Public names come from ``loading`` (no torch at import time); ``classifier``, ``layers``,
``feature_cache`` and ``packed_attention`` import torch and are imported where they are used.
"""
from .loading import (
    BUNDLED,
    CAUSAL_LM,
    SEQ_CLS,
    BundledModel,
    DeferredTokenizer,
    cache_root,
    count_params,
    describe_model_dir,
    list_models,
    load_model,
    load_tokenizer,
    max_positions,
    resolve,
)

__all__ = ["BUNDLED", "CAUSAL_LM", "SEQ_CLS", "BundledModel", "DeferredTokenizer", "cache_root", "count_params", "describe_model_dir",
           "list_models", "load_model", "load_tokenizer", "max_positions", "resolve"]
