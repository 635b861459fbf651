"""`tunelab serve RUN...`: an OpenAI-compatible HTTP API over runs (chat, completions, classify, score)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    runs: Optional[List[str]] = typer.Argument(None, help="Finished run directories (NAME=DIR to choose the model id; "
                                                         "default: the directory name)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model to serve too; every run must be trained from it."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: any free port)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="TUNELAB_API_KEY", show_envvar=True,
                                          help="Require 'Authorization: Bearer KEY' on every route."),
    watch: Optional[Path] = typer.Option(None, "--watch", help="Directory to poll: each new finished run in it is served."),
    max_batch_size: int = typer.Option(16, "--max-batch-size", min=1, help="Rows decoded together per step."),
    max_context: Optional[int] = typer.Option(None, "--max-context", min=2,
                                              help="Cap prompt + max_tokens below each model's own context."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Where the files and fine-tuning jobs API keeps "
                                                                     "uploads and job runs (enables /v1/files and "
                                                                     "/v1/fine_tuning/jobs)."),
    max_jobs: int = typer.Option(1, "--max-jobs", min=1, help="Fine-tuning jobs trained at once (with --data-dir)."),
):
    """Serve RUNs over HTTP (OpenAI's API at /v1); prints the URL when ready. Ctrl-C stops it."""
    from ..serve.server import ServeOptions, serve as run

    run(ServeOptions(runs=list(runs or []), base=base, host=host, port=port, api_key=api_key, watch=watch,
                     max_batch_size=max_batch_size, max_context=max_context, data_dir=data_dir, max_jobs=max_jobs))
