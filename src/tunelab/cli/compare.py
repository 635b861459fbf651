"""`tunelab compare FILE`: every approach of one task, side by side, with a recommendation."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)


def compare(
    file: Path = typer.Argument(..., help="Compare YAML: shared data, test sets, approaches (see examples/)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="KEY=VALUE overrides, e.g. output_dir=runs/cmp"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Show each training run's own output."),
    as_json: bool = typer.Option(False, "--json", help="Print compare.json instead of the table."),
):
    """Run what is not done yet (finished runs are reused), evaluate everything, write the report."""
    from ..comparison import compare as run, format_table

    result = run(file, overrides or [], verbose=verbose)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
        print(f"\nreport: {Path(result['config']['output_dir']) / 'report.html'}")
