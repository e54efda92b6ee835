"""The numeric precision a student trains under: fp32 (strict), tf32, bf16 or fp16 (run config `precision`).

- `fp32`: float32 storage and float32 maths everywhere; on CUDA, TF32 is switched off for matmuls and cuDNN.
- `tf32`: float32 storage; on CUDA, matmuls and cuDNN convolutions round their inputs to TF32 (10-bit mantissa,
  float32 accumulation) on tensor cores. That is what the released runs did: torch 1.7-1.11 enabled TF32
  matmuls by default on Ampere and later GPUs. On CPU and on GPUs without TF32 it is exactly fp32.
- `bf16` / `fp16`: float32 weights and optimiser; the encoder runs under autocast in that dtype, the heads and
  losses in float32 (`kdmcse.train.step.encode_cls`). fp16 adds a gradient scaler. Both run on CPU as well.

TF32 is a process-wide switch; `tf32_mode` sets it for the run and restores the previous setting afterwards,
so one in-process run (tests, benchmarks) never changes the next one.
"""

from __future__ import annotations

import contextlib
import logging
from contextlib import nullcontext
from typing import Any, Callable, Iterator

import torch

from kdmcse.errors import KdmcseError

log = logging.getLogger(__name__)

PRECISIONS = ("tf32", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _new_tf32_api() -> bool:
    """torch >= 2.9 controls TF32 through `fp32_precision`; mixing it with the old `allow_tf32` flags raises."""
    return hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision")


def tf32_state() -> tuple[Any, ...]:
    """The current TF32 settings of CUDA matmuls and cuDNN, in the API this torch uses."""
    if _new_tf32_api():
        return ("new", torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
                torch.backends.cudnn.rnn.fp32_precision)
    return ("old", torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)


def _set_tf32_state(state: tuple[Any, ...]) -> None:
    if state[0] == "new":
        torch.backends.cuda.matmul.fp32_precision = state[1]
        torch.backends.cudnn.conv.fp32_precision = state[2]
        torch.backends.cudnn.rnn.fp32_precision = state[3]
    else:
        torch.backends.cuda.matmul.allow_tf32 = state[1]
        torch.backends.cudnn.allow_tf32 = state[2]


def tf32_enabled_state(enabled: bool) -> tuple[Any, ...]:
    """The settings that turn TF32 on (matmuls and cuDNN) or off (strict IEEE float32)."""
    if _new_tf32_api():
        mode = "tf32" if enabled else "ieee"
        return ("new", mode, mode, mode)
    return ("old", enabled, enabled)


@contextlib.contextmanager
def tf32_mode(precision: str, device: torch.device) -> Iterator[None]:
    """Set CUDA's TF32 switches for `precision` while the block runs; untouched on CPU (TF32 does not exist there).

    `tf32` turns TF32 on; every other precision turns it off, so fp32 is strict IEEE and the float32 parts of
    bf16/fp16 runs (heads, losses) are too.
    """
    if device.type != "cuda":
        yield
        return
    previous = tf32_state()
    _set_tf32_state(tf32_enabled_state(precision == "tf32"))
    try:
        yield
    finally:
        _set_tf32_state(previous)


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision the device cannot run, before any model is loaded."""
    if precision not in PRECISIONS:
        raise KdmcseError(f"run config precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise KdmcseError(f"run config precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 "
                          "support; use tf32, fp32 or fp16")


def autocast_for(precision: str, device: torch.device) -> Callable[[], Any]:
    """A factory of the autocast context the encoder forward runs in (a no-op for fp32 and tf32)."""
    dtype = _AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (its 5-bit exponent underflows small gradients); disabled for every other precision."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
