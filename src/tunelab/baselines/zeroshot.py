"""Zero-shot baseline: ask an instruct model for a label word, score each label by its likelihood.

No training. ``tunelab zeroshot`` writes a run directory (config.yaml with a ``zeroshot:``
section, summary.json; see ``runs.baseline``) so ``tunelab eval`` treats the baseline like any
trained run, with the classify stage's metrics.
"""
from __future__ import annotations

from pydantic import Field, field_validator

from ..core.errors import TunelabError
from ..core.lazy import inference_mode, torch
from ..core.schema import StrictModel
from ..models import CAUSAL_LM, SEQ_CLS, load_model
from ..stages.base import EvalOptions
from ..stages.classify import EVAL_OPTIONS, evaluate_classifier

DEFAULT_INSTRUCTION = ("Classify the message below. Possible answers: {choices}. "
                       "Reply with exactly one of these words.")


class Config(StrictModel):
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

    def __init__(self, cfg: Config, model, tokenizer):
        from ..data.tokenize import ensure_chat_template

        self.cfg = cfg
        self.model, self.tokenizer = model.eval(), tokenizer
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

    @inference_mode  # torch.inference_mode(), entered at call time (no torch import with this module)
    def _answer_scores(self, prompts: list[list[int]], answer: list[int] | None) -> torch.Tensor:
        """log P(answer | prompt) per prompt; with ``answer=None``, log P(first token) for every label word."""
        from ..data.collate import pad_right

        sequences = [p + (answer or []) for p in prompts]
        input_ids, attention_mask = pad_right(sequences, self.tokenizer.pad_token_id)
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




ZeroShotConfig = Config  # the name the CLI and callers know it by
MODEL_KIND = SEQ_CLS  # it classifies: evaluated like a classify run
TASK = "classify"  # the stage whose task it does, for the run index
EVAL_OPTIONS = EVAL_OPTIONS


def build(cfg: Config):
    """(model, tokenizer): the instruct model as published."""
    return load_model(cfg.model, CAUSAL_LM)


def check(cfg: Config, model, tokenizer) -> dict:
    """Fail early on label words the tokenizer cannot use; the facts the run's summary records."""
    classifier = ZeroShotClassifier(cfg, model, tokenizer)
    return {"labels": cfg.labels, "label_words": classifier.words}


def evaluate(loaded, name: str, file: str, options: EvalOptions) -> dict:
    """The classify stage's report, on the label-word probabilities."""
    classifier = ZeroShotClassifier(loaded.config, loaded.model, loaded.tokenizer)
    return evaluate_classifier(lambda texts: classifier.predict_proba(texts, options.batch_size),
                               loaded.config.labels, name, file, options)
