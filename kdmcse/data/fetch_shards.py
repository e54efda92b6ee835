"""Shards stage: webdataset tar shards of image–caption pairs, fetched by img2dataset or taken from a folder.

    python -m kdmcse shards --manifest resources/shards/<name>.json
           (--tsv URL_CAPTION_TSV --pairs N --out-dir resources/shards/<name> [img2dataset settings]
            | --from DIR)

`--tsv`: the first N rows of a URL–caption list (the CC12M TSV: `url<TAB>caption`, no header) are handed to
img2dataset (`output_format=webdataset`), which downloads, resizes and writes `NNNNN.tar` + `NNNNN.parquet` +
`NNNNN_stats.json` per shard into `--out-dir`. img2dataset runs as a child process so its own signal handling
and progress output stay out of this one. A killed run resumes: img2dataset skips every shard whose
`_stats.json` exists, and the URL list is kept beside the folder so the shards keep their rows. A rerun with
another list or other settings starts the folder afresh.

`--from DIR`: shards made elsewhere (a local folder or a mirror) are used in place; nothing is copied.

Either way the manifest names the folder and each shard, with img2dataset's counts where there are any.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kdmcse.data.shards import MANIFEST_FORMAT, MANIFEST_VERSION, shard_files
from kdmcse.errors import KdmcseError
from kdmcse.io import atomic_path, copy_output, recorded_job, write_json

log = logging.getLogger(__name__)

WIDTH = 5  # img2dataset's oom_shard_count default: shard names 00000..99999
RESIZE_MODES = ("keep_ratio", "center_crop", "border", "no")
# Settings handed to img2dataset (defaults of the config schema); keep_ratio keeps CLIP's own resize + centre crop
# the only crop, so the teacher sees what it would see on the original image (at 256 px on the short side).
DEFAULT_SETTINGS: dict[str, Any] = {"image_size": 256, "resize_mode": "keep_ratio", "samples_per_shard": 10000,
                                    "processes": 4, "threads": 64, "timeout": 10, "retries": 0}


def read_url_list(tsv: Path, pairs: int) -> tuple[list[str], list[str]]:
    """URLs and captions of the first `pairs` rows of a `url<TAB>caption` file (a `url` header line is skipped)."""
    if not tsv.is_file():
        raise KdmcseError(f"URL–caption list {tsv} not found; download it first (python -m kdmcse download --source cc12m)")
    urls: list[str] = []
    captions: list[str] = []
    with open(tsv, encoding="utf-8", errors="replace", newline="") as f:
        for lineno, line in enumerate(f, 1):
            if len(urls) >= pairs:
                break
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t", 1)
            if len(parts) != 2 or not parts[0].strip():
                raise KdmcseError(f"{tsv}:{lineno}: expected `url<TAB>caption`, got {line[:80]!r}")
            if lineno == 1 and parts[0].strip().lower() in {"url", "image_url"}:
                continue  # a header line
            urls.append(parts[0].strip())
            captions.append(parts[1])
    if not urls:
        raise KdmcseError(f"URL–caption list {tsv} has no rows")
    if len(urls) < pairs:
        log.warning("%s has %d rows, fewer than the %d pairs asked for: using all of them", tsv, len(urls), pairs)
    return urls, captions


def img2dataset_command(url_list: Path, out_dir: Path, settings: dict[str, Any]) -> list[str]:
    """The img2dataset call (its fire CLI, run with this interpreter)."""
    args = {
        "url_list": url_list, "input_format": "parquet", "url_col": "url", "caption_col": "caption",
        "output_format": "webdataset", "output_folder": out_dir, "image_size": settings["image_size"],
        "resize_mode": settings["resize_mode"], "number_sample_per_shard": settings["samples_per_shard"],
        "processes_count": settings["processes"], "thread_count": settings["threads"],
        "timeout": settings["timeout"], "retries": settings["retries"], "incremental_mode": "incremental",
        "enable_wandb": False, "compute_hash": "sha256", "encode_format": "jpg", "encode_quality": 95,
    }
    return [sys.executable, "-m", "img2dataset.main", *(f"--{k}={v}" for k, v in args.items())]


def _check_img2dataset() -> None:
    import importlib.util

    if importlib.util.find_spec("img2dataset") is None:  # found, not imported: it runs in a child process
        raise KdmcseError("img2dataset is not installed; `pip install 'kdmcse[cc1m]'` (or `pip install img2dataset`), "
                          "or pass shards made elsewhere with --from DIR")


def _prepare_out_dir(out_dir: Path, job: dict[str, Any]) -> None:
    """Keep the finished shards of an interrupted run of the same job; start afresh for another job."""
    # beside the folder, not in it: img2dataset reads every *.json in its folder as a finished shard's stats
    job_file = out_dir.with_name(out_dir.name + ".job.json")
    same = recorded_job(job_file, job)
    if same is not None:
        if same:
            done = len(list(out_dir.glob("*_stats.json")))
            log.info("resuming in %s (%d finished shard(s))", out_dir, done)
            return
        log.warning("%s holds shards of another URL list or other settings: starting afresh", out_dir)
        shutil.rmtree(out_dir)
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise KdmcseError(f"--out-dir {out_dir} is not empty and was not made by this stage; remove it or choose "
                          "another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(job_file, job)


def fetch_with_img2dataset(tsv: Path, out_dir: Path, pairs: int, settings: dict[str, Any]) -> dict[str, Any]:
    """Run img2dataset on the first `pairs` rows of `tsv`; return the manifest fields of the finished shards."""
    if pairs < 1:
        raise KdmcseError(f"--pairs must be >= 1, got {pairs}")
    if settings["resize_mode"] not in RESIZE_MODES:
        raise KdmcseError(f"--resize-mode {settings['resize_mode']!r} is not one of {', '.join(RESIZE_MODES)}")
    for key in ("image_size", "samples_per_shard", "processes", "threads", "timeout"):
        if int(settings[key]) < 1:
            raise KdmcseError(f"img2dataset setting {key} must be >= 1, got {settings[key]}")
    _check_img2dataset()
    urls, captions = read_url_list(tsv, pairs)
    url_list = out_dir.with_name(out_dir.name + ".urls.parquet")  # beside, not inside: img2dataset owns the folder
    table = pa.table({"url": pa.array(urls, pa.string()), "caption": pa.array(captions, pa.string())})
    digest = hashlib.sha256()
    for column in (urls, captions):
        digest.update("\n".join(column).encode("utf-8"))
    # every setting that changes which bytes land in which shard
    job = {"urls_sha256": digest.hexdigest(), "rows": len(urls),
           **{k: settings[k] for k in ("image_size", "resize_mode", "samples_per_shard")}}
    _prepare_out_dir(out_dir, job)
    n_shards = math.ceil(len(urls) / settings["samples_per_shard"])
    if not _unfinished(out_dir, n_shards):
        log.info("all %d shard(s) in %s are finished: nothing to fetch", n_shards, out_dir)
        return _summary(out_dir, n_shards, pairs, len(urls), settings)
    with atomic_path(url_list, suffix=".parquet.tmp") as tmp:
        pq.write_table(table, tmp)
    log.info("img2dataset: %d URL–caption rows -> %d shard(s) of up to %d in %s (%d processes x %d threads)",
             len(urls), n_shards, settings["samples_per_shard"], out_dir, settings["processes"], settings["threads"])
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled")
    # img2dataset prints its progress on stdout and stderr; both go to our stderr (the rule's log) through a
    # pipe, so that its progress bars redraw there as seldom as ours (kdmcse.io.LogStream)
    with subprocess.Popen(img2dataset_command(url_list, out_dir, settings), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=env) as proc:
        copy_output(proc.stdout, sys.stderr)
    if proc.returncode != 0:
        raise KdmcseError(f"img2dataset exited with status {proc.returncode} (its output is in the log above); "
                          f"rerun to resume: finished shards in {out_dir} are kept")
    unfinished = _unfinished(out_dir, n_shards)
    if unfinished:
        raise KdmcseError(f"img2dataset did not finish {len(unfinished)} of {n_shards} shard(s) (e.g. "
                          f"{unfinished[0]:0{WIDTH}d}); rerun to retry them, finished shards are kept")
    url_list.unlink(missing_ok=True)
    return _summary(out_dir, n_shards, pairs, len(urls), settings)


def _unfinished(out_dir: Path, n_shards: int) -> list[int]:
    """Shards without their tar or their _stats.json (img2dataset writes the stats last)."""
    return [i for i in range(n_shards) if not (out_dir / f"{i:0{WIDTH}d}_stats.json").is_file()
            or not (out_dir / f"{i:0{WIDTH}d}.tar").is_file()]


def _summary(out_dir: Path, n_shards: int, pairs: int, rows: int, settings: dict[str, Any]) -> dict[str, Any]:
    """Manifest fields of finished shards: their names and img2dataset's counts."""
    width = WIDTH
    shards, totals = [], {"count": 0, "successes": 0, "failed_to_download": 0, "failed_to_resize": 0}
    for i in range(n_shards):
        stats = json.loads((out_dir / f"{i:0{width}d}_stats.json").read_text(encoding="utf-8"))
        for k in totals:
            totals[k] += int(stats.get(k, 0))
        shards.append({"tar": f"{i:0{width}d}.tar", "parquet": f"{i:0{width}d}.parquet",
                       "successes": int(stats.get("successes", 0)), "count": int(stats.get("count", 0))})
    log.info("img2dataset: %d of %d images downloaded (%.1f%%); %d failed to download, %d to resize",
             totals["successes"], totals["count"], 100.0 * totals["successes"] / max(1, totals["count"]),
             totals["failed_to_download"], totals["failed_to_resize"])
    try:
        import importlib.metadata as md

        version = md.version("img2dataset")
    except Exception:  # noqa: BLE001 - the version is informational
        version = "unknown"
    return {"source": "img2dataset", "pairs_requested": pairs, "rows": rows, "totals": totals,
            "img2dataset": {"version": version, **settings}, "shards": shards}


