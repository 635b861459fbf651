"""sft -> reward -> rlhf on smollm2-135m, and dpo, on the HH-RLHF subset in data/preference/.

    python examples/rlhf/run.py            # from the repository root; each step is `tunelab train`

Writes runs/rlhf-example/ and prints the numbers the README reports. Sized for 2 CPU cores.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

from tunelab.stages._pairs import prompt_messages

HERE = Path(__file__).parent
OUT = Path("runs/rlhf-example")
TRAIN, EVAL = Path("data/preference/hh_helpful_train.jsonl"), Path("data/preference/hh_helpful_eval.jsonl")
EVAL_PROMPTS = 48  # held-out prompts for the rlhf before/after comparison


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def train(config: str) -> dict:
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "tunelab", "train", str(HERE / config), "--overwrite", "--quiet"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{config} failed:\n{proc.stderr[-3000:]}")
    run = Path(proc.stdout.strip().splitlines()[-1])
    summary = json.loads((run / "summary.json").read_text())
    print(f"{config}: {time.time() - started:.0f}s, {summary['steps']} steps -> {run}", flush=True)
    return summary["metrics"]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    # SFT data: each train pair's prompt as chat turns + its chosen response.
    _write(OUT / "sft_data.jsonl", [{"messages": prompt_messages(r["prompt"]) + [{"role": "assistant", "content": r["chosen"].strip()}]}
                                    for r in _rows(TRAIN)])
    _write(OUT / "eval_prompts.jsonl", _rows(EVAL)[:EVAL_PROMPTS])
    results = {"sft": train("sft.yaml"), "reward": train("reward.yaml"), "rlhf": train("rlhf.yaml"), "dpo": train("dpo.yaml")}
    r, rl, d = results["reward"], results["rlhf"], results["dpo"]
    print(f"reward model pairwise accuracy (held-out, {r.get('eval_accuracy'):.3f}), mean margin {r.get('eval_margin'):.3f}")
    print(f"rlhf mean held-out reward: before {rl.get('eval_ref_reward'):.3f} -> after {rl.get('eval_reward'):.3f}; "
          f"KL to reference {rl.get('eval_kl'):.3f}; win rate vs reference {rl.get('eval_win_rate'):.3f}")
    print(f"dpo preference accuracy (held-out) {d.get('eval_accuracy'):.3f}, mean margin {d.get('eval_margin'):.3f}")
    (OUT / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
