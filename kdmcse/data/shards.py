"""Image–caption pairs in webdataset tar shards (img2dataset's output), read without extracting anything.

A shard folder holds `NNNNN.tar` files whose members follow the webdataset convention: the part of a member
name up to the first dot of its base name is the sample key, the rest its extension (`000010003.jpg`,
`000010003.txt`, `000010003.json`). img2dataset also writes `NNNNN.parquet` (one row per URL it tried, with
`key`, `caption`, `status`) and `NNNNN_stats.json` beside each tar.

The shard list is a small manifest (`resources/shards/<name>.json`, written by `python -m kdmcse shards`);
`python -m kdmcse prepare captions --dataset shards --input MANIFEST` reads every shard once, sequentially, and
writes the caption table with the shard (`image_path`) and the image's `member` name for every row. Every
member the table lists is checked to exist, and the sha256 of every shard is stored in the table's metadata so
that the teacher, which streams the same shards, can tell a shard that changed since.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kdmcse.errors import KdmcseError
from kdmcse.io import atomic_path, read_json

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "kdmcse-shards"
MANIFEST_VERSION = 1
SHARDS_META_KEY = b"kdmcse.shards"  # caption-table schema metadata: shard path -> {sha256, size, members}
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # the image members webdataset's decoders know
CAPTION_EXTENSION = "txt"
SHARD_CAPTIONS_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("image_path", pa.string()),  # the tar shard holding the image
    ("caption_id", pa.int64()),
    ("caption", pa.string()),
    ("member", pa.string()),  # the image's member name inside that shard
])
_BASE_PLUS_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's tariterators.base_plus_ext


def split_member(name: str) -> tuple[str | None, str | None]:
    """(key, extension) of a tar member name by the webdataset convention; (None, None) without an extension."""
    match = _BASE_PLUS_EXT.match(name)
    return (match.group(1), match.group(2)) if match else (None, None)


class HashingReader:
    """A read-only file wrapper that hashes every byte it hands out (a shard is hashed while it is streamed)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Read to the end, so the hash covers the tar's end-of-archive padding too."""
        while self.read(1 << 20):
            pass


# ----------------------------------------------------------------------------- manifest


def shard_files(folder: Path) -> list[Path]:
    """The `*.tar` files directly inside `folder`, in name order."""
    return sorted(p for p in folder.glob("*.tar") if p.is_file())


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a shard manifest written by `python -m kdmcse shards`."""
    path = Path(path)
    if not path.is_file():
        raise KdmcseError(f"shard manifest {path} does not exist; build it with `python -m kdmcse shards`")
    try:
        manifest = read_json(path)
    except ValueError as exc:
        raise KdmcseError(f"shard manifest {path} is not valid JSON ({exc}); rerun `python -m kdmcse shards`") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise KdmcseError(f"{path} is not a shard manifest (no format '{MANIFEST_FORMAT}'); rerun `python -m kdmcse shards`")
    if not manifest.get("shards"):
        raise KdmcseError(f"shard manifest {path} lists no shards; rerun `python -m kdmcse shards`")
    return manifest


def manifest_shards(manifest: dict[str, Any]) -> list[tuple[Path, Path | None]]:
    """(tar path, parquet path or None) of every shard, paths as the manifest's folder gives them."""
    folder = Path(manifest["folder"])
    out = []
    for entry in manifest["shards"]:
        tar = folder / entry["tar"]
        if not tar.is_file():
            raise KdmcseError(f"shard {tar} listed in the shard manifest does not exist; rerun `python -m kdmcse shards`")
        out.append((tar, folder / entry["parquet"] if entry.get("parquet") else None))
    return out


# ----------------------------------------------------------------------------- scanning


@dataclass
class ShardScan:
    """What one pass over a shard found: its checksum and, per sample key, its image member and caption."""

    path: Path
    sha256: str
    size: int
    images: dict[str, str] = field(default_factory=dict)  # key -> image member name (first of IMAGE_EXTENSIONS)
    captions: dict[str, str] = field(default_factory=dict)  # key -> text of its .txt member


def _rank(member: str) -> int:
    """Preference of an image member when a sample has several (jpg first)."""
    return IMAGE_EXTENSIONS.index(str(split_member(member)[1]).lower())


def scan_shard(path: Path) -> ShardScan:
    """Stream a shard once: hash its bytes, index its members by sample key, read the small caption members."""
    try:
        with open(path, "rb") as raw:
            reader = HashingReader(raw)
            scan = ShardScan(path, "", 0)
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[arg-type]
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = split_member(member.name)
                    if key is None:
                        continue
                    ext = ext.lower()
                    if ext in IMAGE_EXTENSIONS:
                        if key not in scan.images or _rank(member.name) < _rank(scan.images[key]):
                            scan.images[key] = member.name
                    elif ext == CAPTION_EXTENSION:
                        f = tar.extractfile(member)
                        scan.captions[key] = f.read().decode("utf-8", errors="replace").strip() if f else ""
            reader.drain()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise KdmcseError(f"shard {path} is not a readable tar file ({exc}); re-download it (rerun "
                          "`python -m kdmcse shards`) or remove it from the shard folder") from exc
    scan.sha256, scan.size = reader.sha256.hexdigest(), reader.size
    return scan


