"""`tunelab sweep`: hyper-parameter search over any run-config key, on Optuna (see README, docs/distributed.md)."""
from __future__ import annotations

from pathlib import Path

__all__ = ["sweep", "report"]


def sweep(source: str | Path | dict, *, trials: int | None = None, quiet: bool = False) -> dict:
    """Run (or continue) the sweep SOURCE describes; return its best params, best value and trial table.

    Every check on the sweep file runs before the first trial; ``trials`` overrides the file's budget.
    """
    from .report import write_report
    from .space import load_sweep
    from .study import open_study, run_sweep

    config, base, here = load_sweep(source)
    if trials is not None:
        if trials < 1:
            from ..core.errors import TunelabError

            raise TunelabError(f"--trials must be at least 1 (got {trials})")
        config = config.model_copy(update={"trials": trials})
    out = run_sweep(config, base, here, quiet=quiet)
    return write_report(open_study(config), base, out, config.objective.metric)


def report(directory: str | Path) -> dict:
    """The report of a sweep directory, written again from its study (table, best.yaml, plots)."""
    from .report import load_report, write_report

    data, study = load_report(directory)
    return write_report(study, data["base"], Path(directory), data["objective"]["metric"])


class _CallableModule(__import__("types").ModuleType):
    """`tunelab.sweep(...)` is the function even once the package tunelab.sweep is imported."""

    def __call__(self, *args, **kwargs):
        return sweep(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
