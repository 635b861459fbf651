"""Bad input across every command: one table of cases, each a real `python -m tunelab ...` subprocess.

Every case must answer with one `error:` line on stderr that names the file/field/value concerned,
exit 2, print no traceback and nothing on stdout, and leave no half-written run or output directory.
The cases run as root in CI, so none relies on permission bits (root ignores chmod): a directory
nobody can write is one under /proc, or one whose parent is a regular file.

The subprocesses run concurrently (a thread pool started once for this module, for the selected
cases only); each parametrised test then checks its case. A case whose run is refused from its
config.yaml and summary.json alone (wrong kind, unfinished, a baseline) gets finished classify /
reward runs written by hand ({classify}, {reward}); cases that load weights use the session's real
tiny SFT-LoRA run ({sft}, ``trained_run``). All data is SYNTHETIC (conftest).
"""
from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml
from conftest import SYNTHETIC_ROWS, run_cli, tiny_config, write_config, write_rows
from test_cli_errors import assert_no_run_left, assert_user_error

WORKERS = 3  # subprocesses at once; most of each is importing torch, so more only queues on 2 cores
RUNS = ("sft",)  # placeholder {sft}: the real trained run; {classify} and {reward} are written by hand
UNWRITABLE = "/proc/tunelab-bad-input"  # not even root can create anything under /proc
NOT_UTF8 = b"\xff\xfe\x00\x81 binary \x00\x9c\xfa\n\x00\x00\x8f"
NAME = "bad"  # every config names its run, so the run directory that must not appear is known


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[["Ctx"], dict]  # writes the inputs under ctx.tmp; returns {placeholder: value} for args
    args: tuple[str, ...]  # the command line; "{x}" filled from build's dict, {tmp} and the runs
    fragments: tuple[str, ...]  # the error line holds each one
    absent: tuple[str, ...] = ()  # paths that must not exist afterwards (besides {tmp}/runs/<any run>)
    needs: tuple[str, ...] = ()  # finished runs its build uses (those named in args are found by themselves)

    @property
    def runs(self) -> set[str]:
        return set(self.needs) | {kind for kind in RUNS for arg in self.args if "{" + kind + "}" in arg}


class Ctx:
    """One case's world: its own tmp directory and the shared finished runs (trained on first use)."""

    def __init__(self, tmp: Path, run: Callable[[str], Path]):
        self.tmp, self.run = tmp, run

    def write(self, name: str, content: bytes | str | list) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            write_rows(path, content)
        return path

    def config(self, data: Path | str, stage: str = "sft", method: str = "lora", model: str = "tiny-llama", /,
               **sections) -> Path:
        """A tiny run config (output_dir {tmp}/runs, name 'bad'); ``sections`` update its sections."""
        config = tiny_config(stage, method, data, self.tmp / "runs")
        config.update(name=NAME, model=model)
        for key, value in sections.items():
            if isinstance(value, dict):
                current = config.get(key)
                config[key] = {**({"name": current} if isinstance(current, str) else current or {}), **value}
            else:
                config[key] = value
        return write_config(self.tmp / "run.yaml", config)

    def unfinished(self) -> Path:
        """A run directory whose training never finished: the real SFT run's config.yaml, no summary.json."""
        path = self.tmp / "unfinished-sft"
        path.mkdir()
        shutil.copy(self.run("sft") / "config.yaml", path / "config.yaml")
        return path

    def plain_dir(self) -> Path:
        return self.write("plain/notes.txt", "neither a run nor a model\n").parent

    def finished(self, stage: str, model: str, **stage_settings) -> Path:
        """A finished run of ``stage`` as its directory says (config.yaml, summary.json), without weights:
        enough for every check made before a run is loaded."""
        path = self.tmp / f"{stage}-run"
        path.mkdir()
        config = {**tiny_config(stage, "lora", "train.jsonl", self.tmp / "runs"), "model": model, "name": path.name,
                  "stage": {"name": stage, **stage_settings}}
        (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (path / "summary.json").write_text(json.dumps({"stage": stage, "method": "lora", "model": model, "metrics": {}}))
        return path

    def zeroshot(self) -> Path:
        """A finished zero-shot baseline run, written by hand (no model is needed to refuse it)."""
        path = self.tmp / "zeroshot"
        path.mkdir()
        (path / "config.yaml").write_text(yaml.safe_dump({"zeroshot": {"model": "tiny-llama", "labels": ["0", "1"]}}))
        (path / "summary.json").write_text(json.dumps({"stage": "classify", "baseline": "zeroshot", "metrics": {}}))
        return path


def zeroshot_generation(ctx: Ctx) -> Path:
    """A finished zero-shot generation baseline (no labels), written by hand."""
    path = ctx.tmp / "zeroshot-gen"
    path.mkdir()
    (path / "config.yaml").write_text(yaml.safe_dump({"zeroshot": {"model": "tiny-llama"}}))
    (path / "summary.json").write_text(json.dumps({"stage": "sft", "baseline": "zeroshot", "metrics": {}}))
    return path


def icl(*flags: str, train: str = "classification", labels: str | None = "0,1") -> tuple[Callable[[Ctx], dict], tuple]:
    """(build, args) of a `tunelab icl` case on a SYNTHETIC train file of ``train``'s dialect."""
    build = files(train=lambda ctx: ctx.write("train.jsonl", rows(train)))
    label_flags = ("--labels", labels) if labels else ()
    return build, ("icl", "--model", "tiny-llama", "--train", "{train}", *label_flags, *flags, "--out", "{tmp}/icl")


def rows(dialect: str, change: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """The SYNTHETIC rows of a dialect, changed in place by ``change``."""
    out = [json.loads(json.dumps(row)) for row in SYNTHETIC_ROWS[dialect]]
    if change:
        change(out)
    return out


def setitem(index: int, **values) -> Callable[[list[dict]], None]:
    return lambda rs: rs[index].update(values)


def train(id: str, fragments: tuple[str, ...], *overrides: str, data: Callable | str | list = "dolly",
          stage: str = "sft", method: str = "lora", model: Callable | str = "tiny-llama", flags: tuple[str, ...] = (),
          config: dict | None = None, needs: tuple[str, ...] = ()) -> Case:
    """`tunelab train` on a tiny config. ``data``: a dialect, rows, or ctx -> the data path (or Hub id);
    ``config``: section updates, each value (or a section's value) given as is or as ctx -> value."""

    def build(ctx: Ctx) -> dict:
        if callable(data):
            source = data(ctx)
        elif isinstance(data, str):
            source = ctx.write(f"{data}.jsonl", rows(data))
        else:
            source = ctx.write("data.jsonl", data)

        def value(v):  # callables are built; lists and mappings (data.train's sources) are built inside
            if callable(v):
                return _plain(v(ctx))
            if isinstance(v, (list, dict)):
                return _plain({key: value(item) for key, item in v.items()} if isinstance(v, dict) else
                              [value(item) for item in v])
            return v

        sections = {key: {k: value(v) for k, v in section.items()} if isinstance(section, dict) else value(section)
                    for key, section in (config or {}).items()}
        return {"config": ctx.config(source, stage, method, value(model), **sections)}

    return Case(id, build, ("train", "{config}", *overrides, "--quiet", *flags), fragments, ("{tmp}/runs/" + NAME,),
                needs)


def _plain(value):
    """A built config value as YAML can hold it: paths as strings, also inside lists and mappings."""
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return str(value) if isinstance(value, Path) else value


def files(**made: Callable[[Ctx], object]) -> Callable[[Ctx], dict]:
    """A build that makes each named input: ``files(data=lambda ctx: ctx.write(...))``."""
    return lambda ctx: {key: make(ctx) for key, make in made.items()}


def nothing(ctx: Ctx) -> dict:
    return {}


def write(name: str, content) -> Callable[[Ctx], Path]:
    return lambda ctx: ctx.write(name, content)


def write_json_array(name: str, dialect: str, indent: int | None) -> Callable[[Ctx], Path]:
    return lambda ctx: ctx.write(name, json.dumps(SYNTHETIC_ROWS[dialect], indent=indent) + "\n")


def with_dolly(make: Callable[[Ctx], object]) -> Callable[[Ctx], Path]:
    """Data for a train case that also needs another input (``make``) in its tmp directory."""
    return lambda ctx: (make(ctx), ctx.write("d.jsonl", rows("dolly")))[1]


def model_without_weights(ctx: Ctx) -> Path:
    """A model directory with a config.json and a tokenizer, but no weights."""
    path = ctx.tmp / "noweights"
    shutil.copytree(ctx.run("sft") / "tokenizer", path)
    (path / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 2}))
    return path


