"""A sweep's results: the trial table, the best config as a ready-to-train YAML, and PNG plots."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import TunelabError
from .space import SweepConfig, apply_params


def trial_rows(study) -> list[dict]:
    """One row per trial: number, state, params, objective value, seconds, pruning step, run directory."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = t.user_attrs.get("seconds")
        if seconds is None and t.datetime_start and t.datetime_complete:
            seconds = round((t.datetime_complete - t.datetime_start).total_seconds(), 2)
        rows.append({"trial": t.number, "state": t.state.name.lower(), "params": dict(t.params),
                     "value": t.value, "seconds": seconds, "pruned_at_step": t.user_attrs.get("pruned_at_step"),
                     "run_dir": t.user_attrs.get("run_dir")})
    return rows


def format_table(rows: list[dict], metric: str) -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row["params"]))
    head = ["trial", "state", *keys, metric, "seconds"]
    body = []
    for row in rows:
        params = [_cell(row["params"].get(k, "-")) for k in keys]
        value = f"pruned@{row['pruned_at_step']}" if row["state"] == "pruned" else _cell(row["value"])
        body.append([str(row["trial"]), row["state"], *params, value, _cell(row["seconds"])])
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [head, *body])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def best_config(study, base: dict) -> dict | None:
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    raw = apply_params(base, study.best_trial.params)
    raw["name"] = f"{study.study_name}-best"
    return raw


def write_report(study, base: dict, out: Path, metric: str) -> dict:
    """Write trials.json, best.yaml and the plots into the sweep directory; return the report as data."""
    rows = trial_rows(study)
    (out / "trials.json").write_text(json.dumps(rows, indent=1, default=str))
    best = best_config(study, base)
    result = {"dir": str(out), "table": rows, "best_params": None, "best_value": None, "best_config": None,
              "plots": []}
    if best is not None:
        (out / "best.yaml").write_text(f"# best trial {study.best_trial.number} of study {study.study_name}: "
                                       f"{metric} = {study.best_value:.6g}\n" + yaml.safe_dump(best, sort_keys=False))
        result.update(best_params=study.best_trial.params, best_value=study.best_value,
                      best_config=str(out / "best.yaml"))
    result["plots"] = _plots(study, out)
    return result


def _plots(study, out: Path) -> list[str]:
    """Optimisation history, parameter importances and objective vs each parameter (optuna's matplotlib plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    written = []
    plots = [("history.png", ovm.plot_optimization_history), ("slice.png", ovm.plot_slice)]
    if len(complete) >= 2 and any(len({str(t.params.get(k)) for t in complete}) > 1 for k in complete[0].params):
        plots.append(("importances.png", ovm.plot_param_importances))
    for name, plot in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
            try:
                axes = plot(study)
            except (ValueError, RuntimeError):  # e.g. importances when every trial has the same value
                continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            figure.tight_layout()
        figure.savefig(out / name, dpi=100)
        plt.close(figure)
        written.append(str(out / name))
    return written


def load_report(directory: str | Path) -> tuple[dict, Any]:
    """Open a sweep directory's study again (for `tunelab sweep --report DIR`)."""
    out = Path(directory)
    saved = out / "sweep.json"
    if not saved.is_file():
        raise TunelabError(f"{out} is not a sweep directory (no sweep.json)")
    data = json.loads(saved.read_text())
    from .study import open_study

    sweep = SweepConfig.model_validate({**{k: v for k, v in data.items() if k != "storage"},
                                        "storage": data["storage"], "output_dir": str(out)})
    return data, open_study(sweep, create=False)
