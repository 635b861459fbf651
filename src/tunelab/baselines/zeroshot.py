"""Zero-shot baseline: an instruct model as published, asked to classify or to answer.

With ``labels``: asked for a label word, each label scored by the likelihood of its word as the
reply (the classify stage's metrics). Without: it answers instruction/chat rows (the sft stage's
answer metrics: answer perplexity; ROUGE-L with ``--generate``). No training. ``tunelab zeroshot``
writes a run directory (config.yaml with a ``zeroshot:`` section, summary.json; see
``runs.baseline``) that ``tunelab eval`` scores like any run. The ICL and RAG baselines reuse both
scorers, adding demonstrations or retrieved passages through a :class:`~._context.Context`.
"""
from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from ..core.errors import TunelabError
from ..core.lazy import inference_mode, torch
from ..core.schema import StrictModel
from ..models import CAUSAL_LM, SEQ_CLS, load_model
from ..stages import classify, sft
from ..stages.base import EvalOptions
from ._context import Context, PromptStats, build_prompts, cut, positions

DEFAULT_INSTRUCTION = ("Classify the message below. Possible answers: {choices}. "
                       "Reply with exactly one of these words.")


class Config(StrictModel):
    """A zero-shot baseline: an instruct model, and for classification the labels and their words."""

    model: str = Field(description="Instruct (chat) causal LM: bundled name, local directory or Hub id.")
    labels: list[str] | None = Field(
        None, description="Label names, as they appear in the data; unset: answer instruction/chat data (generation).")
    label_words: dict[str, str] = Field(
        default_factory=dict, description="Answer word per label when it differs from the label (e.g. {ham: normal})."
    )
    instruction: str | None = Field(
        None, description="Classification: the user instruction, {choices} becomes the answer words (default: "
                          "DEFAULT_INSTRUCTION). Generation: a system message before each prompt (default: none).")
    max_length: int = Field(256, ge=8, description="Tokens kept of each message (the rest is cut).")

    @field_validator("labels")
    @classmethod
    def _two_or_more(cls, labels: list[str] | None) -> list[str] | None:
        if labels is not None and (len(labels) < 2 or len(set(labels)) != len(labels)):
            raise ValueError("give at least two distinct labels")
        return labels

    @field_validator("label_words")
    @classmethod
    def _words_need_labels(cls, words: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if words and info.data.get("labels", []) is None:
            raise ValueError("label words need labels (a generation baseline answers in its own words)")
        return words

    @property
    def generative(self) -> bool:
        return self.labels is None

    def words(self) -> list[str]:
        unknown = sorted(set(self.label_words) - set(self.labels))
        if unknown:
            raise TunelabError(f"label_words names {unknown}, which are not among the labels {self.labels}")
        return [self.label_words.get(label, label) for label in self.labels]


class ZeroShotClassifier:
    """P(label | message) from the instruct model's likelihood of each label word as its reply.

    ``context`` adds prior turns (ICL demonstrations) before the query; ``max_context`` caps the
    prompt (default: the model's positions).
    """

    def __init__(self, cfg: Config, model, tokenizer, context: Context | None = None, max_context: int | None = None):
        from ..data.tokenize import ensure_chat_template

        self.cfg, self.context = cfg, context
        self.model, self.tokenizer = model.eval(), tokenizer
        ensure_chat_template(self.tokenizer)
        self.words = cfg.words()
        self.word_ids = [self.tokenizer(w, add_special_tokens=False)["input_ids"] for w in self.words]
        if any(not ids for ids in self.word_ids):
            raise TunelabError(f"a label word tokenises to nothing: {self.words}")
        self.budget = positions(model, max_context) - max(map(len, self.word_ids))
        self.stats = PromptStats()

    def user_turn(self, text: str) -> dict:
        """The question about one message: what the query is, and what each demonstration was."""
        instruction = (self.cfg.instruction or DEFAULT_INSTRUCTION).replace("{choices}", ", ".join(self.words))
        return {"role": "user", "content": f"{instruction}\n\nMessage: {cut(self.tokenizer, text, self.cfg.max_length)}"}

    def answer_turn(self, label: str) -> dict:
        return {"role": "assistant", "content": self.words[self.cfg.labels.index(label)]}

    def prompts(self, texts: list[str]) -> list[list[int]]:
        built = build_prompts(self.tokenizer, [[self.user_turn(t)] for t in texts], texts, self.context, self.budget)
        self.stats.add(built)
        return built.ids

    def prompt_ids(self, text: str) -> list[int]:
        return self.prompts([text])[0]

    @inference_mode  # torch.inference_mode(), entered at call time (no torch import with this module)
    def _answer_scores(self, prompts: list[list[int]], answer: list[int] | None) -> torch.Tensor:
        """log P(answer | prompt) per prompt; with ``answer=None``, log P(first token) for every label word."""
        from ..data.collate import pad_right
        from ..stages._reference import _accepts_logits_to_keep
        from ..stages._scoring import can_pack

        sequences = [p + (answer or []) for p in prompts]
        span = len(answer) if answer else 1
        at = torch.tensor([[len(p) - 1 + offset for offset in range(span)] for p in prompts])  # (B, S): t predicts t+1
        if _accepts_logits_to_keep(self.model) and can_pack(self.model):
            logits = self._packed_logits(sequences, at)
        elif _accepts_logits_to_keep(self.model):  # project only the S positions that predict the answer
            input_ids, attention_mask = pad_right(sequences, self.tokenizer.pad_token_id)
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=at).logits
        else:
            input_ids, attention_mask = pad_right(sequences, self.tokenizer.pad_token_id)
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            logits = torch.take_along_dim(logits, at[..., None], dim=1)
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, S, V)
        if answer is None:  # every label word is one token: one pass scores them all
            return logprobs[:, 0][:, [ids[0] for ids in self.word_ids]]  # (B, L)
        tokens = torch.tensor(answer).expand(len(prompts), span)  # (B, S)
        return logprobs.gather(2, tokens[..., None]).squeeze(-1).sum(dim=1)  # (B,)

    def _packed_logits(self, sequences: list[list[int]], at: torch.Tensor) -> torch.Tensor:
        """(B, S, V) logits at ``at``: the batch packed into one row with per-example attention, no padding."""
        from ..stages._scoring import packed_attention_on

        starts = torch.tensor([0] + [len(s) for s in sequences[:-1]]).cumsum(0)  # (B,)
        keep = torch.zeros(1, sum(map(len, sequences)), dtype=torch.bool)
        keep[0, (starts[:, None] + at).flatten()] = True  # row-major order = (sequence, offset) order
        ids = torch.tensor([[t for s in sequences for t in s]])
        positions = torch.tensor([[j for s in sequences for j in range(len(s))]])
        with packed_attention_on(self.model):
            logits = self.model(input_ids=ids, position_ids=positions, logits_to_keep=keep, use_cache=False).logits
        return logits.view(len(sequences), at.shape[1], -1)

    def predict_proba(self, texts: list[str], batch_size: int = 8) -> torch.Tensor:
        """(N, L) probabilities: a softmax over the label words' log-likelihoods."""
        with self.stats:  # latency per query includes picking the context
            prompts = self.prompts(texts)
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

    def evaluate(self, name: str, file: str, options: EvalOptions, item: str | None = None) -> dict:
        """The classify stage's report, plus prompt tokens and seconds per query."""
        report = classify.evaluate_classifier(lambda texts: self.predict_proba(texts, options.batch_size),
                                              self.cfg.labels, name, file, options)
        return {**report, **self.stats.report(item)}