def corrupt_summary(ctx: Ctx) -> Path:
    """A reward run directory whose summary.json is binary garbage."""
    path = ctx.finished("reward", "tiny-llama")
    (path / "summary.json").write_bytes(NOT_UTF8)
    return path


def hand_index(ctx: Ctx, table: bool = True, embedder: str = "minilm-l6") -> Path:
    """A real minilm-l6 retrieval index made without loading the model: a LanceDB table of one
    SYNTHETIC chunk (zero vector) and its index.json; ``table=False`` then deletes the table;
    ``embedder`` is the model its manifest names."""
    import lancedb
    import pyarrow as pa

    path = ctx.tmp / "idx"
    dim = 384
    data = pa.table({"text": ["Snow is white."], "source": [str(ctx.tmp / "d.txt")], "chunk": pa.array([0], pa.int32()),
                     "doc": [f"{ctx.tmp / 'd.txt'}:1"],
                     "vector": pa.FixedSizeListArray.from_arrays(pa.array([0.0] * dim, pa.float32()), dim)})
    version = lancedb.connect(path).create_table("chunks", data).version
    manifest = {"format": "tunelab-rag-index", "format_version": 1, "table_version": version,
                "embedder": {"spec": embedder, "dim": dim, "probe": [0.0] * dim},
                "chunking": {"chunk_words": 180, "overlap": 30}, "sources": {}}
    (path / "index.json").write_text(json.dumps(manifest))
    if not table:
        shutil.rmtree(path / "chunks.lance")
    return path


def rag_index(id: str, fragments: tuple[str, ...], *flags: str, docs: Callable[[Ctx], object] | None = None,
              out: str = "{tmp}/idx", absent: tuple[str, ...] = ("{tmp}/idx",)) -> Case:
    """`tunelab rag index {doc} --out OUT FLAGS`; ``docs`` writes the document file (default: a SYNTHETIC .txt)."""
    make = docs or write("d.txt", "Snow is white. Coal is black.\n")
    return Case(id, files(doc=make), ("rag", "index", "{doc}", "--out", out, *flags), fragments, absent)


def rag_baseline(id: str, fragments: tuple[str, ...], *flags: str, index: Callable[[Ctx], object] = hand_index) -> Case:
    """`tunelab rag baseline` (classification) over the index ``index`` makes; no run may be left."""
    return Case(id, files(idx=index), ("rag", "baseline", "--model", "tiny-llama", "--index", "{idx}", "--labels", "a,b",
                                       *flags, "--out", "{tmp}/rag"), fragments, ("{tmp}/rag",))


def rag_run(ctx: Ctx) -> Path:
    """A finished RAG classification baseline with gold field 'pmid', written by hand (it is refused
    before its index or model is opened)."""
    path = ctx.tmp / "rag-run"
    path.mkdir()
    config = {"rag": {"model": "tiny-llama", "labels": ["0", "1"], "index": str(ctx.tmp / "idx"), "gold_field": "pmid"}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "summary.json").write_text(json.dumps({"stage": "classify", "baseline": "rag", "metrics": {}}))
    return path


CORRUPT_PARQUET = b"PAR1\x15\x04\x15\x10\x15\x14L\x15\x02\x15\x00\x12\x00\x00garbage-not-parquet\x00PAR1"
CLASSIFY = dict(stage="classify", method="lora", model="tiny-bert")
RATINGS = [{"prompt": f"Colour of {thing}?", "response": answer, "score": score}
           for thing in ("the sky", "grass", "snow", "coal") for answer, score in (("It is known.", 5), ("No idea.", 2))]


def ratings(change: Callable[[list[dict]], None]) -> list[dict]:
    out = [dict(row) for row in RATINGS]
    change(out)
    return out


