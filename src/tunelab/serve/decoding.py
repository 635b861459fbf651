"""Per-request token handling for the engine: choosing the next token, and turning tokens into
streamable text that never shows part of a stop string or half a UTF-8 character."""
from __future__ import annotations

from ..core.lazy import torch

REPLACEMENT = "\ufffd"  # what the tokenizer decodes an incomplete UTF-8 sequence to


def choose(logits: "torch.Tensor", temperature: float, top_p: float, generator) -> int:
    """The next token from one row of logits (V,): greedy at temperature 0, else nucleus sampling."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass strictly above each token
        sorted_probs[before >= top_p] = 0.0  # keep the smallest set whose mass reaches top_p (always >= 1 token)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


class TextStream:
    """Detokenises a growing list of tokens; ``push`` returns the text now safe to show and whether a
    stop string ended the reply.

    Text is held back while it ends in an incomplete UTF-8 character (the tokenizer shows it as
    U+FFFD) or in a prefix of a stop string; at the end everything held is released. Decoding works
    on a window (from a few tokens before the last released text) so each token costs O(1), as in
    text-generation-inference's incremental decoder.
    """

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""  # released so far
        self._pending = ""  # decoded but held back
        self._prefix_offset = 0  # window start: tokens before it are fully released
        self._read_offset = 0  # tokens up to here are decoded into text + pending

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> tuple[str, bool]:
        self.ids.append(token)
        prefix = self._decode(self.ids[self._prefix_offset:self._read_offset])
        full = self._decode(self.ids[self._prefix_offset:])
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT):
            self._pending += full[len(prefix):]
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """Everything still held (the reply ended without a stop string)."""
        if self._read_offset < len(self.ids):  # a trailing incomplete character: show what the tokenizer gives
            prefix = self._decode(self.ids[self._prefix_offset:self._read_offset])
            self._pending += self._decode(self.ids[self._prefix_offset:])[len(prefix):]
            self._read_offset = len(self.ids)
        return self._release(final=True)[0]

    def _release(self, final: bool) -> tuple[str, bool]:
        candidate = self._pending
        if self.stop:
            # A stop string may begin inside text released earlier only if held back: search the
            # last len(stop)-1 released characters too.
            keep = max(len(s) for s in self.stop) - 1
            window = self.text[-keep:] if keep else ""
            joined = window + candidate
            hits = [joined.find(s) for s in self.stop]
            hits = [h for h in hits if h >= 0]
            if hits:
                cut = min(hits) - len(window)  # >= 0: released text never holds a whole stop string's start
                out = candidate[:max(cut, 0)]
                self.text += out
                self._pending = ""
                return out, True
            if not final:
                hold = _longest_stop_prefix(joined, self.stop)
                hold = min(hold, len(candidate))
                out = candidate[:len(candidate) - hold]
                self.text += out
                self._pending = candidate[len(out):]
                return out, False
        self.text += candidate
        self._pending = ""
        return candidate, False


def _longest_stop_prefix(text: str, stops: list[str]) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best
