"""tunelab: adapt pretrained LLMs with every major fine-tuning technique, measured honestly."""
from .config import RunConfig, load_config
from .engine import train
from .errors import TunelabError
from .inference import Loaded, load

__all__ = ["RunConfig", "load_config", "train", "load", "Loaded", "TunelabError"]
__version__ = "0.1.0"
