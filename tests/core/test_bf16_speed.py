"""The bf16 speed probe: measured once per machine, cached, and its answer is what `auto` uses."""
import json

import pytest

from tunelab.core import bf16_speed


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    return tmp_path


def test_the_probe_times_both_dtypes_on_this_machine():
    seconds = bf16_speed.probe_seconds(repeats=2)
    assert set(seconds) == {"bf16", "fp32"}
    assert all(0 < s < 5 for s in seconds.values())


@pytest.mark.parametrize("bf16_s, fp32_s, faster", [(1.0, 4.0, True), (1.0, 1.0, False), (1.7, 1.0, False),
                                                    (0.79, 1.0, True), (0.81, 1.0, False)])
def test_bf16_counts_as_faster_only_by_a_clear_margin(bf16_s, fp32_s, faster):
    assert bf16_speed.decide({"bf16": bf16_s, "fp32": fp32_s}) is faster


def test_the_answer_is_measured_once_and_cached_per_machine(cache, monkeypatch):
    calls = []

    def probe():
        calls.append(1)
        return {"bf16": 1.0, "fp32": 3.0}

    monkeypatch.setattr(bf16_speed, "probe_seconds", probe)
    assert bf16_speed.bf16_matmul_faster() is True
    assert bf16_speed.bf16_matmul_faster() is True
    assert len(calls) == 1
    entries = json.loads(bf16_speed.cache_file().read_text())
    (key, entry), = entries.items()
    assert "torch" in key and "threads" in key
    assert entry["bf16_faster"] is True and entry["bf16_s"] == 1.0 and entry["fp32_s"] == 3.0


def test_another_thread_count_is_measured_again(cache, monkeypatch):
    import torch

    answers = iter([{"bf16": 1.0, "fp32": 3.0}, {"bf16": 3.0, "fp32": 1.0}])
    monkeypatch.setattr(bf16_speed, "probe_seconds", lambda: next(answers))
    threads = torch.get_num_threads()
    assert bf16_speed.bf16_matmul_faster() is True
    torch.set_num_threads(threads + 1)
    try:
        assert bf16_speed.bf16_matmul_faster() is False
    finally:
        torch.set_num_threads(threads)
    assert len(json.loads(bf16_speed.cache_file().read_text())) == 2


def test_an_unreadable_cache_is_measured_again_and_replaced(cache, monkeypatch):
    bf16_speed.cache_file().parent.mkdir(parents=True)
    bf16_speed.cache_file().write_text("{not json")
    monkeypatch.setattr(bf16_speed, "probe_seconds", lambda: {"bf16": 3.0, "fp32": 1.0})
    assert bf16_speed.bf16_matmul_faster() is False
    assert json.loads(bf16_speed.cache_file().read_text())


def test_a_cache_that_cannot_be_written_still_answers(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("TUNELAB_CACHE", str(blocked / "below-a-file"))
    monkeypatch.setattr(bf16_speed, "probe_seconds", lambda: {"bf16": 1.0, "fp32": 3.0})
    assert bf16_speed.bf16_matmul_faster() is True
