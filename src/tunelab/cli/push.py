"""`tunelab push RUN REPO_ID`: the run on the Hugging Face Hub (adapter or merged model, tokenizer, model card)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("push")(push)


def push(
    run: Path = typer.Argument(..., help="Finished run directory."),
    repo_id: str = typer.Argument(..., help="Hub model repo, OWNER/NAME (or NAME: under the token's user); "
                                            "created if missing."),
    merged: bool = typer.Option(False, "--merged", help="Upload the model with the adapter folded in (lora, ia3) "
                                                        "instead of the peft adapter."),
    private: bool = typer.Option(False, "--private", help="Create the repo private (an existing repo keeps its "
                                                          "visibility)."),
    dry_run: Optional[Path] = typer.Option(None, "--dry-run", help="Upload nothing: write exactly the folder that "
                                                                   "would be uploaded to this new (or empty) DIR."),
    license: Optional[str] = typer.Option(None, "--license", help="Licence in the card's metadata (default: the base "
                                                                  "model's, where tunelab knows it; else 'other')."),
):
    """Upload RUN to the Hub: the peft adapter (or, --merged / full / freeze, the model), the tokenizer and
    a model card with the run's evaluation results. The token is HF_TOKEN or the stored login. Prints the URL."""
    from ..export.push import push_run

    print(push_run(run, repo_id, merged=merged, private=private, dry_run=dry_run, license=license))
