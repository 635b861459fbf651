"""Prefix tuning without the model's KV cache: the learned keys/values go in at each attention call.

peft runs a classifier's prefix only through a ``past_key_values`` argument of the model's (or its
backbone's) ``forward``. transformers 5.24 renamed that argument to ``cache``, so peft refuses BERT-
and llama-family classifiers ("Model does not support past key values ..."). For such a model this
module keeps everything else of peft -- ``PrefixTuningConfig``, the ``PrefixEncoder`` parameters,
``save_pretrained``/``from_pretrained`` and so the files on disk -- and only replaces how the prefix
reaches attention (Li & Liang 2021): in every self-attention layer the keys and values become
``[prefix_k; k]`` and ``[prefix_v; v]``, and the layer's mask gets ``num_virtual_tokens`` leading
columns that every query may attend to.

Where it hooks in: transformers 5 models compute attention through a function looked up by the
name in ``config._attn_implementation`` (the ``AttentionInterface`` registry), called with the
finished query/key/value tensors (after RoPE, before any GQA repeat) and the layer's mask. We
register ``tunelab_prefix+<original>`` for the model's original implementation (sdpa or eager),
which prepends the prefix and delegates to the original. The model's own code is not touched, and
a layer that got no prefix is an error, not a silent no-op.

What the prefix means is kept identical to peft's cache path, so an adapter gives the same
outputs whichever path runs it: the prefix keys are not rotated, and the real tokens' positions
start at ``num_virtual_tokens`` (where a cache of that length would put them).
"""
from __future__ import annotations

import inspect
import sys

import torch
from peft import PeftModelForSequenceClassification

from ..core.errors import TunelabError

NAME = "tunelab_prefix+"  # + the original attention implementation
SUPPORTED = ("sdpa", "eager")
_SLOT = "_tunelab_prefix"  # attribute set on each self-attention module: its Injector


def peft_drives(peft_model) -> bool:
    """Whether peft itself can run this model's prefix (its own test, from PeftModelForSequenceClassification)."""
    if not isinstance(peft_model, PeftModelForSequenceClassification):
        return True  # causal LMs: peft passes past_key_values straight to forward (and to generate)
    base = peft_model.base_model
    if "past_key_values" in inspect.signature(base.forward).parameters:
        return True
    backbone = base.get_submodule(peft_model.transformer_backbone_name)
    return "past_key_values" in inspect.signature(backbone.forward).parameters


def attach(peft_model, force: bool = False):
    """Make a prefix-tuning PeftModel run its prefix by injection where peft cannot (or ``force``)."""
    if isinstance(peft_model, InjectedPrefixPeftModelForSequenceClassification):
        return peft_model
    if not force and peft_drives(peft_model):
        return peft_model
    if not isinstance(peft_model, PeftModelForSequenceClassification):
        raise TunelabError(f"prefix injection supports sequence classifiers, not {type(peft_model).__name__}")
    cfg = peft_model.active_peft_config
    if cfg.num_transformer_submodules != 1:
        raise TunelabError("prefix injection supports encoder-only and decoder-only models")
    base = peft_model.get_base_model()
    original = base.config._attn_implementation
    if original not in SUPPORTED:
        raise TunelabError(f"method prefix on {type(base).__name__} with attention '{original}': "
                           f"prefix injection supports attention {', '.join(SUPPORTED)}")
    modules = self_attention_modules(base)
    found = sorted(m.layer_idx for m in modules)
    if found != list(range(cfg.num_layers)):
        raise TunelabError(f"method prefix: expected self-attention layers 0..{cfg.num_layers - 1} in "
                           f"{type(base).__name__}, found layer_idx {found}")
    injector = Injector(cfg.num_layers)
    for module in modules:
        object.__setattr__(module, _SLOT, injector)  # a plain attribute: no submodule, no state_dict entry
    base.config._attn_implementation = _register(original)
    object.__setattr__(peft_model, "_prefix_injector", injector)
    peft_model.__class__ = InjectedPrefixPeftModelForSequenceClassification
    return peft_model


def self_attention_modules(model) -> list[torch.nn.Module]:
    """The modules that call the attention function for self-attention, one per layer (``layer_idx``)."""
    return [m for m in model.modules()
            if isinstance(getattr(m, "layer_idx", None), int) and type(m).__name__.endswith("Attention")
            and "Cross" not in type(m).__name__]


