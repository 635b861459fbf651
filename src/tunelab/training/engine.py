"""The training path, top to bottom: load model -> apply method -> build data -> train -> evaluate -> save."""
from __future__ import annotations

import math
import os
import resource
import sys
import time
from pathlib import Path

import yaml

from ..config import RunConfig, load_config
from ..core.errors import TunelabError
from ..core.lazy import torch  # imported when training starts: bad input fails fast
from ..methods import METHODS
from ..models import DeferredTokenizer, count_params, max_positions, resolve
from ..runs import directory as rundir
from ..runs.open import check_links, load_links
from ..stages import STAGES
from . import warm_start


def _log(message: str) -> None:
    # Progress and notes go to stderr: stdout's last line is the run directory.
    print(message, file=sys.stderr, flush=True)


def use_bf16(precision: str) -> bool:
    """Whether to train under bf16 autocast.

    `auto` picks bf16 only where it is faster: CUDA GPUs with bf16, and CPUs with AMX tiles. CPUs
    with avx512_bf16 alone can run bf16 but slower than fp32 (measured here: 146 vs 250 GFLOP/s
    per square matmul, and a LoRA step 1.3x slower; see docs/performance.md), so `auto` stays fp32
    on them; `bf16` still forces it wherever the hardware supports it.
    """
    if torch.cuda.is_available():
        supported = fast = torch.cuda.is_bf16_supported()
    else:
        supported = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        fast = supported and torch.cpu._is_amx_tile_supported()
    if precision == "bf16" and not supported:
        raise TunelabError("train.precision=bf16 but this machine has no native bf16 support; use auto or fp32")
    return precision == "bf16" or (precision == "auto" and fast)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _training_arguments(cfg: RunConfig, run_dir: Path, has_eval: bool, quiet: bool):
    from transformers import TrainingArguments

    t = cfg.train
    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.lr,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        lr_scheduler_type=t.scheduler if t.scheduler != "constant" else "constant_with_warmup",
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy="epoch" if has_eval else "no",
        eval_on_start=has_eval and t.eval_before,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        bf16=use_bf16(t.precision),
        seed=t.seed,
        data_seed=t.seed,
        report_to=[],
        disable_tqdm=quiet,
        remove_unused_columns=False,
        prediction_loss_only=True,
        include_num_input_tokens_seen="non_padding",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length",  # batches of similar length: less padding
        **_scale_out_arguments(t),
    )


def _scale_out_arguments(t) -> dict:
    """DeepSpeed / FSDP settings, only when asked for (they need GPUs and, for DeepSpeed, its package)."""
    extra = {}
    if t.deepspeed:
        if not Path(t.deepspeed).is_file():
            raise TunelabError(f"train.deepspeed: config file not found: {t.deepspeed}")
        extra["deepspeed"] = t.deepspeed
    if t.fsdp:
        extra["fsdp"] = t.fsdp
        extra["fsdp_config"] = t.fsdp_config or {}
    return extra


def _make_trainer(cfg, model, tokenizer, stage, train_ds, eval_ds, run_dir, quiet, links):
    from transformers import Trainer, TrainerCallback

    class MetricsLogger(TrainerCallback):
        """Append every log record to metrics.jsonl (adding perplexity next to eval loss)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs}
            if "eval_loss" in record and getattr(stage, "LOSS_IS_NLL", False):
                record["eval_perplexity"] = math.exp(min(record["eval_loss"], 50))
            rundir.append_jsonl(run_dir / "metrics.jsonl", record)

    # A stage whose loss needs state (a frozen reference, a reward model) builds it once here;
    # such a loss may also report numbers beyond the loss via pop_metrics(training) -> dict.
    loss_fn = stage.make_loss(cfg, model, tokenizer, links) if hasattr(stage, "make_loss") else stage.compute_loss

    class StageTrainer(Trainer):
        """transformers' Trainer, with the loss supplied by the stage module."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = loss_fn(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None \
                    and self.model_accepts_loss_kwargs:
                loss = loss * self.accelerator.num_processes  # DDP averages; num_items was a global sum
            return (loss, outputs) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            if hasattr(loss_fn, "pop_metrics"):  # evaluate() logs eval_loss; training logs loss
                logs.update(loss_fn.pop_metrics(training="eval_loss" not in logs))
            super().log(logs, *args, **kwargs)

        def _track_num_input_tokens(self, inputs):
            # Packed rows carry no attention_mask, and the stock fallback (input_ids != pad id) also
            # drops every real EOS when pad == EOS (SmolLM2): count up to each row's padding instead.
            if "attention_mask" in inputs or "position_ids" not in inputs:
                return super()._track_num_input_tokens(inputs)
            real = _packed_real_tokens(inputs["input_ids"], inputs["position_ids"], tokenizer.pad_token_id)
            real = torch.as_tensor(real, device=self.args.device, dtype=torch.int64)
            self.state.num_input_tokens_seen += self.accelerator.gather(real).sum().item()

    return StageTrainer(
        model=model,
        args=_training_arguments(cfg, run_dir, bool(eval_ds), quiet),
        train_dataset=train_ds,
        eval_dataset=eval_ds or None,
        data_collator=stage.collate(tokenizer),
        processing_class=tokenizer,
        callbacks=[MetricsLogger()],
    )


