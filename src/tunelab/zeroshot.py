"""Zero-shot baseline: ask an instruct model for a label word, score each label by its likelihood.

No training. ``create_run`` writes a run directory (config.yaml with a ``zeroshot:`` section,
summary.json) so ``tunelab eval`` treats the baseline like any trained run.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from pydantic import Field, field_validator

from . import rundir
from .errors import TunelabError
from .schema import StrictModel

DEFAULT_INSTRUCTION = ("Classify the message below. Possible answers: {choices}. "
                       "Reply with exactly one of these words.")


class ZeroShotConfig(StrictModel):
    """A zero-shot classifier: an instruct model, a label set and the words that stand for the labels."""

    model: str = Field(description="Instruct (chat) causal LM: bundled name, local directory or Hub id.")
    labels: list[str] = Field(description="Label names, as they appear in the data.")
    label_words: dict[str, str] = Field(
        default_factory=dict, description="Answer word per label when it differs from the label (e.g. {ham: normal})."
    )
    instruction: str = Field(DEFAULT_INSTRUCTION, description="User instruction; {choices} becomes the answer words.")
    max_length: int = Field(256, ge=8, description="Message tokens kept (the rest is cut).")

    @field_validator("labels")
    @classmethod
    def _two_or_more(cls, labels: list[str]) -> list[str]:
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError("give at least two distinct labels")
        return labels

    def words(self) -> list[str]:
        unknown = sorted(set(self.label_words) - set(self.labels))
        if unknown:
            raise TunelabError(f"label_words names {unknown}, which are not among the labels {self.labels}")
        return [self.label_words.get(label, label) for label in self.labels]


class ZeroShotClassifier:
    """P(label | message) from the instruct model's likelihood of each label word as its reply."""

    def __init__(self, cfg: ZeroShotConfig):
        from .data.tokenize import ensure_chat_template
        from .models import CAUSAL_LM, load_model

        self.cfg = cfg
        self.model, self.tokenizer = load_model(cfg.model, CAUSAL_LM)
        self.model.eval()
        ensure_chat_template(self.tokenizer)
        self.words = cfg.words()
        self.word_ids = [self.tokenizer(w, add_special_tokens=False)["input_ids"] for w in self.words]
        if any(not ids for ids in self.word_ids):
            raise TunelabError(f"a label word tokenises to nothing: {self.words}")

    def prompt_ids(self, text: str) -> list[int]:
        kept = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.cfg.max_length]
        message = self.tokenizer.decode(kept)
        instruction = self.cfg.instruction.replace("{choices}", ", ".join(self.words))
        chat = [{"role": "user", "content": f"{instruction}\n\nMessage: {message}"}]
        rendered = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(rendered, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def _answer_scores(self, prompts: list[list[int]], answer: list[int] | None) -> torch.Tensor:
        """log P(answer | prompt) per prompt; with ``answer=None``, log P(first token) for every label word."""
        from .classifier import pad_batch

        sequences = [p + (answer or []) for p in prompts]
        input_ids, attention_mask = pad_batch(sequences, self.tokenizer.pad_token_id)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)  # (B, T, V)
        rows = torch.arange(len(prompts))
        if answer is None:  # every label word is one token: one pass scores them all
            last = torch.tensor([len(p) - 1 for p in prompts])
            return logprobs[rows, last][:, [ids[0] for ids in self.word_ids]]  # (B, L)
        total = torch.zeros(len(prompts))
        for offset, token in enumerate(answer):  # position t predicts token t+1
            positions = torch.tensor([len(p) - 1 + offset for p in prompts])
            total += logprobs[rows, positions, token]
        return total  # (B,)

    def predict_proba(self, texts: list[str], batch_size: int = 8) -> torch.Tensor:
        """(N, L) probabilities: a softmax over the label words' log-likelihoods."""
        prompts = [self.prompt_ids(t) for t in texts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        scores = torch.empty(len(prompts), len(self.words))
        single_token = all(len(ids) == 1 for ids in self.word_ids)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = [prompts[i] for i in index]
            if single_token:
                scores[index] = self._answer_scores(batch, None)
            else:
                for label, ids in enumerate(self.word_ids):
                    scores[index, label] = self._answer_scores(batch, ids)
        return torch.softmax(scores, dim=-1)


def is_zeroshot_run(run_dir: str | Path) -> bool:
    import yaml

    path = Path(run_dir) / "config.yaml"
    return path.is_file() and "zeroshot" in (yaml.safe_load(path.read_text()) or {})


def load_run(run_dir: str | Path) -> ZeroShotClassifier:
    import yaml

    raw = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    return ZeroShotClassifier(ZeroShotConfig.model_validate(raw["zeroshot"]))


def create_run(out: str | Path, cfg: ZeroShotConfig, overwrite: bool = False) -> Path:
    """Write a zero-shot "run" (no weights: the model is used as published) that `tunelab eval` accepts."""
    import yaml

    from .models import count_params, resolve

    out = Path(out)
    rundir.check_writable(out.parent)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TunelabError(f"run directory {out} already exists; use --overwrite to replace it")
    classifier = ZeroShotClassifier(cfg)  # fails here on a bad model or label words
    _, total = count_params(classifier.model)
    if overwrite:
        rundir.clear(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump({"zeroshot": cfg.model_dump(mode="json")}, sort_keys=False))
    summary = {
        "name": out.name, "stage": "classify", "method": "zeroshot", "model": cfg.model,
        "model_path": resolve(cfg.model), "labels": cfg.labels, "label_words": classifier.words,
        "trainable_params": 0, "total_params": total, "trainable_percent": 0.0, "train_seconds": 0.0,
        "metrics": {}, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    rundir.write_json_atomic(out / "summary.json", summary)
    rundir.index_run(out.parent, out, summary, "eval_loss")
    return out