def prefix_key_values(peft_model, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values), each (batch, heads, num_virtual_tokens, head_dim), laid out as peft's get_prompt."""
    cfg = peft_model.active_peft_config
    adapter = peft_model.active_adapter
    encoder = peft_model.prompt_encoder[adapter]
    if cfg.inference_mode:  # a loaded adapter: the saved table (with projection: the MLP's output)
        flat = encoder.embedding.weight.unsqueeze(0).expand(batch_size, -1, -1)
    else:
        tokens = peft_model.prompt_tokens[adapter][: cfg.num_virtual_tokens]
        flat = encoder(tokens.unsqueeze(0).expand(batch_size, -1).to(encoder.embedding.weight.device))
    if peft_model.base_model_torch_dtype is not None:
        flat = flat.to(peft_model.base_model_torch_dtype)
    heads = cfg.num_attention_heads
    kv = flat.view(batch_size, cfg.num_virtual_tokens, cfg.num_layers * 2, heads, cfg.token_dim // heads)
    kv = kv.permute(2, 0, 3, 1, 4)  # (2 * layers, batch, heads, P, head_dim): layer l = (kv[2l], kv[2l + 1])
    return [(kv[2 * layer], kv[2 * layer + 1]) for layer in range(cfg.num_layers)]


class Injector:
    """The prefix of the forward in progress, read by the attention function of each layer."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.used: set[int] = set()


def _pad_mask(mask, prefix_len: int, query: torch.Tensor, key: torch.Tensor, causal: bool):
    """The layer's mask with ``prefix_len`` leading key columns that every query attends to."""
    q_len, kv_len = query.shape[2], key.shape[2]  # kv_len without the prefix
    if mask is None:
        if not causal or q_len == 1:
            return None  # no mask: every key, prefix included, is visible
        rows = torch.arange(q_len, device=query.device)[:, None] + (kv_len - q_len)
        mask = (rows >= torch.arange(kv_len, device=query.device)[None, :]).view(1, 1, q_len, kv_len)
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        raise TunelabError(f"prefix injection needs a 4-D attention mask, got {type(mask).__name__}")
    visible = torch.ones if mask.dtype == torch.bool else torch.zeros  # boolean "attend", or additive 0
    lead = visible((*mask.shape[:-1], prefix_len), dtype=mask.dtype, device=mask.device)
    return torch.cat([lead, mask], dim=-1)


def _register(original: str) -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = NAME + original

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        if original == "eager":  # each model file has its own eager function (GQA repeat etc.)
            inner = sys.modules[type(module).__module__].eager_attention_forward
        else:
            inner = ALL_ATTENTION_FUNCTIONS[original]
        injector = getattr(module, _SLOT, None)
        if injector is not None and injector.prefix is not None:
            if kwargs.get("position_bias") is not None:
                raise TunelabError("prefix injection does not support attention with a position bias")
            prefix_k, prefix_v = injector.prefix[module.layer_idx]
            causal = kwargs.get("is_causal")
            causal = getattr(module, "is_causal", False) if causal is None else causal
            attention_mask = _pad_mask(attention_mask, prefix_k.shape[2], query, key, causal)
            key = torch.cat([prefix_k.to(key.dtype), key], dim=2)
            value = torch.cat([prefix_v.to(value.dtype), value], dim=2)
            injector.used.add(module.layer_idx)
        return inner(module, query, key, value, attention_mask, *args, **kwargs)

    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, attention)
    if name not in ALL_MASK_ATTENTION_FUNCTIONS:  # the original's masks, built as the model would build them
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
    return name


class InjectedPrefixPeftModelForSequenceClassification(PeftModelForSequenceClassification):
    """peft's classifier wrapper (same parameters, same save/load), with the prefix injected at attention."""

    def _prefix_tuning_forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None,
                               output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        injector: Injector = self._prefix_injector
        base = self.get_base_model()
        if not base.config._attn_implementation.startswith(NAME):
            raise TunelabError(f"prefix injection was switched off: attention is now "
                               f"'{base.config._attn_implementation}'")
        prefix_len = self.active_peft_config.num_virtual_tokens
        tokens = input_ids if input_ids is not None else inputs_embeds
        batch_size, length = tokens.shape[:2]
        if attention_mask is not None and attention_mask.shape[1] == prefix_len + length:
            attention_mask = attention_mask[:, prefix_len:]  # peft's forward prepended the prefix columns
        if kwargs.get("position_ids") is None:  # (peft's forward already shifted explicit position_ids)
            kwargs["position_ids"] = torch.arange(prefix_len, prefix_len + length,
                                                  device=tokens.device).unsqueeze(0).expand(batch_size, -1)
        injector.prefix, injector.used = prefix_key_values(self, batch_size), set()
        try:
            out = base(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, labels=labels,
                       output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                       return_dict=return_dict, **kwargs)
        finally:
            injector.prefix = None
        if len(injector.used) != injector.num_layers:
            raise TunelabError(f"prefix injection reached layers {sorted(injector.used)} of "
                               f"{injector.num_layers}: the model no longer calls the attention interface")
        return out