CASES: list[Case] = [
    # ----------------------------------------------------------------- train: unreadable data
    train("train-data-not-utf8", ("data.jsonl", "not UTF-8"), data=write("data.jsonl", NOT_UTF8)),
    train("train-data-binary-csv", ("data.csv", "not UTF-8"), data=write("data.csv", NOT_UTF8 * 40)),
    train("train-data-json-array-in-jsonl", ("data.jsonl", "JSON array", ".json"),
          data=write_json_array("data.jsonl", "dolly", indent=1)),
    train("train-data-json-array-one-line", ("data.jsonl", "JSON array", ".json"),
          data=write_json_array("data.jsonl", "dolly", indent=None)),
    train("train-data-corrupt-parquet", ("data.parquet", "parquet"), data=write("data.parquet", CORRUPT_PARQUET)),
    train("train-data-is-directory", ("is a directory",), data=lambda ctx: ctx.plain_dir()),
    train("train-data-csv-header-only", ("data.csv", "only a header"), data=write("data.csv", "instruction,response\n")),
    train("train-data-hub-offline", ("someorg/somedata", "offline"), data=lambda ctx: "someorg/somedata"),
    # ----------------------------------------------------------------- train: wrong columns, types, values
    train("train-data-wrong-columns", ("cannot detect the format", "'query'", "'reply'"),
          data=[{"query": "Colour of snow?", "reply": "White."}] * 4),
    train("train-data-fields-name-missing-column", ("data.fields", "'response'", "'answer'", "not in the data"),
          config={"data": {"fields": {"response": "answer"}}}),
    train("train-data-response-is-object", ("row 3", "'response'", "dict"),
          data=rows("dolly", setitem(2, response={"text": "blue"}))),
    train("classify-data-text-is-list", ("row 2", "'text'", "list"), data=rows("classification", setitem(1, text=["a", "b"])),
          **CLASSIFY),
    train("classify-one-class", ("every training example has label '1'", "two classes"),
          data=[{"text": f"text {i}", "label": 1} for i in range(8)], **CLASSIFY),
    train("classify-empty-text", ("row 3", "'text'", "empty"), data=rows("classification", setitem(2, text="  ")),
          **CLASSIFY),
    train("classify-null-label", ("row 4", "'label'", "missing"), data=rows("classification", setitem(3, label=None)),
          **CLASSIFY),
    train("reward-identical-chosen-rejected", ("row 2", "'chosen'", "'rejected'", "identical"),
          data=rows("preference", setitem(1, chosen="Same.", rejected="Same.")), stage="reward"),
    train("reward-rating-out-of-range", ("row 3", "'score'", "7", "1..5"),
          data=ratings(setitem(2, score=7)), stage="reward"),
    train("reward-rating-not-a-number", ("row 1", "'score'", "'good'"), data=ratings(setitem(0, score="good")),
          stage="reward"),
    train("sft-messages-unknown-role", ("row 1", "messages[0]", "'bot'"),
          data=rows("openai", lambda rs: rs[0]["messages"][0].update(role="bot"))),
    # ----------------------------------------------------------------- train: data of the wrong format for the stage
    train("sft-preference-data", ("format 'preference'", "instruction, messages"), data="preference"),
    train("dpo-classification-data", ("format 'classification'", "preference, rating"), data="classification",
          stage="dpo"),
    train("reward-text-data", ("format 'text'", "preference, rating"), data="text", stage="reward"),
    train("sft-eval-file-other-format", ("eval.jsonl", "format 'classification'", "train is 'instruction'"),
          config={"data": {"eval": lambda ctx: ctx.write("eval.jsonl", rows("classification"))}}),
    # ----------------------------------------------------------------- train: mixing sources (data.train list, data.replay)
    train("mix-sources-of-two-formats", ("data.train[1]", "other.jsonl", "format 'classification'", "data.train[0]",
                                         "'instruction'", "same format"),
          config={"data": {"train": [write("d.jsonl", rows("dolly")), write("other.jsonl", rows("classification"))]}}),
    train("mix-fraction-above-one", ("data.train[1].fraction", "less than or equal to 1", "got 1.5"),
          config={"data": {"train": [write("d.jsonl", rows("dolly")),
                                     {"path": write("e.jsonl", rows("alpaca")), "fraction": 1.5}]}}),
    train("mix-fractions-sum-to-one", ("data.train + data.replay", "sum to 1", "less than 1"),
          config={"data": {"replay": {"train": write("e.jsonl", rows("alpaca")), "fraction": 1.0}}}),
    train("mix-source-too-small-for-its-fraction", ("data.replay", "e.jsonl", "fraction 0.9", "needs 54 rows",
                                                    "but it has 2", "upsample"),
          config={"data": {"replay": {"train": write("e.jsonl", rows("alpaca")[:2]), "fraction": 0.9}}}),
    train("mix-misspelt-source-key", ("'data.train[1].fration'", "did you mean 'data.train[1].fraction'"),
          config={"data": {"train": [write("d.jsonl", rows("dolly")),
                                     {"path": write("e.jsonl", rows("alpaca")), "fration": 0.2}]}}),
    train("mix-replay-file-missing", ("data file not found", "nope.jsonl"),
          config={"data": {"replay": {"train": lambda ctx: ctx.tmp / "nope.jsonl", "fraction": 0.2}}}),
    train("mix-source-row-bad", ("e.jsonl", "row 2", "'response'", "missing"),
          config={"data": {"train": [write("d.jsonl", rows("dolly")),
                                     write("e.jsonl", rows("dolly", lambda rs: rs[1].pop("response")))]}}),
    # ----------------------------------------------------------------- train: hyper-parameters
    train("lr-zero", ("train.lr", "greater than 0", "got 0"), "train.lr=0"),
    train("lr-negative", ("train.lr", "got -0.001"), "train.lr=-0.001"),
    train("batch-size-zero", ("train.batch_size", "got 0"), "train.batch_size=0"),
    train("epochs-negative", ("train.epochs", "got -1"), "train.epochs=-1"),
    train("max-steps-zero", ("train.max_steps", "got 0"), "train.max_steps=0"),
    train("warmup-ratio-above-one", ("train.warmup_ratio", "got 1.5"), "train.warmup_ratio=1.5"),
    train("eval-fraction-one", ("data.eval_fraction", "got 1"), "data.eval_fraction=1"),
    train("max-length-beyond-model", ("train.max_length=100000000", "'tiny-llama'", "2048"),
          "train.max_length=100000000"),
    train("max-length-beyond-encoder", ("train.max_length=100000", "'tiny-bert'", "512"),
          "train.max_length=100000", data="classification", **CLASSIFY),
    train("max-length-below-minimum", ("train.max_length", "got 4"), "train.max_length=4"),
    train("lora-r-zero", ("method.r", "got 0"), "method.r=0"),
    train("lora-dropout-one", ("method.dropout", "got 1"), "method.dropout=1"),
    train("freeze-k-beyond-model", ("method.k=99", "only 2"), "method.k=99", method="freeze"),
    train("lora-unknown-target-modules", ("method.target_modules", "nope_proj", "q_proj"),
          "method.target_modules=[nope_proj]"),
    train("head-method-on-sft", ("method 'head'", "stage classify"), method="head"),
    train("dpo-beta-zero", ("stage.beta", "got 0"), "stage.beta=0", data="preference", stage="dpo"),
    # ----------------------------------------------------------------- train: overrides, flags
    train("override-unknown-key", ("'method.alfa'", "did you mean 'method.alpha'"), "method.alfa=8"),
    train("override-mistyped-value", ("train.batch_size", "'two'"), "train.batch_size=two"),
    train("override-missing-equals", ("'train.epochs'", "KEY=VALUE"), "train.epochs"),
    train("override-unknown-stage", ("unknown stage 'sfft'", "did you mean 'sft'"), "stage=sfft"),
    train("nproc-zero", ("--nproc", "got 0"), flags=("--nproc", "0")),
    train("nproc-not-a-number", ("--nproc", "integer"), flags=("--nproc", "two")),
    train("quiet-and-verbose", ("quiet and verbose", "choose one"), flags=("--verbose",)),
    # ----------------------------------------------------------------- train: output directory and model
    train("output-dir-under-proc", (UNWRITABLE, "not writable"), f"output_dir={UNWRITABLE}/runs"),
    train("output-dir-under-a-file", ("blocker", "not writable", "is a file"), "output_dir={tmp}/blocker/runs",
          data=with_dolly(write("blocker", "a regular file\n"))),
    train("model-path-is-a-file", ("model.bin", "is a file"), model=lambda ctx: ctx.tmp / "model.bin",
          data=with_dolly(write("model.bin", b"\x00" * 16))),
    train("model-offline-hub-id", ("'someorg/some-model'", "offline"), model="someorg/some-model"),
    # ----------------------------------------------------------------- train: runs it builds on
    train("init-from-missing", ("init_from", "nope", "does not exist"), config={"init_from": lambda ctx: ctx.tmp / "nope"}),
    train("init-from-unfinished", ("init_from", "unfinished-sft", "has not finished"),
          config={"init_from": lambda ctx: ctx.unfinished()}, needs=("sft",)),
    train("init-from-wrong-kind", ("init_from", "'tiny-bert'", "'tiny-llama'"),
          config={"init_from": lambda ctx: ctx.finished("classify", "tiny-bert", labels=["0", "1"])}),
    train("init-from-plain-dir", ("init_from", "plain", "not a run directory"),
          config={"init_from": lambda ctx: ctx.plain_dir()}),
    train("dpo-policy-is-classify-run", ("stage.policy", "classify run", "language-model run"), data="preference",
          stage="dpo", config={"stage": {"policy": lambda ctx: ctx.finished("classify", "tiny-llama", labels=["0", "1"])}}),
    train("dpo-policy-is-baseline", ("stage.policy", "zeroshot baseline", "language-model run"), data="preference",
          stage="dpo", config={"stage": {"policy": lambda ctx: ctx.zeroshot()}}),
    train("dpo-policy-missing", ("stage.policy", "nope", "does not exist"), data="preference", stage="dpo",
          config={"stage": {"policy": lambda ctx: ctx.tmp / "nope"}}),
    train("rlhf-reward-model-missing", ("stage.reward_model", "nope", "does not exist"), data="preference",
          stage="rlhf", config={"stage": {"reward_model": lambda ctx: ctx.tmp / "nope"}}),
    train("rlhf-reward-model-is-sft-run", ("stage.reward_model", "sft run", "reward run"), data="preference",
          stage="rlhf", config={"stage": {"reward_model": lambda ctx: ctx.run("sft")}}, needs=("sft",)),
    train("rlhf-reward-model-unset", ("stage.reward_model is not set",), data="preference", stage="rlhf"),
    train("rlhf-policy-unfinished", ("stage.policy", "has not finished"), data="preference", stage="rlhf",
          config={"stage": {"reward_model": lambda ctx: ctx.finished("reward", "tiny-llama"),
                            "policy": lambda ctx: ctx.unfinished()}}, needs=("sft",)),
    # ----------------------------------------------------------------- config show
    Case("config-show-unknown-key", files(config=lambda ctx: ctx.config("d.jsonl")),
         ("config", "show", "{config}", "stage.nope=1"), ("'stage.nope'", "unknown key")),
    Case("config-show-mistyped-value", files(config=lambda ctx: ctx.config("d.jsonl")),
         ("config", "show", "{config}", "train.lr=fast"), ("train.lr", "'fast'")),
    Case("config-show-missing-equals", files(config=lambda ctx: ctx.config("d.jsonl")),
         ("config", "show", "{config}", "train.lr"), ("'train.lr'", "KEY=VALUE")),
    Case("config-show-binary-file", files(config=write("run.yaml", NOT_UTF8)), ("config", "show", "{config}"),
         ("run.yaml", "not UTF-8")),
    Case("config-show-directory", files(config=lambda ctx: ctx.plain_dir()), ("config", "show", "{config}"),
         ("plain", "is a directory")),
    # ----------------------------------------------------------------- eval
    Case("eval-missing-run", nothing, ("eval", "{tmp}/nope", "--data", "{tmp}/d.jsonl"), ("nope", "does not exist")),
    Case("eval-unfinished-run", files(run=lambda ctx: ctx.unfinished()), ("eval", "{run}", "--data", "x.jsonl"),
         ("unfinished-sft", "has not finished"), needs=("sft",)),
    Case("eval-run-is-a-file", files(run=write("run.txt", "x")), ("eval", "{run}", "--data", "x.jsonl"),
         ("run.txt", "is a file")),
    Case("eval-plain-dir", files(run=lambda ctx: ctx.plain_dir()), ("eval", "{run}", "--data", "x.jsonl"),
         ("plain", "not a run directory")),
    Case("eval-data-missing", nothing, ("eval", "{sft}", "--data", "bad={tmp}/nope.jsonl"),
         ("--data bad=", "nope.jsonl", "not found")),
    Case("eval-data-is-directory", files(d=lambda ctx: ctx.plain_dir()), ("eval", "{sft}", "--data", "bad={d}"),
         ("--data bad=", "plain", "is a directory")),
    Case("eval-data-wrong-format", files(d=write("test.jsonl", rows("classification"))),
         ("eval", "{sft}", "--data", "bad={d}"), ("test.jsonl", "format 'classification'"), ("{sft}/eval/bad.json",)),
    Case("eval-data-name-without-file", nothing, ("eval", "{sft}", "--data", "bad="), ("--data bad=", "no file")),
    Case("eval-threshold-above-one", files(d=write("test.jsonl", rows("classification"))),
         ("eval", "{classify}", "--data", "test={d}", "--threshold", "1.5"), ("--threshold", "1.5", "between 0 and 1"),
         ("{classify}/eval/test.json",)),
    Case("eval-threshold-negative", files(d=write("test.jsonl", rows("classification"))),
         ("eval", "{classify}", "--data", "test={d}", "--threshold", "-0.1"), ("--threshold", "-0.1", "between 0 and 1")),
    Case("eval-threshold-on-sft-run", files(d=write("test.jsonl", rows("dolly"))),
         ("eval", "{sft}", "--data", "bad={d}", "--threshold", "0.5"), ("--threshold", "does not apply", "sft run")),
    # ----------------------------------------------------------------- merge
    Case("merge-missing-run", nothing, ("merge", "{tmp}/nope", "{tmp}/out"), ("merge", "nope", "does not exist"),
         ("{tmp}/out",)),
    Case("merge-unfinished-run", files(run=lambda ctx: ctx.unfinished()), ("merge", "{run}", "{tmp}/out"),
         ("merge", "has not finished"), ("{tmp}/out",), needs=("sft",)),
    Case("merge-baseline", files(run=lambda ctx: ctx.zeroshot()), ("merge", "{run}", "{tmp}/out"),
         ("merge", "zeroshot baseline", "no trained weights"), ("{tmp}/out",)),
    Case("merge-into-existing-dir", files(out=lambda ctx: ctx.write("existing/keep.txt", "mine\n").parent),
         ("merge", "{sft}", "{out}"), ("existing", "already exists"),
         ("{out}/config.json", "{out}/model.safetensors", "{out}/tokenizer.json")),
    Case("merge-out-under-proc", nothing, ("merge", "{sft}", f"{UNWRITABLE}/merged"), (UNWRITABLE, "not writable"),
         (UNWRITABLE,)),
    Case("merge-out-under-a-file", files(blocker=write("blocker", "a regular file\n")), ("merge", "{sft}", "{blocker}/out"),
         ("blocker", "not writable")),
    # ----------------------------------------------------------------- generate, chat
    Case("generate-classify-run", nothing, ("generate", "{classify}", "hello"), ("generate", "classify run",
                                                                                "cannot generate")),
    Case("generate-reward-run", nothing, ("generate", "{reward}", "hello"), ("generate", "reward run", "cannot generate")),
    Case("generate-plain-dir", files(d=lambda ctx: ctx.plain_dir()), ("generate", "{d}", "hello"),
         ("plain", "neither a run directory", "nor a model directory")),
    Case("generate-model-dir-without-weights", files(d=model_without_weights), ("generate", "{d}", "hello"),
         ("model directory", "noweights", "cannot load its weights"), needs=("sft",)),
    Case("generate-model-config-not-hf", files(d=lambda ctx: ctx.write("notamodel/config.json", "{}").parent),
         ("generate", "{d}", "hello"), ("model directory", "notamodel", "cannot load its config")),
    Case("generate-model-path-is-a-file", files(m=write("weights.bin", b"\x00" * 8)), ("generate", "{m}", "hello"),
         ("weights.bin", "is a file")),
    Case("generate-unfinished-run", files(run=lambda ctx: ctx.unfinished()), ("generate", "{run}", "hello"),
         ("generate", "has not finished"), needs=("sft",)),
    Case("generate-max-new-tokens-zero", nothing, ("generate", "{tmp}/x", "hello", "--max-new-tokens", "0"),
         ("--max-new-tokens", "greater than or equal to 1")),
    Case("chat-classify-run", nothing, ("chat", "{classify}"), ("chat", "classify run", "cannot generate")),
    Case("chat-missing-run", nothing, ("chat", "{tmp}/nope"), ("nope", "does not exist")),
    # ----------------------------------------------------------------- score
    Case("score-sft-run", nothing, ("score", "{sft}", "--prompt", "hi", "--response", "yo"),
         ("score", "sft run", "not a reward model")),
    Case("score-classify-run", nothing, ("score", "{classify}", "--prompt", "hi", "--response", "yo"),
         ("score", "classify run", "not a reward model")),
    Case("score-missing-run", nothing, ("score", "{tmp}/nope", "--prompt", "hi", "--response", "yo"),
         ("score", "nope", "does not exist")),
    Case("score-corrupt-summary", files(run=corrupt_summary),
         ("score", "{run}", "--prompt", "hi", "--response", "yo"), ("summary.json", "corrupt")),
    # ----------------------------------------------------------------- data inspect
    Case("inspect-not-utf8", files(d=write("data.jsonl", NOT_UTF8)), ("data", "inspect", "{d}", "--model", "tiny-llama"),
         ("data.jsonl", "not UTF-8")),
    Case("inspect-json-array-in-jsonl", files(d=write_json_array("data.jsonl", "dolly", indent=2)),
         ("data", "inspect", "{d}", "--model", "tiny-llama"), ("data.jsonl", "JSON array")),
    Case("inspect-directory", files(d=lambda ctx: ctx.plain_dir()), ("data", "inspect", "{d}", "--model", "tiny-llama"),
         ("plain", "is a directory")),
    Case("inspect-field-missing-equals", files(d=write("data.jsonl", rows("dolly"))),
         ("data", "inspect", "{d}", "--model", "tiny-llama", "--field", "response"), ("--field response", "CANONICAL=COLUMN")),
    Case("inspect-config-mix-of-two-formats",
         files(config=lambda ctx: ctx.config("d.jsonl", data={"train": [str(ctx.write("d.jsonl", rows("dolly"))),
                                                                        str(ctx.write("t.jsonl", rows("text")))]})),
         ("data", "inspect", "{config}"), ("data.train[1]", "t.jsonl", "format 'text'", "data.train[0]")),
    Case("inspect-config-with-format-flag", files(config=lambda ctx: ctx.config("d.jsonl")),
         ("data", "inspect", "{config}", "--format", "text"), ("--format/--field", "run.yaml", "data.format")),
    Case("inspect-model-is-a-file", files(d=write("data.jsonl", rows("dolly")), m=write("tok.bin", b"\x00")),
         ("data", "inspect", "{d}", "--model", "{m}"), ("tok.bin", "is a file")),
    # ----------------------------------------------------------------- zeroshot
    Case("zeroshot-out-under-proc", nothing,
         ("zeroshot", "--model", "tiny-llama", "--labels", "spam,ham", "--out", f"{UNWRITABLE}/zs"),
         (UNWRITABLE, "not writable"), (UNWRITABLE,)),
    Case("zeroshot-one-label", nothing, ("zeroshot", "--model", "tiny-llama", "--labels", "spam", "--out", "{tmp}/zs"),
         ("--labels", "two distinct labels", "'spam'"), ("{tmp}/zs",)),
    Case("zeroshot-label-word-missing-equals", nothing,
         ("zeroshot", "--model", "tiny-llama", "--labels", "a,b", "--label-word", "a", "--out", "{tmp}/zs"),
         ("--label-word a", "LABEL=WORD"), ("{tmp}/zs",)),
    Case("zeroshot-out-exists", files(out=lambda ctx: ctx.write("zs/keep.txt", "mine\n").parent),
         ("zeroshot", "--model", "tiny-llama", "--labels", "a,b", "--out", "{out}"), ("zs", "already exists"),
         ("{out}/config.yaml", "{out}/summary.json")),
    # ----------------------------------------------------------------- icl, zeroshot generation
    Case("icl-k-zero", *icl("--k", "0"), ("--k", "greater than or equal to 1", "got 0"), ("{tmp}/icl",)),
    Case("icl-train-missing", nothing, ("icl", "--model", "tiny-llama", "--train", "{tmp}/nope.jsonl", "--labels", "0,1",
                                        "--out", "{tmp}/icl"), ("nope.jsonl", "not found"), ("{tmp}/icl",)),
    Case("icl-labels-not-in-train", *icl(labels="spam,ham"), ("train.jsonl", "labels ['0', '1']", "not among the labels"),
         ("{tmp}/icl",)),
    Case("icl-label-missing-from-train", *icl(labels="0,1,2"), ("train.jsonl", "no example of label(s) ['2']"),
         ("{tmp}/icl",)),
    Case("icl-k-beyond-pool", *icl("--k", "20"), ("k=20", "only 8 examples"), ("{tmp}/icl",)),
    Case("icl-select-unknown", *icl("--select", "best"), ("--select", "'random' or 'nearest'", "'best'"), ("{tmp}/icl",)),
    Case("icl-generation-from-labelled-rows", *icl(labels=None), ("train.jsonl", "format 'classification'",
                                                                  "instruction, messages"), ("{tmp}/icl",)),
    Case("icl-classify-from-instruction-rows", *icl(train="dolly"), ("train.jsonl", "field 'label' is missing"),
         ("{tmp}/icl",)),
    Case("icl-embedder-unknown", *icl("--embedder", "nope-embedder"), ("embedding model 'nope-embedder'",
                                                                       "cannot be loaded"), ("{tmp}/icl",)),
    Case("icl-max-context-beyond-model", *icl("--max-context", "100000"), ("max_context=100000", "2048 positions"),
         ("{tmp}/icl",)),
    Case("zeroshot-label-word-without-labels", nothing,
         ("zeroshot", "--model", "tiny-llama", "--label-word", "a=b", "--out", "{tmp}/zs"),
         ("--label-word", "label words need labels"), ("{tmp}/zs",)),
    # ----------------------------------------------------------------- eval --generate
    Case("eval-generate-on-classify-run", files(d=write("test.jsonl", rows("classification"))),
         ("eval", "{classify}", "--data", "t={d}", "--generate", "2"), ("--generate", "does not apply", "classify run")),
    Case("eval-generate-on-zeroshot-classifier", files(run=lambda ctx: ctx.zeroshot(), d=write("t.jsonl", rows("dolly"))),
         ("eval", "{run}", "--data", "t={d}", "--generate", "2"),
         ("--generate", "zeroshot baseline (classification)", "does not apply")),
    Case("eval-generate-on-pretrain-run", files(run=lambda ctx: ctx.finished("pretrain", "tiny-llama"),
                                                d=write("t.jsonl", rows("dolly"))),
         ("eval", "{run}", "--data", "t={d}", "--generate", "2"), ("--generate", "does not apply", "pretrain run")),
    Case("eval-threshold-on-zeroshot-generation", files(run=zeroshot_generation, d=write("t.jsonl", rows("dolly"))),
         ("eval", "{run}", "--data", "t={d}", "--threshold", "0.5"),
         ("--threshold", "zeroshot baseline (generation)", "applies to classifiers")),
    Case("eval-max-new-tokens-without-generate", files(d=write("t.jsonl", rows("dolly"))),
         ("eval", "{sft}", "--data", "t={d}", "--max-new-tokens", "8"), ("--max-new-tokens 8", "--generate N")),
    Case("eval-generate-negative", files(d=write("t.jsonl", rows("dolly"))),
         ("eval", "{sft}", "--data", "t={d}", "--generate", "-1"), ("--generate", "got -1")),
    Case("eval-generate-on-plain-text", files(d=write("t.jsonl", rows("text"))),
         ("eval", "{sft}", "--data", "t={d}", "--generate", "2"), ("--generate", "t.jsonl", "plain text"),
         ("{sft}/eval/t.json",)),
    # ----------------------------------------------------------------- feedback
    Case("feedback-out-under-proc", files(p=write("prompts.txt", "Colour of snow?\n"),
                                          r=write("responses.jsonl", [{"prompt": "Colour of snow?", "response": "White."},
                                                                      {"prompt": "Colour of snow?", "response": "Blue."}])),
         ("feedback", "--prompts", "{p}", "--responses", "{r}", "--out", f"{UNWRITABLE}/fb", "--port", "0"),
         (UNWRITABLE, "not writable"), (UNWRITABLE,)),
    Case("feedback-prompts-not-utf8", files(p=write("prompts.txt", NOT_UTF8), r=write("r.jsonl", rows("preference"))),
         ("feedback", "--prompts", "{p}", "--responses", "{r}", "--out", "{tmp}/fb", "--port", "0"),
         ("prompts.txt", "not UTF-8"), ("{tmp}/fb",)),
    Case("feedback-prompts-missing", files(r=write("r.jsonl", rows("preference"))),
         ("feedback", "--prompts", "{tmp}/nope.txt", "--responses", "{r}", "--out", "{tmp}/fb", "--port", "0"),
         ("nope.txt", "not found"), ("{tmp}/fb",)),
    Case("feedback-responses-and-model", files(p=write("prompts.txt", "hi\n"), r=write("r.jsonl", rows("preference"))),
         ("feedback", "--prompts", "{p}", "--responses", "{r}", "--model", "tiny-llama", "--out", "{tmp}/fb"),
         ("--responses", "--model", "not both"), ("{tmp}/fb",)),
    Case("feedback-one-response-per-prompt",
         files(p=write("prompts.txt", "Colour of snow?\n"),
               r=write("r.jsonl", [{"prompt": "Colour of snow?", "response": "White."}])),
         ("feedback", "--prompts", "{p}", "--responses", "{r}", "--out", "{tmp}/fb", "--port", "0"),
         ("two different responses",), ("{tmp}/fb",)),
    Case("feedback-model-is-classify-run", files(p=write("prompts.txt", "hi\n")),
         ("feedback", "--prompts", "{p}", "--model", "{classify}", "--out", "{tmp}/fb", "--port", "0"),
         ("--model", "classify run", "cannot generate"), ("{tmp}/fb",)),
    # ----------------------------------------------------------------- rag index, rag query
    rag_index("rag-index-missing-doc", ("document file not found", "nope.txt"), docs=lambda ctx: ctx.tmp / "nope.txt"),
    rag_index("rag-index-empty-doc", ("empty.txt", "is empty"), docs=write("empty.txt", "")),
    rag_index("rag-index-doc-not-utf8", ("d.txt", "not UTF-8"), docs=write("d.txt", NOT_UTF8)),
    rag_index("rag-index-doc-is-directory", ("plain", "is a directory"), docs=lambda ctx: ctx.plain_dir()),
    rag_index("rag-index-unknown-field", ("d.jsonl", "no text field 'body'", "instruction, context, response"),
              "--field", "body", docs=write("d.jsonl", rows("dolly"))),
    rag_index("rag-index-empty-text-in-row", ("d.jsonl", "row 3", "'text'", "empty"),
              docs=write("d.jsonl", rows("classification", setitem(2, text=" ")))),
    rag_index("rag-index-unknown-id-field", ("d.jsonl", "no id field 'key'", "text, label"), "--id-field", "key",
              docs=write("d.jsonl", rows("classification"))),
    rag_index("rag-index-out-not-an-index", ("plain", "not a tunelab index"), out="{tmp}/plain",
              absent=("{tmp}/plain/index.json",),
              docs=lambda ctx: (ctx.plain_dir(), ctx.write("d.txt", "Snow is white.\n"))[1]),
    rag_index("rag-index-out-under-a-file", ("blocker is a file",), out="{tmp}/blocker/idx", absent=(),
              docs=lambda ctx: (ctx.write("blocker", "a regular file\n"), ctx.write("d.txt", "Snow is white.\n"))[1]),
    rag_index("rag-index-out-under-proc", (UNWRITABLE, "not writable"), out=f"{UNWRITABLE}/idx", absent=(UNWRITABLE,)),
    rag_index("rag-index-overlap-not-below-chunk-words", ("overlap (10)", "smaller than chunk_words (10)"),
              "--chunk-words", "10", "--overlap", "10"),
    rag_index("rag-index-chunk-words-zero", ("--chunk-words", "greater than or equal to 1"), "--chunk-words", "0"),
    rag_index("rag-index-unknown-model", ("embedding model 'minilm-l7'", "cannot be loaded"), "--model", "minilm-l7"),
    rag_index("rag-index-other-chunking-than-index", ("idx", "chunk_words=180", "got chunk_words=100"),
              "--chunk-words", "100", absent=(),
              docs=lambda ctx: (hand_index(ctx), ctx.write("d.txt", "Snow is white.\n"))[1]),
    rag_index("rag-index-other-model-than-index", ("idx", "embedded with 'minilm-l6'", "not 'tiny-bert'"),
              "--model", "tiny-bert", absent=(),
              docs=lambda ctx: (hand_index(ctx), ctx.write("d.txt", "Snow is white.\n"))[1]),
    Case("rag-query-missing-index", nothing, ("rag", "query", "{tmp}/nope", "snow"), ("nope", "does not exist")),
    Case("rag-query-plain-dir", files(d=lambda ctx: ctx.plain_dir()), ("rag", "query", "{d}", "snow"),
         ("plain", "not a tunelab index", "no index.json")),
    Case("rag-query-index-is-a-file", files(d=write("idx.txt", "x")), ("rag", "query", "{d}", "snow"),
         ("idx.txt", "is a file")),
    Case("rag-query-manifest-not-utf8", files(d=lambda ctx: ctx.write("idx/index.json", NOT_UTF8).parent),
         ("rag", "query", "{d}", "snow"), ("index.json", "corrupt", "not valid JSON")),
    Case("rag-query-manifest-garbled", files(d=lambda ctx: ctx.write("idx/index.json", '{"format": "tunelab-rag-index", '
                                                                                       '"table_version": "x"}').parent),
         ("rag", "query", "{d}", "snow"), ("index.json", "corrupt", "table_version")),
    Case("rag-query-table-missing", files(d=lambda ctx: hand_index(ctx, table=False)), ("rag", "query", "{d}", "snow"),
         ("idx", "corrupt", "table 'chunks' is missing")),
    Case("rag-query-other-model", files(d=hand_index), ("rag", "query", "{d}", "snow", "--model", "tiny-bert"),
         ("embedded with 'minilm-l6'", "not 'tiny-bert'")),
    Case("rag-query-empty-question", files(d=hand_index), ("rag", "query", "{d}", "  "), ("the query is empty",)),
    Case("rag-query-k-zero", files(d=hand_index), ("rag", "query", "{d}", "snow", "--k", "0"),
         ("--k", "greater than or equal to 1")),
    Case("rag-query-unknown-mode", files(d=hand_index), ("rag", "query", "{d}", "snow", "--mode", "sparse"),
         ("--mode", "'sparse'", "'dense', 'hybrid'")),
    # ----------------------------------------------------------------- rag baseline
    rag_baseline("rag-baseline-missing-index", ("nope", "does not exist"), index=lambda ctx: ctx.tmp / "nope"),
    rag_baseline("rag-baseline-corrupt-index", ("idx", "corrupt", "table 'chunks' is missing"),
                 index=lambda ctx: hand_index(ctx, table=False)),
    rag_baseline("rag-baseline-index-embedder-unknown", ("embedding model 'nope-embedder'", "cannot be loaded"),
                 index=lambda ctx: hand_index(ctx, embedder="nope-embedder")),
    rag_baseline("rag-baseline-k-zero", ("--k", "greater than or equal to 1", "got 0"), "--k", "0"),
    rag_baseline("rag-baseline-template-without-passages", ("--template", "must hold {passages}"),
                 "--template", "{{query}}"),  # {{ }}: args are format strings
    Case("eval-rag-gold-field-missing", files(run=rag_run, d=write("t.jsonl", rows("classification"))),
         ("eval", "{run}", "--data", "t={d}"), ("t.jsonl", "no gold field 'pmid'", "text, label")),
    # ----------------------------------------------------------------- runs
    Case("runs-output-dir-is-a-file", files(d=write("runs.txt", "x")), ("runs", "--output-dir", "{d}"),
         ("--output-dir", "runs.txt", "is a file")),
    Case("runs-corrupt-index", files(d=lambda ctx: ctx.write("index/runs.sqlite", NOT_UTF8 * 64).parent),
         ("runs", "--output-dir", "{d}"), ("runs.sqlite", "not a readable runs database")),
    # ----------------------------------------------------------------- machine
    Case("machine-zero-threads", nothing, ("machine", "--threads", "0"), ("--threads", "greater than or equal to 1")),
]


