"""`tunelab machine`: the CPU (or GPU) as tunelab sees it, and the dtype `precision: auto` picks on it."""
from __future__ import annotations

import json
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("machine")(machine)


def machine(
    measure: bool = typer.Option(False, "--measure", help="Run the bf16 speed probe again and replace its cached answer."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Answer for this many torch threads (default: torch's)."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer as JSON."),
):
    """CPU model, matrix units, bf16 support and speed, and what `train.precision: auto` and evaluation use here."""
    import torch

    from ..core import bf16_speed
    from ..core.machine import machine_line
    from ..training.precision import autocast_bf16, bf16_support

    if threads is not None:
        torch.set_num_threads(threads)
    if measure and not torch.cuda.is_available():
        bf16_speed.bf16_matmul_faster(measure_again=True)
    support = bf16_support()  # probes (and caches) on a first run
    probe = None if torch.cuda.is_available() else bf16_speed.cached_probe()
    auto = "bf16" if autocast_bf16("auto", support) else "fp32"
    answer = {"machine": machine_line(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cuda": torch.cuda.is_available(), "amx": bool(torch.cpu._is_amx_tile_supported()),
              "bf16_supported": support.supported, "bf16_faster": support.fast, "probe": probe,
              "probe_cache": str(bf16_speed.cache_file()), "precision_auto": auto}
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    print(f"machine: {answer['machine']}{'; CUDA ' + torch.cuda.get_device_name() if answer['cuda'] else ''}")
    print(f"torch {answer['torch']}, {answer['threads']} threads")
    if probe is not None:
        m, k, n = probe["shape"]
        print(f"bf16 probe: {probe['bf16_s'] * 1e3:.2f} ms bf16, {probe['fp32_s'] * 1e3:.2f} ms fp32 per "
              f"({m}x{k}) @ ({k}x{n}) matmul -> bf16 {'faster' if probe['bf16_faster'] else 'not faster'} "
              f"(cached in {answer['probe_cache']}; --measure runs it again)")
    why = ("AMX" if answer["amx"] else "CUDA" if answer["cuda"] else "the probe") if support.fast else \
        ("no native bf16" if not support.supported else "the probe")
    print(f"bf16: {'native' if support.supported else 'not native'}, {'faster' if support.fast else 'not faster'} "
          f"than fp32 ({why})")
    print(f"precision auto: {auto} (training autocast, and evaluation's merged copy)")