def query_text(prompt: list[dict]) -> str:
    """What a chat prompt asks: its last user message (what demonstrations are matched on)."""
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


class ZeroShotAnswerer:
    """Replies to instruction/chat prompts: each message cut to ``max_length`` tokens, the config's
    instruction as a system message, after whatever a ``context`` puts before the query."""

    def __init__(self, cfg: Config, model, tokenizer, context: Context | None = None, max_context: int | None = None):
        self.cfg, self.model, self.tokenizer, self.context = cfg, model.eval(), tokenizer, context
        self.limit = positions(model, max_context)
        self.stats = PromptStats()

    def query_chat(self, messages: list[dict]) -> list[dict]:
        chat = [{"role": m["role"], "content": cut(self.tokenizer, m["content"], self.cfg.max_length)} for m in messages]
        if self.cfg.instruction and not (chat and chat[0]["role"] == "system"):
            chat = [{"role": "system", "content": self.cfg.instruction}] + chat
        return chat

    def chats(self, prompts: list[list[dict]], room: int) -> list[list[dict]]:
        """The chats the model answers; ``room``: tokens kept free for the reply."""
        built = build_prompts(self.tokenizer, [self.query_chat(p) for p in prompts], list(map(query_text, prompts)),
                              self.context, self.limit - room)
        self.stats.add(built)
        return built.chats

    def evaluate(self, name: str, file: str, options: EvalOptions, item: str | None = None) -> dict:
        """Answer perplexity, prompt tokens, latency; ROUGE-L of greedy replies with ``options.generate``."""
        from ..data import load_file
        from ..stages._answers import CHAT_FORMATS, answer_quality, final_prompts
        from ..stages.base import cap

        fmt, rows = load_file(file)
        if fmt not in CHAT_FORMATS:
            raise TunelabError(f"--data {name}={file} is in format '{fmt}'; a generation baseline is scored on "
                               f"{', '.join(CHAT_FORMATS)} data (a prompt and its reference reply)")
        rows = cap(rows, options)
        report = answer_quality(self.model, self.tokenizer, rows,
                                lambda rs: self.chats(final_prompts(rs), options.max_new_tokens), options,
                                positions(self.model))
        return {"task": "causal-lm", "file": file, "n": len(rows), **report,
                **{k: v for k, v in self.stats.report(item).items() if k not in report}}


