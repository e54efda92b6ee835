"""What a run ran on and as what: package versions, the device in words, and the cell it trains (for logs)."""

from __future__ import annotations

import platform

import numpy as np
import torch


def versions() -> dict[str, str]:
    import transformers

    import kdmcse

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "kdmcse": kdmcse.__version__, "numpy": np.__version__}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def device_text(device: torch.device, world_size: int) -> str:
    """`cuda:0 (NVIDIA H200)`, `4 x cuda (NVIDIA H200)` under torchrun, `cpu (cpu (x86_64, 2 threads))` …"""
    where = f"{world_size} x {device.type}" if world_size > 1 else str(device)
    name = device_name(device)
    return name if name.startswith(where) else f"{where} ({name})"


def cell_label(pairs: list[str]) -> str:
    """`--cell dataset=wiki+flickr backbone=bert … seed=0` -> `wiki+flickr/bert/kdmcse margin=0.15 threshold=off`."""
    cell = dict(p.partition("=")[::2] for p in pairs)
    cell.pop("seed", None)
    head = "/".join(cell.pop(k) for k in ("dataset", "backbone", "objective") if k in cell)
    return " ".join([head] * bool(head) + [f"{k}={v}" for k, v in cell.items()])
