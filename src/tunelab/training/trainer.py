"""transformers' Trainer as the engine uses it: arguments from the run config, the stage's loss,
metrics logging, a finite-loss guard, atomic checkpoints, and a reproducible data order.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import signal
from pathlib import Path

import torch

from ..config import RunConfig
from ..core.errors import TunelabError
from ..runs import directory as rundir
from . import micro_batches
from .precision import use_bf16
from .progress import output_callback


def _training_arguments(cfg: RunConfig, run_dir: Path, has_eval: bool, autocast_bf16: bool | None = None):
    """``autocast_bf16``: the run's precision plan (training/precision.py); None: train.precision alone."""
    from transformers import TrainingArguments

    t = cfg.train
    on_cpu = not torch.cuda.is_available()
    batches = micro_batches.geometry(t, cfg.stage.name, on_cpu)
    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.lr,
        per_device_train_batch_size=batches.rows,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=batches.accumulate,
        lr_scheduler_type=t.scheduler if t.scheduler != "constant" else "constant_with_warmup",
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy=("steps" if t.eval_steps else "epoch") if has_eval else "no",
        eval_steps=t.eval_steps,
        # Early stopping reads the Trainer's best metric, which it tracks only when told which one.
        metric_for_best_model=t.best_metric.metric if has_eval and (t.early_stopping or t.load_best) else None,
        greater_is_better=t.best_metric.greater_is_better if has_eval and (t.early_stopping or t.load_best) else None,
        eval_on_start=has_eval and t.eval_before,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        bf16=use_bf16(t.precision) if autocast_bf16 is None else autocast_bf16,
        seed=t.seed,
        data_seed=t.seed,
        report_to=[],  # trackers are added by training/trackers.py, pointed where tunelab keeps things
        run_name=cfg.name,
        disable_tqdm=True,  # progress is shown by training/progress.py (one line, on stderr)
        remove_unused_columns=False,
        prediction_loss_only=True,
        include_num_input_tokens_seen="non_padding",
        use_cpu=on_cpu,
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


