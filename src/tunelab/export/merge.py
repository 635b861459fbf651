"""Export a finished run as a plain transformers model, the method folded into the weights."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import TunelabError
from ..core.lazy import no_grad, torch
from ..methods import METHODS
from ..runs.open import load, open_run
from .output import check_new_output, writing


def merge_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Load the run (base + trained weights), merge the method in, write model + tokenizer to ``out_dir``."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    info = open_run(run_dir, "merge")
    if info.baseline:
        raise TunelabError(f"merge: {run_dir} is {info.describe}; it has no trained weights to merge")
    check_new_output(out_dir)
    name = info.config.method.name
    merge = getattr(METHODS[name], "merge", None)
    if merge is None:
        mergeable = ", ".join(n for n, m in METHODS.items() if hasattr(m, "merge"))
        raise TunelabError(f"method '{name}' of run {run_dir} cannot be merged into plain weights "
                           f"(mergeable: {mergeable}); load the run with tunelab.load instead")
    loaded = load(run_dir)
    model = merge(loaded.model).eval()
    with writing(out_dir):
        model.save_pretrained(out_dir, safe_serialization=True)
        loaded.tokenizer.save_pretrained(out_dir)
        _check_reloads_identically(model, loaded.tokenizer, out_dir, run_dir)
    return out_dir


def export(run_dir: Path, out_dir: Path, options) -> Path:
    """``tunelab export --format safetensors``: the merged model, as `tunelab merge` writes it."""
    options.refuse_unused("safetensors")
    return merge_run(run_dir, out_dir)


@no_grad
def _check_reloads_identically(model, tokenizer, out_dir: Path, run_dir: Path) -> None:
    """Stock transformers must rebuild the same model from ``out_dir`` (a stage may have changed
    the architecture beyond what config.json can say, e.g. a weight-free pooler or an MLP head)."""
    import transformers

    reloaded = getattr(transformers, type(model).__name__).from_pretrained(out_dir, dtype=model.dtype).eval()
    probe = tokenizer(["tunelab merge: does the export reproduce the run?"], return_tensors="pt")
    probe = {k: v.to(model.device) for k, v in probe.items() if k in ("input_ids", "attention_mask")}
    expected, got = model(**probe).logits, reloaded.to(model.device)(**probe).logits
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-4, rtol=1e-4):
        raise TunelabError(f"run {run_dir}: the merged model cannot be written as a plain {type(model).__name__} "
                           "(stock transformers reloads it with different outputs, e.g. a custom pooler or MLP head)")
