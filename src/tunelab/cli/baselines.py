"""`tunelab zeroshot` and `tunelab icl`: create baseline runs that `tunelab eval` scores like trained ones."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..core.errors import TunelabError

_FLAGS = {"label_words": "--label-word", "fields": "--field"}  # config fields whose flag is not --<field>


def register(app: typer.Typer) -> None:
    app.command()(zeroshot)
    app.command()(icl)


def zeroshot(
    model: str = typer.Option(..., "--model", help="Instruct model: bundled name, model dir or Hub id."),
    out: Path = typer.Option(..., "--out", help="Run directory to create."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated labels as in the data, e.g. spam,ham; "
                                                                 "none: answer instruction/chat data."),
    label_word: Optional[List[str]] = typer.Option(None, "--label-word", help="LABEL=WORD the model answers with (repeatable)."),
    instruction: Optional[str] = typer.Option(None, "--instruction", help="Classify: the user instruction ({choices} "
                                                                           "lists the words); generate: a system message."),
    max_length: int = typer.Option(256, "--max-length", min=8, help="Tokens kept of each message."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing directory."),
):
    """Create a zero-shot baseline run (no training): it classifies with --labels, else it answers."""
    from ..baselines.zeroshot import ZeroShotConfig

    settings = _common(model, labels, label_word, instruction, max_length)
    _create(out, "zeroshot", ZeroShotConfig, settings, overwrite)


def icl(
    model: str = typer.Option(..., "--model", help="Instruct model: bundled name, model dir or Hub id."),
    train: str = typer.Option(..., "--train", help="File the demonstrations come from."),
    out: Path = typer.Option(..., "--out", help="Run directory to create."),
    k: int = typer.Option(4, "--k", help="Demonstrations per query."),
    select: str = typer.Option("nearest", "--select", help="random (seeded draws) or nearest (most similar by embedding)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random draws."),
    embedder: Optional[str] = typer.Option(None, "--embedder", help="Sentence embedder for --select nearest (default minilm-l6)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated labels; none: answer instruction/chat data."),
    label_word: Optional[List[str]] = typer.Option(None, "--label-word", help="LABEL=WORD the model answers with (repeatable)."),
    instruction: Optional[str] = typer.Option(None, "--instruction", help="As for `tunelab zeroshot`."),
    max_length: int = typer.Option(256, "--max-length", min=8, help="Tokens kept of each message (demonstrations too)."),
    max_context: Optional[int] = typer.Option(None, "--max-context", help="Prompt + answer tokens allowed "
                                                                          "(default: the model's positions)."),
    data_format: str = typer.Option("auto", "--format", help="Format of the train file (auto detects it)."),
    field: Optional[List[str]] = typer.Option(None, "--field", help="Train file column mapping CANONICAL=COLUMN (repeatable)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing directory."),
):
    """Create an in-context-learning baseline run: k demonstrations from --train before each query."""
    from ..baselines.icl import ICLConfig
    from . import _key_values

    settings = {**_common(model, labels, label_word, instruction, max_length), "train": train, "k": k,
                "select": select, "seed": seed, "max_context": max_context, "format": data_format,
                "fields": _key_values(field, "--field", "CANONICAL=COLUMN, e.g. text=message")}
    if embedder:
        settings["embedder"] = embedder
    _create(out, "icl", ICLConfig, settings, overwrite)


def _common(model: str, labels: str | None, label_word: list[str] | None, instruction: str | None,
            max_length: int) -> dict:
    from . import _key_values

    settings = {"model": model, "label_words": _key_values(label_word, "--label-word", "LABEL=WORD"),
                "max_length": max_length, "instruction": instruction}
    if labels is not None:
        settings["labels"] = [x.strip() for x in labels.split(",") if x.strip()]
    return settings


def _create(out: Path, name: str, config_class, settings: dict, overwrite: bool) -> None:
    from pydantic import ValidationError

    from ..runs.baseline import create_baseline_run

    try:
        cfg = config_class(**settings)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        flag = _FLAGS.get(field, f"--{field.replace('_', '-')}")
        message = err["msg"].removeprefix("Value error, ")
        raise TunelabError(f"{flag}: {message} (got {err['input']!r})") from None
    print(create_baseline_run(out, name, cfg, overwrite=overwrite))
