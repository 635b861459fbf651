"""What every peft-backed method shares: task type, wrapping with clear errors, save and load."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import TunelabError

DIRECTORY = "adapter"  # run_dir/adapter/ holds adapter_config.json + adapter_model.safetensors, as peft writes them


def task_type(model) -> str:
    return "CAUSAL_LM" if type(model).__name__.endswith("ForCausalLM") else "SEQ_CLS"


def linear_names(model) -> str:
    return ", ".join(sorted({n.split(".")[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"}))


def wrap(model, peft_config, targets_option: str = "method.target_modules"):
    """``get_peft_model``, turning "nothing matched" into an error that names the option."""
    from peft import get_peft_model

    try:
        return get_peft_model(model, peft_config)
    except ValueError as exc:
        text = str(exc)
        if "not found" in text or "match" in text or "specify `target_modules`" in text:
            value = getattr(peft_config, "target_modules", None)
            value = sorted(value) if isinstance(value, set) else value
            raise TunelabError(f"{targets_option}={value!r} matches no module of the model; "
                               f"linear layers are: {linear_names(model)}") from None
        raise


def save(model, run_dir: Path) -> None:
    model.save_pretrained(run_dir / DIRECTORY)


def load(model, run_dir: Path, cfg=None):
    from peft import PeftModel

    if not (run_dir / DIRECTORY / "adapter_config.json").is_file():
        raise TunelabError(f"run {run_dir} has no {DIRECTORY}/adapter_config.json to load")
    return PeftModel.from_pretrained(model, run_dir / DIRECTORY)


def merge(model):
    """Fold the adapter into the base weights; a plain transformers model comes back."""
    return model.merge_and_unload()
