"""The training path, top to bottom: load model -> apply method -> build data -> train -> evaluate -> save."""
from __future__ import annotations

import contextlib
import math
import os
import resource
import time
from pathlib import Path

import yaml

from ..config import RunConfig, load_config
from ..core import console
from ..core.errors import TunelabError
from ..methods import METHODS
from ..models import DeferredTokenizer, count_params, max_positions, resolve
from ..runs import directory as rundir
from ..runs.open import check_links, load_links
from ..stages import STAGES
from . import precision, row_threads, trackers, warm_start
from .allocator import freed_memory_kept
from .compiled import compiled_blocks
from .fast_dropout import fast_dropout
from .fused_lora import fused_lora_layers
from .fused_rms_norm import fused_rms_norms
from .progress import format_duration, library_output
from .tied_embedding import embedding_rows_in_place


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB). Linux: VmHWM, which starts afresh at exec; ru_maxrss
    would carry over the peak of the parent that spawned us (e.g. `tunelab compare`'s own models)."""
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _unpacked_if_needed(cfg: RunConfig, method) -> RunConfig:
    """A method that cannot keep packed examples apart (it declares PACKING_UNSUPPORTED) trains unpacked."""
    reason = getattr(method, "PACKING_UNSUPPORTED", None)
    if reason is None or not cfg.train.packing:
        return cfg
    if "packing" in cfg.train.model_fields_set:
        raise TunelabError(f"train.packing=true does not work with method {cfg.method.name} ({reason}); "
                           "set train.packing=false")
    console.note(f"note: method {cfg.method.name} trains without packing ({reason})")
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"packing": False})})


def _check_max_length(cfg: RunConfig) -> None:
    """train.max_length within the model's context (its config.json, read without loading weights)."""
    limit = max_positions(cfg.model)
    if limit is not None and cfg.train.max_length > limit:
        raise TunelabError(f"train.max_length={cfg.train.max_length} is beyond the context of model '{cfg.model}' "
                           f"({limit} positions, max_position_embeddings in its config.json); "
                           f"set train.max_length to at most {limit}")


def _check_resumable(cfg: RunConfig, run_dir: Path) -> None:
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        return
    saved = yaml.safe_load(saved_path.read_text())
    current = cfg.model_dump(mode="json")
    for key in ("model", "stage", "method"):
        if saved.get(key) != current[key]:
            raise TunelabError(f"--resume: {key} differs from the run in {run_dir} ({saved.get(key)!r} vs {current[key]!r})")


def train(config: RunConfig | str | Path | dict, overrides: list[str] | None = None, *,
          resume: bool = False, overwrite: bool = False, quiet: bool = False, verbose: bool = False,
          callbacks: list | None = None, tags: dict | None = None) -> Path:
    """Run one fine-tuning job as the config says; return the run directory.

    Output on stderr: a line saying what trains, one progress line and a summary; ``verbose`` adds
    the Trainer's per-step log records (always in RUN/train.log) and the libraries' own progress
    bars and warnings; ``quiet`` shows nothing. The run directory is locked for the whole run: a
    second `train` aimed at it refuses at once. ``callbacks``: extra transformers TrainerCallbacks
    (a sweep's pruning reporter); ``tags``: written to the run's trackers (a sweep's study and trial;
    ``study`` also names the MLflow experiment).
    """
    level = console.level_from(quiet, verbose)
    cfg = config if isinstance(config, RunConfig) else load_config(config, overrides)
    # Only rank 0 judges/changes the run directory (and locks it); other ranks just follow it.
    with console.at_level(level), rundir.RunLock(cfg.run_dir) if is_main_process() else contextlib.nullcontext():
        return _train(cfg, resume=resume, overwrite=overwrite, level=level, callbacks=callbacks or [],
                      tags=tags or {})


def _train(cfg: RunConfig, *, resume: bool, overwrite: bool, level: str, callbacks: list, tags: dict) -> Path:
    stage, method = STAGES[cfg.stage.name], METHODS[cfg.method.name]
    if hasattr(method, "check_stage"):
        method.check_stage(stage)  # a method that cannot serve the stage fails before anything loads
    if cfg.train.compile and cfg.stage.name == "rlhf":  # it generates inside the training loop: new shapes each step
        raise TunelabError("train.compile=true does not apply to stage rlhf (it generates during training); "
                           "set train.compile to false")
    row_threads.check_config(cfg, single_process())
    row_threads.cap_malloc_arenas(cfg)
    cfg = _unpacked_if_needed(cfg, method)
    run_dir = cfg.run_dir
    main = is_main_process()
    # Only rank 0 judges/changes the run directory; other ranks just follow it.
    checkpoint = rundir.prepare(run_dir, resume, overwrite) if main else (rundir.last_checkpoint(run_dir) if resume else None)

    # Everything that can fail on bad input happens before the run directory is touched.
    # Runs this one builds on (init_from, stage.policy, stage.reward_model) are opened and checked
    # here, before any loading; the loaded models are handed down to the stage.
    if cfg.init_from:
        warm_start.inherit(cfg, stage)  # an incompatible earlier run fails here
    check_links(cfg)
    _check_max_length(cfg)
    trackers.check_installed(cfg.train.report_to)
    # The data is read and checked before the tokenizer loads; may learn settings (labels).
    train_ds, eval_ds = stage.build_datasets(cfg, DeferredTokenizer(cfg.model))
    _check_eval_settings(cfg, eval_ds)
    plan = precision.plan(cfg)  # train.precision x train.base_dtype on this hardware; conflicts fail here
    with library_output(level):  # imports transformers: only once the data has passed its checks
        return _train_checked(cfg, stage, method, checkpoint, train_ds, eval_ds, plan, resume=resume,
                              overwrite=overwrite, level=level, callbacks=callbacks, tags=tags)


