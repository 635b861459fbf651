"""Label masking: in SFT only assistant tokens carry loss; in pretraining every token does.

Uses the tiny-llama tokenizer (SmolLM2's, with its ChatML chat template). Chats are SYNTHETIC,
except one check over the bundled real Dolly subset.
"""
from __future__ import annotations

import pytest
from conftest import DOLLY

from tunelab.data import load_file
from tunelab.data.tokenize import IGNORE, encode_chat, encode_text, render_chat

EOT = "<|im_end|>\n"  # the template's end-of-turn marker: trained, so the model learns to stop


def labelled_runs(encoded: dict) -> list[list[int]]:
    """Contiguous runs of loss-bearing token ids."""
    runs, current = [], []
    for token, label in zip(encoded["input_ids"], encoded["labels"]):
        if label != IGNORE:
            assert label == token, "a label must be the token itself (the loss shifts it)"
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def unlabelled_text(tokenizer, encoded: dict) -> str:
    return tokenizer.decode([t for t, lab in zip(encoded["input_ids"], encoded["labels"]) if lab == IGNORE])


# SYNTHETIC chat
SINGLE = [{"role": "system", "content": "You answer in one short sentence."},
          {"role": "user", "content": "What is the capital of France?"},
          {"role": "assistant", "content": "The capital of France is Paris."}]


def test_sft_labels_exactly_the_assistant_reply(tiny_tokenizer):
    encoded = encode_chat(tiny_tokenizer, SINGLE, max_length=1024)
    assert len(encoded["input_ids"]) == len(encoded["labels"])
    runs = labelled_runs(encoded)
    assert [tiny_tokenizer.decode(run) for run in runs] == ["The capital of France is Paris." + EOT]
    # Nothing from the system prompt, the user turn or the template's role headers carries a label.
    prompt = unlabelled_text(tiny_tokenizer, encoded)
    assert prompt == ("<|im_start|>system\nYou answer in one short sentence.<|im_end|>\n"
                      "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    # The labelled tokens are the tail of the sequence: the prompt is wholly unlabelled.
    first = encoded["labels"].index(runs[0][0])
    assert all(label == IGNORE for label in encoded["labels"][:first])
    assert all(label != IGNORE for label in encoded["labels"][first:])


def test_template_default_system_prompt_is_not_trained(tiny_tokenizer):
    chat = SINGLE[1:]  # SmolLM2's template injects its own system prompt when there is none
    encoded = encode_chat(tiny_tokenizer, chat, max_length=1024)
    assert "SmolLM" in unlabelled_text(tiny_tokenizer, encoded)
    assert [tiny_tokenizer.decode(r) for r in labelled_runs(encoded)] == ["The capital of France is Paris." + EOT]


def test_multi_turn_labels_every_assistant_turn_only(tiny_tokenizer):
    chat = [{"role": "user", "content": "Hi!"},  # SYNTHETIC
            {"role": "assistant", "content": "Hello. How can I help?"},
            {"role": "user", "content": "Add 2 and 3."},
            {"role": "assistant", "content": "2 + 3 = 5."},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": " You're welcome!"}]
    encoded = encode_chat(tiny_tokenizer, chat, max_length=1024)
    replies = [m["content"] + EOT for m in chat if m["role"] == "assistant"]
    assert [tiny_tokenizer.decode(run) for run in labelled_runs(encoded)] == replies
    prompt = unlabelled_text(tiny_tokenizer, encoded)
    for message in chat:
        assert (message["content"] in prompt) == (message["role"] == "user")


def test_every_real_dolly_example_labels_only_its_response(tiny_tokenizer):
    _, examples = load_file(str(DOLLY))
    for example in examples:
        encoded = encode_chat(tiny_tokenizer, example["messages"], max_length=10**9)
        runs = labelled_runs(encoded)
        assert [tiny_tokenizer.decode(r) for r in runs] == [example["messages"][-1]["content"] + EOT]


def test_render_spans_cover_replies(tiny_tokenizer):
    text, spans = render_chat(tiny_tokenizer, SINGLE)
    assert [text[a:b] for a, b in spans] == ["The capital of France is Paris." + EOT]


def test_truncation_keeps_labels_aligned(tiny_tokenizer):
    full = encode_chat(tiny_tokenizer, SINGLE, max_length=1024)
    keep = len(full["input_ids"]) - 4  # cut into the reply
    cut = encode_chat(tiny_tokenizer, SINGLE, max_length=keep)
    assert cut["input_ids"] == full["input_ids"][:keep] and cut["labels"] == full["labels"][:keep]
    assert any(label != IGNORE for label in cut["labels"])


def test_truncation_that_cuts_every_reply_token_drops_the_example(tiny_tokenizer):
    full = encode_chat(tiny_tokenizer, SINGLE, max_length=1024)
    prompt_length = full["labels"].index(next(lab for lab in full["labels"] if lab != IGNORE))
    assert encode_chat(tiny_tokenizer, SINGLE, max_length=prompt_length) is None
    assert encode_chat(tiny_tokenizer, SINGLE, max_length=prompt_length + 1) is not None


@pytest.mark.parametrize("max_length", [8, 16, 1024])
def test_pretrain_labels_every_token(tiny_tokenizer, max_length):
    text = "The colour of the sky is blue. Everyone knows the sky is blue, and grass is green."  # SYNTHETIC
    windows = encode_text(tiny_tokenizer, text, max_length)
    assert windows
    ids = [token for w in windows for token in w["input_ids"]]
    assert ids[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(ids[:-1], skip_special_tokens=True) == text
    for window in windows:
        assert window["labels"] == window["input_ids"]
        assert 1 < len(window["input_ids"]) <= max_length