def make_trainer(cfg, model, tokenizer, stage, train_ds, eval_ds, run_dir, level, links, resumed_step=None,
                 autocast_bf16: bool | None = None):
    """``level``: console output (quiet, normal, verbose; see training/progress.py); ``resumed_step``:
    the checkpoint's step when resuming; ``autocast_bf16``: from the run's precision plan."""
    from transformers import PrinterCallback, Trainer, TrainerCallback
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class MetricsLogger(TrainerCallback):
        """Append every log record to metrics.jsonl (adding perplexity next to eval loss)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs}
            add_perplexity(record)
            rundir.append_jsonl(run_dir / "metrics.jsonl", record)

    def add_perplexity(metrics: dict) -> None:
        if "eval_loss" in metrics and getattr(stage, "LOSS_IS_NLL", False):
            metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50))

    class EvalPerplexity(TrainerCallback):
        """Put eval_perplexity into each evaluation's metrics (the log record is written before this runs),
        so early stopping, the best weights and sweep pruning can watch an LM stage's key metric."""

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if metrics is not None:
                add_perplexity(metrics)

    class FiniteLossGuard(TrainerCallback):
        """Before each optimizer step: stop the run if a micro-batch loss was NaN/inf (weights untouched)."""

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            trainer.check_losses_finite()

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

        # ---- faults: exact resume, atomic checkpoints, a NaN/inf loss stops the run

        _staging: str | None = None  # while a checkpoint is written: where (see _save_checkpoint)

        def _get_train_sampler(self, train_dataset=None):
            # The stock length-grouped sampler shuffles with the global RNG, whose state at an epoch's
            # start no checkpoint holds (evaluation and loader setup draw from it too): a resumed run
            # then saw other batches. Seeded by (data_seed, epoch), the order is the same however
            # often the run was interrupted.
            sampler = super()._get_train_sampler(train_dataset)
            if type(sampler) is LengthGroupedSampler:
                seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
                return EpochSeededLengthGroupedSampler(sampler.batch_size, sampler.lengths, seed)
            return sampler

        def evaluate(self, *args, **kwargs):
            # Evaluation between a checkpoint and the next step must not move the RNG training uses
            # (dropout): the resumed run restores the state saved at the checkpoint and evaluates nothing.
            with _rng_preserved():
                return super().evaluate(*args, **kwargs)

        def training_step(self, model, inputs, num_items_in_batch=None):
            if self._row_threads is not None and num_items_in_batch is not None:
                step = super().training_step  # each part: its loss sum over the whole step's loss tokens
                loss = self._row_threads.run(lambda part: step(model, part, num_items_in_batch), inputs)
            else:
                loss = super().training_step(model, inputs, num_items_in_batch)
            if os.environ.get("TUNELAB_TEST_NAN_AT_STEP") == str(self.state.global_step + 1):
                loss = loss * float("nan")  # test hook (tests/test_faults.py): a loss that became NaN
            self._step_losses.append(loss.detach())
            return loss

        def check_losses_finite(self):
            """One check (one device sync) per optimizer step, on every rank alike."""
            if not self._step_losses:
                return
            losses = torch.stack([loss.reshape(()).float() for loss in self._step_losses])
            self._step_losses = []
            bad = losses[~torch.isfinite(losses)][:1]
            count = self.accelerator.gather(torch.tensor([bad.numel()], device=losses.device)).sum().item()
            if not count:
                return
            value = f"{bad.item()}" if bad.numel() else "not finite"
            step = self.state.global_step + 1
            kept = rundir.last_checkpoint(run_dir)
            where = (f"the last good checkpoint {kept} is kept: continue from it with --resume "
                     f"(e.g. with a lower train.lr)" if kept is not None else
                     "no checkpoint had been saved yet, so there is nothing to resume (lower train.lr, "
                     "or save checkpoints more often with train.save_steps)")
            raise TunelabError(f"train loss became {value} at step {step} (train.lr={self.args.learning_rate:g}); "
                               f"stopped before the optimizer step; {where}")

        def _get_output_dir(self, trial):
            return self._staging if self._staging is not None else super()._get_output_dir(trial)

        def _save_checkpoint(self, model, trial):
            # Atomic checkpoints: the Trainer writes checkpoint-N under checkpoints/.staging/, which is
            # flushed and renamed into checkpoints/ once every file (every rank's) is on disk. A kill
            # at any moment leaves only complete checkpoints under checkpoints/; rotation happens
            # after, by step number, so the newest complete checkpoint is never the one deleted.
            final_root = Path(super()._get_output_dir(trial))
            staging = final_root / rundir.STAGING
            name = f"checkpoint-{self.state.global_step}"
            if self.args.should_save:
                import shutil

                shutil.rmtree(staging / name, ignore_errors=True)
            self.accelerator.wait_for_everyone()
            self._staging = str(staging)
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging = None
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                rundir.publish_checkpoint(staging / name, final_root / name)
                rundir.rotate_checkpoints(final_root, self.args.save_total_limit)
            self.accelerator.wait_for_everyone()

        def _save_rng_state(self, output_dir):
            # Test hook (tests/test_faults.py): die by SIGKILL in the middle of writing checkpoint N,
            # after the weights, optimizer and scheduler, before the RNG state and trainer_state.json.
            if os.environ.get("TUNELAB_TEST_KILL_IN_CHECKPOINT") == str(self.state.global_step):
                os.kill(os.getpid(), signal.SIGKILL)
            super()._save_rng_state(output_dir)

    trainer = StageTrainer(
        model=model,
        args=_training_arguments(cfg, run_dir, bool(eval_ds), autocast_bf16),
        train_dataset=train_ds,
        eval_dataset=eval_ds or None,
        data_collator=stage.collate(tokenizer),
        processing_class=tokenizer,
        callbacks=[EvalPerplexity(), MetricsLogger(), FiniteLossGuard(),
                   output_callback(run_dir, f"{cfg.name} ({cfg.stage.name}, {cfg.method.name})", level)],
    )
    trainer.best = None  # train.load_best: the BestWeights callback, read for summary.json
    if eval_ds and cfg.train.early_stopping:
        from transformers import EarlyStoppingCallback

        from .best import MetricCheck

        es = cfg.train.early_stopping
        trainer.add_callback(MetricCheck(es.metric))
        trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=es.patience,
                                                   early_stopping_threshold=es.min_delta))
    if eval_ds and cfg.train.load_best:
        from .best import BestWeights

        best = cfg.train.best_metric
        trainer.best = BestWeights(run_dir, best.metric, best.greater_is_better, resumed_step)
        trainer.add_callback(trainer.best)
    trainer.remove_callback(PrinterCallback)  # it prints every log record on stdout; train.log has them
    trainer._step_losses = []  # this optimizer step's micro-batch losses (see check_losses_finite)
    trainer._row_threads = None  # set by the engine for train.row_threads > 1 (training/row_threads.py)
    return trainer


class EpochSeededLengthGroupedSampler:
    """transformers' length-grouped order (batches of similar length, longest first), shuffled by a
    generator seeded with seed + epoch instead of the global RNG; the Trainer calls set_epoch."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        self.batch_size, self.lengths, self.seed, self.epoch = batch_size, lengths, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


@contextlib.contextmanager
def _rng_preserved():
    """Run a block without changing the python, numpy or torch (CPU and CUDA) RNG states."""
    import numpy as np

    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []):
        try:
            yield
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])


def _packed_real_tokens(input_ids: torch.Tensor, position_ids: torch.Tensor, pad_id: int) -> int:
    """Non-padding tokens in packed rows: padding is a row's trailing all-pad segment (positions restart at 0)."""
    total = 0
    for ids, positions in zip(input_ids.tolist(), position_ids.tolist()):
        last = max(i for i, p in enumerate(positions) if p == 0)  # start of the row's last segment
        total += last if last > 0 and all(t == pad_id for t in ids[last:]) else len(ids)
    return total
