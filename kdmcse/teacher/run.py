"""Teacher stage: encode every image and caption of a caption table with an open_clip model (method.md §1.2).

    python -m kdmcse teacher --captions results/corpora/captions_<name>.parquet --out-dir DIR
           --model ViT-L-14 --pretrained openai [--model-config JSON] [--batch-size 256] [--workers N]
           [--precision auto|fp32|bf16|fp16] [--skip-bad-images] [--device auto] [--chunk-size N] [--work-dir DIR]
           [--threads N] [--cache-dtype float32|float16] [--kind clip|image]
    python -m kdmcse teacher scores …   (score statistics of a cache: kdmcse.teacher.scores)

`--kind image` encodes the images only, with a torchvision ResNet (`--model resnet50 --pretrained IMAGENET1K_V1`,
a state-dict file or none; `kdmcse.teacher.image_features`), into an image-feature cache of the same format
(no caption embeddings): the released MCSE baseline's features. Everything below applies to both kinds.

Embeddings are the projected CLIP features *before* L2 normalisation, like the features the paper trained on.
Images go through CLIP's deterministic eval transform, decoded by DataLoader worker processes (by default one
per thread the job may use, less one for the process that feeds the GPU) into pinned memory so the model never
waits; each image is encoded once however many captions it has. On CUDA the default precision is fp16 autocast,
as the released feature extraction ran CLIP in half precision. Captions are tokenized by open_clip (truncated to
the context length), sorted by length within a chunk and encoded with the padding beyond the longest caption of the
batch cut off (exact for causal CLIP text towers, and much faster than 77 tokens). A shard caption table (one
with a `member` column, from `prepare captions --dataset shards`) is streamed from its tar shards instead, one
shard per worker at a time, and resumes per shard (`kdmcse.teacher.shards`).

The work is split into chunks; every finished chunk is saved atomically in a work folder (default `<out-dir>.work`,
outside the output so a workflow manager that wipes a failed job's outputs keeps it), so a killed job restarts from
its last finished chunk and gives the same output. The work folder is removed after a successful run.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdmcse.errors import KdmcseError
from kdmcse.teacher.cache import write_teacher_cache
from kdmcse.teacher.captions import encode_captions
from kdmcse.teacher.image_features import load_image_features
from kdmcse.teacher.images import encode_images
from kdmcse.teacher.model import PRECISION_CHOICES, load_teacher
from kdmcse.teacher.shards import encode_shard_images
from kdmcse.teacher.table import load_caption_table
from kdmcse.teacher.work import WORK_FORMAT, prepare_work_dir

log = logging.getLogger(__name__)


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_threads(workers: int) -> int:
    """Torch threads for a CPU run: every core the job may use.

    JPEG decoding is light next to a ViT forward, so the workers overlap with compute without needing a core
    of their own: on an idle 2-core machine, 2 threads ran ViT-B-32 at 0.90x the bare forward against 0.50x
    with one core left to the decoder. On a machine shared with other jobs, oversubscription stalls every
    parallel region; pass `--threads` (e.g. cores minus workers) there. `workers` is kept for that choice.
    """
    del workers
    return max(1, available_cpus())


def decode_workers(threads: int, device_type: str) -> int:
    """Image decode processes for `--workers -1`: from the threads the job may use (`--threads`, else its cores).

    On a GPU the decoders are the bottleneck (ViT-L/14 in fp16 encodes images faster than one core decodes
    JPEGs), so they get every thread but the one that feeds the GPU. On CPU the model is the bottleneck and the
    decoders share the cores with it (see `cpu_threads`).
    """
    n = min(threads, available_cpus()) if threads > 0 else available_cpus()
    return max(1, n - 1) if device_type == "cuda" else max(1, n)


def run_teacher(
    captions: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    model: str = "ViT-L-14",
    pretrained: str = "openai",
    model_config: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    workers: int = -1,
    precision: str = "auto",
    skip_bad_images: bool = False,
    device: str = "auto",
    chunk_size: int = 8192,
    work_dir: str | os.PathLike[str] | None = None,
    threads: int = 0,
    cache_dtype: str = "float32",
    kind: str = "clip",
) -> dict[str, Any]:
    """Build the teacher cache in `out_dir`; returns its metadata plus timings (`seconds`).

    `kind` = clip (an open_clip teacher: images and captions) or image (a torchvision ResNet: images only).

    `cache_dtype` = storage of the cached embeddings (float16 halves a 1M-pair cache; they are computed in fp32).

    `threads` = the threads the job may use (0 = every core it has): torch threads on CPU and, with `workers` -1,
    the number of decode workers (`decode_workers`); the caller's torch setting is restored.
    """
    if batch_size < 1 or chunk_size < 1 or workers < -1 or threads < 0:
        raise KdmcseError("--batch-size and --chunk-size must be ≥ 1, --workers ≥ -1 (-1 = from the threads) and "
                          "--threads ≥ 0")
    previous_threads = torch.get_num_threads()
    try:
        return _run_teacher(captions, out_dir, model=model, pretrained=pretrained, model_config=model_config,
                            batch_size=batch_size, workers=workers, precision=precision,
                            skip_bad_images=skip_bad_images, device=device, chunk_size=chunk_size,
                            work_dir=work_dir, threads=threads, cache_dtype=cache_dtype, kind=kind)
    finally:
        torch.set_num_threads(previous_threads)


def _run_teacher(captions, out_dir, *, model, pretrained, model_config, batch_size, workers, precision,
                 skip_bad_images, device, chunk_size, work_dir, threads, cache_dtype, kind) -> dict[str, Any]:
    if kind not in ("clip", "image"):
        raise KdmcseError(f"--kind {kind!r} is not clip or image")
    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir is not None else out_dir.with_name(out_dir.name + ".work")
    table = load_caption_table(captions)

    # Missing files fail before the model is even loaded; unreadable ones are found while decoding.
    missing = [i for i, p in enumerate(table.image_paths) if not os.path.isfile(p)]
    if missing and not skip_bad_images:
        for i in missing[:20]:
            log.error("image file not found: %s (image_id %s)", table.image_paths[i], table.image_ids[i])
        raise KdmcseError(
            f"{len(missing)} image file(s) listed in {table.path} do not exist, e.g. {table.image_paths[missing[0]]!r} "
            "(paths are relative to the working directory); fix the paths or pass --skip-bad-images to drop them"
        )

    if kind == "image":
        if model_config is not None:
            raise KdmcseError("--model-config is for open_clip teachers, not for --kind image")
        # `auto` = fp32 for an image-feature model: MCSE extracted its ResNet features in float32
        teacher = load_image_features(model, pretrained, device=device,
                                      precision="fp32" if precision == "auto" else precision)
    else:
        teacher = load_teacher(model, pretrained, model_config=model_config, device=device, precision=precision)
    precision = teacher.meta["precision"]  # `auto` resolved for the device
    if workers < 0:
        workers = decode_workers(threads, teacher.device.type)
    job = {
        "work_format": WORK_FORMAT,
        "captions_sha256": table.sha256,
        "model": model,
        "pretrained": pretrained,
        "pretrained_sha256": teacher.meta.get("pretrained_sha256"),
        "model_config_sha256": teacher.meta.get("model_config_sha256"),
        "precision": precision,
        "device_type": teacher.device.type,
        "chunk_size": chunk_size,
        **({"kind": kind} if kind != "clip" else {}),
    }
    prepare_work_dir(work_dir, job)
    if teacher.device.type == "cpu":
        torch.set_num_threads(threads or cpu_threads(workers))
    log.info("encoding %d images and %d captions with %s/%s on %s (%s, batch %d, %d workers, %d torch threads)",
             len(table.image_ids), len(table.captions), model, pretrained, teacher.device, precision,
             batch_size, workers, torch.get_num_threads())

    t0 = time.perf_counter()
    if table.image_members is not None:
        image_emb, errors = encode_shard_images(teacher, table, work_dir, batch_size=batch_size, workers=workers)
    else:
        image_emb, errors = encode_images(
            teacher, table, work_dir, batch_size=batch_size, workers=workers, chunk_size=chunk_size
        )
    t1 = time.perf_counter()
    bad = [i for i, e in enumerate(errors) if e]
    if bad:
        for i in bad:
            log.error("unreadable image %s (image_id %s): %s", table.image_paths[i], table.image_ids[i], errors[i])
        if not skip_bad_images:
            raise KdmcseError(
                f"{len(bad)} image(s) could not be read, e.g. {table.image_paths[bad[0]]!r} ({errors[bad[0]]}); "
                "replace them or pass --skip-bad-images to drop them and their captions "
                f"(finished chunks are kept in {work_dir})"
            )
    caption_emb = None if kind == "image" else encode_captions(
        teacher, table, work_dir, batch_size=batch_size, workers=workers, chunk_size=chunk_size
    )
    t2 = time.perf_counter()

    bad_ids = {table.image_ids[i] for i in bad}
    keep_img = np.array([not e for e in errors], dtype=bool)
    keep_cap = np.array([i not in bad_ids for i in table.caption_image_ids], dtype=bool)
    if not keep_img.any():
        raise KdmcseError(f"no image of {table.path} could be read; nothing to write")
    skipped = [{"image_id": table.image_ids[i], "image_path": table.image_paths[i], "error": errors[i]} for i in bad]
    if skipped:
        log.warning("--skip-bad-images: dropped %d image(s) and %d caption(s)", len(bad), int((~keep_cap).sum()))
    meta = dict(teacher.meta)
    meta.update(
        captions_sha256=table.sha256,
        captions_file=str(table.path),
        n_images_source=len(table.image_ids),
        n_captions_source=len(table.captions),
        skipped_images=skipped,
        n_skipped_captions=int((~keep_cap).sum()),
    )
    written = write_teacher_cache(
        out_dir,
        image_ids=[i for i, k in zip(table.image_ids, keep_img) if k],
        image_emb=image_emb[keep_img],
        caption_ids=table.caption_ids[keep_cap],
        caption_image_ids=[i for i, k in zip(table.caption_image_ids, keep_cap) if k],
        caption_texts=[t for t, k in zip(table.captions, keep_cap) if k],
        caption_emb=None if caption_emb is None else caption_emb[keep_cap],
        meta=meta,
        dtype=cache_dtype,
    )
    shutil.rmtree(work_dir, ignore_errors=True)
    log.info("wrote %s: %d images (%.1f s), %d captions (%.1f s), dim %d",
             out_dir, written["n_images"], t1 - t0, written["n_captions"], t2 - t1, written["dim"])
    return {**written, "seconds": {"images": t1 - t0, "captions": t2 - t1}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdmcse teacher", description=__doc__.split("\n\n")[0])
    p.add_argument("--captions", required=True, help="caption table Parquet (image_id, image_path, caption_id, caption)")
    p.add_argument("--out-dir", required=True, help="cache folder to write")
    p.add_argument("--model", default="ViT-L-14", help="open_clip architecture name (default: ViT-L-14, the paper's)")
    p.add_argument("--pretrained", default="openai",
                   help="open_clip pretrained tag, a local checkpoint file, or 'none' for random weights (tests only)")
    p.add_argument("--model-config", default=None, help="custom open_clip model-config JSON registered as --model")
    p.add_argument("--batch-size", type=int, default=256, help="images or captions per forward")
    p.add_argument("--workers", type=int, default=-1,
                   help="DataLoader processes decoding images (default -1: from --threads, one less on a GPU)")
    p.add_argument("--precision", choices=list(PRECISION_CHOICES), default="auto",
                   help="auto = fp16 on CUDA, fp32 on CPU; bf16/fp16 = autocast, GPU only")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="drop unreadable images and their captions (recorded in the metadata) instead of failing")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--chunk-size", type=int, default=8192, help="rows per resumable chunk")
    p.add_argument("--work-dir", default=None, help="where finished chunks are kept (default: <out-dir>.work)")
    p.add_argument("--cache-dtype", choices=["float32", "float16"], default="float32",
                   help="storage of the cached embeddings (float16: half the size, for 1M-pair sets)")
    p.add_argument("--kind", choices=["clip", "image"], default="clip",
                   help="clip: an open_clip teacher (images and captions); image: a torchvision ResNet, images only")
    p.add_argument("--threads", type=int, default=0,
                   help="threads the job may use (default 0: every core it has): torch threads on CPU, decode workers")
    return p


def main(argv: list[str] | None = None) -> int:
    if argv and argv[0] == "scores":  # `teacher scores …`: the score statistics of a finished cache
        from kdmcse.teacher.scores import main as scores_main

        return scores_main(argv[1:])
    args = build_parser().parse_args(argv)
    run_teacher(
        args.captions,
        args.out_dir,
        model=args.model,
        pretrained=args.pretrained,
        model_config=args.model_config,
        batch_size=args.batch_size,
        workers=args.workers,
        precision=args.precision,
        skip_bad_images=args.skip_bad_images,
        device=args.device,
        chunk_size=args.chunk_size,
        work_dir=args.work_dir,
        threads=args.threads,
        cache_dtype=args.cache_dtype,
        kind=args.kind,
    )
    return 0
