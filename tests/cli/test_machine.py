"""`tunelab machine`: what tunelab sees of this machine and the dtype `precision: auto` picks here."""
import json

import pytest
import torch

from tunelab.core import bf16_speed
from tunelab.training.precision import autocast_bf16, bf16_support


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    return tmp_path


def test_the_answer_is_the_one_training_uses(cli_here, cache):
    rc, out, err = cli_here("machine", "--json")
    assert rc == 0, err
    answer = json.loads(out)
    support = bf16_support()
    assert answer["bf16_supported"] == support.supported and answer["bf16_faster"] == support.fast
    assert answer["precision_auto"] == ("bf16" if autocast_bf16("auto", support) else "fp32")
    assert answer["machine"] and answer["threads"] == torch.get_num_threads()
    rc, out, err = cli_here("machine")
    assert rc == 0, err
    assert f"precision auto: {answer['precision_auto']}" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the probe is for CPUs")
def test_measure_replaces_the_cached_answer(cli_here, cache):
    bf16_speed.cache_file().parent.mkdir(parents=True)
    planted = {"bf16_faster": True, "bf16_s": 100.0, "fp32_s": 900.0, "shape": [1, 1, 1]}
    bf16_speed.cache_file().write_text(json.dumps({bf16_speed._machine_key(): planted}))
    rc, out, _ = cli_here("machine", "--json")
    assert json.loads(out)["probe"] == planted  # read from the cache, not measured
    rc, out, err = cli_here("machine", "--measure", "--json")
    assert rc == 0, err
    probe = json.loads(out)["probe"]
    assert probe["shape"] == list(bf16_speed.PROBE_SHAPE)
    assert 0 < probe["bf16_s"] < 5 and 0 < probe["fp32_s"] < 5
    assert bf16_speed.cached_probe() == probe
