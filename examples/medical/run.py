"""A medical assistant, two ways to find out what works: PubMedQA (yes/no/maybe) and MedQuAD (Q -> A).

Builds the retrieval indexes (PubMed abstracts; MedQuAD answers) with `tunelab rag index`'s
library call — incremental, so a second run embeds nothing — then runs `tunelab compare` on
pubmedqa.yaml and medquad.yaml, prints both tables, and checks the quality bars.

    python examples/medical/run.py            # fast profile (tens of minutes on 2 CPU cores)
    python examples/medical/run.py --full     # all training rows and test rows (hours on 2 cores)
    python examples/medical/run.py --smoke    # tiny random models, a few rows: checks the path runs
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
INDEXES = {  # name: (documents, text field, id field)
    "pubmedqa-index": (["data/medical/pubmedqa_abstracts.jsonl"], "text", "pmid"),
    "medquad-index": (["data/medical/medquad_train.jsonl", "data/medical/medquad_test.jsonl"], "answer", "id"),
}
SMOKE_MODELS = {"minilm-l6": "tiny-bert", "smollm2-135m": "tiny-llama"}


def apply_profile(spec: dict, profile: str, out: Path) -> dict:
    spec["output_dir"] = str(out / spec["name"])
    for approach in spec["approaches"]:
        if approach.get("kind") == "rag":
            approach["index"] = str(out / Path(approach["index"]).name)
    if profile == "full":
        spec["data"]["test_rows"] = None
        spec["defaults"].setdefault("data", {})["max_rows"] = None
        for approach in spec["approaches"]:
            for step in [approach, approach.get("then") or {}]:
                step.get("data", {}).pop("max_rows", None)
    elif profile == "smoke":
        spec["data"]["test_rows"] = 6
        spec["generate"] = min(spec.get("generate", 0), 2)
        if "forgetting" in spec:
            spec["forgetting"]["max_rows"] = 2
        spec["defaults"].setdefault("data", {})["max_rows"] = 16
        spec["defaults"].setdefault("train", {}).update(max_steps=2, batch_size=4, max_length=64)
        if "model" in spec["defaults"]:
            spec["defaults"]["model"] = SMOKE_MODELS[spec["defaults"]["model"]]
        for approach in spec["approaches"]:
            if "model" in approach:
                approach["model"] = SMOKE_MODELS.get(approach["model"], approach["model"])
            for step in [approach, approach.get("then") or {}]:
                if isinstance(step.get("train"), dict):
                    for key in ("epochs", "batch_size"):
                        step["train"].pop(key, None)
                if isinstance(step.get("data"), dict) and "max_rows" in step["data"]:
                    step["data"]["max_rows"] = 16
            if approach.get("kind") in ("zeroshot", "icl", "rag"):
                approach["max_length"] = 48
    return spec


def bars(pubmedqa: dict, medquad: dict) -> list[str]:
    """The issue's quality bars, as measured (a line each; a miss says so)."""
    out = []
    rows = {r["name"]: r for r in pubmedqa["rows"]}
    majority = rows["majority"]["tests"]["pubmedqa"]["metrics"]["accuracy"]
    best = max((r for r in pubmedqa["rows"] if r["name"] != "majority"),
               key=lambda r: r["tests"]["pubmedqa"]["metrics"]["accuracy"])
    gain = 100 * (best["tests"]["pubmedqa"]["metrics"]["accuracy"] - majority)
    out.append(f"PubMedQA: best {best['name']} accuracy {best['tests']['pubmedqa']['metrics']['accuracy']:.3f} vs "
               f"majority {majority:.3f}: {gain:+.1f} points ({'met' if gain >= 5 else 'MISSED'}: >= +5)")
    rows = {r["name"]: r for r in medquad["rows"]}
    rag = rows.get("rag-3")
    if rag:
        recall = next((v for k, v in rag["tests"]["medquad"]["metrics"].items() if k.startswith("recall_at_")), None)
        if recall is not None:
            out.append(f"MedQuAD retrieval: recall@3 {recall:.3f} (bar: recall@5 >= 0.80; bench/retrieval_medquad.py measures @5)")
    base = rows["zero-shot"]["tests"]["medquad"]["value"]
    for name in ("sft-lora", "sft-full", "pretrain-sft"):
        if name in rows:
            ppl = rows[name]["tests"]["medquad"]["value"]
            drop = 100 * (1 - ppl / base)
            out.append(f"MedQuAD {name}: answer perplexity {ppl:.2f} vs base {base:.2f}: {drop:.0f}% lower "
                       f"({'met' if drop >= 20 else 'MISSED'}: >= 20%)")
    lora, full = (rows.get(n, {}).get("general_perplexity_change") for n in ("sft-lora", "sft-full"))
    if lora is not None and full is not None:
        ok = full > 0 and lora <= full / 2
        out.append(f"Forgetting: general-text perplexity LoRA {100 * lora:+.1f}%, full {100 * full:+.1f}% "
                   f"({'met' if ok else 'MISSED'}: LoRA's rise <= half of full's)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="All rows (hours on 2 CPU cores).")
    parser.add_argument("--smoke", action="store_true", help="Tiny random models, a few rows (numbers mean nothing).")
    parser.add_argument("--output-dir", default="runs/medical", help="Where indexes, runs and reports go.")
    parser.add_argument("--only", default="pubmedqa,medquad", help="Which comparisons to run (default: both).")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.full and args.smoke:
        parser.error("--full and --smoke exclude each other")
    os.chdir(REPO)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import tunelab
    from tunelab import TunelabError
    from tunelab.comparison import format_table
    from tunelab.retrieval.index import build_index

    profile = "full" if args.full else "smoke" if args.smoke else "fast"
    out = Path(args.output_dir)
    wanted = [name.strip() for name in args.only.split(",") if name.strip()]
    results = {}
    try:
        for name, (docs, field, id_field) in INDEXES.items():
            if name.split("-")[0] in wanted:
                embedder = "tiny-bert" if profile == "smoke" else "minilm-l6"
                stats = build_index(docs, out / name, text_field=field, id_field=id_field, embedder=embedder)
                print(f"index {out / name}: {json.dumps(stats)}", file=sys.stderr)
        for name in wanted:
            spec = apply_profile(yaml.safe_load((HERE / f"{name}.yaml").read_text()), profile, out)
            results[name] = tunelab.compare(spec, verbose=args.verbose)
            print(format_table(results[name]) + "\n")
    except TunelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if set(results) == {"pubmedqa", "medquad"}:
        lines = bars(results["pubmedqa"], results["medquad"])
        print("Quality bars:\n" + "\n".join(f"- {line}" for line in lines))
        (out / "bars.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
