"""Export a finished run to the formats other tools load: one module per format, one registry line.

Each format module has ``export(run_dir, out_dir, options) -> Path``; it refuses what it cannot
write (wrong model kind, an unmergeable method) with a one-line ``TunelabError`` before writing
anything, and writes through :func:`tunelab.export.output.writing` so a failure leaves nothing.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import TunelabError

# format name -> module under tunelab.export (imported only when that format is asked for)
FORMATS: dict[str, str] = {
    "safetensors": "merge",
    "onnx": "onnx_export",
    "gguf": "gguf",
}


@dataclass(frozen=True)
class ExportOptions:
    """Options of `tunelab export`; each belongs to some formats only."""

    quant: str | None = None  # gguf: f16 | q8_0
    adapter: bool = False  # gguf: write a LoRA run as a llama.cpp LoRA adapter instead of merging it

    def refuse_unused(self, fmt: str, allowed: tuple[str, ...] = ()) -> None:
        """A one-line error for an option that ``fmt`` does not take (rather than silently ignoring it)."""
        given = {"quant": ("--quant", self.quant is not None), "adapter": ("--adapter", self.adapter)}
        for field, (flag, is_set) in given.items():
            if is_set and field not in allowed:
                raise TunelabError(f"export: {flag} does not apply to --format {fmt}")


def export_run(run_dir: str | Path, fmt: str, out_dir: str | Path, options: ExportOptions | None = None) -> Path:
    """Write run ``run_dir`` as ``fmt`` into the new directory ``out_dir``; returns ``out_dir``."""
    if fmt not in FORMATS:
        raise TunelabError(f"export: unknown --format {fmt!r} (choose from: {', '.join(FORMATS)})")
    module = importlib.import_module(f".{FORMATS[fmt]}", __name__)
    return module.export(Path(run_dir), Path(out_dir), options or ExportOptions())


__all__ = ["FORMATS", "ExportOptions", "export_run"]