def listed_keys(scan: ShardScan, parquet: Path | None) -> list[str]:
    """Keys of the shard's samples, sorted: img2dataset's successes where its parquet is there, else the tar's.

    Members are written in download-completion order, so the sort makes the table independent of it.
    """
    if parquet is None or not parquet.is_file():
        return sorted(scan.images)
    try:
        names = pq.read_schema(parquet).names
        cols = ["key", "status"] if "status" in names else ["key"]
        table = pq.read_table(parquet, columns=cols)
    except (OSError, pa.ArrowException, KeyError) as exc:
        raise KdmcseError(f"shard index {parquet} is unreadable or has no 'key' column ({exc}); remove it to list "
                          f"the samples from {scan.path} itself") from exc
    keys = table.column("key").to_pylist()
    if "status" in cols:
        keys = [k for k, s in zip(keys, table.column("status").to_pylist()) if s == "success"]
    return sorted(str(k) for k in keys if k is not None)


@dataclass
class ShardRows:
    keys: list[str]
    members: list[str]
    captions: list[str]


def shard_rows(scan: ShardScan, parquet: Path | None) -> ShardRows:
    """The listed samples of one shard with their image member and caption; a listed member that is absent fails."""
    rows = ShardRows([], [], [])
    for key in listed_keys(scan, parquet):
        member = scan.images.get(key)
        if member is None:
            raise KdmcseError(
                f"shard {scan.path}: sample {key!r} is listed{' in ' + str(parquet) if parquet else ''} but has no "
                f"image member ({'/'.join(IMAGE_EXTENSIONS)}) in the tar; the shard is incomplete: re-download it "
                "(delete it and its _stats.json, rerun `python -m kdmcse shards`)"
            )
        if key not in scan.captions:
            raise KdmcseError(f"shard {scan.path}: sample {key!r} has no caption member ({key}.{CAPTION_EXTENSION}); "
                              "every image needs its caption: re-download the shard")
        rows.keys.append(key)
        rows.members.append(member)
        rows.captions.append(scan.captions[key])
    return rows


def prepare_shard_captions(manifest_path: str | os.PathLike[str], out: str | os.PathLike[str], *,
                           max_images: int | None = None, workers: int = 4) -> int:
    """Write the caption table of a shard set (one caption per image); return its row count."""
    if max_images is not None and max_images < 1:
        raise KdmcseError(f"--max-images must be >= 1, got {max_images}")
    shards = manifest_shards(read_manifest(manifest_path))
    with ThreadPoolExecutor(max(1, workers)) as pool:  # hashing releases the GIL; shards are read in parallel
        scans = list(pool.map(scan_shard, [tar for tar, _ in shards]))
    image_ids: list[str] = []
    paths: list[str] = []
    members: list[str] = []
    captions: list[str] = []
    shard_meta: dict[str, dict[str, Any]] = {}
    seen: dict[str, Path] = {}
    for (tar, parquet), scan in zip(shards, scans):
        rows = shard_rows(scan, parquet)
        if max_images is not None:
            take = max(0, max_images - len(image_ids))
            rows = ShardRows(rows.keys[:take], rows.members[:take], rows.captions[:take])
        for key in rows.keys:
            if key in seen:
                raise KdmcseError(f"sample key {key!r} occurs in two shards ({seen[key]} and {tar}); keys must be "
                                  "unique across the shard set")
            seen[key] = tar
        if rows.keys:
            shard_meta[str(tar)] = {"sha256": scan.sha256, "size": scan.size, "members": len(rows.keys)}
        image_ids += rows.keys
        paths += [str(tar)] * len(rows.keys)
        members += rows.members
        captions += rows.captions
    if not image_ids:
        raise KdmcseError(f"the shards of {manifest_path} hold no image with a caption; check the shard folder "
                          "(img2dataset's _stats.json files give the reasons downloads failed)")
    table = pa.table({
        "image_id": pa.array(image_ids, type=pa.string()),
        "image_path": pa.array(paths, type=pa.string()),
        "caption_id": pa.array(np.arange(len(image_ids), dtype=np.int64)),
        "caption": pa.array(captions, type=pa.string()),
        "member": pa.array(members, type=pa.string()),
    }, schema=SHARD_CAPTIONS_SCHEMA)
    table = table.replace_schema_metadata({SHARDS_META_KEY: json.dumps(shard_meta, sort_keys=True).encode()})
    with atomic_path(out, suffix=".parquet.tmp") as tmp:
        pq.write_table(table, tmp, compression="zstd")
    log.info("wrote %d captions of %d images from %d shard(s) to %s", len(image_ids), len(image_ids),
             len(shard_meta), out)
    return len(image_ids)


def read_shard_meta(schema_metadata: dict[bytes, bytes] | None) -> dict[str, dict[str, Any]]:
    """Shard path -> {sha256, size, members} from a caption table's schema metadata ({} if absent)."""
    raw = (schema_metadata or {}).get(SHARDS_META_KEY)
    return json.loads(raw) if raw else {}