# --------------------------------------------------------------------------- running the table


class _Values(dict):
    """Placeholder values: the case's own, then {tmp}, the hand-written runs and the trained one."""

    def __init__(self, ctx: Ctx, own: dict):
        super().__init__({key: str(value) for key, value in own.items()})
        self.ctx = ctx

    def __missing__(self, key: str) -> str:
        if key == "tmp":
            value = self.ctx.tmp
        elif key == "classify":
            value = self.ctx.finished("classify", "tiny-bert", labels=["0", "1"])
        elif key == "reward":
            value = self.ctx.finished("reward", "tiny-llama")
        elif key in RUNS:
            value = self.ctx.run(key)
        else:
            raise KeyError(key)
        self[key] = str(value)  # made once, however often the case names it
        return self[key]


@dataclass
class Outcome:
    args: list[str]
    rc: int
    out: str
    err: str
    absent: list[str]
    tmp: Path


@pytest.fixture(scope="module")
def outcomes(request, trained_run, tmp_path_factory) -> dict[str, Future]:
    """Run the selected cases concurrently, all of them before any test checks one: {case id: Future[Outcome]}.

    Everything happens inside this fixture's setup, so no thread starts a subprocess while pytest
    changes os.environ (PYTEST_CURRENT_TEST) between tests.
    """
    selected = {item.callspec.params["case_id"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_bad_input" and hasattr(item, "callspec")}
    cases = [case for case in CASES if case.id in selected]
    root = tmp_path_factory.mktemp("bad-input")
    training = ThreadPoolExecutor(1)  # apart from the cases' pool: a case waiting for the run never blocks it
    started: dict[str, Future] = {}
    lock = threading.Lock()

    def start(kind: str) -> Future:
        with lock:
            if kind not in started:
                started[kind] = training.submit(trained_run, kind, "lora")
            return started[kind]

    for kind in set().union(set(), *(case.runs for case in cases)):  # trains while the run-free cases go
        start(kind)

    def execute(case: Case) -> Outcome:
        tmp = root / case.id
        tmp.mkdir()
        ctx = Ctx(tmp, lambda kind: start(kind).result())
        values = _Values(ctx, case.build(ctx) or {})
        args = [arg.format_map(values) for arg in case.args]
        rc, out, err = run_cli(*args, timeout=240)  # a case that wrongly starts a server ends too
        return Outcome(args, rc, out, err, [path.format_map(values) for path in case.absent], tmp)

    with ThreadPoolExecutor(WORKERS) as pool:
        futures = {case.id: pool.submit(execute, case) for case in sorted(cases, key=lambda case: bool(case.runs))}
    training.shutdown()
    return futures


@pytest.mark.parametrize("case_id", [case.id for case in CASES])
def test_bad_input(case_id, outcomes):
    case = next(c for c in CASES if c.id == case_id)
    outcome = outcomes[case_id].result()
    context = f"\n$ tunelab {' '.join(outcome.args)}\n"
    try:
        assert_user_error(outcome.rc, outcome.out, outcome.err, *case.fragments)
    except AssertionError as exc:
        raise AssertionError(f"{context}{exc}") from None
    for path in outcome.absent:
        assert not Path(path).exists(), f"{context}{path} must not exist after the error"
    assert_no_run_left(outcome.tmp / "runs")


def test_the_table_covers_every_command_with_distinct_cases():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 50, len(ids)
    commands = {case.args[0] if case.args[0] not in ("config", "data", "rag") else " ".join(case.args[:2])
                for case in CASES}
    assert commands >= {"train", "eval", "merge", "generate", "chat", "score", "data inspect", "zeroshot", "icl", "feedback",
                        "config show", "runs", "rag index", "rag query", "rag baseline"}, commands
