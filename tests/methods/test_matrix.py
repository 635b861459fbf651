"""One shared matrix every adaptation method passes (in the spirit of peft's PeftCommonTester).

Each case is a method (with options) on the tiny random llama (causal LM) or the tiny random BERT
(sequence classification, 2 labels). Training is a plain AdamW loop on a synthetic batch, so a
failure points at the method, not at the Trainer. A method joins the matrix by adding a Case.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tunelab.methods import METHODS, _prefix_kv
from tunelab.models import CAUSAL_LM, SEQ_CLS, count_params, load_model
from tunelab.stages._lm import causal_lm_loss

MODELS = {"llama": ("tiny-llama", CAUSAL_LM, {}), "bert": ("tiny-bert", SEQ_CLS, {"num_labels": 2})}
TEXTS = ["The colour of the sky is blue.", "Snow is white."]  # SYNTHETIC
HEAD = r"|^classifier\.|classifier\.modules_to_save\."  # what else trains on the BERT classifier


@dataclass(frozen=True)
class Case:
    method: str
    model: str  # key of MODELS
    trainable: str  # regex searched in parameter names: exactly these require grad
    options: tuple = ()  # (key, value) pairs of the method config
    identity_at_init: bool = False  # the untrained method leaves the base model's output unchanged
    peft: bool = False  # saved in peft's format: stock PeftModel.from_pretrained must load it
    id: str = field(default="", compare=False)

    def config(self):
        return METHODS[self.method].Config(**dict(self.options))


def _case(method, model, trainable, options=(), **flags) -> Case:
    suffix = "-".join(f"{k}={v}" for k, v in options)
    return Case(method, model, trainable, tuple(options), id=f"{method}{'-' + suffix if suffix else ''}-{model}", **flags)


CASES = [
    _case("full", "llama", r".", identity_at_init=True),
    _case("full", "bert", r".", identity_at_init=True),
    _case("freeze", "llama", r"^model\.layers\.1\.", [("k", 1)], identity_at_init=True),
    _case("freeze", "bert", r"^bert\.encoder\.layer\.1\." + HEAD, [("k", 1)], identity_at_init=True),
    # embed_tokens is tied to lm_head in tiny-llama: it must train (and count) once.
    _case("freeze", "llama", r"norm|embed_tokens", [("k", 0), ("trainable_patterns", ("norm", "embed_tokens"))],
          identity_at_init=True),
    _case("lora", "llama", r"\.lora_", [("r", 4), ("dropout", 0.0)], identity_at_init=True, peft=True),
    _case("lora", "bert", r"\.lora_" + HEAD, [("r", 4)], identity_at_init=True, peft=True),
    _case("lora", "llama", r"\.lora_", [("r", 4), ("use_dora", True)], identity_at_init=True, peft=True),
    _case("lora", "llama", r"\.lora_", [("r", 4), ("use_rslora", True)], identity_at_init=True, peft=True),
    _case("adapter", "llama", r"\.adapter\.", [("placement", "houlsby")], identity_at_init=True),
    _case("adapter", "llama", r"\.adapter\.", [("placement", "pfeiffer")], identity_at_init=True),
    _case("adapter", "bert", r"\.adapter\." + HEAD, [("placement", "houlsby"), ("non_linearity", "gelu")],
          identity_at_init=True),
    _case("adapter", "bert", r"\.adapter\." + HEAD, [("placement", "pfeiffer"), ("bottleneck", 8)],
          identity_at_init=True),
    _case("prefix", "llama", r"^prompt_encoder\.", [("num_virtual_tokens", 4)], peft=True),
    _case("prefix", "llama", r"^prompt_encoder\.", [("num_virtual_tokens", 4), ("prefix_projection", True)], peft=True),
    _case("prefix", "bert", r"^prompt_encoder\." + HEAD, [("num_virtual_tokens", 4)], peft=True),
    _case("prompt", "llama", r"^prompt_encoder\.", [("num_virtual_tokens", 4)], peft=True),
    _case("prompt", "bert", r"^prompt_encoder\." + HEAD, [("num_virtual_tokens", 4)], peft=True),
    _case("ia3", "llama", r"\.ia3_l\.", identity_at_init=True, peft=True),
    _case("ia3", "bert", r"\.ia3_l\." + HEAD, identity_at_init=True, peft=True),
]
IDS = [case.id for case in CASES]


def cases(predicate=lambda case: True):
    chosen = [case for case in CASES if predicate(case)]
    return pytest.mark.parametrize("case", chosen, ids=[case.id for case in chosen])


# --------------------------------------------------------------------------- the tiny world


def fresh_base(case: Case, seed: int = 0):
    spec, kind, extra = MODELS[case.model]
    torch.manual_seed(seed)  # a classification head is new: each seed gives a different one
    return load_model(spec, kind, **extra)


def batch(tokenizer, case: Case) -> dict:
    encoded = tokenizer(TEXTS, return_tensors="pt", padding=True)
    inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    if case.model == "llama":
        inputs["labels"] = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    else:
        inputs["labels"] = torch.tensor([1, 0])
    return inputs


def loss_of(model, inputs: dict, case: Case) -> torch.Tensor:
    if case.model == "llama":
        return causal_lm_loss(model, inputs)[0]  # the sft/pretrain stages' loss, shapes and all
    return F.cross_entropy(model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits,
                           inputs["labels"])


@torch.no_grad()
def logits_of(model, inputs: dict) -> torch.Tensor:
    model.eval()
    return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters(remove_duplicate=False)}


@dataclass
class Trained:
    base_logits: torch.Tensor
    base_counts: tuple[int, int]
    base_ids: set
    model: torch.nn.Module
    initial_logits: torch.Tensor
    before: dict
    inputs: dict
    run_dir: Path


@lru_cache(maxsize=None)
def trained(case: Case, root: Path) -> Trained:
    """Apply the method, train 3 AdamW steps, save into a run directory; cached per case."""
    # The untrained method is compared with an independently loaded base (same seed, so the same
    # new head), never with the model it was applied to: `full`/`freeze` return that very object.
    reference, tokenizer = fresh_base(case)
    inputs = batch(tokenizer, case)
    base_logits = logits_of(reference, inputs)
    del reference
    model, _ = fresh_base(case)
    base_counts = count_params(model)
    base_ids = {id(p) for p in model.parameters()}
    model = METHODS[case.method].apply(model, case.config())
    initial_logits = logits_of(model, inputs)
    before = snapshot(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    for _ in range(3):  # LoRA/adapters start with a zero factor: its partner moves from step 2 on
        optimizer.zero_grad()
        loss_of(model, inputs, case).backward()
        optimizer.step()
    run_dir = root / case.id
    run_dir.mkdir(parents=True)
    METHODS[case.method].save(model, run_dir)
    return Trained(base_logits, base_counts, base_ids, model, initial_logits, before, inputs, run_dir)


@pytest.fixture
def result(case, tmp_path_factory) -> Trained:
    return trained(case, tmp_path_factory.getbasetemp() / "method-matrix")


# --------------------------------------------------------------------------- the matrix


@cases()
def test_forward_works(case, result):
    logits = logits_of(result.model, result.inputs)
    batch_size, length = result.inputs["input_ids"].shape
    assert logits.shape[:2] == ((batch_size, length) if case.model == "llama" else (batch_size, 2))
    assert torch.isfinite(logits).all()


@cases(lambda case: case.identity_at_init)
def test_untrained_method_leaves_output_unchanged(case, result):
    """Against a separately loaded base model: `full`/`freeze` only set requires_grad, so for them
    this checks that apply() leaves every weight as loaded (it must not re-initialise or cast)."""
    if case.method in ("adapter", "full", "freeze"):  # adapter: up-projection starts at zero, h + 0 is h
        assert torch.equal(result.initial_logits, result.base_logits)
    else:
        torch.testing.assert_close(result.initial_logits, result.base_logits, atol=1e-5, rtol=0)


@cases()
def test_exactly_the_intended_parameters_train(case, result):
    pattern = re.compile(case.trainable)
    trainable = {name for name, p in result.model.named_parameters() if p.requires_grad}
    intended = {name for name, _ in result.model.named_parameters() if pattern.search(name)}
    assert trainable, "nothing trains"
    assert trainable == intended, (f"train but should not: {sorted(trainable - intended)[:5]}; "
                                   f"should train but do not: {sorted(intended - trainable)[:5]}")


@cases()
def test_parameter_counts_count_each_tensor_once(case, result):
    trainable, total = count_params(result.model)
    unique = {id(p): p for p in result.model.parameters()}.values()
    added = sum(p.numel() for p in unique if id(p) not in result.base_ids)
    assert total == result.base_counts[1] + added  # tied weights stay tied and count once
    assert trainable == sum(p.numel() for p in unique if p.requires_grad)
    assert 0 < trainable <= total


@cases()
def test_training_moves_trainable_and_nothing_else(case, result):
    after = dict(result.model.named_parameters(remove_duplicate=False))
    for name, old in result.before.items():
        if after[name].requires_grad:
            assert not torch.equal(old, after[name]), f"trainable {name} did not change"
        else:
            assert torch.equal(old, after[name]), f"frozen {name} changed"


@cases()
def test_save_then_load_reproduces_logits_exactly(case, result):
    module = METHODS[case.method]
    expected = logits_of(result.model, result.inputs)
    base, _ = fresh_base(case, seed=1)
    loaded = module.load(base, result.run_dir, case.config())
    assert torch.equal(logits_of(loaded, result.inputs), expected)


@cases(lambda case: hasattr(METHODS[case.method], "merge"))
def test_merged_output_equals_unmerged(case, result, tmp_path):
    """Merging a run loaded on a fresh base gives a plain transformers model that, written with
    save_pretrained and read back by stock transformers, reproduces the trained model's output.

    For `full`/`freeze` merge returns its argument, so comparing it with the unmerged model would
    compare a model with itself; the save/reload against the model that trained is the real check.
    """
    import transformers

    module = METHODS[case.method]
    trained_logits = logits_of(result.model, result.inputs)
    base, _ = fresh_base(case, seed=1)  # another head: only the saved weights can make it match
    loaded = module.load(base, result.run_dir, case.config())
    unmerged = logits_of(loaded, result.inputs)
    merged = module.merge(loaded)
    assert not any("lora_" in n or "ia3_" in n for n, _ in merged.named_parameters()), "merge left adapters behind"
    stock = getattr(transformers, type(merged).__name__, None)
    assert stock is type(merged), f"merge returned {type(merged).__qualname__}, not a plain transformers model"
    torch.testing.assert_close(logits_of(merged, result.inputs), unmerged, atol=1e-5, rtol=0)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = stock.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(logits_of(reloaded, result.inputs), trained_logits, atol=1e-5, rtol=0)


@cases(lambda case: case.peft)
def test_saved_weights_load_in_stock_peft(case, result):
    from peft import PeftModel

    expected = logits_of(result.model, result.inputs)
    base, _ = fresh_base(case, seed=1)
    stock = PeftModel.from_pretrained(base, result.run_dir / "adapter")
    if case.method == "prefix" and not _prefix_kv.peft_drives(stock):
        # transformers >= 5.24: peft loads a classifier's prefix but can no longer run it; run what
        # stock peft loaded through tunelab's injection (checked in test_prefix_injection.py)
        stock = _prefix_kv.attach(stock)
    logits = logits_of(stock, result.inputs)
    if logits.dim() == 3:  # prompt tuning: stock peft also returns the virtual tokens' logits
        logits = logits[:, -expected.shape[1]:]
    assert torch.equal(logits, expected)


@cases(lambda case: case.model == "llama")
def test_cached_generation_matches_uncached_greedy_decoding(case, result):
    """generate() (KV cache: for prefix tuning, a DynamicCache pre-filled with the prefix) agrees
    with re-running the full sequence through forward() for every new token."""
    model = result.model.eval()
    prompt = result.inputs["input_ids"][:1]
    generated = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5,
                               do_sample=False, pad_token_id=0)
    ids = prompt
    with torch.no_grad():
        for _ in range(5):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, ids)
