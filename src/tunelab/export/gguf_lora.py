"""A LoRA run as a llama.cpp LoRA adapter GGUF, applied at load time on the base model's GGUF.

llama.cpp adds ``scale * B @ (A @ x)`` to each adapted matmul, with ``scale = adapter.lora.alpha / r``
(r read from A's shape). Tensors are ``<base tensor>.lora_a`` (r, in) and ``.lora_b`` (out, r), as
llama.cpp's convert_lora_to_gguf.py writes them; Q/K's B rows get the same rope permutation as the
base weights, since B @ A replaces rows of W.
"""
from __future__ import annotations

from pathlib import Path

from ..core.errors import TunelabError
from ..core.lazy import no_grad

_PREFIX = "base_model.model."  # where a PeftModel keeps the wrapped transformers model


@no_grad
def lora_tensors(peft_model, where: str) -> tuple[list[tuple[str, object]], float]:
    """([(GGUF tensor name, float32 array)], adapter alpha) of a peft LoRA model (checked: nothing written)."""
    from .gguf import gguf_name, rope_permute

    peft_config = peft_model.peft_config["default"]
    if peft_config.modules_to_save:
        raise TunelabError(f"{where}: its LoRA also trains whole modules ({', '.join(peft_config.modules_to_save)}), "
                           "which a llama.cpp LoRA adapter cannot hold; export it without --adapter (merged)")
    config = peft_model.get_base_model().config
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    alpha = float(peft_config.lora_alpha)
    tensors = []
    for module_name, module in peft_model.named_modules():
        if not hasattr(module, "lora_A") or "default" not in getattr(module, "lora_A", {}):
            continue
        target = gguf_name(module_name.removeprefix(_PREFIX))
        if target is None or target in ("token_embd", "output"):
            raise TunelabError(f"{where}: its LoRA adapts {module_name.removeprefix(_PREFIX)}, which this "
                               "llama.cpp adapter export does not write; export it without --adapter (merged)")
        a = module.lora_A["default"].weight.detach().float().cpu().numpy()  # (r, in)
        b = module.lora_B["default"].weight.detach().float().cpu().numpy()  # (out, r)
        # llama.cpp scales by alpha / r for the whole file; fold any other per-module peft scaling
        # (rsLoRA's alpha/sqrt(r), rank or alpha patterns) into B so the product is the same.
        b = b * (module.scaling["default"] / (alpha / a.shape[0]))
        if target.endswith(".attn_q"):
            b = rope_permute(b, n_head)
        elif target.endswith(".attn_k"):
            b = rope_permute(b, n_kv)
        tensors += [(f"{target}.weight.lora_a", a), (f"{target}.weight.lora_b", b)]
    if not tensors:
        raise TunelabError(f"{where}: its adapter has no LoRA layers to export")
    return tensors, alpha


def write_adapter(tensors: list[tuple[str, object]], alpha: float, path: Path, name: str) -> Path:
    """The adapter file: general.type=adapter, adapter.type=lora, adapter.lora.alpha, F32 lora_a/lora_b."""
    import gguf
    import numpy as np

    from .gguf import ARCHITECTURE, write_and_check

    writer = gguf.GGUFWriter(path, ARCHITECTURE)  # llama.cpp refuses an adapter whose architecture differs
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)  # rank-r factors are small: kept exact
    for tensor_name, array in tensors:
        writer.add_tensor(tensor_name, np.ascontiguousarray(array, dtype=np.float32))
    write_and_check(writer, path, [n for n, _ in tensors])
    return path
