"""A row's output does not depend on how it was batched: padding (decoder classifiers, causal LMs) or packing."""
from __future__ import annotations

import pytest
import torch

from tunelab.methods import METHODS
from tunelab.models import CAUSAL_LM, SEQ_CLS, load_model

TEXTS = ["The colour of the sky is blue, everyone knows.", "Snow is white."]  # SYNTHETIC


@pytest.mark.parametrize("kind", [SEQ_CLS, CAUSAL_LM])
@pytest.mark.parametrize("method, options", [("prompt", {"num_virtual_tokens": 4}),
                                             ("prefix", {"num_virtual_tokens": 4}),
                                             ("adapter", {"placement": "houlsby"})])
def test_right_padding_does_not_change_a_rows_output(kind, method, options):
    torch.manual_seed(0)
    model, tokenizer = load_model("tiny-llama", kind, **({"num_labels": 2} if kind == SEQ_CLS else {}))
    model = METHODS[method].apply(model, METHODS[method].Config(**options)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)  # a trained-looking method, so that what it adds matters
        batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
        assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1]  # row 1 is padded
        padded = model(**batch).logits[1]
        alone = tokenizer(TEXTS[1:], return_tensors="pt")
        single = model(**alone).logits[0]
    if kind == CAUSAL_LM:
        padded = padded[: single.shape[0]]
    torch.testing.assert_close(padded, single, atol=1e-4, rtol=1e-4)


PACKABLE = [("full", {}), ("freeze", {"k": 1}), ("lora", {"r": 4}), ("adapter", {"placement": "houlsby"}),
            ("ia3", {}), ("prefix", {"num_virtual_tokens": 4}), ("prompt", {"num_virtual_tokens": 4})]


@pytest.mark.parametrize("method, options", PACKABLE, ids=[name for name, _ in PACKABLE])
def test_packed_row_matches_examples_alone_or_method_opts_out(method, options):
    """In a packed row (position_ids restart per example, no attention_mask) each example must see
    only itself; a method that cannot guarantee it declares PACKING_UNSUPPORTED (the engine unpacks)."""
    torch.manual_seed(0)
    model, tokenizer = load_model("tiny-llama", CAUSAL_LM)
    model = METHODS[method].apply(model, METHODS[method].Config(**options)).eval()
    first, second = (tokenizer(text)["input_ids"] for text in TEXTS)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and method != "full":
                p.normal_(0, 0.5)
        row = torch.tensor([first + second])
        positions = torch.tensor([list(range(len(first))) + list(range(len(second)))])
        packed = model(input_ids=row, position_ids=positions, use_cache=False).logits[0, len(first):]
        alone = model(input_ids=torch.tensor([second]), use_cache=False).logits[0]
    keeps_apart = torch.allclose(packed, alone, atol=1e-4, rtol=1e-4)
    assert keeps_apart != hasattr(METHODS[method], "PACKING_UNSUPPORTED")
