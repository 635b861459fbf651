"""Pieces shared by the causal-LM stages (pretrain, sft): packing, batching and the next-token loss."""
from __future__ import annotations

import bisect
import contextlib
import functools
import math
import threading

from ..core.errors import TunelabError
from ..core.lazy import F, torch
from ..data.tokenize import IGNORE

# Matmul shapes in few sizes. On CPUs PyTorch runs bf16 matmuls through oneDNN, which JIT-compiles a
# kernel ("primitive") for every new shape and keeps up to 1,024 of them: with AMX about half a MB
# each, and 1-17 ms to make. Packed rows whose width varies by a few tokens, and a loss-position
# count that differs in every micro-batch, made new shapes all run long: measured on smollm2-135m
# LoRA SFT (128 examples, 22 steps), ~900 primitives and +660 MB of resident memory by the last
# step (docs/performance.md). Rounded up to these multiples, the shapes repeat after a few steps.
ROW_MULTIPLE = 64  # packed rows are padded to a multiple of this width (their padding is its own segment)
HEAD_MULTIPLE = 32  # loss positions are padded to a multiple of this with zero rows that carry no loss
HEAD_SLICE = 128  # rows of the LM head's logits formed at a time (see _head_cross_entropy)


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


_head_switch = threading.local()  # per thread: is this thread's forward inside _hidden_states_as_logits?
_head_lock = threading.Lock()
_head_users: dict = {}  # id(head) -> [threads inside, the head's own forward]


def _identity_while_switched(original):
    def forward(hidden):
        if not getattr(_head_switch, "on", False):
            return original(hidden)
        device = hidden.device.type
        _head_switch.autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        return hidden

    return forward


@contextlib.contextmanager
def _hidden_states_as_logits(head: torch.nn.Module):
    """Make the LM head an identity for one forward, so the model returns (B, T, H) hidden states.

    The identity notes the autocast dtype the head would have computed in (``_head_switch.autocast``,
    None without autocast): mixed precision (accelerate) wraps the model's forward only, so the loss
    after it runs outside autocast and learns the head's compute dtype from there.

    Thread-safe (train.row_threads runs forwards side by side): the first thread in swaps in a
    forward that is the identity only for threads inside this context, the last one out restores it.
    """
    with _head_lock:
        users = _head_users.get(id(head))
        if users is None:
            original = head.forward
            head.forward = _identity_while_switched(original)
            users = _head_users[id(head)] = [0, original]
        users[0] += 1
    _head_switch.on, _head_switch.autocast = True, None
    try:
        yield
    finally:
        _head_switch.on = False
        with _head_lock:
            users[0] -= 1
            if users[0] == 0:
                head.forward = users[1]
                del _head_users[id(head)]


def _head_compute_dtype(hidden, weight, autocast) -> "torch.dtype":
    """The dtype the head's matmuls run in: the autocast dtype the model's forward ran under (``autocast``)
    or that is on now (a trained fp32 head under bf16 mixed precision computes in bf16, as the stock
    ``nn.Linear`` does: in fp32 it was ~4x slower on CPUs with bf16 units), else the head weight's own."""
    device = hidden.device.type
    if autocast is None and torch.is_autocast_enabled(device):
        autocast = torch.get_autocast_dtype(device)
    return autocast if autocast is not None and weight.is_floating_point() else weight.dtype


_head_buffers = threading.local()  # per thread (train.row_threads): head weight -> {purpose: reused buffer}


def _head_buffer(weight, purpose: str, dtype) -> torch.Tensor:
    """A (vocab x hidden) buffer in ``dtype`` kept for ``weight`` while it lives, reused every call.

    Fresh tensors of this size (56 MB in bf16 for smollm2-135m) are mapped from the kernel and faulted
    in page by page each time they are made: a fresh bf16 copy of the fp32 head took 18 ms where
    copying into a kept buffer took 4 (docs/performance.md)."""
    from torch.utils.weak import WeakIdKeyDictionary

    kept = getattr(_head_buffers, "by_weight", None)
    if kept is None:
        kept = _head_buffers.by_weight = WeakIdKeyDictionary()
    buffers = kept.setdefault(weight, {})
    buffer = buffers.get(purpose)
    if buffer is None or buffer.dtype != dtype or buffer.shape != weight.shape:
        buffer = buffers[purpose] = torch.empty(weight.shape, dtype=dtype, device=weight.device)
    return buffer


def _head_weight_in(weight, dtype) -> torch.Tensor:
    """``weight`` in ``dtype``: itself, or its values copied into a kept buffer (a trained fp32 head under
    bf16 autocast changes every optimizer step, so the copy is refreshed on every call)."""
    if weight.dtype == dtype:
        return weight.detach()
    return _head_buffer(weight, "weight", dtype).copy_(weight.detach())


