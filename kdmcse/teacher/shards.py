"""Image side of the teacher for shard tables: images streamed straight from webdataset tar shards.

Each DataLoader worker process takes whole shards (shard `i` goes to worker `i % workers`) and reads each one
sequentially, decoding the members the caption table lists and applying CLIP's eval transform; nothing is
extracted to disk. Batches never straddle a shard, and a shard's batches depend on the shard alone, so a shard
is the unit of resumption: every finished shard's embeddings are saved atomically in the work folder and a
killed run redoes only the unfinished shards, with the same output as an uninterrupted run.

While streaming, each shard is hashed; a shard whose sha256 differs from the one the caption table recorded
(it was re-downloaded or edited since `prepare`) stops the run, since its members may no longer be the
table's. A listed member that is missing, or that does not decode, gets a zero embedding and an error string,
like an unreadable loose file; the stage decides what to do with it.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from kdmcse.data.shards import HashingReader
from kdmcse.errors import KdmcseError
from kdmcse.teacher import work
from kdmcse.teacher.images import _image_size
from kdmcse.teacher.model import Teacher
from kdmcse.teacher.table import CaptionTable

CHUNK_KIND = "shard-images"  # work-folder chunk name: one chunk per shard


@dataclass
class ShardTask:
    """One shard to encode: `rows[j]` is the table image of the shard's j-th listed member."""

    index: int  # shard ordinal in the table (first appearance)
    path: str
    members: list[str]
    rows: np.ndarray  # int64 positions in table.image_ids
    sha256: str | None  # recorded by prepare; None = not checked


def shard_tasks(table: CaptionTable) -> list[ShardTask]:
    """The table's images grouped by shard, shards and members in table order."""
    if table.image_members is None:
        raise ValueError("shard_tasks needs a shard caption table (with a 'member' column)")
    groups: dict[str, list[int]] = {}
    for i, shard in enumerate(table.image_paths):
        groups.setdefault(shard, []).append(i)
    tasks = []
    for c, (shard, rows) in enumerate(groups.items()):
        meta = table.shard_meta.get(shard, {})
        tasks.append(ShardTask(c, shard, [table.image_members[i] for i in rows], np.asarray(rows, dtype=np.int64),
                               meta.get("sha256")))
    return tasks


def _decode(data: bytes, preprocess: Callable[[Any], torch.Tensor], shape: tuple[int, ...]) -> tuple[torch.Tensor, str]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decode now, so a truncated JPEG fails here and not inside the transform
            return preprocess(img), ""
    except Exception as exc:  # any decoder failure marks the image as bad; the caller decides what to do
        return torch.zeros(shape), f"{type(exc).__name__}: {exc}"


