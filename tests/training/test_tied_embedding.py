"""A trained embedding tied to the LM head: its gradient rows added in place, the same gradients."""
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
    with te.embedding_rows_in_place(model, switched) as on:
        assert (on is not None) is switched
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
    if order == "embedding only first":  # the first accumulation is the embedding's rows alone
        batches = batches[1:]
    stock = _accumulated_grads(model, batches, switched=False)
    in_place = _accumulated_grads(model, batches, switched=True)
    assert stock.keys() == in_place.keys()
    for name, grad in in_place.items():
        assert grad.layout == torch.strided, name  # what AdamW and gradient clipping need
        torch.testing.assert_close(grad, stock[name], atol=1e-6, rtol=1e-5, msg=name)
    assert "forward" not in vars(model.get_input_embeddings())  # the class's forward again


def test_a_lone_micro_batch_without_loss_positions_still_leaves_a_dense_gradient():
    model, _ = load_model("tiny-llama", CAUSAL_LM)
    batch = _micro_batches(model)[1]
    grads = _accumulated_grads(model, [batch], switched=True)
    weight = model.get_input_embeddings().weight
    assert grads["model.embed_tokens.weight"].layout == torch.strided
    torch.optim.AdamW([weight], lr=1e-3).step()  # needs a dense gradient


def test_the_padding_row_gets_no_gradient_from_the_lookup_as_in_stock():
    torch.manual_seed(0)
    model, _ = load_model("tiny-llama", CAUSAL_LM)
    embedding = model.get_input_embeddings()
    embedding.padding_idx = 0
    ids = torch.tensor([[0, 5, 7, 0, 0, 9]])  # every position reaches the loss below, padding included

    def grad(switched: bool):
        model.zero_grad(set_to_none=True)
        with te.embedding_rows_in_place(model, switched):
            (embedding(ids).pow(2).sum() + model.lm_head(embedding(ids)).logsumexp(-1).sum()).backward()
        return embedding.weight.grad.clone()

    stock, in_place = grad(False), grad(True)
    torch.testing.assert_close(in_place, stock, atol=1e-6, rtol=1e-5)
    # Counting the three padding lookups would add 2 * w[0] per lookup to row 0: far outside the tolerance.
    assert (2 * 3 * embedding.weight[0].detach()).abs().max() > 1e-3


@pytest.mark.parametrize("fused_head", [False, True])
def test_no_vocabulary_sized_gradient_is_added_out_of_place(monkeypatch, fused_head):
    """What the switch is for: the head's dense gradient takes the rows in place (op count, not timing).
    With autograd's own head backward (the plain chunk loss) the stock embedding costs one
    out-of-place add; the head node that forms its gradient in forward hands it over whole."""
    if not fused_head:  # the head through autograd's own matmul and cross-entropy backward
        monkeypatch.setattr(_lm, "chunked_lm_loss_sum", lambda h, w, t, autocast=None: torch.nn.functional.cross_entropy(
            (h.to(w.dtype) @ w.t()).float(), t, reduction="sum"))
    model, _ = load_model("tiny-llama", CAUSAL_LM)
    vocab_by_hidden = list(model.get_input_embeddings().weight.shape)
    batch = _micro_batches(model)[0]

    def out_of_place_adds(switched: bool) -> int:
        model.zero_grad(set_to_none=True)
        with te.embedding_rows_in_place(model, switched), torch.profiler.profile(record_shapes=True) as prof:
            loss, _ = _lm.causal_lm_loss(model, batch)
            loss.backward()
        return sum(1 for e in prof.events() if e.name == "aten::add" and vocab_by_hidden in (e.input_shapes or []))

    if not fused_head:
        assert out_of_place_adds(switched=False) == 1  # stock: the embedding's dense matrix + the head's
    assert out_of_place_adds(switched=True) == 0


def test_untied_or_frozen_embeddings_are_left_alone():
    model, _ = load_model("tiny-llama", CAUSAL_LM)
    model.get_input_embeddings().weight.requires_grad_(False)
    assert te.tied_trained_embedding(model) is None
    model.get_input_embeddings().weight.requires_grad_(True)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untie
    assert te.tied_trained_embedding(model) is None
    with te.embedding_rows_in_place(model) as on:
        assert on is None and "forward" not in vars(model.get_input_embeddings())
    tied = model.get_input_embeddings()
    tied.weight = model.lm_head.weight  # tied again, but renormalised: not a plain lookup
    tied.max_norm = 1.0
    assert te.tied_trained_embedding(model) is None
    bert, _ = load_model("tiny-bert", SEQ_CLS)  # a classifier: no output embeddings at all
    assert te.tied_trained_embedding(bert) is None


@pytest.mark.parametrize("method, world_size, switched", [("full", None, True), ("lora", None, False),
                                                          ("full", "2", False)])
def test_the_engine_switches_full_single_process_runs_only(tmp_path, monkeypatch, method, world_size, switched):
    from conftest import SYNTHETIC_ROWS, tiny_config, write_rows

    from tunelab.training import engine

    seen = []
    real = te.embedding_rows_in_place

    @contextlib.contextmanager
    def recording(model, active=True):
        with real(model, active) as on:
            seen.append(on is not None)
            yield on

    monkeypatch.setattr(engine, "embedding_rows_in_place", recording)
    if world_size:  # what the engine reads of a launch (no process group is started here)
        monkeypatch.setattr(engine, "single_process", lambda: False)
    data = write_rows(tmp_path / "sft.jsonl", SYNTHETIC_ROWS["dolly"])
    cfg = tiny_config("sft", method, data, tmp_path / "runs", max_steps=2)
    engine.train(cfg, quiet=True)
    assert seen == [switched]
