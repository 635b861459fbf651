"""Running a sweep: one Optuna study in a storage (SQLite in the sweep directory by default); each
trial is an ordinary `tunelab train` run in this process, reporting its evaluations to Optuna.

Resume and sharing are Optuna's: every live trial writes a heartbeat, a trial whose heartbeat is
older than GRACE_SECONDS (its process was killed) is marked failed and retried with the same
params (RetryFailedTrialCallback). The trial budget is shared: before a trial starts, the trials
already finished or running are counted under a file lock (SQLite), so two processes on one study
run `trials` between them.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import time
from pathlib import Path
from typing import Any

from ..core import console
from ..core.errors import TunelabError
from ..runs import directory as rundir
from .space import SweepConfig, applies, apply_params, distributions

HEARTBEAT_SECONDS = 2
GRACE_SECONDS = 8  # a trial silent this long was killed: it is failed and retried


def storage_url(sweep: SweepConfig) -> str:
    return sweep.storage or f"sqlite:///{Path(sweep.output_dir).resolve() / 'study.db'}"


def open_study(sweep: SweepConfig, create: bool = True):
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    quiet_optuna()
    url = storage_url(sweep)
    if sweep.storage is None and create:
        Path(sweep.output_dir).mkdir(parents=True, exist_ok=True)  # the default SQLite file lives in it
    with _sqlite_lock(sweep):  # two processes creating one SQLite schema at once collide
        try:
            storage = RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                                 heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
        except Exception as exc:  # a bad URL, a missing driver, a server that does not answer
            raise TunelabError(f"storage '{url}' cannot be opened: {str(exc).splitlines()[0]}") from None
        if not create:
            try:
                return optuna.load_study(study_name=sweep.study_name, storage=storage)
            except KeyError:
                raise TunelabError(f"no study '{sweep.study_name}' in {url}") from None
        return optuna.create_study(study_name=sweep.study_name, storage=storage, load_if_exists=True,
                                   direction=sweep.objective.direction, sampler=_sampler(sweep), pruner=_pruner(sweep))


def quiet_optuna() -> None:
    """Heartbeats, ask/tell with heartbeats and the matplotlib plots are 'experimental' in Optuna: say it once, here."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def _sampler(sweep: SweepConfig):
    import optuna

    if sweep.sampler == "grid":
        return optuna.samplers.GridSampler({k: v for k, (_, v) in distributions(sweep).items()}, seed=sweep.seed)
    if sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=sweep.seed)
    return optuna.samplers.TPESampler(seed=sweep.seed)


def _pruner(sweep: SweepConfig):
    import optuna

    if sweep.pruner == "median":  # the first trials run in full, so later ones have something to be compared with
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if sweep.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def suggest(trial, sweep: SweepConfig) -> dict[str, Any]:
    """The trial's params: method.name first, then only the keys that apply to the chosen method."""
    dists = distributions(sweep)
    params: dict[str, Any] = {}
    order = sorted(dists, key=lambda k: k != "method.name")
    for key in order:
        if "method.name" in params and not applies(key, params["method.name"]):
            continue
        kind, value = dists[key]
        if kind == "choice":
            params[key] = trial.suggest_categorical(key, value)
        elif kind == "int":
            params[key] = trial.suggest_int(key, *value)
        else:
            params[key] = trial.suggest_float(key, *value, log=kind == "log_uniform")
    return params


def _pruning_callback(trial, metric: str, flip: bool):
    """Report every evaluation after step 0 to the trial; stop training (cleanly) once Optuna says prune."""
    from transformers import TrainerCallback

    class ReportToOptuna(TrainerCallback):
        pruned_at: int | None = None

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            metrics = metrics or {}
            value = metrics.get(metric)
            if value is None and metric == "eval_perplexity" and "eval_loss" in metrics:
                value = math.exp(min(metrics["eval_loss"], 50))
            if value is None or state.global_step == 0:
                return
            trial.report(-value if flip else value, state.global_step)
            if trial.should_prune():
                self.pruned_at = state.global_step
                control.should_training_stop = True  # the run still saves: a pruned trial is a run directory too

    return ReportToOptuna()


def _objective_value(sweep: SweepConfig, run_dir: Path, here: Path) -> float:
    metric = sweep.objective.metric
    summary = json.loads((run_dir / "summary.json").read_text())
    if not metric.startswith("eval/"):
        return float(summary["metrics"][metric])
    from ..evaluate.harness import evaluate

    _, name, key = metric.split("/", 2)
    file = sweep.eval[name]
    file = file if Path(file).exists() else str(here / file)
    report = evaluate(run_dir, {name: file})["data"][name]
    node: Any = report
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise TunelabError(f"objective.metric '{metric}': tunelab eval does not report '{key}' for this run")
        node = node[part]
    return float(node)


