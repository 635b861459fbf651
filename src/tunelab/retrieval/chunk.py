"""Split a document into overlapping windows of words, sized for the embedder's context.

Pure Python (no tokenizer): words are whitespace-separated, and a chunk's text is its words
joined by single spaces, so line breaks inside a document are not kept.
"""
from __future__ import annotations

# all-MiniLM-L6-v2 reads 256 word pieces; English prose averages ~1.3 pieces a word, so 180
# words fill the window without being truncated, and 30 words (a sentence or two) of overlap
# keep a sentence cut at a boundary whole in one of the two chunks.
DEFAULT_CHUNK_WORDS = 180
DEFAULT_OVERLAP = 30


def check_chunking(chunk_words: int, overlap: int) -> str | None:
    """Why these chunk settings are invalid, or None when they are fine."""
    if isinstance(chunk_words, bool) or not isinstance(chunk_words, int) or chunk_words < 1:
        return f"chunk_words must be a whole number >= 1 (got {chunk_words!r})"
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        return f"overlap must be a whole number >= 0 (got {overlap!r})"
    if overlap >= chunk_words:
        return f"overlap ({overlap}) must be smaller than chunk_words ({chunk_words}), or chunks never advance"
    return None


def chunk_text(text: str, chunk_words: int = DEFAULT_CHUNK_WORDS, overlap: int = DEFAULT_OVERLAP) -> list[str]:
    """``text`` as chunks of at most ``chunk_words`` words, each starting ``chunk_words - overlap``
    words after the previous one; a text of at most ``chunk_words`` words is one chunk, an empty one none.
    The last chunk ends at the last word (it may be shorter), so no words are dropped or repeated
    beyond the overlap."""
    problem = check_chunking(chunk_words, overlap)
    if problem:
        raise ValueError(problem)
    words = text.split()
    chunks, start = [], 0
    while start < len(words):
        end = min(start + chunk_words, len(words))
        chunks.append(" ".join(words[start:end]))
        if end == len(words):
            break
        start = end - overlap
    return chunks