def _packed_real_tokens(input_ids: torch.Tensor, position_ids: torch.Tensor, pad_id: int) -> int:
    """Non-padding tokens in packed rows: padding is a row's trailing all-pad segment (positions restart at 0)."""
    total = 0
    for ids, positions in zip(input_ids.tolist(), position_ids.tolist()):
        last = max(i for i, p in enumerate(positions) if p == 0)  # start of the row's last segment
        total += last if last > 0 and all(t == pad_id for t in ids[last:]) else len(ids)
    return total


def _unpacked_if_needed(cfg: RunConfig, method) -> RunConfig:
    """A method that cannot keep packed examples apart (it declares PACKING_UNSUPPORTED) trains unpacked."""
    reason = getattr(method, "PACKING_UNSUPPORTED", None)
    if reason is None or not cfg.train.packing:
        return cfg
    if "packing" in cfg.train.model_fields_set:
        raise TunelabError(f"train.packing=true does not work with method {cfg.method.name} ({reason}); "
                           "set train.packing=false")
    _log(f"note: method {cfg.method.name} trains without packing ({reason})")
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
          resume: bool = False, overwrite: bool = False, quiet: bool = False) -> Path:
    """Run one fine-tuning job as the config says; return the run directory."""
    cfg = config if isinstance(config, RunConfig) else load_config(config, overrides)
    stage, method = STAGES[cfg.stage.name], METHODS[cfg.method.name]
    if hasattr(method, "check_stage"):
        method.check_stage(stage)  # a method that cannot serve the stage fails before anything loads
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
    # The data is read and checked before the tokenizer loads; may learn settings (labels).
    train_ds, eval_ds = stage.build_datasets(cfg, DeferredTokenizer(cfg.model))
    from transformers import set_seed

    set_seed(cfg.train.seed)  # nothing above draws random numbers (the data split has its own seeded RNG)
    if checkpoint:
        _check_resumable(cfg, run_dir)
    links = load_links(cfg)
    model, tokenizer = stage.build_model(cfg, links)
    model = method.apply(model, cfg.method)
    if cfg.init_from:
        warm_start.load_weights(model, cfg)
    trainable, total = count_params(model)
    _log(f"model {cfg.model} | stage {cfg.stage.name} | method {cfg.method.name} | "
         f"trainable params {trainable:,} / {total:,} ({100 * trainable / total:.2f}%) | "
         f"{len(train_ds)} train / {len(eval_ds)} eval examples")

    if overwrite and not resume and main:
        rundir.clear(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        trainer = _make_trainer(cfg, model, tokenizer, stage, train_ds, eval_ds, run_dir, quiet, links)
        if trainer.is_world_process_zero():
            (run_dir / "config.yaml").write_text(cfg.to_yaml())
        started = time.time()
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        train_seconds = time.time() - started
        metrics = _final_metrics(trainer, eval_ds, getattr(stage, "LOSS_IS_NLL", False))
        batching = _batching_stats(trainer)
        distributed = _rank_checksums(model)
    except BaseException:
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
            "world_size": trainer.args.world_size,
            **batching,
            **distributed,
            "metrics": metrics,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        rundir.plot_loss(run_dir)
        rundir.write_json_atomic(run_dir / "summary.json", summary)
        rundir.index_run(Path(cfg.output_dir), run_dir, summary, stage.KEY_METRIC)
    return run_dir


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


def _final_metrics(trainer, eval_ds, loss_is_nll: bool) -> dict:
    """Final eval metrics, plus the same metrics before training (eval_before) as before_eval_*.

    Perplexity (exp of the eval loss) only for stages whose loss is a per-token NLL.
    """
    history = trainer.state.log_history
    train_losses = [r["train_loss"] for r in history if "train_loss" in r]
    metrics = {"train_loss": train_losses[-1]} if train_losses else {}
    if eval_ds:
        last = next((r for r in reversed(history) if "eval_loss" in r), None)
        if last is None or last.get("step") != trainer.state.global_step:
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