class ShardImages(IterableDataset):
    """Streams shards in worker processes; yields ("batch", shard, positions, pixels, errors) and, after the last
    batch of a shard, ("end", shard, sha256, problem) where problem is '' or why the shard could not be read."""

    def __init__(self, tasks: list[ShardTask], preprocess: Callable[[Any], torch.Tensor],
                 input_shape: tuple[int, ...], batch_size: int) -> None:
        self.tasks, self.preprocess, self.input_shape, self.batch_size = tasks, preprocess, input_shape, batch_size

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        wid, n = (info.id, info.num_workers) if info is not None else (0, 1)
        for task in self.tasks[wid::n]:
            yield from self._stream(task)

    def _stream(self, task: ShardTask) -> Iterator[tuple]:
        wanted = {m: j for j, m in enumerate(task.members)}
        found = np.zeros(len(task.members), dtype=bool)
        pos: list[int] = []
        pixels: list[torch.Tensor] = []
        errors: list[str] = []

        def flush() -> tuple:
            # default_collate stacks straight into shared memory in a worker: no extra copy on the way out
            out = ("batch", task.index, torch.tensor(pos, dtype=torch.int64), default_collate(pixels), list(errors))
            pos.clear(), pixels.clear(), errors.clear()
            return out

        problem, digest = "", ""
        try:
            with open(task.path, "rb") as raw:
                reader = HashingReader(raw)
                with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[arg-type]
                    for member in tar:
                        j = wanted.get(member.name)
                        if j is None or found[j] or not member.isfile():
                            continue
                        f = tar.extractfile(member)
                        px, err = _decode(f.read() if f else b"", self.preprocess, self.input_shape)
                        found[j] = True
                        pos.append(j), pixels.append(px), errors.append(err)
                        if len(pos) == self.batch_size:
                            yield flush()
                reader.drain()
            digest = reader.sha256.hexdigest()
        except (tarfile.TarError, EOFError, OSError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        for j in np.flatnonzero(~found):  # listed but not in the shard
            pos.append(int(j)), pixels.append(torch.zeros(self.input_shape))
            errors.append(f"member {task.members[j]!r} not found in shard {task.path}")
            if len(pos) == self.batch_size:
                yield flush()
        if pos:
            yield flush()
        yield ("end", task.index, digest, problem)


def encode_shard_images(
    teacher: Teacher, table: CaptionTable, work_dir: Path, *, batch_size: int, workers: int
) -> tuple[np.ndarray, list[str]]:
    """Embeddings [N_img, D] of the table's images (zeros for bad ones) and one error string per image ('' = ok)."""
    tasks = shard_tasks(table)
    keys = {t.index: np.array([table.image_ids[i] for i in t.rows]) for t in tasks}
    done = {t.index: work.load_chunk(work_dir, CHUNK_KIND, t.index, keys[t.index]) for t in tasks}
    pending = [t for t in tasks if done[t.index] is None]
    if pending:
        input_shape = (3, *_image_size(teacher.model))
        dataset = ShardImages(pending, teacher.preprocess, input_shape, batch_size)
        n_workers = min(workers, len(pending))
        loader = DataLoader(dataset, batch_size=None, num_workers=n_workers,
                            pin_memory=teacher.device.type == "cuda", prefetch_factor=4 if n_workers else None)
        by_index = {t.index: t for t in pending}
        buf: dict[int, list[tuple[np.ndarray, np.ndarray, list[str]]]] = {}
        with torch.inference_mode(), work.tqdm_bar(sum(len(t.rows) for t in pending), "images") as bar:
            for item in loader:
                if item[0] == "batch":
                    _, c, pos, pixels, errors = item
                    with teacher.autocast():
                        emb = teacher.model.encode_image(pixels.to(teacher.device, non_blocking=True), normalize=False)
                    buf.setdefault(int(c), []).append((pos.numpy(), emb.float().cpu().numpy(), list(errors)))
                    bar.update(len(pos))
                    continue
                _, c, digest, problem = item
                task = by_index[int(c)]
                if problem:
                    raise KdmcseError(f"shard {task.path} could not be read ({problem}); re-download it and rerun "
                                      "`python -m kdmcse prepare` (finished shards are kept)")
                if task.sha256 is not None and digest != task.sha256:
                    raise KdmcseError(f"shard {task.path} changed since the caption table {table.path} was made "
                                      f"(sha256 {digest[:12]}…, the table recorded {task.sha256[:12]}…); rerun "
                                      "`python -m kdmcse prepare captions` for these shards")
                done[task.index] = _finish_shard(work_dir, task, keys[task.index], buf.pop(task.index, []))
    n = len(table.image_ids)
    dim = next(d["emb"].shape[1] for d in done.values() if d is not None)
    emb_all = np.zeros((n, dim), dtype=np.float32)
    errors_all = [""] * n
    for t in tasks:
        d = done[t.index]
        emb_all[t.rows] = d["emb"]
        for i, e in zip(t.rows, d["errors"]):
            errors_all[int(i)] = str(e)
    return emb_all, errors_all


def _finish_shard(work_dir: Path, task: ShardTask, keys: np.ndarray,
                  parts: list[tuple[np.ndarray, np.ndarray, list[str]]]) -> dict[str, np.ndarray]:
    """Put a shard's batches in member order and save them as its chunk."""
    pos = np.concatenate([p[0] for p in parts])
    if sorted(pos.tolist()) != list(range(len(task.rows))):
        raise RuntimeError(f"shard {task.path}: the stream returned {len(pos)} of {len(task.rows)} images")
    emb = np.empty((len(task.rows), parts[0][1].shape[1]), dtype=np.float32)
    emb[pos] = np.concatenate([p[1] for p in parts])
    errs = np.empty(len(task.rows), dtype=object)
    errs[pos] = [e for p in parts for e in p[2]]
    errs = errs.astype(str)
    emb[errs != ""] = 0.0  # a bad image's zero tensor still has an embedding; don't keep it
    work.save_chunk(work_dir, CHUNK_KIND, task.index, keys=keys, emb=emb, errors=errs)
    return {"emb": emb, "errors": errs}
