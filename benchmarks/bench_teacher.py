"""Throughput of the teacher stage against two baselines, measured side by side in one run.

    python benchmarks/bench_teacher.py [--images 128] [--captions-per-image 2] [--rounds 2] [--batch-size 32] [--workers 1]
                                       [--model ViT-B-32] [--open-coco-cache]

Rows (images/s and captions/s, each part timed on its own):
- stage     `kdmcse.teacher.run.run_teacher` end to end: DataLoader workers decoding JPEGs, chunked and resumable,
            captions tokenized in a worker, sorted by length, padding cut;
- (a) bare  `model.encode_image` / `model.encode_text` on tensors already decoded, preprocessed and tokenized,
            in batches of the same size (the model alone: an upper bound for a pipeline that does no extra work);
- (b) loop  one image per forward like the official extraction script: decode + preprocess + `encode_image` of one
            image, then `encode_text(tokenize(its captions))`.
The paths run in interleaved rounds and each reports its best round (other processes share the cores), and
the baselines run both with torch's default thread count and with the stage's. All use the same random-init
weights; the table ends with the largest difference between the stage's
embeddings and (a)'s, which must stay below 1e-5. `--open-coco-cache` also times `open_teacher_cache` on a
synthetic COCO-sized cache (414,113 x 768 captions, 82,783 images; about 4 GB of disk under benchmarks/out/).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from kdmcse.teacher import images as I
from kdmcse.teacher import model as M
from kdmcse.teacher import run as T
from kdmcse.teacher import table as TB
from kdmcse.teacher.cache import open_teacher_cache, write_teacher_cache

WORDS = ("a man woman dog cat child two three people red blue green small large old young is are on in at with near "
         "the street water grass snow beach park running sitting standing playing riding walking looking holding "
         "bicycle ball car bench table tree building river mountain hat shirt jacket").split()


def make_data(folder: Path, n_images: int, per_image: int, seed: int = 0) -> Path:
    """Photo-sized JPEGs (500x375, smooth gradients plus noise, like natural images) and caption lists."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    rows: dict[str, list] = {"image_id": [], "image_path": [], "caption_id": [], "caption": []}
    for i in range(n_images):
        a, b, c = rng.uniform(0.1, 1.0, 3)
        base = np.stack([127 + 100 * np.sin(a * xx / 40 + b), 127 + 100 * np.cos(b * yy / 30 + c),
                         127 + 100 * np.sin((xx + yy) * c / 50)], axis=-1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        for j in range(per_image):
            rows["image_id"].append(path.stem)
            rows["image_path"].append(str(path))
            rows["caption_id"].append(i * per_image + j)
            rows["caption"].append(" ".join(rng.choice(WORDS, size=int(rng.integers(6, 22)))))
    table = folder / "captions.parquet"
    pq.write_table(pa.table({**rows, "caption_id": pa.array(rows["caption_id"], type=pa.int64())}), table)
    return table


def warm_up(model_name: str, batch_size: int) -> None:
    """One forward of each tower on a throwaway model, so no measured path pays the one-off kernel set-up."""
    teacher = T.load_teacher(model_name, "none", device="cpu")
    size = I._image_size(teacher.model)
    with torch.inference_mode():
        teacher.model.encode_image(torch.zeros(batch_size, 3, *size))
        teacher.model.encode_text(teacher.tokenizer(["warm up"] * batch_size))


def bench_stage(table: Path, out: Path, args) -> tuple[dict, np.ndarray, np.ndarray]:
    torch.manual_seed(0)
    meta = T.run_teacher(table, out, model=args.model, pretrained="none", device="cpu", batch_size=args.batch_size,
                         workers=args.workers, chunk_size=args.chunk_size, threads=args.threads)
    cache = open_teacher_cache(out)
    return meta["seconds"], np.asarray(cache.image_emb), np.asarray(cache.caption_emb)


def bench_bare(teacher: M.Teacher, pixels: torch.Tensor, tokens: torch.Tensor, bs: int):
    """Seconds per image and per caption of the bare model on tensors already decoded/tokenized, and the outputs."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        img = torch.cat([teacher.model.encode_image(pixels[i : i + bs]) for i in range(0, len(pixels), bs)])
        t1 = time.perf_counter()
        txt = torch.cat([teacher.model.encode_text(tokens[i : i + bs]) for i in range(0, len(tokens), bs)])
        t2 = time.perf_counter()
    return {"images": (t1 - t0) / len(pixels), "captions": (t2 - t1) / len(tokens)}, img.numpy(), txt.numpy()


def bench_loop(teacher: M.Teacher, table: TB.CaptionTable, n_images: int) -> dict:
    """Seconds per image and per caption (the loop is slow: it runs on the first `n_images` images only)."""
    from PIL import Image

    by_image: dict[str, list[str]] = {}
    for image_id, caption in zip(table.caption_image_ids, table.captions):
        by_image.setdefault(image_id, []).append(caption)
    t_img = t_txt = 0.0
    n_cap = 0
    with torch.inference_mode():
        for image_id, path in list(zip(table.image_ids, table.image_paths))[:n_images]:
            n_cap += len(by_image[image_id])
            t0 = time.perf_counter()
            teacher.model.encode_image(teacher.preprocess(Image.open(path)).unsqueeze(0))
            t1 = time.perf_counter()
            teacher.model.encode_text(teacher.tokenizer(by_image[image_id]))
            t_img, t_txt = t_img + t1 - t0, t_txt + time.perf_counter() - t1
    n_images = min(n_images, len(table.image_ids))
    return {"images": t_img / n_images, "captions": t_txt / n_cap}


def bench_open_coco(folder: Path) -> float:
    n_img, n_cap, dim = 82_783, 414_113, 768
    cache = folder / "coco_sized_cache"
    if not (cache / "images.parquet").exists():
        print(f"writing a synthetic COCO-sized cache to {cache} (once) …", file=sys.stderr)
        rng = np.random.default_rng(0)
        ids = [str(i) for i in range(n_img)]
        write_teacher_cache(
            cache, image_ids=ids, image_emb=rng.standard_normal((n_img, dim), dtype=np.float32),
            caption_ids=np.arange(n_cap), caption_image_ids=[ids[i % n_img] for i in range(n_cap)],
            caption_texts=[f"caption {i}" for i in range(n_cap)],
            caption_emb=rng.standard_normal((n_cap, dim), dtype=np.float32), meta={"model": "synthetic"},
        )
    t0 = time.perf_counter()
    opened = open_teacher_cache(cache, expect={"model": "synthetic", "dim": dim})
    elapsed = time.perf_counter() - t0
    assert opened.caption_emb.shape == (n_cap, dim)
    return elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--captions-per-image", type=int, default=2)
    p.add_argument("--loop-images", type=int, default=16, help="images the slow one-at-a-time loop runs on")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each path reports its best round")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="the stage's torch threads (0 = its automatic choice)")
    p.add_argument("--chunk-size", type=int, default=4096)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--open-coco-cache", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the random-init warning is expected here
    default_threads = torch.get_num_threads()
    stage_threads = args.threads or T.cpu_threads(args.workers)
    thread_counts = sorted({default_threads, stage_threads}, reverse=True)

    folder = Path(tempfile.mkdtemp(prefix="bench_teacher_"))
    best: dict[tuple[str, int], dict[str, float]] = {}
    diffs = [0.0, 0.0]

    def record(key: tuple[str, int], seconds: dict[str, float]) -> None:
        old = best.setdefault(key, seconds)
        best[key] = {part: min(old[part], seconds[part]) for part in seconds}

    try:
        table_path = make_data(folder / "data", args.images, args.captions_per_image)
        table = T.load_caption_table(table_path)
        n_img, n_cap = len(table.image_ids), len(table.captions)
        warm_up(args.model, args.batch_size)
        torch.manual_seed(0)
        teacher = T.load_teacher(args.model, "none", device="cpu")  # same seed = same weights as the stage's
        from PIL import Image

        pixels = torch.stack([teacher.preprocess(Image.open(p)) for p in table.image_paths])
        tokens = teacher.tokenizer(table.captions)
        # Rounds interleave the paths, so a burst of load from other processes hits all of them alike.
        for r in range(args.rounds):
            seconds, stage_img, stage_txt = bench_stage(table_path, folder / f"cache{r}", args)
            record(("stage", stage_threads), {"images": seconds["images"] / n_img,
                                              "captions": seconds["captions"] / n_cap})
            for threads in thread_counts:
                torch.set_num_threads(threads)
                bare_s, bare_img, bare_txt = bench_bare(teacher, pixels, tokens, args.batch_size)
                record(("(a) bare", threads), bare_s)
                diffs = [max(diffs[0], np.abs(stage_img - bare_img).max()),
                         max(diffs[1], np.abs(stage_txt - bare_txt).max())]
            for threads in thread_counts:
                torch.set_num_threads(threads)
                record(("(b) loop", threads), bench_loop(teacher, table, args.loop_images))
            torch.set_num_threads(default_threads)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print(f"\nteacher throughput: {args.model} random init, {n_img} images 500x375, {n_cap} captions "
          f"({args.loop_images} images for (b)), batch {args.batch_size}, {args.workers} decode worker(s), "
          f"{T.available_cpus()} CPUs, best of {args.rounds} interleaved rounds, torch {torch.__version__}")
    print(f"{'path':<10} {'threads':>7} {'images/s':>9} {'captions/s':>11}   {'stage/this img':>14} "
          f"{'stage/this cap':>14} {'stage/this all':>14}")
    stage = best[("stage", stage_threads)]
    stage_all = stage["images"] * n_img + stage["captions"] * n_cap
    for (name, threads), s in best.items():
        this_all = s["images"] * n_img + s["captions"] * n_cap
        print(f"{name:<10} {threads:>7} {1 / s['images']:9.2f} {1 / s['captions']:11.2f}   "
              f"{s['images'] / stage['images']:13.2f}x {s['captions'] / stage['captions']:13.2f}x "
              f"{this_all / stage_all:13.2f}x")
    print(f"max |stage - bare| images {diffs[0]:.2e}, captions {diffs[1]:.2e} (must be < 1e-5)")
    if args.open_coco_cache:
        out = Path(__file__).resolve().parent / "out"
        print(f"open_teacher_cache on a COCO-sized cache (414,113 x 768): {bench_open_coco(out):.3f} s")
    return 0 if max(diffs) < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
