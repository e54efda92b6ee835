"""Image side of the teacher: decode + CLIP eval transform in DataLoader workers, one embedding per unique image,
in resumable chunks. An unreadable image gets a zero embedding and an error string; the stage decides what to do.

On a GPU the workers hand over pinned batches (the copy to the device is asynchronous) and the embeddings of a
chunk stay on the device until the chunk is complete: the host never waits for a batch to finish, so the GPU
queue stays full while the next batch is collated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kdmcse.teacher import work
from kdmcse.teacher.model import Teacher
from kdmcse.teacher.table import CaptionTable


class ImageFiles(Dataset):
    """Decode + CLIP eval transform, run in DataLoader workers; an unreadable file yields a zero tensor and an error."""

    def __init__(self, paths: Sequence[str], preprocess: Callable[[Any], torch.Tensor], input_shape: tuple[int, ...]):
        self.paths = list(paths)
        self.preprocess = preprocess
        self.input_shape = input_shape

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str]:
        from PIL import Image

        try:
            with Image.open(self.paths[i]) as img:
                img.load()  # decode now, so a truncated JPEG fails here and not inside the transform
                return i, self.preprocess(img), ""
        except Exception as exc:  # any decoder failure marks the image as bad; the caller decides what to do
            return i, torch.zeros(self.input_shape), f"{type(exc).__name__}: {exc}"


def _chunk_batches(n: int, chunks: Sequence[int], chunk_size: int, batch_size: int, first: int = 4) -> list[list[int]]:
    """Batches of indices that never straddle a chunk boundary, for the given chunks only.

    The very first batch is small (`first` items) so the model starts after a few decodes instead of a full
    batch of them; batch composition does not change any embedding.
    """
    batches = []
    for c in chunks:
        stop = min((c + 1) * chunk_size, n)
        start = c * chunk_size
        if not batches and first < batch_size:
            batches.append(list(range(start, min(start + first, stop))))
            start += first
        for b in range(start, stop, batch_size):
            batches.append(list(range(b, min(b + batch_size, stop))))
    return batches


def encode_images(
    teacher: Teacher, table: CaptionTable, work_dir: Path, *, batch_size: int, workers: int, chunk_size: int
) -> tuple[np.ndarray, list[str]]:
    """Embeddings [N_img, D] of the unique images (zeros for bad ones) and one error string per image ('' = ok)."""
    n = len(table.image_ids)
    keys = [np.array(table.image_ids[c * chunk_size : (c + 1) * chunk_size]) for c in range(work.n_chunks(n, chunk_size))]
    done = {c: work.load_chunk(work_dir, "images", c, k) for c, k in enumerate(keys)}
    pending = [c for c, d in done.items() if d is None]
    if pending:
        input_shape = (3, *_image_size(teacher.model))
        dataset = ImageFiles(table.image_paths, teacher.preprocess, input_shape)
        loader = DataLoader(
            dataset,
            batch_sampler=_chunk_batches(n, pending, chunk_size, batch_size),
            num_workers=workers,
            pin_memory=teacher.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
        )
        buf: dict[int, list] = {}
        total = sum(len(k) for c, k in enumerate(keys) if c in pending)
        with torch.inference_mode(), work.tqdm_bar(total, "images") as bar:
            for idx, pixels, errors in loader:
                with teacher.autocast():
                    emb = teacher.model.encode_image(pixels.to(teacher.device, non_blocking=True), normalize=False)
                c = int(idx[0]) // chunk_size
                buf.setdefault(c, []).append((idx.numpy(), emb.float(), list(errors)))
                bar.update(len(idx))
                if sum(len(b[0]) for b in buf[c]) == len(keys[c]):
                    parts = buf.pop(c)
                    errs = np.array([e for p in parts for e in p[2]], dtype=str)
                    emb_c = torch.cat([p[1] for p in parts]).cpu().numpy()  # one device->host copy per chunk
                    emb_c[errs != ""] = 0.0  # a bad image's zero tensor still has an embedding; don't keep it
                    work.save_chunk(work_dir, "images", c, keys=keys[c], emb=emb_c, errors=errs)
                    done[c] = {"emb": emb_c, "errors": errs}
    emb = np.concatenate([done[c]["emb"] for c in range(len(keys))])
    errors = [str(e) for c in range(len(keys)) for e in done[c]["errors"]]
    return emb, errors


def _image_size(model: torch.nn.Module) -> tuple[int, int]:
    # open_clip keeps it on the vision tower; an image-feature model (kdmcse.teacher.image_features) on itself
    size = getattr(getattr(model, "visual", model), "image_size", 224)
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)
