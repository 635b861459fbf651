"""Aggregate generation throughput of the serve engine: 1 request vs N concurrent, and N mixed over
the base and two LoRA adapters attached to it (one shared forward per step).

  python bench/engine_throughput.py [--model smollm2-135m] [--concurrent 8] [--tokens 64]

Two quick LoRA sft runs on data/instruct/dolly_subset.jsonl (max_steps 5, seeds 1 and 2) are
trained once into --work (reused when present). Every request is greedy and generates exactly max_tokens
(``ignore_eos``) for a different dolly instruction; tokens/s = all completion tokens / wall time from the first submit to
the last result, model loading excluded. Issue 15's targets: N concurrent >= 3x the tokens/s of 1;
mixing adapters costs <= 20% against N on the bare base.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from serve_throughput import DOLLY, lora_run  # the same two quick LoRA runs as the HTTP benchmark


def run(engine, registry, models: list[str], prompts: list[str], tokens: int) -> tuple[float, int]:
    from tunelab.serve.engine import Sampling

    ids = [registry.chat_prompt(m, [{"role": "user", "content": p}]) for m, p in zip(models, prompts)]
    start = time.perf_counter()
    requests = [engine.submit(m, i, Sampling(max_tokens=tokens, temperature=0.0, ignore_eos=True)) for m, i in zip(models, ids)]
    done = sum(r.result(timeout=1800)[2] for r in requests)
    return done / (time.perf_counter() - start), done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-engine"))
    args = parser.parse_args()

    import torch

    from tunelab.core.machine import describe_machine, machine_line
    from tunelab.serve.engine import Engine
    from tunelab.serve.registry import Registry

    a, b = (lora_run(args.model, args.work, f"lora-{s}", s) for s in (1, 2))
    registry = Registry([a, b])
    prompts = [json.loads(line)["instruction"] for line in DOLLY.read_text().splitlines()[: args.concurrent + 1]]
    n = args.concurrent
    with Engine(registry, max_batch_size=max(16, n)) as engine:
        run(engine, registry, [args.model] * 2, prompts[:2], 4)  # warm-up: first forwards allocate
        one, _ = run(engine, registry, [args.model], prompts[:1], args.tokens)
        base, base_tokens = run(engine, registry, [args.model] * n, prompts[1 : n + 1], args.tokens)
        names = [args.model, "lora-1", "lora-2"]
        mixed, mixed_tokens = run(engine, registry, [names[i % 3] for i in range(n)], prompts[1 : n + 1], args.tokens)

    print(f"engine throughput, {args.model}, greedy, max_tokens {args.tokens}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    machine = describe_machine()
    print(f"machine: {machine_line(machine)}")
    print(f"  1 request:                       {one:7.1f} tokens/s")
    print(f"  {n} concurrent, bare base:        {base:7.1f} tokens/s ({base / one:.2f}x of 1; target >= 3x)"
          f"  [{base_tokens} tokens]")
    print(f"  {n} concurrent, base + 2 LoRA:    {mixed:7.1f} tokens/s ({100 * (1 - mixed / base):+.0f}% cost vs "
          f"bare base; target <= 20%)  [{mixed_tokens} tokens]")


if __name__ == "__main__":
    main()