def _train_checked(cfg: RunConfig, stage, method, checkpoint, train_ds, eval_ds, plan: precision.Plan, *,
                   resume: bool, overwrite: bool, level: str, callbacks: list, tags: dict) -> Path:
    """Load model -> apply method -> train -> evaluate -> save, on input that passed every check."""
    from transformers import set_seed

    run_dir, main = cfg.run_dir, is_main_process()

    set_seed(cfg.train.seed)  # nothing above draws random numbers (the data split has its own seeded RNG)
    if checkpoint:
        _check_resumable(cfg, run_dir)
    links = load_links(cfg)
    model, tokenizer = stage.build_model(cfg, links)
    model = method.apply(model, cfg.method)
    if cfg.init_from:
        warm_start.load_weights(model, cfg)
    precision.store_frozen(model, plan.base_dtype)  # bf16: frozen weights only; trainable ones stay fp32
    row_threads.check_model(model, cfg.train.row_threads)
    trainable, total = count_params(model)
    console.note(f"model {cfg.model} | stage {cfg.stage.name} | method {cfg.method.name} | "
                 f"trainable params {trainable:,} / {total:,} ({100 * trainable / total:.2f}%) | "
                 f"{len(train_ds)} train / {len(eval_ds)} eval examples")

    if overwrite and not resume and main:
        rundir.clear(run_dir)
    if checkpoint and main:
        rundir.clean_partial_checkpoints(run_dir)
        rundir.truncate_metrics(run_dir, int(checkpoint.name.split("-")[-1]))
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        from .trainer import make_trainer  # torch and transformers: only once the input has passed every check

        trainer = make_trainer(cfg, model, tokenizer, stage, train_ds, eval_ds, run_dir, level, links,
                               resumed_step=int(checkpoint.name.split("-")[-1]) if checkpoint else None,
                               autocast_bf16=plan.autocast_bf16)
        if trainer.args.gradient_accumulation_steps != cfg.train.grad_accum:
            console.note(f"micro-batches of {trainer.args.per_device_train_batch_size} rows x "
                         f"{trainer.args.gradient_accumulation_steps} per optimizer step (train.merge_accumulation="
                         f"{cfg.train.merge_accumulation} merged {cfg.train.batch_size} x {cfg.train.grad_accum})")
        tracking = trackers.callbacks(cfg, run_dir, tags)
        for callback in [*callbacks, *tracking]:
            trainer.add_callback(callback)
        if trainer.is_world_process_zero():
            (run_dir / "config.yaml").write_text(cfg.to_yaml())
        started = time.time()
        # Under compile, inductor fuses the adapters' small ops and peft's input casts; eager, plain LoRA
        # layers train as one fused autograd node each, any other adapter skips the casts, and dropout
        # masks come from a faster generator than PyTorch's CPU bernoulli_. A trained embedding tied to
        # the LM head adds its gradient rows in place (one process: DDP reduces gradients as they accumulate).
        # Llama-style RMSNorms run as one node that keeps less for backward (eager only, like LoRA's).
        # Memory a step frees stays in the process for the next one (glibc: no fresh mmap per big block).
        eager = not cfg.train.compile
        with freed_memory_kept(), compiled_blocks(model, cfg.train.compile), fused_lora_layers(model, eager), \
                fused_rms_norms(model, eager), \
                precision.adapters_take_autocast_inputs(model, plan.autocast_bf16 and eager), \
                fast_dropout(model, eager and cfg.train.fast_dropout), \
                embedding_rows_in_place(model, single_process()) as tied_rows, \
                row_threads.rows_side_by_side(trainer, cfg.train.row_threads, tied_rows):
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        train_seconds = time.time() - started
        best = trainer.best.summary() if trainer.best is not None else {}
        metrics = _final_metrics(trainer, eval_ds, getattr(stage, "LOSS_IS_NLL", False), best.get("best_step"))
        batching = _batching_stats(trainer)
        distributed = _rank_checksums(model)
    except BaseException:
        trackers.close(locals().get("tracking", []))
        if rundir.last_checkpoint(run_dir) is None and not resume and main:
            rundir.clear(run_dir)  # nothing resumable: leave no half-written run behind
        raise

    if trainer.is_world_process_zero():
        method.save(trainer.model if not hasattr(trainer.model, "module") else trainer.model.module, run_dir)
        tokenizer.save_pretrained(run_dir / "tokenizer")
        summary = {
            "name": cfg.name,
            "stage": cfg.stage.name,
            "method": cfg.method.name,
            "model": cfg.model,
            "model_path": resolve(cfg.model),
            "trainable_params": trainable,
            "total_params": total,
            "trainable_percent": round(100 * trainable / total, 4),
            "train_seconds": round(train_seconds, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "train_tokens": int(trainer.state.num_input_tokens_seen),
            "train_examples": len(train_ds),
            "eval_examples": len(eval_ds),
            "steps": trainer.state.global_step,
            "precision": "bf16" if trainer.args.bf16 else "fp32",
            "base_dtype": plan.base_dtype,
            "world_size": trainer.args.world_size,
            # the geometry trained (train.merge_accumulation may merge accumulated micro-batches)
            "micro_batch_rows": trainer.args.per_device_train_batch_size,
            "accumulated_micro_batches": trainer.args.gradient_accumulation_steps,
            **batching,
            **distributed,
            **best,
            "early_stopped": _early_stopped(cfg, trainer),
            "metrics": metrics,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (run_dir / "best.pt").unlink(missing_ok=True)  # the best weights are the saved ones now
        rundir.plot_loss(run_dir)
        rundir.write_json_atomic(run_dir / "summary.json", summary)
        rundir.index_run(Path(cfg.output_dir), run_dir, summary, stage.KEY_METRIC)
        trackers.finish(tracking, summary, run_dir, tags)
        console.note(_summary_line(cfg, summary, stage.KEY_METRIC))
    return run_dir


def _summary_line(cfg: RunConfig, summary: dict, key_metric: str) -> str:
    """The run in one line: steps, time, final train loss and the stage's key metric (before -> after)."""
    metrics = summary["metrics"]
    parts = [f"done {cfg.name}: {summary['steps']} steps in {format_duration(summary['train_seconds'])}"]
    if "train_loss" in metrics:
        parts.append(f"train loss {metrics['train_loss']:.4g}")
    if key_metric in metrics:
        before = metrics.get(f"before_{key_metric}")
        parts.append(f"{key_metric} {before:.4g} -> {metrics[key_metric]:.4g}" if before is not None
                     else f"{key_metric} {metrics[key_metric]:.4g}")
    return ", ".join(parts)


def single_process() -> bool:
    """True unless torchrun/accelerate launched several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) == 1


def is_main_process() -> bool:
    """True on rank 0 of a torchrun/accelerate launch, and in a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def _rank_checksums(model) -> dict:
    """In a multi-process run, every rank's checksum of its trainable weights (they must agree)."""
    import hashlib

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return {}
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, digest.hexdigest())
    return {"rank_weight_checksums": gathered}


def _batching_stats(trainer) -> dict:
    """Padding fraction of the training batches, measured by collating one epoch (no model calls)."""
    collator = trainer.data_collator
    if not hasattr(collator, "stats"):
        return {}
    collator.reset()
    for _ in trainer.get_train_dataloader():
        pass
    return collator.stats()


def _check_eval_settings(cfg: RunConfig, eval_ds) -> None:
    """Settings that act on evaluations need eval data (before the run directory is touched)."""
    t = cfg.train
    asked = [name for name, on in (("train.early_stopping", t.early_stopping), ("train.load_best", t.load_best),
                                   ("train.eval_steps", t.eval_steps)) if on]
    if asked and not eval_ds:
        raise TunelabError(f"{asked[0]} needs eval data, but this run has none; set data.eval or "
                           f"data.eval_fraction above 0")


def _early_stopped(cfg: RunConfig, trainer) -> bool:
    """Whether early stopping ended the run before its planned steps."""
    return bool(cfg.train.early_stopping) and trainer.state.global_step < trainer.state.max_steps


def _final_metrics(trainer, eval_ds, loss_is_nll: bool, best_step: int | None = None) -> dict:
    """Final eval metrics, plus the same metrics before training (eval_before) as before_eval_*.

    With train.load_best (``best_step``) the final metrics are those of the best evaluation, whose
    weights the run ends with.

    Perplexity (exp of the eval loss) only for stages whose loss is a per-token NLL.
    """
    history = trainer.state.log_history
    train_losses = [r["train_loss"] for r in history if "train_loss" in r]
    metrics = {"train_loss": train_losses[-1]} if train_losses else {}
    if eval_ds:
        wanted = best_step if best_step is not None else trainer.state.global_step
        last = next((r for r in reversed(history) if "eval_loss" in r and r.get("step") == wanted), None)
        if last is None:
            last = trainer.evaluate()
        metrics.update({k: v for k, v in last.items() if k.startswith("eval_") and isinstance(v, (int, float))})
        first = next((r for r in history if "eval_loss" in r and r.get("step") == 0), None)
        if first is not None:  # eval_before: the untrained model on the same held-out data
            metrics.update({f"before_{k}": v for k, v in first.items()
                            if k.startswith("eval_") and "runtime" not in k and "per_second" not in k})
        if loss_is_nll:
            for prefix in ("", "before_"):
                if f"{prefix}eval_loss" in metrics:
                    metrics[f"{prefix}eval_perplexity"] = math.exp(min(metrics[f"{prefix}eval_loss"], 50))
    return metrics
