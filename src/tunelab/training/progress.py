"""What `tunelab train` shows while it trains: one progress line per run on stderr, and the Trainer's
per-step log records in RUN/train.log (also on stderr when verbose, as the Trainer used to print them).

On a terminal the line is rewritten in place (``\\r``); otherwise a line is printed every ~10% of
the steps, so logs of batch jobs stay short.
"""
from __future__ import annotations

import contextlib
import sys
import time
import warnings
from pathlib import Path

from ..core import console


def format_log(logs: dict) -> str:
    """A log record as transformers' PrinterCallback printed it: floats to 4 significant digits, no total_flos."""
    shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in logs.items() if k != "total_flos"}
    return str(shown)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressLine:
    """One line that follows a run: step/total, latest loss, elapsed and time left."""

    REDRAW_SECONDS = 0.2  # a terminal redraw at most this often (steps of tiny models take milliseconds)

    def __init__(self, what: str, stream=None, tty: bool | None = None):
        self.what, self.stream = what, stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.started = time.monotonic()
        self.first_step: int | None = None  # the step this process started from (a resumed run starts late)
        self.step = self.total = 0
        self.loss: float | None = None
        self.shown_width = 0  # width of the line now on the terminal
        self.last_drawn = 0.0
        self.printed_tenth = -1  # not a terminal: the last tenth of the run printed

    def render(self) -> str:
        parts = [f"{self.what}  step {self.step}/{self.total}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        elapsed = time.monotonic() - self.started
        timing = f"{format_duration(elapsed)} elapsed"
        done = self.step - (self.first_step or 0)
        if done > 0 and self.total > self.step:
            timing += f", {format_duration(elapsed / done * (self.total - self.step))} left"
        parts.append(timing)
        return "  ".join(parts)

    def update(self, step: int, total: int, loss: float | None = None) -> None:
        if self.first_step is None:
            self.first_step = step - 1 if step > 0 else 0
        self.step, self.total = step, total
        if loss is not None:
            self.loss = loss
        if self.tty:
            now = time.monotonic()
            if now - self.last_drawn >= self.REDRAW_SECONDS or step >= total:
                self._draw()
                self.last_drawn = now
        else:
            tenth = step * 10 // total if total else 10
            if tenth > self.printed_tenth and (tenth > 0 or step == total):
                self.printed_tenth = tenth
                self._print(self.render())

    def write(self, line: str) -> None:
        """A line above the progress line (which is redrawn under it)."""
        if self.tty and self.shown_width:
            self.stream.write("\r" + " " * self.shown_width + "\r")
            self.shown_width = 0
        self._print(line)
        if self.tty and self.total:
            self._draw()

    def close(self) -> None:
        if self.tty and self.shown_width:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
            self.shown_width = 0

    def _draw(self) -> None:
        line = self.render()
        self.stream.write("\r" + line.ljust(self.shown_width))
        self.stream.flush()
        self.shown_width = len(line)

    def _print(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()


def output_callback(run_dir: Path, what: str, level: str):
    """A TrainerCallback: every log record to RUN/train.log (and stderr if verbose); the progress line unless quiet."""
    from transformers import TrainerCallback

    class RunOutput(TrainerCallback):
        def __init__(self):
            self.progress: ProgressLine | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero and level != console.QUIET:
                self.progress = ProgressLine(what)

        def on_step_end(self, args, state, control, **kwargs):
            # A step that logs is shown once its log record (with this step's loss) arrives, in on_log.
            if self.progress is not None and not control.should_log:
                self.progress.update(state.global_step, state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            line = format_log(logs)
            with open(run_dir / "train.log", "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
            if self.progress is not None:
                if level == console.VERBOSE:
                    self.progress.write(line)
                if "loss" in logs:
                    self.progress.update(state.global_step, state.max_steps, float(logs["loss"]))

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.close()
                self.progress = None

    return RunOutput()


@contextlib.contextmanager
def library_output(level: str):
    """The libraries' own output as the level wants: their progress bars (transformers' "Loading weights")
    and deprecation warnings only when verbose; when quiet, no warnings or transformers log messages either."""
    from transformers.utils import logging as hf_logging

    bars_were_on, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    with warnings.catch_warnings():
        if level != console.VERBOSE:
            hf_logging.disable_progress_bar()
            for module in ("transformers", "peft", "accelerate", "torch"):  # meant for their developers, not ours
                warnings.filterwarnings("ignore", category=FutureWarning, module=module)
                warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
        if level == console.QUIET:
            warnings.simplefilter("ignore")
            hf_logging.set_verbosity_error()
        try:
            yield
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars_were_on:
                hf_logging.enable_progress_bar()
