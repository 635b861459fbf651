"""Classification throughput of an ONNX export under onnxruntime vs the same run in PyTorch.

  python bench/onnx_throughput.py [--run RUN] [--file data/spam/sms_test.jsonl] [--batch-size 16]

Without --run a short LoRA classify run on the bundled `minilm-l6` (the spam filter of
examples/spam-shift, 30 steps on data/spam/sms_train_200.jsonl) is trained into --work, reused when
present; the run is exported with `tunelab export --format onnx`. All four paths classify every row
of the test file, batches of --batch-size sorted by length (tunelab's order), one warm-up batch first:
  tunelab     tunelab's own prediction path (`tunelab eval`): tokenizer + the model as `tunelab.load` gives it
  torch       plain PyTorch: the merged model's forward under torch.inference_mode on pre-tokenised batches
  ort         onnxruntime on the same pre-tokenised batches
  ort+tok     onnxruntime with the export's tokenizer.json (tokenizers only): what a deployment runs
examples/s = rows / wall time of the loop; model loading excluded.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def quick_run(work: Path) -> Path:
    import tunelab

    run = work / "runs" / "onnx-bench-minilm-lora"
    if (run / "summary.json").is_file():
        return run
    return tunelab.train({
        "name": run.name, "model": "minilm-l6",
        "stage": {"name": "classify", "head": "linear", "pooling": "mean", "class_weights": "auto"},
        "method": {"name": "lora", "r": 8, "alpha": 16},
        "data": {"train": str(REPO / "data/spam/sms_train_200.jsonl"), "eval_fraction": 0.0},
        "train": {"max_steps": 30, "lr": 2e-3, "batch_size": 16, "max_length": 48, "precision": "fp32",
                  "save_steps": 0, "eval_before": False},
        "output_dir": str(work / "runs")}, quiet=True)


def timed(fn, batches, warm_up=None) -> float:
    fn(batches[0] if warm_up is None else warm_up)  # first calls allocate and pick kernels
    start = time.perf_counter()
    for batch in batches:
        fn(batch)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="A finished classify run (default: train the quick minilm run).")
    parser.add_argument("--file", type=Path, default=REPO / "data/spam/sms_test.jsonl")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rows", type=int, help="Only the first N rows of --file (default: all).")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tunelab-bench-onnx"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from tunelab.core.machine import describe_machine, machine_line

    print(f"machine: {machine_line(describe_machine())}", flush=True)

    import numpy as np
    import onnxruntime
    import torch

    import tunelab
    from tunelab.data.collate import pad_right
    from tunelab.export import export_run
    from tunelab.export.onnx_export import OnnxClassifier, encode_batch
    from tunelab.inference.classify import encode_texts, predict_proba
    from tunelab.methods import METHODS

    run = args.run or quick_run(args.work)
    out = args.work / f"onnx-{run.name}"
    if not (out / "model.onnx").is_file():
        export_run(run, "onnx", out)
    texts = [json.loads(line)["text"] for line in args.file.read_text().splitlines() if line.strip()][: args.rows]
    loaded = tunelab.load(run)
    max_length, bs = loaded.config.train.max_length, args.batch_size
    merge = getattr(METHODS[loaded.config.method.name], "merge", None)
    plain = merge(tunelab.load(run).model).eval() if merge else loaded.model  # a second copy: merging changes it
    onnx = OnnxClassifier(out)

    encoded = encode_texts(loaded.tokenizer, texts, max_length)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    chunks = [order[s : s + bs] for s in range(0, len(order), bs)]
    tensors = [pad_right([encoded[i] for i in chunk], loaded.tokenizer.pad_token_id) for chunk in chunks]
    feeds = [{"input_ids": ids.numpy(), "attention_mask": mask.numpy()} for ids, mask in tensors]
    by_text = [[texts[i] for i in chunk] for chunk in chunks]

    def torch_forward(batch):
        with torch.inference_mode():
            return plain(input_ids=batch[0], attention_mask=batch[1]).logits.softmax(-1)

    seconds = {
        "tunelab": timed(lambda part: predict_proba(loaded.model, loaded.tokenizer, part, max_length, bs), [texts], texts[:bs]),
        "torch": timed(torch_forward, tensors),
        "ort": timed(lambda feed: onnx.session.run(["probabilities"], feed), feeds),
        "ort+tok": timed(lambda part: onnx.session.run(["probabilities"], encode_batch(onnx.tokenizer, part)), by_text),
    }
    gap = np.abs(onnx.predict_proba(texts, bs) - predict_proba(loaded.model, loaded.tokenizer, texts, max_length, bs).numpy())
    print(f"run {run} ({loaded.config.model}, {loaded.config.method.name}), {args.file.name}: {len(texts)} rows, "
          f"batch {bs}, max_length {max_length}; torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"onnxruntime {onnxruntime.__version__} (default threads); max |P_ort - P_tunelab| = {gap.max():.1e}")
    for name, s in seconds.items():
        print(f"{name:<8} {len(texts) / s:9.1f} examples/s  ({s:.2f} s)")
    print(f"ratio: onnxruntime / plain PyTorch forward {seconds['torch'] / seconds['ort']:.2f}x; "
          f"onnxruntime+tokenizers / tunelab's eval path {seconds['tunelab'] / seconds['ort+tok']:.2f}x")


if __name__ == "__main__":
    main()
