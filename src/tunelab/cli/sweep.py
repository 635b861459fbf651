"""`tunelab sweep SWEEP.yaml`: a hyper-parameter search (Optuna); `--report DIR` prints a finished one again."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)


def sweep(
    file: Optional[Path] = typer.Argument(None, help="Sweep YAML: base config, space, objective, trials (see examples/sweep/)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Print the report of this sweep directory instead."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Override the sweep file's trial budget."),
    quiet: bool = typer.Option(False, "--quiet", help="Print only the table."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of the table."),
):
    """Run (or continue: the study lives in the sweep directory) the trials; print the trial table and the best config."""
    from ..core.errors import TunelabError
    from ..sweep import report as sweep_report, sweep as run_sweep
    from ..sweep.report import format_table

    if (file is None) == (report is None):
        raise TunelabError("give either a sweep file or --report DIR, not both or neither")
    result = sweep_report(report) if report is not None else run_sweep(file, trials=trials, quiet=quiet)
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    metric = json.loads((Path(result["dir"]) / "sweep.json").read_text())["objective"]["metric"]
    print(format_table(result["table"], metric))
    if result["best_config"]:
        print(f"\nbest: {metric} = {result['best_value']:.4g} with {result['best_params']}")
        print(f"best config: {result['best_config']}  (tunelab train {result['best_config']})")
    for plot in result["plots"]:
        print(f"plot: {plot}")
