"""tunelab: adapt pretrained LLMs with every major fine-tuning technique, measured honestly.

``import tunelab`` (and ``tunelab.config``) stays light: ``train``, ``load``, ``Loaded`` and
``compare`` import torch and the training stack only when first used.
"""
from .config import RunConfig, load_config
from .core.errors import TunelabError

__all__ = ["RunConfig", "load_config", "train", "load", "Loaded", "compare", "sweep", "TunelabError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "train":
        from .training.engine import train

        return train
    if name == "compare":  # the package is `comparison`, so this name stays the function
        from .comparison import compare

        return compare
    if name == "sweep":  # the package tunelab.sweep, callable: tunelab.sweep(...) runs a sweep
        import importlib

        return importlib.import_module(".sweep", __name__)
    if name in ("load", "Loaded"):
        from .runs import open as runs_open

        return getattr(runs_open, name)
    raise AttributeError(f"module 'tunelab' has no attribute {name!r}")
