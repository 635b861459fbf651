"""Where a training step's time goes: a few tunelab SFT steps under torch.profiler, grouped by kind of work.

  python bench/profile_step.py [--precision auto] [--base-dtype auto] [--steps 3] [--warmup 2] [--method lora]
                               [--threads N]

The steps run through `tunelab.train` itself (the Trainer, the stage's packed data and chunked loss,
the method as the engine applies it) on the same model and data as bench/train_throughput.py:
smollm2-135m, LoRA r=16 alpha=32 on all linear layers (`--method` picks another method with its
default options), the first 128 instruction examples of data/instruct/, packed rows of 512, one
row per micro-batch x 2 accumulated. The first `--warmup` optimizer steps run unprofiled; the next
`--steps` run under the profiler (CPU activities, input shapes and matmul FLOPs recorded).

Printed: the machine line and load average, the self time of every profiled op summed per group
(below), the top-15 ops by self time, and throughput of the profiled steps:
  groups   matmuls (the frozen/base linear layers and the LM head: mm/addmm/bmm/linear);
           LoRA (matmuls with the LoRA rank as one of their sizes); attention (SDPA and its
           backward, or the ops under the explicit matmul attention); loss (log-softmax, NLL);
           norms/activations/elementwise (RMSNorm, SiLU, rotary, residual adds, LoRA's
           scale-and-add); casts/copies/fills (dtype casts, .contiguous,
           cat, gathers, zero-fills); optimizer (AdamW and grad clipping, under Optimizer.step or
           _foreach_*); data (ops under the collator); framework (autograd-node and annotation self
           time); untraced (wall time no op accounts for: Python, the Trainer, the profiler itself)
  GFLOP/s  useful: 4 FLOPs per frozen linear weight per real token (LM head: per loss position), as
           bench/train_throughput.py counts them; matmul kernels: the profiler's FLOP count of every
           matmul over the matmuls' own self time; each against the best square-matmul FLOP/s
           measured here per dtype (bench/_common.py's matmul_peak_flops)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import matmul_peak_flops, scratch_dir  # noqa: E402  (the same peaks)
from train_throughput import _messages, _rows, linear_weights  # noqa: E402  (the same data)
from transformers import TrainerCallback  # noqa: E402

GROUPS = ["matmuls", "LoRA matmuls", "attention", "loss", "norms/activations/elementwise", "casts/copies/fills",
          "optimizer", "data", "framework", "other", "untraced"]
MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm", "aten::addmv",
           "aten::mv", "aten::dot"}
COPIES = re.compile(r"^aten::(copy_|_to_copy|to|clone|contiguous|cat|stack|index|index_select|index_put_|"
                    r"_index_put_impl_|masked_select|masked_fill_?|embedding|fill_|zero_|zeros|zeros_like|full|"
                    r"empty_like|new_zeros|_unsafe_index|gather|scatter_add_|embedding_dense_backward|"
                    r"resolve_conj|lift_fresh|as_strided_scatter|slice_backward|select_backward)$")
ATTENTION = re.compile(r"scaled_dot_product|flash_attention|efficient_attention|CausalAttention")
LOSS = re.compile(r"log_softmax|nll_loss|cross_entropy")


def _group(event, ancestors: list[str], rank: int | None) -> str:
    name = event.name
    if name == "data.collate" or "data.collate" in ancestors:  # the collator's Python time, and its ops
        return "data"
    if name.startswith("aten::_foreach_") or any(a.startswith("Optimizer.") for a in ancestors):
        return "optimizer"
    if name.startswith(("autograd::", "Optimizer.")) or re.search(r"Backward\d*$", name):
        return "framework"
    if ATTENTION.search(name) or any(ATTENTION.search(a) for a in ancestors):  # the explicit path's bmm/softmax too
        return "attention"
    if LOSS.search(name):
        return "loss"
    if name in MATMULS:
        dims = {d for shape in (event.input_shapes or []) for d in (shape or [])}
        return "LoRA matmuls" if rank is not None and rank in dims else "matmuls"
    if COPIES.match(name):
        return "casts/copies/fills"
    if name.startswith("aten::"):
        return "norms/activations/elementwise"
    return "other"


def summarise(events, rank: int | None) -> tuple[dict, dict, float]:
    """(group -> self µs, op name -> [calls, self µs, group], matmul FLOPs) over the profiled events."""
    groups, ops, flops = defaultdict(float), {}, 0.0
    for event in events:
        ancestors, parent = [], event.cpu_parent
        while parent is not None:
            ancestors.append(parent.name)
            parent = parent.cpu_parent
        group = _group(event, ancestors, rank)
        groups[group] += event.self_cpu_time_total
        op = ops.setdefault(event.name, [0, 0.0, group])
        op[0], op[1] = op[0] + 1, op[1] + event.self_cpu_time_total
        if group in ("matmuls", "LoRA matmuls"):
            flops += getattr(event, "flops", 0) or 0
    return groups, ops, flops


class ProfileWindow(TrainerCallback):
    """Optimizer steps [warmup, warmup + steps) run under torch.profiler; every
    collated micro-batch's real and loss tokens are recorded, in order, to count the window's tokens."""

    def __init__(self, warmup: int, steps: int, pad_id: int):
        self.warmup, self.steps, self.pad_id = warmup, steps, pad_id
        self.batches: list[tuple[int, int]] = []  # (real tokens, loss positions) per micro-batch
        self.step_seconds: list[float] = []
        self.profiler = None
        self.window_seconds = 0.0

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        import torch

        # accelerate wraps the Trainer's DataLoader; the batches come from the wrapped one's collate_fn.
        loader = getattr(train_dataloader, "base_dataloader", train_dataloader)
        if loader is None or getattr(loader, "_profiled", False):
            return
        collate = loader.collate_fn

        def counted(examples):
            with torch.profiler.record_function("data.collate"):
                batch = collate(examples)
            from tunelab.training.trainer import _packed_real_tokens

            real = (_packed_real_tokens(batch["input_ids"], batch["position_ids"], self.pad_id)
                    if "position_ids" in batch else int(batch["attention_mask"].sum()))
            self.batches.append((real, int((batch["labels"][:, 1:] != -100).sum())))
            return batch

        loader.collate_fn = counted
        loader._profiled = True

    def on_step_begin(self, args, state, control, **kwargs):
        import torch

        self.started = time.perf_counter()
        if state.global_step == self.warmup:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                   record_shapes=True, with_flops=True)
            self.profiler.start()
            self.window_started = self.started

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.step_seconds.append(now - self.started)
        if state.global_step == self.warmup + self.steps and self.profiler is not None:
            self.profiler.stop()
            self.window_seconds = now - self.window_started


def _config(args, data: Path, out: Path) -> tuple[dict, list[str]]:
    method = ({"name": "lora", "r": args.rank, "alpha": 2 * args.rank, "target_modules": "all-linear"}
              if args.method == "lora" else {"name": args.method})
    config = {
        "name": "profile", "model": args.model, "stage": "sft", "method": method,
        "data": {"train": str(data), "eval_fraction": 0.0},
        "train": {"max_steps": args.warmup + args.steps, "batch_size": args.rows, "grad_accum": args.accum,
                  "max_length": args.max_length, "save_steps": 0, "logging_steps": 1, "eval_before": False,
                  "precision": args.precision},
        "output_dir": str(out),
    }
    # Only when asked: a tree without train.base_dtype (the "before" profile) still runs.
    overrides = [f"train.base_dtype={args.base_dtype}"] if args.base_dtype else []
    return config, overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--base-dtype", default=None, choices=["auto", "bf16", "fp32"],
                        help="train.base_dtype (default: tunelab's default)")
    parser.add_argument("--model", default="smollm2-135m", help="tiny-llama: a quick check of the script")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (method lora)")
    parser.add_argument("--steps", type=int, default=3, help="profiled optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="unprofiled optimizer steps first")
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rows", type=int, default=1, help="packed rows per micro-batch")
    parser.add_argument("--accum", type=int, default=2, help="micro-batches per optimizer step")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); 1 keeps figures steady on a machine shared with "
                             "other jobs, where 2 threads stall on each other at every op")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import tunelab
    from tunelab.core.machine import machine_line
    from tunelab.models import load_tokenizer, resolve

    load_before = os.getloadavg()
    work = scratch_dir("profile-step-")
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in _messages(_rows(args.examples))))
    window = ProfileWindow(args.warmup, args.steps, load_tokenizer(args.model).pad_token_id)
    config, overrides = _config(args, data, work / "runs")
    run_dir = tunelab.train(config, overrides, quiet=True, callbacks=[window])
    summary = json.loads((run_dir / "summary.json").read_text())
    if window.profiler is None or not window.window_seconds or len(window.batches) < (args.warmup + args.steps) * args.accum:
        sys.exit(f"the run ended after {summary['steps']} steps, before the profiled window closed "
                 f"(fewer packed rows than {args.warmup + args.steps} steps need?)")

    rank = args.rank if args.method == "lora" else None
    events = window.profiler.events()
    groups, ops, matmul_flops = summarise(events, rank)
    traced = sum(groups.values())
    groups["untraced"] = max(0.0, window.window_seconds * 1e6 - traced)
    micro = [window.batches[i] for i in range(args.warmup * args.accum, (args.warmup + args.steps) * args.accum)]
    real, loss_positions = sum(b[0] for b in micro), sum(b[1] for b in micro)
    body, head = linear_weights(resolve(args.model))
    useful_flops = 4 * (body * real + head * loss_positions)
    peaks = {name: matmul_peak_flops(name) for name in ("bfloat16", "float32")}
    load_after = os.getloadavg()

    wall = window.window_seconds
    matmul_seconds = (groups["matmuls"] + groups["LoRA matmuls"]) / 1e6
    unprofiled = window.step_seconds[1:args.warmup] or window.step_seconds[:args.warmup]
    unprofiled_step = sum(unprofiled) / len(unprofiled)
    print(f"machine: {machine_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after (shared with other jobs)")
    print(f"run: sft {args.method} on {args.model}, precision {summary['precision']}, "
          f"base dtype {summary.get('base_dtype', 'fp32')}; {args.steps} profiled steps after {args.warmup} warm-up; "
          f"{real} real tokens, {loss_positions} loss positions; peak RSS {summary['peak_rss_mb']:.0f} MB")
    print(f"profiled window {wall:.2f} s ({wall / args.steps:.2f} s/step; unprofiled warm step "
          f"{unprofiled_step:.2f} s)")
    print(f"\n{'group':<32} {'self s':>8} {'share':>7}")
    for name in GROUPS:
        if groups.get(name):
            print(f"{name:<32} {groups[name] / 1e6:>8.2f} {groups[name] / 1e6 / wall:>7.1%}")
    print(f"\n{'top-15 ops by self time':<48} {'calls':>7} {'self s':>8} {'share':>7}  group")
    for name, (calls, self_us, group) in sorted(ops.items(), key=lambda item: -item[1][1])[:15]:
        print(f"{name[:48]:<48} {calls:>7} {self_us / 1e6:>8.2f} {self_us / 1e6 / wall:>7.1%}  {group}")
    useful = useful_flops / wall
    kernels = matmul_flops / matmul_seconds if matmul_seconds else 0.0
    print(f"\nsquare-matmul peak here: bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s, fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s")
    print(f"useful FLOP/s (profiled): {useful / 1e9:.1f} GFLOP/s = {useful / peaks['bfloat16']:.1%} of bf16 peak, "
          f"{useful / peaks['float32']:.1%} of fp32 peak; unprofiled warm step: "
          f"{useful_flops / args.steps / unprofiled_step / 1e9:.1f} GFLOP/s (at the window's tokens per step)")
    print(f"matmul kernels: {matmul_flops / 1e9:.0f} GFLOP in {matmul_seconds:.2f} s = {kernels / 1e9:.1f} GFLOP/s "
          f"while they run ({kernels / peaks['float32']:.1%} of fp32 peak, {kernels / peaks['bfloat16']:.1%} of bf16)")
    result = {"precision": summary["precision"], "base_dtype": summary.get("base_dtype", "fp32"),
              "method": args.method, "window_s": wall, "unprofiled_step_s": unprofiled_step,
              "groups_s": {k: v / 1e6 for k, v in groups.items()}, "real_tokens": real,
              "loss_positions": loss_positions, "useful_gflops": useful / 1e9, "kernel_gflops": kernels / 1e9,
              "peaks_gflops": {k: v / 1e9 for k, v in peaks.items()}, "peak_rss_mb": summary["peak_rss_mb"],
              "load": [load_before[0], load_after[0]]}
    print("RESULT " + json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