@contextlib.contextmanager
def _sqlite_lock(sweep: SweepConfig):
    """Serialise creating the study, and 'count the trials, then start one', between processes sharing
    the sweep directory's SQLite study."""
    path = Path(sweep.output_dir) / "study.lock"
    if (sweep.storage and not sweep.storage.startswith("sqlite")) or not path.parent.is_dir():
        yield  # an RDB server: at most one extra trial per worker at the end, no shared file to lock
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _counted(study) -> tuple[int, int]:
    """(trials that count against the budget: finished, pruned or running; of them running)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    return len(trials), sum(t.state == TrialState.RUNNING for t in trials)


def run_sweep(sweep: SweepConfig, base: dict, here: Path, quiet: bool = False) -> Path:
    """Run trials until the study holds `trials` finished ones (or the timeout passes); return the sweep dir."""
    import optuna
    from optuna.storages import fail_stale_trials

    out = Path(sweep.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    study = open_study(sweep)
    (out / "sweep.json").write_text(json.dumps({**sweep.model_dump(mode="json"), "base": base,
                                                "storage": storage_url(sweep)}, indent=1))
    flip = _flip(sweep, base)
    started = time.time()
    while True:
        if sweep.timeout is not None and time.time() - started > sweep.timeout:
            break
        with _sqlite_lock(sweep):
            fail_stale_trials(study)  # a killed process's trial: failed, and queued again with its params
            counted, running = _counted(study)
            if counted >= sweep.trials:
                trial = None
            else:
                _seed_sampler(study.sampler, sweep.seed + len(study.get_trials(deepcopy=False)))
                trial = study.ask()
        if trial is None:
            if running == 0:
                break
            time.sleep(HEARTBEAT_SECONDS)  # another process's trial, or a killed one not yet stale
            continue
        if _run_trial(study, trial, sweep, base, here, flip, quiet):
            break  # the grid sampler has visited every point
    return out


def _seed_sampler(sampler, seed: int) -> None:
    """Seed the sampler's random state by the number of the trial it is about to draw: the same sweep
    draws the same trials, and two processes sharing the study (each with its own sampler seeded
    alike) do not draw the same params. Optuna keeps the numpy RandomState at _rng.rng."""
    for owner in (sampler, getattr(sampler, "_random_sampler", None)):
        rng = getattr(getattr(owner, "_rng", None), "rng", None)
        if rng is not None:
            rng.seed(seed % 2**32)


def _flip(sweep: SweepConfig, base: dict) -> bool:
    """Whether the pruning metric runs against the objective's direction (eval_loss while maximising F1)."""
    from ..config import EarlyStopping

    lower_better = not EarlyStopping(metric=sweep.prune_on).greater_is_better
    return lower_better == (sweep.objective.direction == "maximize")


def _run_trial(study, trial, sweep: SweepConfig, base: dict, here: Path, flip: bool, quiet: bool) -> bool:
    """Run and record one trial; True when the sampler asks the study to stop (a finished grid)."""
    import optuna
    from optuna.storages._heartbeat import get_heartbeat_thread

    try:
        with get_heartbeat_thread(trial._trial_id, study._storage):  # as study.optimize does per trial
            state, value = _train_trial(trial, sweep, base, here, flip, quiet)
    except BaseException:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    try:
        study.tell(trial, value, state=state)
    except RuntimeError as exc:
        # GridSampler.after_trial calls study.stop() once the grid is covered, which Optuna allows only
        # inside study.optimize; the trial's result is stored before that (tell's `finally`).
        if "Study.stop" not in str(exc):
            raise
        return True
    return False


def _train_trial(trial, sweep: SweepConfig, base: dict, here: Path, flip: bool, quiet: bool):
    """Train the trial's run; return (state, objective value or None when pruned)."""
    from optuna.trial import TrialState

    from ..config import validate_config
    from ..training.engine import train
    from ..training.progress import library_output

    params = suggest(trial, sweep)
    raw = apply_params(base, params)
    raw["name"] = f"trial-{trial.number:03d}"
    raw["output_dir"] = str(Path(sweep.output_dir) / "trials")
    prune_on = sweep.prune_on if sweep.prune_on.startswith("eval_") else f"eval_{sweep.prune_on}"
    cfg = validate_config(raw, origin=f"trial {trial.number}")
    trial.set_user_attr("run_dir", str(cfg.run_dir))
    if not quiet:
        console.note(f"trial {trial.number}: {', '.join(f'{k}={_short(v)}' for k, v in params.items())}")
    reporter = _pruning_callback(trial, prune_on, flip)
    started = time.time()
    run_dir = train(cfg, overwrite=True, quiet=True, callbacks=[reporter],
                    tags={"study": sweep.study_name, "trial": trial.number})
    rundir.write_json_atomic(run_dir / "sweep.json", {"study": sweep.study_name, "trial": trial.number,
                                                      "storage": storage_url(sweep), "params": params})
    trial.set_user_attr("seconds", round(time.time() - started, 2))
    if reporter.pruned_at is not None:
        trial.set_user_attr("pruned_at_step", reporter.pruned_at)
        if not quiet:
            console.note(f"trial {trial.number}: pruned at step {reporter.pruned_at}")
        return TrialState.PRUNED, None
    with library_output(console.level()):  # no "Loading weights" bars or deprecation warnings per trial
        value = _objective_value(sweep, run_dir, here)
    if not quiet:
        console.note(f"trial {trial.number}: {sweep.objective.metric} {value:.4g}")
    return TrialState.COMPLETE, value


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
