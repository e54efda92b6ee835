"""The teacher's work folder: finished chunks saved atomically, so a killed job restarts from its last one."""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from kdmcse.io import atomic_path, recorded_job, write_json

log = logging.getLogger(__name__)

WORK_FORMAT = 1


def save_chunk(work_dir: Path, kind: str, index: int, **arrays: np.ndarray) -> None:
    """Persist one finished chunk atomically (a kill mid-write leaves no file under the final name)."""
    with atomic_path(work_dir / f"{kind}-{index:05d}.npz", suffix=".npz.tmp") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_chunk(work_dir: Path, kind: str, index: int, keys: np.ndarray) -> dict[str, np.ndarray] | None:
    """A finished chunk, or None if absent or not for these keys (then it is recomputed)."""
    path = work_dir / f"{kind}-{index:05d}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError):
        log.warning("ignoring unreadable chunk file %s", path)
        return None
    if not np.array_equal(data.get("keys"), keys):
        log.warning("ignoring chunk file %s: it was made for other rows", path)
        return None
    return data


def prepare_work_dir(work_dir: Path, job: dict[str, Any]) -> None:
    """Reuse the chunks of an interrupted run of the same job; throw away those of another job."""
    job_file = work_dir / "job.json"
    same = recorded_job(job_file, job)
    if same is not None:
        if same:
            done = len(list(work_dir.glob("*.npz")))
            log.info("resuming from %s (%d finished chunk(s))", work_dir, done)
            return
        log.warning("work folder %s belongs to another job (other inputs or settings): starting afresh", work_dir)
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    write_json(job_file, job)


def n_chunks(n: int, chunk_size: int) -> int:
    return (n + chunk_size - 1) // chunk_size


@contextlib.contextmanager
def tqdm_bar(total: int, unit: str) -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit=unit, desc=f"teacher {unit}", dynamic_ncols=True, mininterval=2.0)
    try:
        yield bar
    finally:
        bar.close()
