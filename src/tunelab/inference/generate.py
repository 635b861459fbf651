"""Chat replies from a causal LM, rendered with the tokenizer's own chat template."""
from __future__ import annotations

from ..core.lazy import torch
from ..data.tokenize import ensure_chat_template


def generate(model, tokenizer, prompt: str | list[dict], max_new_tokens: int = 128, temperature: float = 0.0,
             top_p: float = 0.9, seed: int = 0) -> str:
    """Reply to a user prompt (or a list of chat messages); ``temperature=0`` is greedy."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    ensure_chat_template(tokenizer)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
