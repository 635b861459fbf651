"""The tokenizer of a run as GGUF metadata: vocabulary, merges, token types, special ids, chat template.

llama.cpp re-implements each tokenizer itself, so the file must say which one: ``tokenizer.ggml.model``
(byte-level BPE: ``gpt2``) and ``tokenizer.ggml.pre``, the name of its pre-tokenizer (the regex that
splits text before BPE). Like llama.cpp's converter we identify the pre-tokenizer by what it does:
the hash of the ids it gives a fixed probe text, looked up in a table of hashes llama.cpp knows.
"""
from __future__ import annotations

import json
from hashlib import sha256

from ..core.errors import TunelabError

# The probe text of llama.cpp's convert_hf_to_gguf_update.py: whitespace runs, emoji, digit groups,
# scripts and English contractions, where pre-tokenizers differ.
_PROBE = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) '
          '✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
          '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
          '\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')

# sha256 of str(tokenizer.encode(_PROBE)) -> the tokenizer.ggml.pre name llama.cpp implements
# (hashes from llama.cpp's convert_hf_to_gguf.py, for the byte-level BPE tokenizers of llama-family models)
PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # GPT-2 regex, digits grouped
}

# gguf.TokenType values (kept here so this module imports without gguf)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def pre_tokenizer_name(tokenizer, where: str) -> str:
    """The llama.cpp name of the tokenizer's pre-tokenizer, or a one-line error naming ``where``."""
    digest = sha256(str(tokenizer.encode(_PROBE, add_special_tokens=False)).encode()).hexdigest()
    if digest not in PRE_TOKENIZERS:
        raise TunelabError(f"{where}: its tokenizer splits text in a way this export does not know how to tell "
                           f"llama.cpp (pre-tokenizer hash {digest[:12]}...; known: {', '.join(PRE_TOKENIZERS.values())})")
    return PRE_TOKENIZERS[digest]


def _backend(tokenizer, where: str) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise TunelabError(f"{where}: its tokenizer is not byte-level BPE (model type {model.get('type')!r}); "
                           "the gguf export writes byte-level BPE vocabularies (gpt2 in llama.cpp) only")
    return spec


def _added_specials(tokenizer) -> tuple[bool, bool]:
    """(adds BOS, adds EOS): compare an encoding with and without the tokenizer's special tokens."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    start = full.index(plain[0]) if plain and plain[0] in full else 0
    before, after = full[:start], full[start + len(plain):]
    return (before == [tokenizer.bos_token_id] and tokenizer.bos_token_id is not None,
            after == [tokenizer.eos_token_id] and tokenizer.eos_token_id is not None)


def vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens and their types for ids 0..vocab_size-1 (ids the tokenizer never produces are UNUSED pads)."""
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            # <|...|> added tokens are control tokens even when not flagged special (as llama.cpp does)
            looks_special = added[i].content.startswith("<|") and added[i].content.endswith("|>")
            types.append(CONTROL if added[i].special or looks_special else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    return tokens, types


def check_tokenizer(tokenizer, vocab_size: int, where: str) -> tuple[dict, str]:
    """A one-line error unless llama.cpp can rebuild this tokenizer; else (its JSON spec, pre-tokenizer name)."""
    spec = _backend(tokenizer, where)
    pre = pre_tokenizer_name(tokenizer, where)
    largest = max(tokenizer.get_vocab().values())
    if largest >= vocab_size:
        raise TunelabError(f"{where}: the tokenizer has id {largest} but the model's embedding has {vocab_size} rows")
    return spec, pre


def add_tokenizer(writer, tokenizer, vocab_size: int, where: str) -> None:
    """Write the tokenizer keys into the GGUF ``writer`` (checked first: nothing is added on a refusal)."""
    spec, pre = check_tokenizer(tokenizer, vocab_size, where)
    tokens, types = vocabulary(tokenizer, vocab_size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    add_bos, add_eos = _added_specials(tokenizer)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    special = {writer.add_bos_token_id: tokenizer.bos_token_id, writer.add_eos_token_id: tokenizer.eos_token_id,
               writer.add_unk_token_id: tokenizer.unk_token_id, writer.add_pad_token_id: tokenizer.pad_token_id}
    for add, token_id in special.items():
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    byte_level = next((p for p in _pre_tokenizers(spec.get("pre_tokenizer")) if p.get("type") == "ByteLevel"), {})
    writer.add_add_space_prefix(bool(byte_level.get("add_prefix_space", False)))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        writer.add_chat_template(template)


def _pre_tokenizers(node) -> list[dict]:
    """The flat list of pre-tokenizer steps (a Sequence nests them)."""
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        return [step for child in node.get("pretokenizers", []) for step in _pre_tokenizers(child)]
    return [node]
