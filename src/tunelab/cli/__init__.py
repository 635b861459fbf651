"""The `tunelab` command line: a thin layer over the library."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..core.errors import TunelabError
from . import compare as _compare
from . import serve as _serve
from .rag import rag_app
from .baselines import register as register_baselines
from .machine import register as register_machine
from .push import register as register_push
from .sweep import register as register_sweep

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Adapt pretrained LLMs with every major fine-tuning technique, measured honestly.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the run config schema.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect datasets.")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
_compare.register(app)
_serve.register(app)  # serve
app.add_typer(rag_app, name="rag")
register_baselines(app)  # zeroshot, icl
register_sweep(app)
register_push(app)  # push
register_machine(app)  # machine


@app.command()
def train(
    config: Path = typer.Argument(..., help="Run config YAML."),
    overrides: Optional[List[str]] = typer.Argument(None, help="KEY=VALUE overrides, e.g. train.epochs=1 method.r=8"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    quiet: bool = typer.Option(False, "--quiet", help="Print nothing but the run directory."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Also print the Trainer's per-step log records "
                                                                  "(always in RUN/train.log) and library progress bars."),
    nproc: int = typer.Option(1, "--nproc", help="Data-parallel processes (torchrun; gloo on CPU, NCCL on GPUs)."),
):
    """Train as CONFIG says: a progress line and a summary on stderr; the run directory is the last line of stdout."""
    from ..training.engine import is_main_process, single_process, train as run_training

    if nproc != 1:
        from ..training.launch import train_distributed

        print(train_distributed(config, overrides or [], nproc, resume=resume, overwrite=overwrite, quiet=quiet,
                                verbose=verbose))
        return
    run_dir = run_training(config, overrides or [], resume=resume, overwrite=overwrite, quiet=quiet, verbose=verbose)
    if not single_process():  # a rank of `--nproc N` (torchrun)
        from ..training.launch import leave_process_group

        leave_process_group()
    if is_main_process():
        print(run_dir)


@config_app.command("schema")
def config_schema():
    """Print the run config's JSON schema."""
    from ..config import RunConfig

    print(json.dumps(RunConfig.model_json_schema(), indent=2))


@config_app.command("show")
def config_show(config: Path, overrides: Optional[List[str]] = typer.Argument(None)):
    """Print the fully resolved config (with defaults and overrides)."""
    from ..config import load_config

    print(load_config(config, overrides or []).to_yaml(), end="")


@app.command()
def models():
    """List bundled models with parameter counts and origin."""
    from ..models import list_models

    print(f"{'name':<14} {'kind':<8} {'params':>12}  origin")
    for row in list_models():
        params = f"{row['params']:,}" if row["params"] else "not installed"
        print(f"{row['name']:<14} {row['kind']:<8} {params:>12}  {row['origin']}")
    print("Also accepted: any local Hugging Face model directory, or a Hub id when online.")


@data_app.command("inspect")
def data_inspect(
    file: str = typer.Argument(..., help="Data file (.jsonl/.json/.csv/.parquet), Hub dataset id, or a run config "
                                         "(.yaml: its data as the run mixes it)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model whose tokenizer and chat template to use "
                                                              "(default: the config's model, else smollm2-135m)."),
    data_format: str = typer.Option("auto", "--format", help="Row format (auto detects it; data files only)."),
    field: Optional[List[str]] = typer.Option(None, "--field", help="Column mapping CANONICAL=COLUMN (repeatable; "
                                                                    "data files only)."),
):
    """Format, rows, token-length stats and one rendered example (trained span in ⟦ ⟧); for a run config, also
    the rows each source gives to the mix."""
    from ..data.inspect import inspect_data, inspect_mix

    fields = _key_values(field, "--field", "CANONICAL=COLUMN, e.g. response=answer")
    if Path(file).suffix.lower() in (".yaml", ".yml"):
        from ..config import load_config
        from ..stages import STAGES

        if data_format != "auto" or fields:
            raise TunelabError(f"--format/--field apply to data files; for the run config {file} set data.format "
                               "/ data.fields in it")
        cfg = load_config(file)
        model = model or cfg.model
        report = inspect_mix(cfg.data, cfg.train.seed, STAGES[cfg.stage.name].ACCEPTS, model)
        print(f"config:  {file} (stage {cfg.stage.name}, seed {cfg.train.seed})")
    else:
        model = model or "smollm2-135m"
        report = inspect_data(file, model, data_format, fields)  # the data is read before the tokenizer loads
        print(f"source:  {report['source']}")
    t = report["tokens"]
    print(f"format:  {report['format']}")
    if "mix" in report:
        origin = f" (from {report['eval_source']})" if report["eval_rows"] else ""
        print(f"rows:    {report['rows']} train, {report['eval_rows']} eval{origin}")
        _print_mix(report["mix"])
    else:
        print(f"rows:    {report['rows']}")
    print(f"tokens:  min {t['min']}  median {t['median']}  p95 {t['p95']}  max {t['max']}  ({model} tokenizer)")
    if "labels" in report:
        print("labels:  " + ", ".join(f"{k}={v}" for k, v in report["labels"].items()))
    print("example (⟦ ⟧ marks tokens that carry loss):\n" + report["example"])


