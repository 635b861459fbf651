"""Export a finished run as a plain transformers model, the method folded into the weights."""
from __future__ import annotations

from pathlib import Path

from .config import load_config
from .errors import TunelabError
from .inference import is_run_dir, load
from .methods import METHODS
from .rundir import check_writable


def merge_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Load the run (base + trained weights), merge the method in, write model + tokenizer to ``out_dir``."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not is_run_dir(run_dir):
        raise TunelabError(f"{run_dir} is not a run directory (no config.yaml)")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise TunelabError(f"output {out_dir} already exists and is not an empty directory")
    check_writable(out_dir)
    name = load_config(run_dir / "config.yaml").method.name
    merge = getattr(METHODS[name], "merge", None)
    if merge is None:
        mergeable = ", ".join(n for n, m in METHODS.items() if hasattr(m, "merge"))
        raise TunelabError(f"method '{name}' of run {run_dir} cannot be merged into plain weights "
                           f"(mergeable: {mergeable}); load the run with tunelab.load instead")
    loaded = load(run_dir)
    model = merge(loaded.model)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    loaded.tokenizer.save_pretrained(out_dir)
    return out_dir
