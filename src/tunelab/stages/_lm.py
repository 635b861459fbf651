"""Pieces shared by the causal-LM stages (pretrain, sft): packing, batching and the next-token loss."""
from __future__ import annotations

import bisect
import contextlib
import math

from ..core.errors import TunelabError
from ..core.lazy import F, torch
from ..data.tokenize import IGNORE
from ._head_loss import chunked_lm_loss_sum, hidden_states_as_logits, switched_head_autocast

# Matmul shapes in few sizes. On CPUs PyTorch runs bf16 matmuls through oneDNN, which JIT-compiles a
# kernel ("primitive") for every new shape and keeps up to 1,024 of them: with AMX about half a MB
# each, and 1-17 ms to make. Packed rows whose width varies by a few tokens, and a loss-position
# count that differs in every micro-batch, made new shapes all run long: measured on smollm2-135m
# LoRA SFT (128 examples, 22 steps), ~900 primitives and +660 MB of resident memory by the last
# step (docs/performance.md). Rounded up to these multiples, the shapes repeat after a few steps.
# (The LM head's loss positions likewise: _head_loss.HEAD_MULTIPLE.)
ROW_MULTIPLE = 64  # packed rows are padded to a multiple of this width (their padding is its own segment)


# --------------------------------------------------------------------------- packing


def pack_examples(examples: list[dict], max_length: int) -> list[dict]:
    """Best-fit-decreasing packing of tokenised examples into rows of at most max_length tokens.

    Each packed row carries position_ids that restart at 0 for every example; with no
    attention_mask, transformers builds a block-diagonal causal mask from them, so attention
    stays inside each example. An example's first label is masked: it would otherwise be
    "predicted" from the previous example's last token.
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, bin index), kept sorted for best-fit lookup
    for i in order:
        size = len(examples[i]["input_ids"])
        slot = bisect.bisect_left(free, (size, -1))
        if slot < len(free):
            space, b = free.pop(slot)
            bins[b].append(i)
            bisect.insort(free, (space - size, b))
        else:
            bins.append([i])
            bisect.insort(free, (max_length - size, len(bins) - 1))
    packed = []
    for members in bins:
        row = {"input_ids": [], "labels": [], "position_ids": []}
        for i in members:
            ids, labels = examples[i]["input_ids"], examples[i]["labels"]
            row["input_ids"] += ids
            row["labels"] += [IGNORE] + labels[1:]
            row["position_ids"] += list(range(len(ids)))
        packed.append(row)
    return packed


def finish_datasets(train: list[dict], eval_: list[dict], train_cfg, dropped: int, source: str):
    if not train:
        raise TunelabError(
            f"data {source}: train.max_length={train_cfg.max_length} is too small for any example "
            f"({dropped} examples had no trainable tokens left after truncation)"
        )
    if train_cfg.packing:
        return pack_examples(train, train_cfg.max_length), pack_examples(eval_, train_cfg.max_length)
    return train, eval_


# --------------------------------------------------------------------------- batching


class PadCollator:
    """Right-pad examples into a batch; packed rows get position_ids and no attention_mask, and a
    width rounded up to a multiple of `ROW_MULTIPLE`.

    Counts real vs padded token slots so a run can report its padding fraction.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id
        self.reset()

    def reset(self) -> None:
        self.real_tokens = self.token_slots = self.loss_tokens = 0

    def __call__(self, examples: list[dict]) -> dict:
        width = max(len(e["input_ids"]) for e in examples)
        packed = "position_ids" in examples[0]
        if packed:
            width += -width % ROW_MULTIPLE
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        positions = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            input_ids[row, :n] = torch.tensor(example["input_ids"])
            labels[row, :n] = torch.tensor(example["labels"])
            mask[row, :n] = 1
            if packed:
                positions[row, :n] = torch.tensor(example["position_ids"])
                positions[row, n:] = torch.arange(width - n)  # padding: its own (ignored) segment
        self.real_tokens += int(mask.sum())
        self.token_slots += mask.numel()
        self.loss_tokens += int((labels != IGNORE).sum())
        if packed:
            return {"input_ids": input_ids, "position_ids": positions, "labels": labels}
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}

    def stats(self) -> dict:
        pad = 1 - self.real_tokens / self.token_slots if self.token_slots else 0.0
        return {"padding_fraction": round(pad, 4), "batched_tokens": self.real_tokens,
                "loss_tokens": self.loss_tokens}


# --------------------------------------------------------------------------- loss


def _unwrap(model):
    while hasattr(model, "module"):  # DDP / accelerate wrappers
        model = model.module
    return model