def _print_mix(mix: list[dict]) -> None:
    """Per source: training rows taken / rows available, share of the training set."""
    names = [f"{entry['key']} {entry['source']}" for entry in mix]
    width = max(len(name) for name in names)
    print(f"mix:     {'source':<{width}}  {'taken':>7} / {'available':<9}  share")
    for name, entry in zip(names, mix):
        notes = [f"fraction {entry['fraction']:g}"] if entry["fraction"] is not None else []
        notes += ["upsampled"] if entry["upsampled"] else []
        notes += [f"{entry['eval']} held out for eval"] if entry["eval"] else []
        print(f"         {name:<{width}}  {entry['taken']:>7} / {entry['rows']:<9}  {entry['share']:6.1%}"
              + (f"  ({', '.join(notes)})" if notes else ""))


@app.command()
def runs(output_dir: Path = typer.Option(Path("runs"), "--output-dir", help="Where runs are kept.")):
    """List finished runs from the output directory's index."""
    from ..runs.directory import list_runs

    rows = list_runs(output_dir)
    if not rows:
        print(f"no runs in {output_dir}")
        return
    print(f"{'name':<32} {'stage':<9} {'method':<8} {'model':<14} {'metric':<24} finished")
    for r in rows:
        value = f"{r['metric_value']:.4g}" if r["metric_value"] is not None else "-"
        print(f"{r['name']:<32} {r['stage']:<9} {r['method']:<8} {r['model']:<14} "
              f"{r['metric_name'] + '=' + value:<24} {r['finished_at']}")


@app.command()
def generate(
    run_or_model: str = typer.Argument(..., help="Run directory, bundled model name, model dir or Hub id."),
    prompt: str = typer.Argument(...),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy."),
):
    """Generate a reply to PROMPT."""
    from ..runs.open import load_generator

    print(load_generator(run_or_model).generate(prompt, max_new_tokens=max_new_tokens, temperature=temperature))


@app.command()
def chat(
    run_or_model: str = typer.Argument(...),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0),
):
    """Interactive chat (empty line or Ctrl-D ends it)."""
    from ..runs.open import load_generator

    loaded = load_generator(run_or_model, "chat")
    messages: list[dict] = []
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            break
        if not text:
            break
        messages.append({"role": "user", "content": text})
        reply = loaded.generate(messages, max_new_tokens=max_new_tokens, temperature=temperature)
        messages.append({"role": "assistant", "content": reply})
        print(f"model> {reply}", flush=True)


@app.command()
def merge(
    run: Path = typer.Argument(..., help="Finished run directory."),
    out: Path = typer.Argument(..., help="New directory for the merged model."),
):
    """Write RUN as a plain transformers model (method folded into the weights) + tokenizer to OUT
    (the same as `tunelab export RUN --format safetensors --out OUT`)."""
    from ..export.merge import merge_run

    print(merge_run(run, out))


@app.command()
def export(
    run: Path = typer.Argument(..., help="Finished run directory."),
    fmt: str = typer.Option(..., "--format", help="safetensors (merged transformers model), gguf (llama.cpp) "
                                                  "or onnx (classifiers, onnxruntime)."),
    out: Path = typer.Option(..., "--out", help="New (or empty) directory to write."),
    quant: Optional[str] = typer.Option(None, "--quant", help="gguf: f16 (default) or q8_0."),
    adapter: bool = typer.Option(False, "--adapter", help="gguf, LoRA runs: write a llama.cpp LoRA adapter "
                                                         "(applied on the base GGUF) instead of merging."),
):
    """Write RUN in FORMAT to OUT, checked against the run before it is kept; prints OUT."""
    from ..export import ExportOptions, export_run

    print(export_run(run, fmt, out, ExportOptions(quant=quant, adapter=adapter)))


