"""Export a llama-family causal-LM run as GGUF, the single-file format llama.cpp (and Ollama, LM Studio) load.

The run's method is merged into the weights first (as `tunelab merge` does); ``--adapter`` instead keeps
a LoRA run's update apart, as a llama.cpp LoRA adapter next to the base model it applies to. Weights
are F16 (default) or Q8_0; norms stay F32, as llama.cpp's own converter writes them.
"""
from __future__ import annotations

from pathlib import Path

from ..core.errors import TunelabError
from ..core.lazy import no_grad
from ..methods import METHODS
from ..models import CAUSAL_LM, resolve
from ..runs.open import RunInfo, load, open_run
from .gguf_tokenizer import add_tokenizer, check_tokenizer
from .output import check_new_output, writing

QUANTS = ("f16", "q8_0")  # --quant choices; f16 first: the default
ARCHITECTURE = "llama"  # general.architecture: llama.cpp's LLM_ARCH_LLAMA

# HF parameter name (after "model.layers.N.") -> GGUF tensor name (after "blk.N.")
_LAYER_TENSORS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_TOP_TENSORS = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def gguf_name(hf_module: str) -> str | None:
    """``model.layers.3.self_attn.q_proj`` -> ``blk.3.attn_q`` (None: not a llama tensor)."""
    if hf_module in _TOP_TENSORS:
        return _TOP_TENSORS[hf_module]
    parts = hf_module.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _LAYER_TENSORS:
        return f"blk.{parts[2]}.{_LAYER_TENSORS[parts[3]]}"
    return None


def rope_permute(weight, n_head: int):
    """Reorder a Q/K projection's output rows for llama.cpp's rope.

    HF llama rotates dimension i of each head with i + head_dim/2 (``rotate_half``); llama.cpp's rope
    rotates adjacent pairs (2i, 2i+1). Interleaving each head's two halves makes both compute the same
    attention. ``weight``: (n_head * head_dim, ...) -> same shape. (llama.cpp: LlamaModel.permute.)
    """
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


# --------------------------------------------------------------------------- refusals, before any weight is read


def check_exportable(run_dir: Path, adapter: bool) -> RunInfo:
    """Every refusal that the run's files decide: the run kind, its method, its model's architecture."""
    info = open_run(run_dir, "export")
    if info.baseline:
        raise TunelabError(f"export: {run_dir} is {info.describe}; it has no trained weights to export")
    if info.model_kind != CAUSAL_LM:
        raise TunelabError(f"export: run {run_dir} is {info.describe}: its model classifies or scores text; "
                           "--format gguf writes text-generating (causal LM) models for llama.cpp only")
    method = info.config.method
    if adapter and method.name != "lora":
        raise TunelabError(f"export: --adapter writes a LoRA adapter, but run {run_dir} uses method "
                           f"'{method.name}'; export it without --adapter (merged)")
    if adapter and method.use_dora:
        raise TunelabError(f"export: run {run_dir} is DoRA (method.use_dora), which a llama.cpp LoRA adapter "
                           "cannot hold; export it without --adapter (merged)")
    if not hasattr(METHODS[method.name], "merge"):
        mergeable = ", ".join(n for n, m in METHODS.items() if hasattr(m, "merge"))
        raise TunelabError(f"export: method '{method.name}' of run {run_dir} cannot be merged into plain weights, "
                           f"so llama.cpp cannot run it (mergeable: {mergeable})")
    check_llama_config(_model_config(info.config.model), f"export: run {run_dir}", info.config.model)
    return info


def _model_config(spec: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve(spec))
    except (OSError, ValueError) as exc:
        raise TunelabError(f"export: cannot read the config of model '{spec}' ({str(exc).splitlines()[0]})") from None


def check_llama_config(config, where: str, model: str) -> None:
    """A one-line error unless ``config`` is a llama model this writer reproduces exactly in llama.cpp."""
    if config.model_type != "llama":
        raise TunelabError(f"{where} is built on model '{model}' ({config.model_type}); --format gguf writes "
                           "llama-family models (LlamaForCausalLM) only")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise TunelabError(f"{where}: model '{model}' has attention or MLP biases, which this gguf export does not write")
    rope = _rope(config)
    if rope.get("rope_type", "default") not in ("default", "linear"):
        raise TunelabError(f"{where}: model '{model}' uses rope scaling {rope['rope_type']!r}; "
                           "the gguf export writes default and linear rope only")


