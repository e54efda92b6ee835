"""The 1M-pair path at scale: teacher throughput from shards against loose files, and training RSS against N.

    python benchmarks/bench_shards.py [--images 512] [--rounds 3] [--workers 2] [--batch-size 64]
                                      [--model tiny224|ViT-B-32] [--rss-rows 10000,100000,1000000] [--steps 40]
                                      [--tmp DIR] [--skip-throughput] [--skip-rss]

1. Throughput. The same JPEGs (CC12M after img2dataset: shorter side 256, quality 95) as loose files and as
   webdataset shards (img2dataset's layout, 4 shards), each side encoded by the teacher's own code
   (`kdmcse.teacher.images.encode_images` / `kdmcse.teacher.shards.encode_shard_images`) with the same workers,
   batch size and model, in interleaved rounds (best round per side; other processes share the cores). Also the
   decode pipeline alone (the DataLoader without the model), where a difference in reading would show most.
   The default model `tiny224` is a 2-layer ViT at CLIP's 224 px input: decoding dominates, the hard case for the
   ratio. Goal: shards >= 0.9x loose.
2. RSS. For each N, a synthetic float16 teacher cache of N images and N captions (768-d) and a caption table of
   N rows, built in a temp dir (the 1M cache is ~3 GB of .npy plus as much Parquet), and one fixed Wiki-like text
   corpus of 1M rows (so that N pairs always fit the interleave schedule). `python -m kdmcse train` runs a tiny
   KDMCSE student for `--steps` steps in a child process whose VmRSS / RssAnon / RssFile are sampled every 50 ms.
   RssFile counts the memory-mapped cache pages training touched (clean page cache, dropped under pressure);
   RssAnon is the process's own memory. Goal: flat in N, far below the cache's size.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import build_model  # noqa: E402  (random-init BERT, no download)

from kdmcse.data.fetch_shards import use_folder  # noqa: E402
from kdmcse.data.shards import MANIFEST_FORMAT, prepare_shard_captions  # noqa: E402
from kdmcse.io import write_json  # noqa: E402
from kdmcse.teacher import images as I  # noqa: E402
from kdmcse.teacher import model as M  # noqa: E402
from kdmcse.teacher import shards as S  # noqa: E402
from kdmcse.teacher import table as TB  # noqa: E402
from kdmcse.teacher.cache import write_teacher_cache  # noqa: E402

TINY224 = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
WORDS = ("a man woman dog cat child two people red blue green small old young on in at with near the street water "
         "grass snow beach park running sitting standing playing riding walking bicycle ball car bench tree").split()


# ----------------------------------------------------------------------------- throughput


def make_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """img2dataset-sized photos: shorter side 256, smooth gradients plus noise (natural-image-like JPEG sizes)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w, h = (256, int(rng.integers(256, 400))) if rng.random() < 0.5 else (int(rng.integers(256, 400)), 256)
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([(x * rng.uniform(0.2, 1)) % 256, (y * rng.uniform(0.2, 1)) % 256,
                         ((x + y) * rng.uniform(0.1, 0.5)) % 256], axis=-1)
        pixels = np.clip(base + rng.normal(0, 12, size=base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
        out.append(buf.getvalue())
    return out


def write_both(folder: Path, jpegs: list[bytes], n_shards: int = 4) -> tuple[Path, Path]:
    """(loose caption table, shard caption table) of the same images and captions."""
    loose_dir, shard_dir = folder / "loose", folder / "shards"
    loose_dir.mkdir(parents=True)
    shard_dir.mkdir()
    rng = np.random.default_rng(1)
    keys = [f"{i // 10000:05d}{i % 10000:04d}" for i in range(len(jpegs))]
    captions = [" ".join(rng.choice(WORDS, size=8)) for _ in jpegs]
    per = -(-len(jpegs) // n_shards)
    for s in range(n_shards):
        with tarfile.open(shard_dir / f"{s:05d}.tar", "w") as tar:
            for i in range(s * per, min(len(jpegs), (s + 1) * per)):
                for ext, data in (("jpg", jpegs[i]), ("txt", captions[i].encode()),
                                  ("json", json.dumps({"key": keys[i]}).encode())):
                    info = tarfile.TarInfo(f"{keys[i]}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    for key, data in zip(keys, jpegs):
        (loose_dir / f"{key}.jpg").write_bytes(data)
    loose = folder / "loose.parquet"
    pq.write_table(pa.table({"image_id": keys, "image_path": [str(loose_dir / f"{k}.jpg") for k in keys],
                             "caption_id": pa.array(np.arange(len(keys)), pa.int64()), "caption": captions}), loose)
    manifest = folder / "shards.json"
    write_json(manifest, {"format": MANIFEST_FORMAT, "format_version": 1, "folder": str(shard_dir),
                          **use_folder(shard_dir)})
    shard_table = folder / "shards.parquet"
    prepare_shard_captions(manifest, shard_table)
    return loose, shard_table


def loader_rate(table: TB.CaptionTable, teacher: M.Teacher, workers: int, batch_size: int) -> float:
    """Images/s of the decode pipeline alone (what the model would be fed)."""
    from torch.utils.data import DataLoader

    shape = (3, *I._image_size(teacher.model))
    if table.image_members is None:
        n = len(table.image_ids)
        loader = DataLoader(I.ImageFiles(table.image_paths, teacher.preprocess, shape),
                            batch_sampler=I._chunk_batches(n, [0], n, batch_size), num_workers=workers,
                            prefetch_factor=4 if workers else None)
    else:
        loader = DataLoader(S.ShardImages(S.shard_tasks(table), teacher.preprocess, shape, batch_size),
                            batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None)
    t0, seen = time.perf_counter(), 0
    for item in loader:
        if item[0] == "end":
            continue
        seen += len(item[2]) if table.image_members is not None else len(item[0])
    return seen / (time.perf_counter() - t0)


def teacher_rate(table: TB.CaptionTable, teacher: M.Teacher, workers: int, batch_size: int,
                 tmp: Path) -> tuple[float, np.ndarray]:
    work = Path(tempfile.mkdtemp(dir=tmp))
    t0 = time.perf_counter()
    if table.image_members is None:
        n = len(table.image_ids)
        emb, _ = I.encode_images(teacher, table, work, batch_size=batch_size, workers=workers, chunk_size=n)
    else:
        emb, _ = S.encode_shard_images(teacher, table, work, batch_size=batch_size, workers=workers)
    rate = len(table.image_ids) / (time.perf_counter() - t0)
    shutil.rmtree(work)
    return rate, emb


def throughput(args: argparse.Namespace, tmp: Path) -> None:
    folder = tmp / "throughput"
    jpegs = make_jpegs(args.images)
    loose_path, shard_path = write_both(folder, jpegs)
    mb = sum(map(len, jpegs)) / 1e6
    if args.model == "tiny224":
        cfg = folder / "tiny224.json"
        cfg.write_text(json.dumps(TINY224))
        teacher = M.load_teacher("kdmcse-tiny224", "none", model_config=cfg, device="cpu")
    else:
        teacher = M.load_teacher(args.model, "none", device="cpu")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    loose, shards = TB.load_caption_table(loose_path), TB.load_caption_table(shard_path)
    best = {k: 0.0 for k in ("loose_loader", "shard_loader", "loose_teacher", "shard_teacher")}
    diff = 0.0
    for r in range(args.rounds):
        sides = [("loose", loose), ("shard", shards)]
        if r % 2:  # alternate which side goes first, so neither always meets the same neighbours' load
            sides.reverse()
        emb = {}
        for side, table in sides:
            rate = loader_rate(table, teacher, args.workers, args.batch_size)
            best[f"{side}_loader"] = max(best[f"{side}_loader"], rate)
        for side, table in sides:
            with torch.inference_mode():
                rate, emb[side] = teacher_rate(table, teacher, args.workers, args.batch_size, tmp)
            best[f"{side}_teacher"] = max(best[f"{side}_teacher"], rate)
        diff = max(diff, float(np.abs(emb["loose"] - emb["shard"]).max()))
    print(f"\n## Teacher images: {args.images} JPEGs ({mb:.1f} MB), model {args.model}, {args.workers} workers, "
          f"batch {args.batch_size}, best of {args.rounds} interleaved rounds (warm page cache)\n")
    print("| path | loose files (img/s) | shards (img/s) | shards / loose |")
    print("|---|---:|---:|---:|")
    for name, key in (("decode pipeline (DataLoader only)", "loader"), ("teacher images (decode + model)", "teacher")):
        lo, sh = best[f"loose_{key}"], best[f"shard_{key}"]
        print(f"| {name} | {lo:.1f} | {sh:.1f} | {sh / lo:.2f}x |")
    print(f"\nmax |embedding(shards) - embedding(loose)| = {diff:.2e}")


# ----------------------------------------------------------------------------- RSS


def build_rss_inputs(folder: Path, n: int, dim: int = 768) -> tuple[Path, Path]:
    """Caption table of n rows and its float16 cache (n images, n captions), written block by block."""
    rng = np.random.default_rng(n)
    ids = [f"{i:09d}" for i in range(n)]
    words = np.array(WORDS)
    captions = [" ".join(words[rng.integers(0, len(words), size=8)]) for _ in range(n)]
    pairs = folder / f"captions_{n}.parquet"
    pq.write_table(pa.table({"image_id": ids, "image_path": ["-"] * n,
                             "caption_id": pa.array(np.arange(n), pa.int64()), "caption": captions}), pairs)
    emb = {}
    for name in ("image", "caption"):
        arr = np.empty((n, dim), dtype=np.float16)
        for start in range(0, n, 65536):
            arr[start : start + 65536] = rng.standard_normal((min(65536, n - start), dim), dtype=np.float32)
        emb[name] = arr
    from kdmcse.io import sha256_file

    teacher = folder / f"teacher_{n}"
    write_teacher_cache(teacher, image_ids=ids, image_emb=emb["image"], caption_ids=np.arange(n),
                        caption_image_ids=ids, caption_texts=captions, caption_emb=emb["caption"],
                        meta={"model": "synthetic", "pretrained": "none", "captions_sha256": sha256_file(pairs)},
                        dtype="float16")
    return pairs, teacher


def sample_rss(pid: int, peaks: dict[str, int], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        for line in status.splitlines():
            key = line.split(":")[0]
            if key in peaks:
                peaks[key] = max(peaks[key], int(line.split()[1]) * 1024)
        stop.wait(0.05)


def rss(args: argparse.Namespace, tmp: Path) -> None:
    folder = tmp / "rss"
    folder.mkdir()
    model = build_model(Path(tempfile.mkdtemp(dir=tmp)), 32, 2, 2)
    rows = [int(r) for r in args.rss_rows.split(",")]
    text_rows = max(rows)
    rng = np.random.default_rng(0)
    words = np.array(WORDS)
    text = folder / "wiki.parquet"
    pq.write_table(pa.table({"text": [" ".join(words[rng.integers(0, len(words), size=12)])
                                      for _ in range(text_rows)]}), text)
    cfg = {"model": str(model), "objective": "kdmcse", "lr": 1e-3, "batch_size": 64, "epochs": 1,
           "max_steps": args.steps, "lambda": 0.01, "temperature": 0.05, "temperature_vl": 0.05, "margin1": 0.15,
           "margin2": 0.15, "threshold": None, "threshold_space": "cosine", "inter_reduction": "sum",
           "proj_dim": 32, "max_seq_length": 32, "eval_steps": 10**6, "pooling": "cls_before_pooler",
           "precision": "fp32", "teacher": {"model": "synthetic", "pretrained": "none"}, "checkpoint_minutes": None,
           "log_every": 50, "threshold_check": "warn", "head_init": "hf"}
    results = []
    for n in rows:
        t0 = time.perf_counter()
        pairs, teacher = build_rss_inputs(folder, n)
        build_s = time.perf_counter() - t0
        disk = sum(p.stat().st_size for p in teacher.iterdir())
        out = folder / f"student_{n}"
        cmd = [sys.executable, "-m", "kdmcse", "train", "--run-config", json.dumps(cfg), "--text", str(text),
               "--pairs", str(pairs), "--teacher", str(teacher), "--seed", "0", "--out", str(out), "--no-progress"]
        peaks = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        stop = threading.Event()
        sampler = threading.Thread(target=sample_rss, args=(proc.pid, peaks, stop))
        sampler.start()
        code = proc.wait()
        stop.set()
        sampler.join()
        if code != 0:
            raise SystemExit(f"training on N={n} failed (exit {code}); rerun the command by hand: {' '.join(cmd)}")
        results.append((n, disk, peaks, time.perf_counter() - t0, build_s))
        shutil.rmtree(teacher)
        shutil.rmtree(out, ignore_errors=True)
    print(f"\n## Training RSS: float16 teacher cache of N images + N captions (768-d), {text_rows:,} text rows, "
          f"tiny BERT, batch 64, {args.steps} steps\n")
    print("| N | cache on disk | as float32 in RAM | peak VmRSS | peak RssAnon | peak RssFile | train s | build s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, disk, peaks, secs, build_s in results:
        print(f"| {n:,} | {disk / 2**20:,.0f} MiB | {n * 768 * 4 * 2 / 2**20:,.0f} MiB | {peaks['VmRSS'] / 2**20:,.0f} MiB "
              f"| {peaks['RssAnon'] / 2**20:,.0f} MiB | {peaks['RssFile'] / 2**20:,.0f} MiB | {secs:.0f} | {build_s:.0f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--model", default="tiny224", help="tiny224 (decode-bound) or an open_clip name, random init")
    p.add_argument("--rss-rows", default="10000,100000,1000000")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--tmp", type=Path, default=None, help="where the synthetic data go (default: a temp dir)")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-rss", action="store_true")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kdmcse-bench-shards-", dir=args.tmp))
    try:
        if not args.skip_throughput:
            throughput(args, tmp)
        if not args.skip_rss:
            rss(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