@app.command("eval")
def eval_(
    run: Path = typer.Argument(..., help="Finished run directory (trained, `tunelab zeroshot` or `tunelab icl`)."),
    data: List[str] = typer.Option(..., "--data", help="Test set NAME=FILE (repeatable), e.g. --data email=e.jsonl."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Two labels: predict the positive class when P >= T."),
    positive: Optional[str] = typer.Option(None, "--positive", help="Two labels: the positive class (default: 2nd in sorted order)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    max_rows: Optional[int] = typer.Option(None, "--max-rows", min=1, help="Score only the first N rows of each file."),
    reward_model: Optional[Path] = typer.Option(None, "--reward-model", help="rlhf runs: score with this reward run instead of the run's own."),
    generate_rows: Optional[int] = typer.Option(None, "--generate", help="sft runs, generation baselines: ROUGE-L of greedy replies to the first N rows."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="With --generate: tokens per reply (default 64)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables."),
):
    """Score RUN on named test sets side by side with its stage's metrics; writes RUN/eval/<name>.json."""
    from ..evaluate import evaluate, format_report, parse_data_args

    result = evaluate(run, parse_data_args(data), threshold=threshold, positive=positive, batch_size=batch_size,
                      max_rows=max_rows, reward_model=str(reward_model) if reward_model else None,
                      generate=generate_rows, max_new_tokens=max_new_tokens)
    print(json.dumps(result, indent=2) if as_json else format_report(result))


@app.command()
def score(
    run: Path = typer.Argument(..., help="Finished reward run directory."),
    prompt: str = typer.Option(..., "--prompt", help="The prompt (plain text or an HH 'Human:/Assistant:' transcript)."),
    response: str = typer.Option(..., "--response", help="The response to score."),
):
    """Print the reward that reward run RUN gives RESPONSE to PROMPT."""
    from ..runs.open import load_scorer

    print(f"{load_scorer(run).score([prompt], [response])[0]:.6f}")


@app.command()
def feedback(
    prompts: Path = typer.Option(..., "--prompts", help="Prompts: .txt (one per line) or .jsonl/.json/.csv with a 'prompt' field."),
    out: Path = typer.Option(..., "--out", help="Directory for preference.jsonl, rating.jsonl and judgements.jsonl."),
    responses: Optional[Path] = typer.Option(None, "--responses", help="Rows {prompt, response, model?}: two per prompt."),
    model: Optional[List[str]] = typer.Option(None, "--model", help="Run dir or model to generate with: once (two samples) or twice."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)."),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port (0: any free port)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1),
):
    """Serve a local page to compare and rate pairs of responses; judgements append to OUT."""
    from ..feedback import FeedbackApp, Generator, read_prompts, read_responses, serve

    if (responses is None) == (not model):
        raise TunelabError("give either --responses FILE or --model (once or twice), not both or neither")
    prompt_list, given = read_prompts(prompts), read_responses(responses) if responses else None  # before any model loads
    generator = Generator(list(model), max_new_tokens) if model else None
    app_ = FeedbackApp(prompt_list, out, given, generator)
    serve(app_, host, port)


def _key_values(items: list[str] | None, flag: str, form: str) -> dict[str, str]:
    """Repeated ``KEY=VALUE`` options -> {key: value}; an item without ``=`` is a one-line error."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise TunelabError(f"{flag} {item}: expected {form}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def main() -> None:
    try:  # typer >= 0.2x vendors click as typer._click; older typer uses click itself
        from typer._click import exceptions as click
    except ImportError:
        from click import exceptions as click

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        code = app(standalone_mode=False)  # click's own errors come here too, to be printed as one line
    except click.NoArgsIsHelpError as exc:  # `tunelab` alone: the help is already printed
        sys.exit(exc.exit_code)
    except click.UsageError as exc:  # a missing argument, an unknown option, a value out of range
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        print(f"error: {exc.format_message()}{where}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except TunelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    if isinstance(code, int) and code:  # typer.Exit(code) / ctx.exit(code) inside a command
        sys.exit(code)
