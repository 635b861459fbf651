"""Greedy generation speed of llama.cpp on tunelab's GGUF export (F16, Q8_0) next to tunelab's own generation.

  python bench/gguf_generation.py [--model smollm2-135m] [--tokens 64] [--prompts 3] [--work DIR]

The bundled model (no fine-tuning: the export of a merged run writes the same kind of file) is written
as F16 and Q8_0 GGUF with tunelab.export.gguf.write_model, then every path generates exactly --tokens
greedy tokens for the same chat-templated dolly instructions, never stopping at EOS:

  - llama.cpp (llama-cpp-python), F16 and Q8_0 GGUF, ``Llama.generate`` with top_k=1;
  - tunelab generate: the ``model.generate`` call of tunelab.inference.generate (``tunelab generate``,
    ``Loaded.generate``), with min_new_tokens so it cannot stop early;
  - tunelab serve engine, one request (Sampling(temperature=0, ignore_eos=True)).

tokens/s = generated tokens / wall time including the prompt's prefill, model loading excluded; each
path runs the prompts once to warm up, then --repeat times, and the best round is kept. Every path uses
the same number of threads (torch's). "same tokens" compares each path's tokens with tunelab generate's.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DOLLY = Path(__file__).resolve().parents[1] / "data" / "instruct" / "dolly_subset.jsonl"


def timed(generate, prompts: list[list[int]], repeat: int) -> tuple[float, list[list[int]]]:
    generate(prompts[0])  # warm-up: first-call allocations, thread pools
    best, outputs = 0.0, []
    for _ in range(repeat):
        start = time.perf_counter()
        outputs = [generate(ids) for ids in prompts]
        best = max(best, sum(map(len, outputs)) / (time.perf_counter() - start))
    return best, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-gguf"))
    args = parser.parse_args()

    from tunelab.core.machine import machine_line

    print(f"machine: {machine_line()}", flush=True)

    import llama_cpp
    import torch

    from tunelab.export.gguf import write_model
    from tunelab.runs.open import load
    from tunelab.serve.engine import Engine, Sampling
    from tunelab.serve.registry import Registry

    threads = torch.get_num_threads()
    loaded = load(args.model)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    args.work.mkdir(parents=True, exist_ok=True)
    files = {}
    for quant in ("f16", "q8_0"):
        files[quant] = args.work / f"{args.model}-{quant}.gguf"
        if not files[quant].exists():
            write_model(model, tokenizer, files[quant], quant, args.model, f"bench: model {args.model}")
    instructions = [json.loads(line)["instruction"] for line in DOLLY.read_text().splitlines()[: args.prompts]]
    prompts = [list(tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                  tokenize=True, return_dict=False)) for text in instructions]
    n = args.tokens
    rows = {}

    def hf_generate(ids: list[int]) -> list[int]:
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        return out[0, len(ids):].tolist()

    rows["tunelab generate (transformers)"] = timed(hf_generate, prompts, args.repeat)
    with Engine(Registry(base=args.model)) as engine:
        served = engine.registry.models()[0].id

        def engine_generate(ids: list[int]) -> list[int]:
            request = engine.submit(served, ids, Sampling(max_tokens=n, temperature=0.0, ignore_eos=True))
            request.result(timeout=1800)
            return request.token_ids

        rows["tunelab serve engine, 1 request"] = timed(engine_generate, prompts, args.repeat)
    for quant, path in files.items():
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=threads, n_batch=512, verbose=False)

        def cpp_generate(ids: list[int]) -> list[int]:
            out = []
            for token in llm.generate(ids, top_k=1, temp=0.0, reset=True):
                out.append(token)
                if len(out) == n:
                    return out
            return out

        rows[f"llama.cpp {quant.upper()} GGUF ({path.stat().st_size / 2**20:.0f} MiB)"] = timed(cpp_generate, prompts, args.repeat)
        llm.close()

    reference = rows["tunelab generate (transformers)"][1]
    print(f"{args.model}: {len(prompts)} prompts x {n} greedy tokens, {threads} threads "
          f"(tokens/s incl. prefill, best of {args.repeat})")
    for label, (speed, outputs) in rows.items():
        same = sum(a == b for a, b in zip(outputs, reference))
        print(f"  {label:<40} {speed:7.1f} tokens/s   same tokens as tunelab generate: {same}/{len(prompts)} prompts")


if __name__ == "__main__":
    main()
