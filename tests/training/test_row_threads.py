"""train.row_threads: a micro-batch's rows trained side by side in threads, same run as one thread."""
from __future__ import annotations

import threading

import pytest
import torch

from conftest import logged_losses, saved_weights, tiny_config, write_config
from tunelab.core.errors import TunelabError
from tunelab.stages._head_loss import hidden_states_as_logits
from tunelab.training import row_threads
from tunelab.training.engine import train


@pytest.mark.parametrize("method", ["lora", "full"])  # full: tiny-llama's tied embedding trains
def test_two_row_threads_train_the_same_run_as_one(tmp_path, synthetic_data, monkeypatch, method):
    data = synthetic_data("dolly")
    threads: list[str] = []
    original = row_threads.RowThreads.run

    def spied(self, step, inputs):  # the real run; records which threads ran the parts
        def recorded(part):
            threads.append(threading.current_thread().name)
            return step(part)
        return original(self, recorded, inputs)

    monkeypatch.setattr(row_threads.RowThreads, "run", spied)
    runs, lr = {}, 1e-2 if method == "lora" else 1e-3
    for n in (1, 2):
        config = tiny_config("sft", method, data, tmp_path / f"runs{n}", precision="fp32", batch_size=2,
                             grad_accum=2, row_threads=n, lr=lr)
        runs[n] = train(config, quiet=True)
    assert len(threads) >= 2 * 3 and all(name.startswith("tunelab-rows") for name in threads)
    one, two = logged_losses(runs[1]), logged_losses(runs[2])
    assert len(one) == len(two) == 3
    assert one == pytest.approx(two, rel=1e-5)
    a, b = saved_weights(runs[1]), saved_weights(runs[2])
    assert a.keys() == b.keys()
    # Adam moves a weight whose gradient is near zero by up to lr whatever the gradient's size, so the
    # two summation orders of fp32 gradients may part by a sliver of one step (1.3e-5 at lr 1e-2 seen
    # on an AMD EPYC); a row left out or counted twice would move the losses above and whole steps here.
    for key in a:
        assert torch.allclose(a[key], b[key], atol=lr / 100), (key, (a[key] - b[key]).abs().max())


def test_rows_split_evenly_and_other_entries_pass_through():
    pool = row_threads.RowThreads(2)
    try:
        inputs = {"input_ids": torch.arange(15).reshape(5, 3), "labels": torch.ones(5, 3), "flag": "x",
                  "scalar": torch.tensor(2.0)}
        parts = pool.split(inputs)
        assert [p["input_ids"].shape[0] for p in parts] == [2, 3]
        assert torch.equal(torch.cat([p["input_ids"] for p in parts]), inputs["input_ids"])
        assert all(p["flag"] == "x" and p["scalar"] is inputs["scalar"] for p in parts)
        assert pool.run(lambda part: part["labels"].sum(), inputs).item() == 15
    finally:
        pool.close()


def test_a_failing_part_raises_its_error():
    pool = row_threads.RowThreads(2)

    def step(part):
        if part["input_ids"][0, 0] > 0:
            raise ValueError("second half failed")
        return torch.tensor(1.0)

    try:
        with pytest.raises(ValueError, match="second half"):
            pool.run(step, {"input_ids": torch.arange(4).reshape(4, 1)})
    finally:
        pool.close()


def test_the_head_is_an_identity_only_for_threads_inside_the_switch():
    head = torch.nn.Linear(4, 6, bias=False)
    original = head.forward
    inside, release = threading.Barrier(3), threading.Event()
    shapes = {}

    def worker(name):
        with hidden_states_as_logits(head):
            inside.wait()
            shapes[name] = head(torch.ones(1, 4)).shape[-1]
            release.wait()

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    inside.wait()
    outside = head(torch.ones(1, 4)).shape[-1]  # this thread is not inside the switch
    release.set()
    for w in workers:
        w.join()
    assert shapes == {0: 4, 1: 4} and outside == 6
    assert head.forward == original  # the last thread out restored the head


@pytest.mark.parametrize("change,message", [
    ({"stage": "classify"}, "needs stage sft or pretrain"),
    ({"method": {"name": "prompt"}}, "needs method full, freeze, head, lora, ia3, adapter"),
    ({"train": {"compile": True}}, "does not combine with train.compile"),
    ({"train": {"batch_size": 1}}, "needs train.batch_size >= 2"),
    ({"method": {"name": "lora", "dropout": 0.1}}, "needs a model without dropout"),
])
def test_unsupported_settings_fail_before_the_run_directory_exists(tmp_path, synthetic_data, cli, change, message):
    config = tiny_config("sft", "lora", synthetic_data("dolly"), tmp_path / "runs", row_threads=2)
    for key, value in change.items():
        if key == "stage" and value == "classify":
            config["stage"] = {"name": "classify"}
            config["data"]["train"] = str(synthetic_data("classification"))
        elif isinstance(value, dict) and key == "train":
            config["train"].update(value)
        else:
            config[key] = value
    code, out, err = cli("train", str(write_config(tmp_path / "run.yaml", config)))
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines and message in lines[0] and "Traceback" not in err
    assert not any((tmp_path / "runs").glob("*/summary.json"))
    with pytest.raises(TunelabError, match=message.split(" (")[0]):
        train(config, quiet=True)


def test_a_single_row_runs_in_the_calling_thread():
    pool = row_threads.RowThreads(2)
    try:
        names = []
        pool.run(lambda part: names.append(threading.current_thread().name) or torch.tensor(0.0),
                 {"input_ids": torch.zeros(1, 3)})
        assert names == [threading.current_thread().name]
    finally:
        pool.close()


def test_tied_embedding_rows_wait_until_every_part_has_finished():
    """Parts' backward passes add the head's gradient into the tied weight's `.grad` under autograd's lock;
    the embedding's rows, added outside it, must wait for all of them (`RowAdder.held`)."""
    from tunelab.training.tied_embedding import RowAdder

    weight = torch.nn.Parameter(torch.zeros(5, 2))
    adder = RowAdder(weight)
    seen_inside = []

    def step(part):
        adder.after_backward(part["input_ids"].reshape(-1), torch.ones(part["input_ids"].numel(), 2))
        seen_inside.append(weight.grad)
        return torch.tensor(0.0)

    pool = row_threads.RowThreads(2, around=adder.held)
    try:
        pool.run(step, {"input_ids": torch.tensor([[1], [3]])})
    finally:
        pool.close()
    assert seen_inside == [None, None]  # nothing was added while the parts ran
    assert weight.grad[:, 0].tolist() == [0, 1, 0, 1, 0]
