"""train.report_to: transformers' own tracker callbacks, pointed where tunelab keeps things.

TensorBoard writes to RUN/tensorboard (not the Trainer's checkpoints/runs/...). MLflow uses
MLFLOW_TRACKING_URI when set, else a local store OUTPUT_DIR/mlflow.db (artifacts in
OUTPUT_DIR/mlruns), one experiment per group (a
sweep's study, else "tunelab"); its run stays open past training so the final eval metrics of
every eval set, summary.json and the run's plots land in it too (finish()).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..core.errors import TunelabError

_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "trackio": "trackio"}


def check_installed(report_to: list[str]) -> None:
    """Before anything loads: a tracker whose package is missing is named with the fix."""
    for name in report_to:
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            extra = "mlflow-skinny" if name == "mlflow" else name
            raise TunelabError(f"train.report_to: {name} is not installed; pip install {extra}")


def callbacks(cfg, run_dir: Path, tags: dict) -> list:
    """The tracker callbacks for this run (rank 0 only logs; the callbacks check that themselves)."""
    made = []
    if "tensorboard" in cfg.train.report_to:
        from transformers.integrations import TensorBoardCallback

        board = TensorBoardCallback()
        board.logging_dir = str(run_dir / "tensorboard")
        made.append(board)
    if "mlflow" in cfg.train.report_to:
        import mlflow
        from transformers.integrations import MLflowCallback

        class KeptOpen(MLflowCallback):
            """The run ends in finish(), after the final evaluation, not when training ends."""

            def on_train_end(self, args, state, control, **kwargs):
                pass

        # MLflow 3 refuses new file stores ("maintenance mode"): the local default is a SQLite file,
        # with artifacts beside it, both under the output directory; no server either way.
        out = Path(cfg.output_dir).resolve()
        user_uri = os.environ.get("MLFLOW_TRACKING_URI")
        out.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(user_uri or f"sqlite:///{out / 'mlflow.db'}")
        if user_uri is None:  # set_tracking_uri also exports it: the next run must see the user's (unset) value
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        if not os.environ.get("MLFLOW_EXPERIMENT_NAME"):
            name = str(tags.get("study", "tunelab"))
            if mlflow.get_experiment_by_name(name) is None:  # artifacts beside the local store, not in the cwd
                local = None if user_uri else (out / "mlruns").as_uri()
                mlflow.create_experiment(name, artifact_location=local)
            mlflow.set_experiment(name)
        made.append(KeptOpen())
    if "trackio" in cfg.train.report_to:
        from transformers.integrations import TrackioCallback

        made.append(TrackioCallback())
    return made


def finish(made: list, summary: dict, run_dir: Path, tags: dict) -> None:
    """Log the final metrics (final/<name>) and the run's files, then close the trackers."""
    final = {f"final/{k}": float(v) for k, v in summary.get("metrics", {}).items() if isinstance(v, (int, float))}
    for key in ("best_value", "train_seconds", "peak_rss_mb"):
        if isinstance(summary.get(key), (int, float)):
            final[f"final/{key}"] = float(summary[key])
    for callback in made:
        kind = type(callback).__name__
        if kind == "TensorBoardCallback":
            from torch.utils.tensorboard import SummaryWriter

            with SummaryWriter(log_dir=callback.logging_dir) as writer:
                for key, value in final.items():
                    writer.add_scalar(key, value, summary["steps"])
        elif kind == "KeptOpen":
            import mlflow

            if mlflow.active_run() is None:
                continue
            mlflow.log_metrics(final, step=summary["steps"])
            mlflow.set_tags({"tunelab.run_dir": str(run_dir), "tunelab.stage": summary["stage"],
                             "tunelab.method": summary["method"], **{f"tunelab.{k}": str(v) for k, v in tags.items()}})
            for name in ("summary.json", "config.yaml", "loss.png"):
                if (run_dir / name).exists():
                    mlflow.log_artifact(str(run_dir / name))
            mlflow.end_run()


def close(made: list) -> None:
    """A run that failed: end an open MLflow run (marked FAILED) so the next run can start its own."""
    for callback in made:
        if type(callback).__name__ == "KeptOpen":
            import mlflow

            if mlflow.active_run() is not None:
                mlflow.end_run(status="FAILED")
