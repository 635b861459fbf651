"""The tunelab cache (bundled models, the head method's features): ~/.cache/tunelab, or $TUNELAB_CACHE."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from tunelab.models import cache_root, resolve


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return {k: v for file in sorted(Path(directory).glob("*.safetensors")) for k, v in load_file(file).items()}


def test_cache_location_default_xdg_and_override(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNELAB_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == Path.home() / ".cache" / "tunelab"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "tunelab"
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"  # $TUNELAB_CACHE wins over both


def test_tunelab_cache_holds_the_bundled_models_and_head_features(tmp_path, monkeypatch):
    """With $TUNELAB_CACHE set, a bundled model is built there (the same seeded weights as in the
    default cache) and a `head` run caches its features there."""
    default_location = Path(resolve("tiny-bert"))  # built (or found) in the default cache first
    cache = tmp_path / "cache"
    monkeypatch.setenv("TUNELAB_CACHE", str(cache))
    location = Path(resolve("tiny-bert"))
    assert location == cache / "models" / "tiny-bert" and (location / "config.json").is_file()
    built, reference = _weights(location), _weights(default_location)
    assert built and built.keys() == reference.keys() and all(torch.equal(built[k], reference[k]) for k in built)

    from conftest import SYNTHETIC_ROWS, tiny_config, write_rows
    from tunelab.training.engine import train

    data = write_rows(tmp_path / "labels.jsonl", SYNTHETIC_ROWS["classification"])
    cfg = tiny_config("classify", "head", data, tmp_path / "runs", max_steps=1, max_length=16)
    run = train({**cfg, "model": "tiny-bert"}, quiet=True)
    assert json.loads((run / "summary.json").read_text())["model_path"] == str(location)
    assert any((cache / "features").rglob("*")), "the head method cached no features under $TUNELAB_CACHE"
