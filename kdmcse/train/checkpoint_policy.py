"""When a resumable checkpoint is written, and what that costs on disk.

- Every `checkpoint_minutes` of wall clock since the last checkpoint (or since the job started), so a job killed
  without warning loses at most that much work;
- but never more than `MAX_PERIODIC` of those per run: each one comes at least total_steps / (MAX_PERIODIC + 1)
  steps after the previous checkpoint. A slow device (the paper reports 5-6 h per run on an A6000) therefore
  writes at most `MAX_PERIODIC` periodic checkpoints, and a fast one fewer;
- and at the next step boundary after SIGTERM or SIGUSR1 (how SLURM warns a job before its time limit, with
  `--signal`). The handler only sets a flag; the loop writes the checkpoint and stops the job with exit status
  128 + the signal number, and rerunning the same command (a SLURM requeue, a Snakemake rerun) resumes.

The best-on-dev weights are written with a checkpoint only when they changed since the previous one
(`kdmcse.train.checkpoint`). `planned_checkpoint_bytes` bounds what one run writes in total.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)

MAX_PERIODIC = 4  # periodic checkpoints per run at most (signal checkpoints come on top, one per interrupted job)
STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None)


class TrainingInterrupted(Exception):
    """The job received a stop signal; its state is saved in `ckpt_dir` and a rerun continues from it."""

    def __init__(self, signum: int, step: int, ckpt_dir: Any) -> None:
        self.signum, self.step, self.ckpt_dir = signum, step, ckpt_dir
        name = signal.Signals(signum).name
        super().__init__(f"received {name}: checkpoint saved at step {step} in {ckpt_dir}; exiting with status "
                         f"{self.exit_code} so that the job can be requeued; rerun the same command to resume")

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


class StopSignals:
    """While active, SIGTERM/SIGUSR1 only record themselves in `received`; the previous handlers come back on exit.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        del frame
        if self.received is None:
            self.received = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


class CheckpointPolicy:
    """Decides at each step boundary whether a periodic checkpoint is due (see module doc)."""

    def __init__(self, interval_minutes: float | None, total_steps: int, start_step: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = None if interval_minutes is None else float(interval_minutes) * 60.0
        self.total_steps = int(total_steps)
        self.min_gap_steps = min_gap_steps(total_steps)
        self.clock = clock
        self.last_step = int(start_step)
        self.last_time = clock()

    def due(self, done: int) -> bool:
        """Whether a periodic checkpoint should be written after `done` steps (never after the last one)."""
        if self.interval_s is None or done >= self.total_steps:
            return False
        return done - self.last_step >= self.min_gap_steps and self.clock() - self.last_time >= self.interval_s

    def written(self, done: int) -> None:
        self.last_step, self.last_time = int(done), self.clock()


def min_gap_steps(total_steps: int) -> int:
    """Fewest steps between two checkpoints, so that at most MAX_PERIODIC fit before the last step."""
    return max(1, math.ceil(total_steps / (MAX_PERIODIC + 1)))


def max_periodic_checkpoints(total_steps: int) -> int:
    """Most periodic checkpoints a run of `total_steps` can write (the step gap alone decides it)."""
    return (total_steps - 1) // min_gap_steps(total_steps)


# ---------------------------------------------------------------- what it costs
def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's state dict (parameters and persistent buffers), as the checkpoint stores it."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def adam_state_bytes(module: torch.nn.Module) -> int:
    """Bytes of AdamW's state: two moments per trainable parameter (its dtype) and a step count per tensor."""
    params = [p for p in module.parameters() if p.requires_grad]
    return sum(2 * p.numel() * p.element_size() + 4 for p in params)


def checkpoint_bytes(module: torch.nn.Module) -> tuple[int, int]:
    """(bytes of the resumable state: weights + optimiser, bytes of the best weights) for one checkpoint."""
    weights = module_bytes(module)
    return weights + adam_state_bytes(module), weights


def planned_checkpoint_bytes(total_steps: int, state_bytes: int, best_bytes: int, signals: int = 0) -> int:
    """Upper bound of the bytes one run writes to `checkpoint/`: every periodic (and signal) checkpoint, each with
    new best weights (the worst case: the best changed between every two checkpoints)."""
    return (max_periodic_checkpoints(total_steps) + signals) * (state_bytes + best_bytes)
