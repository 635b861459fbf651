"""Sentence embeddings: mean-pooled, L2-normalised encoder states (the sentence-transformers recipe).

``all-MiniLM-L6-v2`` (bundled as ``minilm-l6``) was trained for exactly this pooling, so its
vectors match what sentence-transformers gives; any other encoder (or decoder) works the same way.
"""
from __future__ import annotations

from ..core.errors import TunelabError
from ..core.lazy import np, torch
from ..models import resolve

DEFAULT_EMBEDDER = "minilm-l6"
# Embedded once per model and stored with an index: a query embedder must reproduce it, which
# catches a different model behind the same name (or a different name for the same model).
PROBE_TEXT = "tunelab embedding probe: the quick brown fox jumps over the lazy dog."


class Embedder:
    """Texts -> (N, dim) float32 unit vectors."""

    def __init__(self, spec: str = DEFAULT_EMBEDDER, max_length: int = 256, batch_size: int = 32):
        self.spec, self.max_length, self.batch_size = spec, max_length, batch_size
        location = resolve(spec)  # a bad spec fails before transformers loads
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(location)
            self.model = AutoModel.from_pretrained(location, dtype=torch.float32).eval()
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise TunelabError(f"embedding model '{spec}' cannot be loaded ({first})") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: list[str]) -> "np.ndarray":
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                index = order[start : start + self.batch_size]
                batch = self.tokenizer([texts[i] for i in index], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                states = self.model(**batch).last_hidden_state  # (B, T, H)
                mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
                pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                out[index] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out

    def probe(self) -> list[float]:
        return [round(float(x), 5) for x in self.encode([PROBE_TEXT])[0]]


def same_embedder(stored_probe: list[float], embedder: Embedder, tolerance: float = 1e-3) -> bool:
    probe = embedder.probe()
    return len(probe) == len(stored_probe) and max(abs(a - b) for a, b in zip(probe, stored_probe)) <= tolerance


def nearest(query_vectors: "np.ndarray", corpus_vectors: "np.ndarray", k: int, exclude: list[set[int]] | None = None) -> list[list[int]]:
    """Indices of the k corpus vectors with the highest cosine similarity to each query (unit vectors),
    best first; ``exclude[i]`` lists corpus rows query ``i`` must never get (itself, its duplicates)."""
    scores = query_vectors @ corpus_vectors.T  # (Q, C)
    result = []
    for i, row in enumerate(scores):
        banned = exclude[i] if exclude else set()
        ranked = [j for j in np.argsort(-row, kind="stable") if j not in banned]
        result.append([int(j) for j in ranked[:k]])
    return result
