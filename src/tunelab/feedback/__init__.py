"""``tunelab feedback``: a local page where a person compares two responses to a prompt.

Prompts come from a file; each prompt's two responses are read from a file (rows
``{prompt, response, model?}``, the first two distinct responses per prompt) or generated on
demand — by two runs/models, or as two samples of one. The two are shown in random left/right
order; the person picks the better one, a tie, or skips, and may rate each 1-5. Everything is
saved at once (see ``store``), so reloading the page or restarting the server loses nothing and
never shows a judged item again. The server is the standard library's ``http.server``: plain
HTML forms, no JavaScript, bound to 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import hashlib
import html
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from ..data.formats import RATING_RANGE
from ..core.errors import TunelabError
from .store import PREFERENCE, RATING, JudgementStore

_HERE = Path(__file__).parent
SIDES = ("a", "b")


@dataclass
class Item:
    id: str
    prompt: str
    responses: dict[str, str] = field(default_factory=dict)  # side key ("a"/"b") -> text
    sources: dict[str, str] = field(default_factory=dict)  # side key -> model/run it came from


def item_id(prompt: str) -> str:
    """Stable across restarts: a hash of the prompt text."""
    return hashlib.blake2b(prompt.encode("utf-8"), digest_size=8).hexdigest()


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from .txt (one per line) or .jsonl/.json/.csv rows with a ``prompt`` field; duplicates once."""
    from ..data.io import read_rows

    path = Path(path)
    if path.suffix == ".txt":
        if not path.is_file():
            raise TunelabError(f"prompts file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise TunelabError(f"prompts file {path} is not UTF-8 text") from None
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        rows = read_rows(str(path))
        if "prompt" not in rows[0]:
            raise TunelabError(f"prompts file {path}: rows need a 'prompt' field (got {sorted(rows[0])})")
        prompts = [str(row["prompt"]) for row in rows if str(row.get("prompt") or "").strip()]
    if not prompts:
        raise TunelabError(f"prompts file {path} has no prompts")
    return list(dict.fromkeys(prompts))


def read_responses(path: str | Path) -> dict[str, list[tuple[str, str]]]:
    """prompt -> [(response, source), ...] from rows {prompt, response, model?}."""
    from ..data.io import read_rows

    out: dict[str, list[tuple[str, str]]] = {}
    for number, row in enumerate(read_rows(str(path)), start=1):
        if not str(row.get("response") or "").strip() or "prompt" not in row:
            raise TunelabError(f"responses file {path} row {number}: needs 'prompt' and a non-empty 'response'")
        entries = out.setdefault(str(row["prompt"]), [])
        if all(text != row["response"] for text, _ in entries):
            entries.append((str(row["response"]), str(row.get("model") or f"{Path(path).name}")))
    return out


class Generator:
    """Responses on demand: two runs/models answer greedily, or one model gives two samples."""

    def __init__(self, sources: list[str], max_new_tokens: int = 128, temperature: float = 0.8):
        if not 1 <= len(sources) <= 2:
            raise TunelabError("give one model/run (two samples of it) or two (one response each)")
        from ..runs.open import load_generator

        self.sources = sources
        self.models = [load_generator(source, "--model") for source in sources]
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self._lock = threading.Lock()  # one generation at a time: the models are not thread-safe

    def __call__(self, prompt: str) -> list[tuple[str, str]]:
        from ..stages._pairs import prompt_messages

        messages = prompt_messages(prompt)
        with self._lock:
            if len(self.models) == 2:
                return [(m.generate(messages, self.max_new_tokens), s) for m, s in zip(self.models, self.sources)]
            model, source = self.models[0], self.sources[0]
            return [(model.generate(messages, self.max_new_tokens, temperature=self.temperature, seed=seed),
                     f"{source}#sample{seed}") for seed in (1, 2)]


class FeedbackApp:
    """The state behind the page: items, which are done, and how a posted form becomes records."""

    def __init__(self, prompts: list[str], out_dir: str | Path, responses: dict | None = None, generator=None):
        if (responses is None) == (generator is None):
            raise TunelabError("feedback needs responses from a file or a model to generate them (exactly one)")
        self.generator = generator
        self.items: dict[str, Item] = {}
        for prompt in prompts:
            item = Item(item_id(prompt), prompt)
            if responses is not None:
                given = responses.get(prompt, [])
                if len(given) < 2:
                    continue  # nothing to compare
                for side, (text, source) in zip(SIDES, given):
                    item.responses[side], item.sources[side] = text, source
            self.items[item.id] = item
        if not self.items:
            raise TunelabError("no prompt has two different responses to compare")
        self.store = JudgementStore(out_dir)  # only once the input is good: a refused start leaves no directory
        self.done = self.store.done_items() & set(self.items)
        self._lock = threading.Lock()

    def next_item(self) -> Item | None:
        with self._lock:
            item = next((i for i in self.items.values() if i.id not in self.done), None)
        if item is not None and not item.responses:
            for side, (text, source) in zip(SIDES, self.generator(item.prompt)):
                item.responses[side], item.sources[side] = text, source
        return item

    def judge(self, form: dict[str, list[str]]) -> tuple[int, str]:
        """Validate a posted form and save it: (HTTP status, message). Nothing is written unless 303."""
        def one(key: str) -> str | None:
            values = form.get(key, [])
            return values[0] if len(values) == 1 else None if not values else "\0"  # repeated key: invalid

        unknown = sorted(set(form) - {"item", "choice", "rating_a", "rating_b"})
        if unknown:
            return 400, f"unknown form field {unknown[0]!r}"
        item = self.items.get(one("item") or "")
        if item is None:
            return 404, "unknown item"
        choice = one("choice")
        if choice not in ("a", "b", "tie", "skip"):
            return 400, "choice must be a, b, tie or skip"
        ratings = {}
        low, high = RATING_RANGE
        for side in SIDES:
            value = one(f"rating_{side}")
            if value in (None, ""):
                continue
            if value not in {str(n) for n in range(low, high + 1)}:
                return 400, f"rating_{side} must be a whole number {low}..{high}"
            ratings[side] = int(value)
        with self._lock:
            if item.id in self.done:
                return 409, "this item was already judged"
            if not item.responses:
                return 409, "this item has not been shown yet"
            now = time.strftime("%Y-%m-%dT%H:%M:%S")
            preference = None
            if choice in SIDES:
                other = "b" if choice == "a" else "a"
                preference = {"prompt": item.prompt, "chosen": item.responses[choice],
                              "rejected": item.responses[other], "chosen_source": item.sources[choice],
                              "rejected_source": item.sources[other], "item": item.id, "time": now}
            rating_rows = [{"prompt": item.prompt, "response": item.responses[side], "score": score,
                            "source": item.sources[side], "item": item.id, "time": now}
                           for side, score in ratings.items()]
            judgement = {"item": item.id, "prompt": item.prompt, "choice": choice, "ratings": ratings,
                         "responses": item.responses, "sources": item.sources, "time": now}
            self.store.record(judgement, preference, rating_rows)
            self.done.add(item.id)
        return 303, "saved"

    # ----------------------------------------------------------------- pages

    def render(self) -> str:
        page = Template((_HERE / "page.html").read_text(encoding="utf-8"))
        progress = f"{len(self.done)} of {len(self.items)} judged"
        item = self.next_item()
        if item is None:
            body = (f'<p id="finished">All {len(self.items)} items are judged. Preferences: '
                    f'{html.escape(str(self.store.directory / PREFERENCE))}; ratings: '
                    f'{html.escape(str(self.store.directory / RATING))}.</p>')
            return page.substitute(progress=progress, body=body)
        left, right = random.sample(SIDES, 2)  # random left/right order, chosen per view
        judge = Template((_HERE / "judge.html").read_text(encoding="utf-8"))
        body = judge.substitute(
            prompt=html.escape(item.prompt), item=item.id,
            left_key=left, left_text=html.escape(item.responses[left]), left_rating=_stars("left", left),
            right_key=right, right_text=html.escape(item.responses[right]), right_rating=_stars("right", right))
        return page.substitute(progress=progress, body=body)


def _stars(position: str, side: str) -> str:
    low, high = RATING_RANGE
    return " ".join(f'<label><input type="radio" name="rating_{side}" value="{n}" id="rate-{position}-{n}">{n}</label>'
                    for n in range(low, high + 1))


from .server import make_server, serve  # noqa: E402  (the server needs FeedbackApp)

__all__ = ["FeedbackApp", "Generator", "item_id", "make_server", "read_prompts", "read_responses", "serve"]
