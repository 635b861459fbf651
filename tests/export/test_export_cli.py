"""`tunelab export`: the format registry, the safetensors format (= `merge`) and its refusals."""
from __future__ import annotations

import pytest

from tunelab.export import FORMATS


def test_safetensors_export_is_the_merged_model(trained_run, cli_here, tmp_path):
    import torch
    import transformers

    run = trained_run("sft", "lora")
    code, out, err = cli_here("export", run, "--format", "safetensors", "--out", tmp_path / "st")
    assert code == 0, err
    assert out.strip() == str(tmp_path / "st")
    code, _, err = cli_here("merge", run, tmp_path / "merged")
    assert code == 0, err
    a = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "st")
    b = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("args, words", [
    (("--format", "tflite"), ["unknown --format", "tflite", "safetensors"]),
    (("--format", "safetensors", "--quant", "q8_0"), ["--quant", "does not apply", "safetensors"]),
    (("--format", "safetensors", "--adapter"), ["--adapter", "does not apply", "safetensors"]),
])
def test_bad_export_options_are_one_line_errors(trained_run, cli_here, tmp_path, args, words):
    code, out, err = cli_here("export", trained_run("sft", "lora"), *args, "--out", tmp_path / "out")
    assert code == 2 and out == ""
    assert err.startswith("error:") and err.count("\n") == 1, err
    assert all(word in err for word in words), err
    assert not (tmp_path / "out").exists()


def test_existing_output_is_refused_and_kept(trained_run, cli_here, tmp_path):
    keep = tmp_path / "out" / "keep.txt"
    keep.parent.mkdir()
    keep.write_text("mine\n")
    code, _, err = cli_here("export", trained_run("sft", "lora"), "--format", "safetensors", "--out", keep.parent)
    assert code == 2 and "already exists" in err
    assert [p.name for p in keep.parent.iterdir()] == ["keep.txt"]


def test_every_format_module_has_export():
    import importlib

    for fmt, module in FORMATS.items():
        assert callable(getattr(importlib.import_module(f"tunelab.export.{module}"), "export", None)), fmt
