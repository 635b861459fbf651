"""A trained embedding tied to the LM head: sparse gradient rows added in place, the same gradients."""
import contextlib

import pytest
import torch

from tunelab.models import CAUSAL_LM, SEQ_CLS, load_model
from tunelab.stages import _lm
from tunelab.training import tied_embedding as te

from stages.test_lm import _examples


def _micro_batches(model):
    vocab = model.config.vocab_size
    collate = _lm.PadCollator(pad_token_id=0)
    with_loss = collate(_examples([20, 13, 9], vocab=vocab, seed=1))
    without_loss = collate(_examples([8, 6], vocab=vocab, seed=2))
    without_loss["labels"][:] = -100  # no loss position: the chunked loss never reaches the head
    return [with_loss, without_loss, with_loss]


def _accumulated_grads(model, batches, switched: bool):
    model.zero_grad(set_to_none=True)
    with te.sparse_tied_embedding_grads(model, switched) as on:
        assert on is switched
        for batch in batches:
            loss, _ = _lm.causal_lm_loss(model, batch)
            (loss + 0.0 * model.get_input_embeddings()(batch["input_ids"]).sum()).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("order", ["head first", "embedding only first"])
def test_the_same_dense_gradients_over_accumulated_micro_batches(order):
    torch.manual_seed(0)
    model, _ = load_model("tiny-llama", CAUSAL_LM)
    assert te.tied_trained_embedding(model) is model.get_input_embeddings()
    batches = _micro_batches(model)
    if order == "embedding only first":  # the first accumulation is the embedding's sparse rows alone
        batches = batches[1:]
    stock = _accumulated_grads(model, batches, switched=False)
    sparse = _accumulated_grads(model, batches, switched=True)
    assert stock.keys() == sparse.keys()
    for name, grad in sparse.items():
        assert grad.layout == torch.strided, name  # what AdamW and gradient clipping need
        torch.testing.assert_close(grad, stock[name], atol=1e-6, rtol=1e-5, msg=name)
    assert model.get_input_embeddings().sparse is False  # restored


def test_a_lone_micro_batch_without_loss_positions_still_leaves_a_dense_gradient():
    model, _ = load_model("tiny-llama", CAUSAL_LM)
    batch = _micro_batches(model)[1]
    grads = _accumulated_grads(model, [batch], switched=True)
    weight = model.get_input_embeddings().weight
    assert grads["model.embed_tokens.weight"].layout == torch.strided
    torch.optim.AdamW([weight], lr=1e-3).step()  # would raise on a sparse gradient


def test_untied_or_frozen_embeddings_are_left_alone():
    model, _ = load_model("tiny-llama", CAUSAL_LM)
    model.get_input_embeddings().weight.requires_grad_(False)
    assert te.tied_trained_embedding(model) is None
    model.get_input_embeddings().weight.requires_grad_(True)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untie
    assert te.tied_trained_embedding(model) is None
    with te.sparse_tied_embedding_grads(model) as on:
        assert on is False and model.get_input_embeddings().sparse is False
    bert, _ = load_model("tiny-bert", SEQ_CLS)  # a classifier: no output embeddings at all
    assert te.tied_trained_embedding(bert) is None


@pytest.mark.parametrize("method, world_size, switched", [("full", None, True), ("lora", None, False),
                                                          ("full", "2", False)])
def test_the_engine_switches_full_single_process_runs_only(tmp_path, monkeypatch, method, world_size, switched):
    from conftest import SYNTHETIC_ROWS, tiny_config, write_rows

    from tunelab.training import engine

    seen = []
    real = te.sparse_tied_embedding_grads

    @contextlib.contextmanager
    def recording(model, active=True):
        with real(model, active) as on:
            seen.append(on)
            yield on

    monkeypatch.setattr(engine, "sparse_tied_embedding_grads", recording)
    if world_size:  # what the engine reads of a launch (no process group is started here)
        monkeypatch.setattr(engine, "single_process", lambda: False)
    data = write_rows(tmp_path / "sft.jsonl", SYNTHETIC_ROWS["dolly"])
    cfg = tiny_config("sft", method, data, tmp_path / "runs", max_steps=2)
    engine.train(cfg, quiet=True)
    assert seen == [switched]
