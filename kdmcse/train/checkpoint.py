"""Resumable training state in `<out>/checkpoint/`: written atomically, refused when it belongs to another run.

A checkpoint holds everything an uninterrupted run carries from one step to the next: model and head weights,
optimiser and scheduler state, every RNG (python, numpy, torch, CUDA; one set per process under DDP), loader
positions, the step, the dev history and the best-on-dev weights so far. A rerun with the same arguments
continues from it and ends where an uninterrupted run would have ended.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdmcse.errors import KdmcseError
from kdmcse.io import make_temp_dir

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
META_FILE = "meta.json"


def run_fingerprint(run_config: dict[str, Any], seed: int, data: dict[str, Any], world_size: int) -> str:
    """A hash of what must be identical for a checkpoint to be resumed: config, seed, data sizes, world size."""
    payload = json.dumps({"run_config": run_config, "seed": seed, "data": data, "world_size": world_size},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def capture_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt_dir: str | os.PathLike[str], state: dict[str, Any], fingerprint: str) -> None:
    """Write `state` to `ckpt_dir` atomically: a temp folder beside it, then renames.

    The previous checkpoint is moved aside before the new one takes its name and removed afterwards;
    `load_checkpoint` falls back to the moved-aside copy if a crash hits between the two renames.
    """
    final = Path(ckpt_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a save that was killed (one writer)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = make_temp_dir(final.parent, prefix=f".{final.name}.tmp-")  # the umask's mode, not mkdtemp's 0700
    old = final.with_name(final.name + ".old")
    try:
        torch.save(state, tmp / STATE_FILE)
        meta = {"fingerprint": fingerprint, "step": int(state.get("step", -1))}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint saved at step %s to %s", meta["step"], final)


def _readable(folder: Path) -> bool:
    return (folder / STATE_FILE).is_file() and (folder / META_FILE).is_file()


def load_checkpoint(ckpt_dir: str | os.PathLike[str], fingerprint: str) -> dict[str, Any] | None:
    """The saved state, or None when there is none; KdmcseError when it belongs to a different run."""
    final = Path(ckpt_dir)
    folder = final if _readable(final) else final.with_name(final.name + ".old")
    if not _readable(folder):
        return None
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    if meta.get("fingerprint") != fingerprint:
        raise KdmcseError(
            f"the checkpoint in {final} was written by a run with a different run config, seed, data or number "
            "of processes; resuming it would mix two runs. Delete that folder to start this run from scratch."
        )
    # our own file: full unpickling is needed for the RNG states (python tuples, numpy arrays)
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
    log.info("resuming from the checkpoint at step %s in %s", meta.get("step"), folder)
    return state


def remove_checkpoint(ckpt_dir: str | os.PathLike[str]) -> None:
    final = Path(ckpt_dir)
    for folder in (final, final.with_name(final.name + ".old")):
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(folder)
