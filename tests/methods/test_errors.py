"""Bad method input: one line `error: ...` naming the option, exit code 2, no run directory left."""
from __future__ import annotations

import pytest
from conftest import tiny_config, write_config

from tunelab import train
from tunelab.core.errors import TunelabError


@pytest.fixture
def config(tmp_path, synthetic_data):
    """A tiny sft config on SYNTHETIC data; its output_dir must stay empty when the input is bad."""
    data = synthetic_data("dolly", ".jsonl")
    return write_config(tmp_path / "sft.yaml", tiny_config("sft", "full", data, tmp_path / "runs", max_steps=1))


@pytest.mark.parametrize("overrides, named", [
    (["method=adapterz"], "unknown method 'adapterz' (did you mean 'adapter'?)"),
    (["method=adapter", "method.r=8"], "unknown key 'method.r' for method 'adapter'"),
    (["method=lora", "method.target_modules=[nope_proj]"], "method.target_modules=['nope_proj'] matches no module"),
    (["method=ia3", "method.target_modules=[nope_proj]"], "method.target_modules=['nope_proj'] matches no module"),
    (["method=freeze", "method.k=3"], "method.k=3 but LlamaForCausalLM has only 2 transformer blocks"),
], ids=["unknown-method", "option-of-another-method", "lora-targets-nothing", "ia3-targets-nothing", "k-too-large"])
def test_cli_bad_method_input_is_one_line_error(cli, config, tmp_path, overrides, named):
    rc, out, err = cli("train", config, *overrides, "--quiet")
    assert rc == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and named in lines[-1], err[-2000:]
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("method, named", [
    ({"name": "freeze", "k": 0, "trainable_patterns": ["no_such_param"]}, "method.trainable_patterns"),
    ({"name": "freeze", "k": 0, "trainable_patterns": ["(unclosed"]}, "not a regular expression"),
    ({"name": "freeze", "k": 0}, "nothing would train"),
    ({"name": "prefix", "encoder_hidden_size": 32}, "method.prefix_projection"),
    ({"name": "ia3", "feedforward_modules": ["down_proj"]}, "method.target_modules"),
    ({"name": "adapter", "placement": "both"}, "method.placement"),
    ({"name": "prompt", "num_virtual_tokens": 0}, "method.num_virtual_tokens"),
])
def test_library_bad_method_options(config, method, named):
    import yaml

    raw = yaml.safe_load(config.read_text())
    raw["method"] = method
    with pytest.raises(TunelabError, match=named.replace("(", r"\(")):
        train(raw, quiet=True)


def test_method_that_cannot_pack_refuses_explicit_packing_and_unpacks_by_default(config):
    import yaml

    raw = yaml.safe_load(config.read_text())
    raw["method"] = {"name": "prefix", "num_virtual_tokens": 4}
    with pytest.raises(TunelabError, match=r"train.packing=true does not work with method prefix"):
        train({**raw, "train": {**raw["train"], "packing": True}}, quiet=True)
    run_dir = train(raw, quiet=True)  # packing left at its default: the engine turns it off
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["packing"] is False