def causal_lm_loss(model, batch: dict, num_items_in_batch=None):
    """Next-token cross-entropy over labelled positions only, never materialising full logits.

    Summed and divided by the number of loss-bearing tokens in the whole (accumulated)
    batch when the Trainer provides it, so gradient accumulation matches one big batch.
    """
    # use_cache=False: with a KV cache present transformers ignores packed position_ids.
    inputs = {**{k: v for k, v in batch.items() if k != "labels"}, "use_cache": False}
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE  # (B, T-1)
    head = _unwrap(model).get_output_embeddings()
    if type(head) is torch.nn.Linear and head.bias is None:
        with hidden_states_as_logits(head):
            outputs = model(**inputs)
        hidden = outputs.logits[:, :-1][keep]  # (N, H): only positions that carry loss
        loss_sum = chunked_lm_loss_sum(hidden, head.weight, targets[keep], switched_head_autocast())
    else:  # an adapted/odd LM head: plain full-logits path
        outputs = model(**inputs)
        logits = outputs.logits[:, :-1][keep]
        loss_sum = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
    denominator = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    denominator = torch.clamp(torch.as_tensor(denominator, device=loss_sum.device), min=1)
    return loss_sum / denominator, outputs


def build_lm(cfg, links=None):
    """The base causal LM and tokenizer a generative stage trains."""
    from ..models import CAUSAL_LM, load_model, packed_attention

    model, tokenizer = load_model(cfg.model, CAUSAL_LM)
    if model.config._attn_implementation == "sdpa":
        # Packed rows: attend within each example instead of through a dense block mask.
        model.set_attn_implementation(packed_attention.register())
    return model, tokenizer


# --------------------------------------------------------------------------- evaluation

LM_FORMATS = ("text", "instruction", "messages")


def evaluate_lm(loaded, name: str, file: str, options) -> dict:
    """Per-token loss and perplexity of a causal LM on a text or chat file (chat: assistant tokens only);
    with ``options.generate``, ROUGE-L etc. of greedy replies too (see ``_answers``)."""
    from ..data import load_file
    from ..data.tokenize import encode_chat, encode_text
    from .base import cap

    fmt, rows = load_file(file)
    if fmt not in LM_FORMATS:
        raise TunelabError(f"--data {name}={file} is in format '{fmt}'; a language-model run is scored on "
                           f"{', '.join(LM_FORMATS)} data")
    if options.generate and fmt == "text":
        raise TunelabError(f"--generate: --data {name}={file} is plain text; generation is scored against the "
                           "reference replies of instruction or messages data")
    rows = cap(rows, options)
    tokenizer, max_length = loaded.tokenizer, loaded.config.train.max_length
    if fmt == "text":
        examples = [w for row in rows for w in encode_text(tokenizer, row["text"], max_length)]
    else:
        examples = [e for e in (encode_chat(tokenizer, row["messages"], max_length) for row in rows) if e]
    total_loss, tokens = summed_nll(loaded.model, tokenizer, examples, options.batch_size)
    if tokens == 0:
        raise TunelabError(f"--data {name}={file}: no tokens to score")
    mean = total_loss / tokens
    report = {"task": "causal-lm", "file": file, "n": len(rows), "tokens": tokens,
              "loss": mean, "perplexity": math.exp(min(mean, 50))}
    if options.generate:
        from ._answers import answer_quality, final_prompts

        report.update(answer_quality(loaded.model, tokenizer, rows, final_prompts, options, max_length, score=False))
    return report


def summed_nll(model, tokenizer, examples: list[dict], batch_size: int) -> tuple[float, int]:
    """(summed next-token loss, tokens scored) over tokenised examples; their labels mark what is scored.

    The adapter is merged once, on a copy; where the model allows it the examples are packed into
    rows of at most ``batch_size`` x the longest example's tokens with per-example attention (no
    padding computed), else run in length-sorted padded batches of ``batch_size``.
    """
    from ..methods.inference import inference_model
    from ._scoring import can_pack, packed_attention_on

    if not examples:
        return 0.0, 0
    model = inference_model(model)
    if can_pack(model):
        budget = batch_size * max(len(e["input_ids"]) for e in examples)
        batches = [[row] for row in pack_examples(examples, budget)]
        attention = packed_attention_on(model)
    else:
        examples = sorted(examples, key=lambda e: len(e["input_ids"]))  # similar lengths per batch: little padding
        batches = [examples[start : start + batch_size] for start in range(0, len(examples), batch_size)]
        attention = contextlib.nullcontext()
    collate = PadCollator(tokenizer.pad_token_id)
    total_loss, tokens = 0.0, 0
    with torch.inference_mode(), attention:
        for rows in batches:
            batch = collate(rows)
            count = int((batch["labels"][:, 1:] != IGNORE).sum())
            loss, _ = causal_lm_loss(model, batch, num_items_in_batch=count)
            total_loss, tokens = total_loss + float(loss) * count, tokens + count
    return total_loss, tokens
