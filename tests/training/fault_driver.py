"""Kill-and-resume driver for tests/test_faults.py (run as a script, not collected by pytest).

    python tests/fault_driver.py SPEC.json   ->  last stdout line: a JSON report per scenario

SPEC: {"timeout": S, "scenarios": {NAME: {"reference": CONFIG, "config": CONFIG,
                                          "kills": [{"when": ..., "step": N}, ...]}}}

For each scenario: trains `reference` uninterrupted, then trains `config` and SIGKILLs it once per entry of `kills`,
continuing after each kill with `tunelab train CONFIG --resume`, and a last `--resume` to the end.
`when` says at which moment the kill lands:
  checkpoint  right after checkpoint-N appears (so somewhere in the steps after it)
  staging     the moment checkpoint-N starts being written (checkpoints/.staging/checkpoint-N)
  hook        inside the write of checkpoint-N, after weights/optimizer/scheduler, before the RNG
              state and trainer_state.json (TUNELAB_TEST_KILL_IN_CHECKPOINT=N: the run kills itself)

Every run is a real process: a fork of this one running the real CLI (`tunelab.cli.main` with
`train CONFIG [--resume] --quiet`). Forking after the heavy imports (torch, transformers, peft) but
before any tensor work saves each run ~15 s of start-up; this process does no tensor work until
every run is over (OpenMP does not survive a fork once its threads exist).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

POLL_S = 0.002


def _preload() -> None:
    import peft  # noqa: F401
    import transformers  # noqa: F401
    from transformers import Trainer  # noqa: F401

    import tunelab.cli  # noqa: F401
    import tunelab.training.engine  # noqa: F401
    from tunelab.methods import METHODS  # noqa: F401
    from tunelab.stages import STAGES  # noqa: F401


def _spawn(args: list[str], log: Path, env: dict | None = None) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.environ.update(env or {})
        sys.argv = ["tunelab", *args]
        from tunelab.cli import main

        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, timeout: float, until=None) -> int:
    """Wait for the child to end (SIGKILL it as soon as `until()` is true); return its exit code."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if until is not None and until():
            os.kill(pid, signal.SIGKILL)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        time.sleep(POLL_S)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise TimeoutError(f"run did not end within {timeout}s")


def _run_dir(config: str) -> Path:
    from tunelab.config import load_config

    return load_config(config).run_dir


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for sub in ("adapter", "model", "head"):
        for file in sorted((run / sub).glob("*.safetensors")):
            tensors.update({f"{sub}/{key}": value for key, value in load_file(file).items()})
    return tensors


def main(spec_path: str) -> dict:
    spec = json.loads(Path(spec_path).read_text())
    _preload()
    reports = {}
    for name, scenario in spec["scenarios"].items():
        logs = Path(spec_path).parent / f"{name}.logs"
        logs.mkdir(exist_ok=True)
        reports[name] = _scenario(scenario, logs, spec.get("timeout", 240))
    # Every run is over: tensor work is safe now.
    for name, scenario in spec["scenarios"].items():
        if "error" not in reports[name]:
            reports[name].update(_compare(_run_dir(scenario["reference"]), _run_dir(scenario["config"])))
    return reports


def _scenario(spec: dict, logs: Path, timeout: float) -> dict:
    report: dict = {"kills": [], "runs": []}

    started = time.time()
    rc = _wait(_spawn(["train", spec["reference"], "--quiet"], logs / "reference.log"), timeout)
    report["runs"].append({"run": "reference", "rc": rc, "seconds": round(time.time() - started, 1)})
    if rc != 0:
        report["error"] = f"reference run failed (rc {rc}); see {logs / 'reference.log'}"
        return report

    run = _run_dir(spec["config"])
    checkpoints = run / "checkpoints"
    for i, kill in enumerate(spec["kills"]):
        step, when = kill["step"], kill["when"]
        args = ["train", spec["config"], "--quiet"] + (["--resume"] if i else [])
        env, until = {}, None
        if when == "checkpoint":
            until = lambda step=step: (checkpoints / f"checkpoint-{step}").is_dir()  # noqa: E731
        elif when == "staging":
            until = lambda step=step: (checkpoints / ".staging" / f"checkpoint-{step}").is_dir()  # noqa: E731
        elif when == "hook":
            env = {"TUNELAB_TEST_KILL_IN_CHECKPOINT": str(step)}
        else:
            raise ValueError(when)
        started = time.time()
        rc = _wait(_spawn(args, logs / f"kill{i}.log", env), timeout, until)
        from tunelab.runs.directory import last_checkpoint

        newest = last_checkpoint(run)
        report["kills"].append({
            **kill, "rc": rc, "seconds": round(time.time() - started, 1),
            "newest_complete": newest.name if newest else None,
            "staging_left": sorted(p.name for p in (checkpoints / ".staging").glob("*")),
            "summary_written": (run / "summary.json").exists(),
        })

    started = time.time()
    rc = _wait(_spawn(["train", spec["config"], "--quiet", "--resume"], logs / "final.log"), timeout)
    report["runs"].append({"run": "final resume", "rc": rc, "seconds": round(time.time() - started, 1)})
    if rc != 0:
        report["error"] = f"final --resume failed (rc {rc}); see {logs / 'final.log'}"
        return report
    report["summary"] = json.loads((run / "summary.json").read_text())
    report["logged_steps"] = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                              if "loss" in r]
    report["checkpoints_left"] = sorted(p.name for p in checkpoints.iterdir())
    return report


def _compare(reference_run: Path, run: Path) -> dict:
    reference, resumed = _weights(reference_run), _weights(run)
    report = {"weights": len(reference)}
    report["same_keys"] = sorted(reference) == sorted(resumed)
    if report["same_keys"] and reference:
        report["max_abs_diff"] = max((reference[k].double() - resumed[k].double()).abs().max().item()
                                     for k in reference)
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
