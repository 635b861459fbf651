"""Chunking: word windows with overlap, short texts whole, nothing lost (pure Python)."""
from __future__ import annotations

import pytest

from tunelab.retrieval.chunk import DEFAULT_CHUNK_WORDS, DEFAULT_OVERLAP, check_chunking, chunk_text


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def test_short_text_is_one_chunk_with_whitespace_normalised():
    assert chunk_text("  one\ntwo\t three  ", 5, 2) == ["one two three"]
    assert chunk_text(words(5), 5, 2) == [words(5)]  # exactly chunk_words: still one chunk


def test_empty_text_has_no_chunks():
    assert chunk_text("", 5, 1) == []
    assert chunk_text(" \n ", 5, 1) == []


def test_windows_overlap_and_the_last_one_ends_at_the_last_word():
    # 12 words, 5 per chunk, overlap 2: starts 0, 3, 6, 9 -> w0-w4, w3-w7, w6-w10, w9-w11
    chunks = chunk_text(words(12), 5, 2)
    assert chunks == ["w0 w1 w2 w3 w4", "w3 w4 w5 w6 w7", "w6 w7 w8 w9 w10", "w9 w10 w11"]


def test_no_overlap_partitions_the_words():
    chunks = chunk_text(words(10), 4, 0)
    assert chunks == ["w0 w1 w2 w3", "w4 w5 w6 w7", "w8 w9"]
    assert " ".join(chunks) == words(10)


@pytest.mark.parametrize("n, size, overlap", [(181, 180, 30), (1000, 180, 30), (37, 7, 6), (50, 10, 3)])
def test_every_word_is_covered_in_order_and_chunks_respect_the_size(n, size, overlap):
    chunks = [chunk.split() for chunk in chunk_text(words(n), size, overlap)]
    assert all(1 <= len(chunk) <= size for chunk in chunks)
    rebuilt = chunks[0] + [word for chunk in chunks[1:] for word in chunk[overlap:]]
    assert rebuilt == words(n).split()  # each chunk repeats exactly `overlap` words of the one before
    assert all(prev[-overlap:] == chunk[:overlap] for prev, chunk in zip(chunks, chunks[1:]) if overlap)


def test_defaults_fit_minilm():
    assert (DEFAULT_CHUNK_WORDS, DEFAULT_OVERLAP) == (180, 30)
    assert len(chunk_text(words(180))) == 1 and len(chunk_text(words(181))) == 2


@pytest.mark.parametrize("size, overlap, message", [(0, 0, "chunk_words must be"), (5, -1, "overlap must be"),
                                                    (5, 5, "must be smaller than chunk_words"), (2.5, 0, "chunk_words"),
                                                    (True, 0, "chunk_words")])
def test_bad_settings(size, overlap, message):
    assert message in check_chunking(size, overlap)
    with pytest.raises(ValueError, match=message):
        chunk_text("a b c", size, overlap)
