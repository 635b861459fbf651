"""Load a finished run (base + trained weights) or a plain model, and generate from it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .config import RunConfig, load_config
from .data.tokenize import ensure_chat_template
from .errors import TunelabError
from .methods import METHODS
from .models import CAUSAL_LM, load_model
from .stages import STAGES


@dataclass
class Loaded:
    """A model ready for inference; ``config``/``run_dir`` are set when it came from a run."""

    model: torch.nn.Module
    tokenizer: object
    config: RunConfig | None = None
    run_dir: Path | None = None

    @torch.inference_mode()
    def generate(self, prompt: str | list[dict], max_new_tokens: int = 128, temperature: float = 0.0,
                 top_p: float = 0.9, seed: int = 0) -> str:
        """Reply to a user prompt (or a list of chat messages) with the model's chat template."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        ensure_chat_template(self.tokenizer)
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)
        torch.manual_seed(seed)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
        out = self.model.generate(**ids, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                  **sampling)
        return self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "config.yaml").is_file()


def load(run_or_model: str | Path) -> Loaded:
    """``tunelab.load``: a run directory (base + adapter/weights) or any model spec."""
    path = Path(run_or_model)
    if not is_run_dir(path):
        model, tokenizer = load_model(str(run_or_model), CAUSAL_LM)
        return Loaded(model.eval(), tokenizer)
    if not (path / "summary.json").exists():
        raise TunelabError(f"run {path} has not finished (no summary.json); resume it with `tunelab train ... --resume`")
    cfg = load_config(path / "config.yaml")
    stage, method = STAGES[cfg.stage.name], METHODS[cfg.method.name]
    base, tokenizer = stage.build_model(cfg)  # e.g. a classifier with the run's labels
    if (path / "tokenizer").exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    model = method.load(base, path, cfg.method)
    return Loaded(model.eval(), tokenizer, cfg, path)
