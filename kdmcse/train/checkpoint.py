"""Resumable training state in `<out>/checkpoint/`: written atomically, refused when it belongs to another run.

A checkpoint holds everything an uninterrupted run carries from one step to the next: model and head weights,
optimiser (moments, step counts, and which parameters hold a gradient), scheduler, gradient scaler, every RNG
(python, numpy, torch, CUDA; one set per process under DDP), loader positions, the step and the dev history.
The best-on-dev weights sit beside it in `best.pt`, rewritten only when they changed since the checkpoint
before (otherwise the new checkpoint hard-links the file it already has).

Format: tensors only in `state.pt` and `best.pt` (read back with `torch.load(weights_only=True)`, which cannot
run code from the file), everything else as plain JSON in `meta.json`, where each tensor is a reference
`{"__tensor__": name}` and a tuple `{"__tuple__": [...]}`. JSON writes floats exactly (shortest repr), so
learning rates and scaler settings come back bit for bit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdmcse.errors import KdmcseError
from kdmcse.io import make_temp_dir

log = logging.getLogger(__name__)

FORMAT = 2
STATE_FILE = "state.pt"
BEST_FILE = "best.pt"
META_FILE = "meta.json"
_TENSOR, _TUPLE = "__tensor__", "__tuple__"


def run_fingerprint(run_config: dict[str, Any], seed: int, data: dict[str, Any], world_size: int) -> str:
    """A hash of what must be identical for a checkpoint to be resumed: config, seed, data sizes, world size."""
    payload = json.dumps({"run_config": run_config, "seed": seed, "data": data, "world_size": world_size},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- tensors apart from plain data
def split_tensors(tree: Any, path: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON-able copy of `tree` with each tensor replaced by a named reference, {name: tensor on CPU})."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, where: str) -> Any:
        if isinstance(node, torch.Tensor):
            tensors[where] = node.detach().cpu()
            return {_TENSOR: where}
        if isinstance(node, dict):
            if any(not isinstance(k, (str, int)) or (isinstance(k, str) and k.startswith("#")) for k in node):
                raise TypeError(f"checkpoint state at {where or '/'}: keys must be int or str not starting with #")
            # JSON object keys are strings: int keys (optimiser parameter ids) are marked to come back as ints
            return {(f"#{k}" if isinstance(k, int) else k): walk(v, f"{where}/{k}") for k, v in node.items()}
        if isinstance(node, tuple):
            return {_TUPLE: [walk(v, f"{where}/{i}") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [walk(v, f"{where}/{i}") for i, v in enumerate(node)]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"checkpoint state at {where or '/'} holds a {type(node).__name__}; only tensors and "
                        "plain data (dict, list, tuple, str, number, bool, None) are stored")

    return walk(tree, path), tensors


def join_tensors(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `split_tensors`."""
    if isinstance(tree, dict):
        if set(tree) == {_TENSOR}:
            name = tree[_TENSOR]
            if name not in tensors:
                raise KeyError(name)
            return tensors[name]
        if set(tree) == {_TUPLE}:
            return tuple(join_tensors(v, tensors) for v in tree[_TUPLE])
        return {(int(k[1:]) if k.startswith("#") else k): join_tensors(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [join_tensors(v, tensors) for v in tree]
    return tree


# ---------------------------------------------------------------- RNG state as tensors and plain data
def capture_rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- write and read
@dataclass
class Checkpoint:
    """What `load_checkpoint` returns: the saved state tree and the best-on-dev weights it refers to."""

    step: int
    state: dict[str, Any]
    best_step: int | None
    best_weights: dict[str, torch.Tensor] | None


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def save_checkpoint(ckpt_dir: str | os.PathLike[str], state: dict[str, Any], fingerprint: str, *,
                    best_step: int | None = None, best_weights: dict[str, torch.Tensor] | None = None) -> None:
    """Write `state` (with `state["step"]`) and the best weights to `ckpt_dir` atomically.

    Everything goes to a temp folder beside it first; the previous checkpoint is moved aside before the new one
    takes its name and removed afterwards (`load_checkpoint` falls back to the moved-aside copy if a crash hits
    between the two renames). `best_weights` are written only when `best_step` differs from the best step of
    the checkpoint in place; otherwise its `best.pt` is hard-linked into the new folder (no bytes written).
    """
    final = Path(ckpt_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(final)
    tree, tensors = split_tensors(state)
    meta = {"format": FORMAT, "fingerprint": fingerprint, "step": int(state["step"]), "best_step": best_step,
            "state": tree}
    previous = _read_meta(final) if (final / BEST_FILE).is_file() else None
    tmp = make_temp_dir(final.parent, prefix=f".{final.name}.tmp-")  # the umask's mode, not mkdtemp's 0700
    old = final.with_name(final.name + ".old")
    try:
        torch.save(tensors, tmp / STATE_FILE)
        if best_step is not None:
            if previous is not None and (previous.get("fingerprint"), previous.get("best_step")) == (fingerprint, best_step):
                _link_or_copy(final / BEST_FILE, tmp / BEST_FILE)
            else:
                if best_weights is None:
                    raise ValueError("save_checkpoint: best_step given without best_weights")
                torch.save({k: v.detach().cpu() for k, v in best_weights.items()}, tmp / BEST_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, allow_nan=True) + "\n", encoding="utf-8")
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


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links: copying still keeps the checkpoint whole
        shutil.copy2(src, dst)


def _readable(folder: Path) -> bool:
    return (folder / STATE_FILE).is_file() and (folder / META_FILE).is_file()


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A dict of tensors, read without unpickling anything else (a file that holds code is refused)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise KdmcseError(f"{path} is not a readable kdmcse checkpoint of tensors ({str(exc).splitlines()[0]}); "
                          f"delete the folder {path.parent} to start this run from scratch") from exc
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise KdmcseError(f"{path} does not hold a dict of named tensors; delete the folder {path.parent} "
                          "to start this run from scratch")
    return obj


def load_checkpoint(ckpt_dir: str | os.PathLike[str], fingerprint: str) -> Checkpoint | None:
    """The saved state, or None when there is none; KdmcseError when it belongs to a different run."""
    final = Path(ckpt_dir)
    folder = final if _readable(final) else final.with_name(final.name + ".old")
    if not _readable(folder):
        return None
    meta = _read_meta(folder)
    if meta is None or meta.get("format") != FORMAT:
        raise KdmcseError(f"the checkpoint in {folder} was written in another format (by another kdmcse version) "
                          "or is damaged; delete that folder to start this run from scratch")
    if meta.get("fingerprint") != fingerprint:
        raise KdmcseError(
            f"the checkpoint in {final} was written by a run with a different run config, seed, data or number "
            "of processes; resuming it would mix two runs. Delete that folder to start this run from scratch."
        )
    tensors = _load_tensors(folder / STATE_FILE)
    try:
        state = join_tensors(meta["state"], tensors)
    except KeyError as exc:
        raise KdmcseError(f"{folder / STATE_FILE} lacks tensor {exc}; delete the folder {folder} to start over") from exc
    best_step, best = meta.get("best_step"), None
    if best_step is not None:
        if not (folder / BEST_FILE).is_file():
            raise KdmcseError(f"checkpoint {folder} lacks the best model ({BEST_FILE}); delete it to start over")
        best = _load_tensors(folder / BEST_FILE)
    log.info("resuming from the checkpoint at step %s in %s", meta["step"], folder)
    return Checkpoint(int(meta["step"]), state, best_step, best)


def _remove_stale_temp_dirs(final: Path) -> None:
    """Temp folders left by a save that was killed before its rename (there is one writer per run)."""
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def remove_checkpoint(ckpt_dir: str | os.PathLike[str]) -> None:
    """A finished run keeps no resumable state: the checkpoint, its fallback and any killed save's leftovers."""
    final = Path(ckpt_dir)
    for folder in (final, final.with_name(final.name + ".old")):
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(folder)
    _remove_stale_temp_dirs(final)