@functools.cache
def _head_cross_entropy():
    """The LM head and cross-entropy of a batch's loss positions as one autograd node that computes
    its gradients in forward: d(loss)/d(logits) = softmax - one-hot is formed in place on the fp32
    logits and multiplied by the head at once, so only (positions x hidden) is kept [and, when the head
    trains, its (vocab x hidden) gradient: summed over the slices in place for an fp32 head; in bf16 (a
    trained fp32 head under bf16 autocast computes in bf16, `_head_compute_dtype`) one matmul over every
    slice's softmax - one-hot at the end, as the stock autocast path computes it; a tied embedding's rows
    are added into it after backward: training/tied_embedding.py]. Stock cross-entropy keeps the
    log-softmax for backward, fills a zero gradient of the same (positions x vocab) size and runs a
    log-softmax backward pass over it (~60 ms a LoRA step on smollm2-135m, docs/performance.md).

    The positions go through in slices of `HEAD_SLICE` rows that reuse one pair of (slice x vocab)
    buffers, bf16 and fp32, written in place: whole-batch logits with their fp32 copy and log-sum-exp
    temporaries were ~300 MB of fresh memory per micro-batch, which the C allocator maps from the
    kernel and faults in page by page every time (60k page faults and 155 ms for 416 positions of
    smollm2-135m, against 1k and 95 ms in slices; full fine-tuning 126k -> 37k faults per step;
    docs/performance.md). Without gradients (evaluation) the same slices give the loss alone."""

    class HeadCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, targets, autocast):
            compute = _head_compute_dtype(hidden, weight, autocast)
            h, w = hidden.to(compute), _head_weight_in(weight, compute)
            valid = (targets != IGNORE).unsqueeze(1)
            safe = targets.clamp(min=0).unsqueeze(1)
            need_hidden, need_weight, _, _ = ctx.needs_input_grad
            rows = min(HEAD_SLICE, h.size(0))
            same = compute == torch.float32  # an fp32 head: one buffer, no copies
            # A trained head in low precision keeps every slice's (softmax - one-hot) for one weight-gradient
            # matmul at the end (what autocast's stock path computes, and a taller, faster matmul than one per slice).
            whole = need_weight and not same
            logits = torch.empty(h.size(0) if whole else rows, w.size(0), dtype=compute, device=h.device)
            logits32 = logits if same else torch.empty(rows, w.size(0), dtype=torch.float32, device=h.device)
            grad_hidden = torch.empty_like(h) if need_hidden else None
            # a trained fp32 head's gradient, summed over the slices in place
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight and same else None
            loss = torch.zeros((), dtype=torch.float32, device=h.device)
            for start in range(0, h.size(0), HEAD_SLICE):
                end = min(start + HEAD_SLICE, h.size(0))
                part = logits[start:end] if whole else logits[: end - start]
                part32 = part if same else logits32[: end - start]
                torch.mm(h[start:end], w.t(), out=part)
                if not same:
                    part32.copy_(part)
                top = part32.amax(1, keepdim=True)
                target_logit = part32.gather(1, safe[start:end])
                norm = part32.sub_(top).exp_().sum(1, keepdim=True)  # exp(logit - max), in place
                keep = valid[start:end].to(torch.float32)
                loss += ((norm.log() + top - target_logit) * keep).sum()
                if need_hidden or need_weight:  # (softmax - one-hot), zero on ignored rows, in the compute dtype
                    part32.mul_(keep / norm).scatter_add_(1, safe[start:end], -keep)
                    if not same:
                        part.copy_(part32)
                    if need_hidden:
                        torch.mm(part, w, out=grad_hidden[start:end])
                    if need_weight and same:
                        grad_weight.addmm_(part.t(), h[start:end])
            if whole:  # into a kept buffer when a cast to the weight's dtype follows (else autograd keeps it)
                kept = _head_buffer(weight, "grad", compute) if weight.dtype != compute else None
                grad_weight = torch.mm(logits.t(), h, out=kept) if kept is not None else torch.mm(logits.t(), h)
            ctx.save_for_backward(None if grad_hidden is None else grad_hidden.to(hidden.dtype),
                                  None if grad_weight is None else grad_weight.to(weight.dtype))
            return loss

        @staticmethod
        def backward(ctx, grad_loss):
            # scaled in place: the node's gradients are formed once, for the one backward pass they serve
            grad_hidden, grad_weight = ctx.saved_tensors
            return (None if grad_hidden is None else grad_hidden.mul_(grad_loss.to(grad_hidden.dtype)),
                    None if grad_weight is None else grad_weight.mul_(grad_loss.to(grad_weight.dtype)), None, None)

    return HeadCrossEntropy


def chunked_lm_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                        autocast: "torch.dtype | None" = None) -> torch.Tensor:
    """Sum of cross-entropy over positions without ever materialising (positions x vocab) logits: one
    autograd node (`_head_cross_entropy`) forms them `HEAD_SLICE` rows at a time and, while training,
    the gradients with them. The positions are padded with ignored rows to a multiple of
    `HEAD_MULTIPLE`, so the last slice comes in few shapes. ``autocast``: the dtype the model's forward
    ran under autocast in, if any (the head computes in it, see `_head_compute_dtype`)."""
    if hidden.size(0) == 0:
        return hidden.new_zeros((), dtype=torch.float32)
    extra = -hidden.size(0) % HEAD_MULTIPLE
    if extra:
        hidden, targets = F.pad(hidden, (0, 0, 0, extra)), F.pad(targets, (0, extra), value=IGNORE)
    return _head_cross_entropy().apply(hidden, weight, targets, autocast)


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
        with _hidden_states_as_logits(head):
            outputs = model(**inputs)
        hidden = outputs.logits[:, :-1][keep]  # (N, H): only positions that carry loss
        loss_sum = chunked_lm_loss_sum(hidden, head.weight, targets[keep], _head_switch.autocast)
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
