"""The feature cache behind the `head` method: pooled backbone features computed once per example.

The backbone never changes, so each example's pooled features are computed once and cached on
disk, under a directory named by a fingerprint of the backbone's weights and its pooling; an
example is found by a hash of its token ids. A stale cache is never reused: other weights,
pooling, text or max_length give other keys.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .classifier import head_logits, head_module, pooled_features, pooling_signature


def fingerprint(model) -> str:
    """Hash of everything that decides the pooled features: architecture, pooling, backbone weights."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{type(model).__name__}|{pooling_signature(model)}".encode())
    for name, tensor in sorted(model.base_model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def example_key(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> str:
    """Hash of one example's real (unpadded) token ids."""
    tokens = input_ids[attention_mask.bool()].to(torch.int64).cpu().numpy()
    return hashlib.blake2b(tokens.tobytes(), digest_size=16).hexdigest()


class FeatureCache:
    """Features by example key: in memory, and as safetensors shards in one directory per fingerprint."""

    def __init__(self, directory: Path, meta: dict):
        from safetensors.torch import load_file

        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / "meta.json").exists():
            (directory / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        self.features: dict[str, torch.Tensor] = {}
        for shard in sorted(directory.glob("*.safetensors")):
            self.features.update(load_file(str(shard)))

    def __contains__(self, key: str) -> bool:
        return key in self.features

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.features[key]

    def add(self, keys: list[str], features: torch.Tensor) -> None:
        from safetensors.torch import save_file

        new = {key: row.contiguous().clone() for key, row in zip(keys, features.float().cpu())}
        self.features.update(new)
        name = hashlib.blake2b("".join(sorted(new)).encode(), digest_size=12).hexdigest()
        fd, tmp = tempfile.mkstemp(prefix=".shard-", suffix=".safetensors", dir=self.directory)
        os.close(fd)
        save_file(new, tmp)
        os.replace(tmp, self.directory / f"{name}.safetensors")  # atomic: readers never see half a shard


class CachedFeatureHead(nn.Module):
    """The classifier during training: backbone features from the cache, only the head runs each step."""

    def __init__(self, model: nn.Module, cache_dir: Path):
        super().__init__()
        self.model = model
        self.cache_dir = cache_dir
        self.cache: FeatureCache | None = None  # opened on first use, after init_from weights are in
        self.backbone_examples = 0  # examples that went through the backbone (each should, once)

    def _open_cache(self) -> FeatureCache:
        if self.cache is None:
            key = fingerprint(self.model)
            meta = {"model": getattr(self.model.config, "_name_or_path", None), "class": type(self.model).__name__,
                    "pooling": pooling_signature(self.model), "fingerprint": key}
            self.cache = FeatureCache(self.cache_dir / key, meta)
        return self.cache

    @torch.no_grad()
    def _backbone_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        width = int(attention_mask.sum(dim=1).max())  # drop padding columns the subset does not need
        backbone = self.model.base_model
        was_training = backbone.training
        backbone.eval()  # no dropout: features are a fixed function of the text
        try:
            with torch.autocast(device_type=input_ids.device.type, enabled=False):  # fp32 features, always
                features = pooled_features(self.model, input_ids[:, :width], attention_mask[:, :width])
        finally:
            backbone.train(was_training)
        self.backbone_examples += input_ids.shape[0]
        return features

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, labels=None, **kwargs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        cache = self._open_cache()
        keys = [example_key(ids, mask) for ids, mask in zip(input_ids, attention_mask)]
        todo: dict[str, int] = {}  # key -> first row with it: a text twice in one batch runs once
        for row, key in enumerate(keys):
            if key not in cache and key not in todo:
                todo[key] = row
        if todo:
            rows = list(todo.values())
            cache.add(list(todo), self._backbone_features(input_ids[rows], attention_mask[rows]))
        device = next(head_module(self.model).parameters()).device
        features = torch.stack([cache[key] for key in keys]).to(device)  # (B, H)
        return SequenceClassifierOutput(logits=head_logits(self.model, features))