ZeroShotConfig = Config  # the name the CLI and callers know it by


def task(cfg: Config) -> str:
    """The stage whose task it does (for the run index): classify with labels, else sft."""
    return "sft" if cfg.generative else "classify"


def model_kind(cfg: Config) -> str:
    """Classifies (evaluated like a classify run) or generates (like an sft run; `tunelab generate` works)."""
    return CAUSAL_LM if cfg.generative else SEQ_CLS


def eval_options(cfg: Config) -> tuple[str, ...]:
    return sft.EVAL_OPTIONS if cfg.generative else classify.EVAL_OPTIONS


def build(cfg: Config):
    """(model, tokenizer): the instruct model as published."""
    return load_model(cfg.model, CAUSAL_LM)


def check(cfg: Config, model, tokenizer) -> dict:
    """Fail early on label words the tokenizer cannot use; the facts the run's summary records."""
    if cfg.generative:
        return {}
    classifier = ZeroShotClassifier(cfg, model, tokenizer)
    return {"labels": cfg.labels, "label_words": classifier.words}


def evaluate(loaded, name: str, file: str, options: EvalOptions) -> dict:
    """Classification: the classify stage's report; generation: the answer metrics."""
    scorer = ZeroShotAnswerer if loaded.config.generative else ZeroShotClassifier
    return scorer(loaded.config, loaded.model, loaded.tokenizer).evaluate(name, file, options)


def prompt(loaded, messages: list[dict], max_new_tokens: int) -> list[dict]:
    """The chat the model replies to for a conversation (`tunelab generate`, `chat`)."""
    return ZeroShotAnswerer(loaded.config, loaded.model, loaded.tokenizer).chats([messages], max_new_tokens)[0]