def _rope(config) -> dict:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope = dict(rope)
    rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return rope


# --------------------------------------------------------------------------- writing


def export(run_dir: Path, out_dir: Path, options) -> Path:
    """``tunelab export --format gguf``: ``model-<quant>.gguf``; with ``--adapter``, ``base-<quant>.gguf`` + ``lora.gguf``."""
    options.refuse_unused("gguf", allowed=("quant", "adapter"))
    quant = options.quant or QUANTS[0]
    if quant not in QUANTS:
        raise TunelabError(f"export: --quant {quant!r} is not one of: {', '.join(QUANTS)}")
    info = check_exportable(run_dir, options.adapter)
    check_new_output(out_dir)
    loaded = load(run_dir)
    where = f"export: run {run_dir}"
    check_tokenizer(loaded.tokenizer, loaded.model.config.vocab_size, where)
    if options.adapter:
        from .gguf_lora import lora_tensors, write_adapter

        lora, alpha = lora_tensors(loaded.model, where)  # read before unload() drops the LoRA layers
        model = loaded.model.unload().eval()
    else:
        model = METHODS[info.config.method.name].merge(loaded.model).eval()
    if type(model).__name__ != "LlamaForCausalLM":
        raise TunelabError(f"{where}: its model is a {type(model).__name__}; --format gguf writes LlamaForCausalLM only")
    with writing(out_dir):
        name = run_dir.resolve().name
        if options.adapter:
            write_model(model, loaded.tokenizer, out_dir / f"base-{quant}.gguf", quant, name, where)
            write_adapter(lora, alpha, out_dir / "lora.gguf", f"{name} (LoRA)")
        else:
            write_model(model, loaded.tokenizer, out_dir / f"model-{quant}.gguf", quant, name, where)
    return out_dir


@no_grad
def write_model(model, tokenizer, path: Path, quant: str, name: str, where: str) -> Path:
    """One GGUF file: llama hyper-parameters, the tokenizer and every weight (Q/K rope-permuted)."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(path, ARCHITECTURE)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    _add_hparams(writer, config)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if quant == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(writer, tokenizer, config.vocab_size, where)
    names = []
    for tensor_name, array in llama_tensors(model):
        _add_weight(writer, tensor_name, array, quant)
        names.append(tensor_name)
    write_and_check(writer, path, names)
    return path


def write_and_check(writer, path: Path, names: list[str]) -> None:
    """Write the file, then read it back: a short or garbled write fails the export, not llama.cpp later."""
    import gguf

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    try:
        written = [t.name for t in gguf.GGUFReader(path).tensors]
    except (ValueError, OSError) as exc:
        raise TunelabError(f"export: {path} does not read back as GGUF ({exc})") from None
    if written != names:
        raise TunelabError(f"export: {path} reads back with {len(written)} tensors, {len(names)} were written")


def _add_hparams(writer, config) -> None:
    n_head = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    rope = _rope(config)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or n_head)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)
    if getattr(config, "head_dim", None):  # as llama.cpp's converter: stated whenever the config states it
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if rope.get("rope_type") == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))


def llama_tensors(model):
    """(GGUF name, float32 numpy array) for each weight; a tied output head is not repeated."""
    config = model.config
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    for key, tensor in model.state_dict().items():
        module, _, kind = key.rpartition(".")
        target = gguf_name(module)
        if target is None or kind != "weight":
            raise TunelabError(f"export: parameter {key} has no place in a llama GGUF")
        if target == "output" and tied:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        array = tensor.detach().float().cpu().numpy()
        if target.endswith(".attn_q"):
            array = rope_permute(array, n_head)
        elif target.endswith(".attn_k"):
            array = rope_permute(array, n_kv)
        yield f"{target}.weight", array


def _add_weight(writer, name: str, array, quant: str) -> None:
    import gguf
    import numpy as np

    # 1-D norms stay F32; Q8_0 packs rows in blocks of 32, so a row of another width stays F16
    if array.ndim == 1:
        writer.add_tensor(name, array.astype(np.float32))
    elif quant == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        packed = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        writer.add_tensor(name, array.astype(np.float16))