def use_folder(folder: Path) -> dict[str, Any]:
    """Manifest fields for shards made elsewhere, used in place."""
    if not folder.is_dir():
        raise KdmcseError(f"shard folder {folder} does not exist; give the folder that holds the *.tar shards")
    tars = shard_files(folder)
    if not tars:
        raise KdmcseError(f"shard folder {folder} holds no *.tar files; give the folder that holds the shards "
                          "(img2dataset's --output_folder)")
    shards = []
    for tar in tars:
        parquet = tar.with_suffix(".parquet")
        shards.append({"tar": tar.name, "parquet": parquet.name if parquet.is_file() else None})
    return {"source": "folder", "shards": shards}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdmcse shards", description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True, type=Path, help="the shard manifest to write (JSON)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tsv", type=Path, help="URL–caption list (url<TAB>caption) to fetch with img2dataset")
    src.add_argument("--from", dest="from_dir", type=Path, help="a folder of ready webdataset shards, used in place")
    p.add_argument("--out-dir", type=Path, help="with --tsv: the folder img2dataset writes the shards into")
    p.add_argument("--pairs", type=int, default=1_000_000, help="with --tsv: rows of the list to fetch (the first N)")
    p.add_argument("--image-size", type=int, default=DEFAULT_SETTINGS["image_size"])
    p.add_argument("--resize-mode", default=DEFAULT_SETTINGS["resize_mode"], choices=RESIZE_MODES)
    p.add_argument("--samples-per-shard", type=int, default=DEFAULT_SETTINGS["samples_per_shard"])
    p.add_argument("--processes", type=int, default=DEFAULT_SETTINGS["processes"], help="img2dataset processes")
    p.add_argument("--threads", type=int, default=DEFAULT_SETTINGS["threads"], help="download threads per process")
    p.add_argument("--timeout", type=int, default=DEFAULT_SETTINGS["timeout"], help="seconds per image request")
    p.add_argument("--retries", type=int, default=DEFAULT_SETTINGS["retries"], help="retries per image")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tsv is not None:
        if args.out_dir is None:
            raise KdmcseError("--tsv needs --out-dir (the folder for the shards)")
        settings = {"image_size": args.image_size, "resize_mode": args.resize_mode,
                    "samples_per_shard": args.samples_per_shard, "processes": args.processes,
                    "threads": args.threads, "timeout": args.timeout, "retries": args.retries}
        fields = fetch_with_img2dataset(args.tsv, args.out_dir, args.pairs, settings)
        folder = args.out_dir
    else:
        fields = use_folder(args.from_dir)
        folder = args.from_dir
    manifest = {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "folder": str(folder), **fields}
    write_json(args.manifest, manifest)
    log.info("wrote %s: %d shard(s) in %s", args.manifest, len(manifest["shards"]), folder)
    return 0
