"""The `data:` section of the run config: one file or a mix of sources, and how to read them.

Torch-free like every config section; `tunelab.config` composes it into the run schema.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from ..core.schema import StrictModel

DataFormat = Literal["auto", "text", "instruction", "messages", "classification", "preference", "rating"]


# Fields every data source has, shared by the entries of data.train and data.replay.
_SourceFormat = Annotated[DataFormat | None, Field(None, description="Row format of this source (unset: data.format).")]
_SourceFields = Annotated[dict[str, str] | None, Field(
    None, description="Column mapping of this source (unset: data.fields).")]
_SourceSplit = Annotated[str | None, Field(None, description="Hub split of this source (unset: data.split).")]
_Fraction = Annotated[float | None, Field(
    None, gt=0, le=1, description="Share of the mixed training set: round(fraction x total) rows drawn without "
    "replacement, total being the mix's size; a source with too few rows is an error unless `upsample`.")]
_SourceMaxRows = Annotated[int | None, Field(
    None, ge=1, description="Without a fraction: take at most N rows (after shuffling; unset: data.max_rows).")]
_Upsample = Annotated[bool, Field(False, description=(
    "With a fraction the source cannot fill: repeat its rows (each as often as the others, give or take one) "
    "instead of failing."))]


def _check_size(source) -> None:
    if source.fraction is not None and source.max_rows is not None:
        raise ValueError("give fraction or max_rows, not both")
    if source.upsample and source.fraction is None:
        raise ValueError("upsample applies to a source with a fraction")


class _SourceOptions(StrictModel):
    """How to read one source of a training mix and how much of it to use (shared by data.train items and
    data.replay)."""

    format: _SourceFormat
    fields: _SourceFields
    split: _SourceSplit
    fraction: _Fraction
    max_rows: _SourceMaxRows
    upsample: _Upsample

    @model_validator(mode="after")
    def _size(self):
        _check_size(self)
        return self


class DataSource(_SourceOptions):
    """One source of a training mix: a file or Hub dataset, how to read it, and how much of it to use."""

    path: str = Field(description="A .jsonl/.json/.csv/.parquet file, or a Hub dataset id.")


class ReplayConfig(_SourceOptions):
    """Earlier data mixed back into training (against forgetting): one more source appended to data.train."""

    train: str = Field(description="The replayed data: a .jsonl/.json/.csv/.parquet file, or a Hub dataset id.")


TRAIN_TAGS = ("file", "sources")  # pydantic puts these union tags in error locations; they are not keys
TrainData = Annotated[
    Union[Annotated[str, Tag("file")], Annotated[list[DataSource], Field(min_length=1), Tag("sources")]],
    Discriminator(lambda value: "sources" if isinstance(value, list) else "file"),
]


class DataConfig(StrictModel):
    """Where the examples come from and how to read them."""

    train: TrainData = Field(description=(
        "Training data: a .jsonl/.json/.csv/.parquet file or a Hub dataset id, or a list of sources mixed with a "
        "seeded shuffle (each a path or {path, format, fields, split, fraction | max_rows, upsample}). A source "
        "without a fraction gives all its rows (or max_rows); the fractions are shares of the mixed training set "
        "and sum below 1 (exactly 1 if every source has one). The eval split comes from the first source only."))
    replay: ReplayConfig | None = Field(None, description=(
        "Shorthand for appending one source to data.train, e.g. {train: email.jsonl, fraction: 0.2}."))
    eval: str | None = Field(None, description="Held-out data file; if unset, `eval_fraction` of train is held out.")
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0, description=(
        "Share of train held out for eval when `eval` is unset (of the first source only, when mixing)."))
    format: DataFormat = Field("auto", description="Row format; `auto` detects it from the field names.")
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Map canonical field -> column in the file, e.g. {instruction: question, response: answer}.",
    )
    split: str = Field("train", description="Split to read from a Hub dataset.")
    max_rows: int | None = Field(None, ge=1, description=(
        "Use only the first N rows of train (after shuffling); when mixing, of each source without a fraction."))
    system_prompt: str | None = Field(None, description="System message prepended to every chat (SFT).")

    @field_validator("train", mode="before")
    @classmethod
    def _train_forms(cls, value: Any) -> Any:
        # A list may name sources by path alone; one {path: ...} mapping is a list of one.
        if isinstance(value, dict):
            return [value]
        if isinstance(value, list):
            return [{"path": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("replay", mode="before")
    @classmethod
    def _replay_shorthand(cls, value: Any) -> Any:
        return {"train": value} if isinstance(value, str) else value  # `replay: email.jsonl`: all of its rows

    @model_validator(mode="after")
    def _fractions(self) -> "DataConfig":
        sources = [source for _, source in self.sources()]
        fractions = [s.fraction for s in sources if s.fraction is not None]
        where = "data.train + data.replay" if self.replay else "data.train"
        total = sum(fractions)
        if len(fractions) < len(sources) and total >= 1:
            raise ValueError(f"the fractions of {where} sum to {total:g}; with a source that has no fraction "
                             f"(it gives all its rows) they must sum to less than 1")
        if fractions and len(fractions) == len(sources):
            if abs(total - 1) > 1e-9:
                raise ValueError(f"every source of {where} has a fraction, so they must sum to 1 (they sum to "
                                 f"{total:g}); leave one source without a fraction to give all its rows")
            if all(s.upsample for s in sources):
                raise ValueError(f"every source of {where} has a fraction and upsample: true, so nothing sets the "
                                 f"mix's size; give one source no upsample or no fraction")
        return self

    def sources(self) -> list[tuple[str, DataSource]]:
        """(config key, source) for data.train then data.replay; data.format/fields/split, and data.max_rows for
        sources without a fraction, fill in what a source leaves unset."""
        if isinstance(self.train, str):
            items = [("data.train", DataSource(path=self.train))]
        else:
            items = [(f"data.train[{i}]", source) for i, source in enumerate(self.train)]
        if self.replay is not None:
            options = self.replay.model_dump(exclude={"train"})
            items.append(("data.replay", DataSource(path=self.replay.train, **options)))
        resolved = []
        for key, source in items:
            update = {name: getattr(self, name) for name in ("format", "fields", "split") if getattr(source, name) is None}
            if source.fraction is None and source.max_rows is None:
                update["max_rows"] = self.max_rows
            resolved.append((key, source.model_copy(update=update)))
        return resolved

    def describe(self) -> str:
        """The training data in one phrase, for messages: the path, or the paths of the mix."""
        return " + ".join(source.path for _, source in self.sources())
