"""The teacher cache: CLIP embeddings of every image and caption, as Parquet plus memory-mappable `.npy`.

Layout of a cache folder (written by `write_teacher_cache`, read by `open_teacher_cache`):

- `images.parquet`   image_id string, emb fixed_size_list<float32>[D]
- `captions.parquet` caption_id int64, image_id string, text_sha256 string, emb fixed_size_list<float32>[D]
- `image_emb.npy`, `caption_emb.npy`: the same embeddings as plain `.npy` files, row for row, so training
  memory-maps a COCO-sized cache (414k x 768) in well under a second instead of decoding Parquet, and a 1M-row
  cache without reading it into memory.

Embeddings are stored as float32 (the default) or float16 (`dtype="float16"`, metadata `emb_dtype`; Parquet's
FLOAT16 type): 1M x 768 is then about 1.5 GB per table instead of 3 GB. Training casts each batch's rows to float32.

An *image-feature* cache (metadata `kind: image`, written by an image-only extractor such as the ResNet-50 of the
released MCSE baseline) has the same layout without caption embeddings: `captions.parquet` has no `emb` column,
there is no `caption_emb.npy`, and the reader's `caption_emb` is None. Its captions still map to image rows.

Both Parquet files carry the same JSON metadata under the schema metadata key `kdmcse.teacher`. It holds a
`content_sha256` over all ids and embeddings and a fingerprint of each `.npy`, so files left over from another run
(a crash between two file writes) are detected when the cache is opened.

Every embedding row must be finite (an fp16 overflow gives inf, and NaN poisons every loss it touches): the writer
refuses such rows, and the reader checks every row in one vectorised pass over the memory map when it opens the
cache, rather than letting training stop at whichever batch first reaches one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kdmcse.errors import KdmcseError
from kdmcse.io import atomic_path

META_KEY = b"kdmcse.teacher"
FORMAT = "kdmcse-teacher-cache"
FORMAT_VERSION = 1
IMAGES_PARQUET = "images.parquet"
CAPTIONS_PARQUET = "captions.parquet"
IMAGE_NPY = "image_emb.npy"
CAPTION_NPY = "caption_emb.npy"
CACHE_FILES = (IMAGES_PARQUET, CAPTIONS_PARQUET, IMAGE_NPY, CAPTION_NPY)
IMAGE_ONLY_FILES = (IMAGES_PARQUET, CAPTIONS_PARQUET, IMAGE_NPY)  # an image-feature cache (kind: image)
KINDS = ("clip", "image")
FINITE_BLOCK_ROWS = 1 << 16  # rows per block of the finiteness pass (bounds its memory on a COCO-sized cache)
# `expect` keys that name a metadata entry under another name
_EXPECT_ALIASES = {"dim": "dim", "D": "dim", "captions_sha": "captions_sha256"}
EMB_DTYPES = {"float32": "<f4", "float16": "<f2"}  # storage dtype -> little-endian numpy dtype
_HASH_ROWS = 65536  # rows hashed per block: no full-size temporary copy of a 1M-row table


@dataclass
class TeacherCache:
    """An opened cache; embeddings are read-only memory maps, ids are small in-memory arrays."""

    path: Path
    image_emb: np.ndarray  # [N_img, D] float32 or float16 (meta emb_dtype), memory-mapped
    caption_emb: np.ndarray | None  # [N_cap, D] float32 or float16, memory-mapped; None in an image-feature cache
    caption_ids: np.ndarray  # [N_cap] int64
    caption_image_row: np.ndarray  # [N_cap] int64, row of image_emb for each caption
    meta: dict[str, Any]
    image_ids: list[str] = field(repr=False, default_factory=list)

    @property
    def dim(self) -> int:
        return int(self.image_emb.shape[1])


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _row_fingerprint(emb: np.ndarray, dtype: str = "<f4") -> str:
    """Hash of the shape and the first and last rows: cheap to check on open, catches a stale `.npy`."""
    h = hashlib.sha256(json.dumps(list(emb.shape)).encode())
    if len(emb):
        h.update(np.ascontiguousarray(emb[0], dtype=dtype).tobytes())
        h.update(np.ascontiguousarray(emb[-1], dtype=dtype).tobytes())
    return h.hexdigest()


def first_non_finite_row(emb: np.ndarray) -> int | None:
    """Index of the first row holding a NaN or inf, or None; one pass, block by block, over a memory map.

    A row sum accumulated in float64 is non-finite exactly when the row holds a non-finite value (finite
    float32 values cannot overflow float64), and needs no boolean temporary the size of the block.
    """
    for start in range(0, len(emb), FINITE_BLOCK_ROWS):
        sums = np.asarray(emb[start : start + FINITE_BLOCK_ROWS]).sum(axis=1, dtype=np.float64)
        bad = ~np.isfinite(sums)
        if bad.any():
            return start + int(np.argmax(bad))
    return None


def _hash_rows(h: Any, emb: np.ndarray, dtype: str) -> None:
    for start in range(0, len(emb), _HASH_ROWS):
        h.update(np.ascontiguousarray(emb[start : start + _HASH_ROWS], dtype=dtype).data)


def _content_sha256(image_ids, image_emb, caption_ids, caption_image_ids, caption_emb, dtype: str = "<f4") -> str:
    h = hashlib.sha256()
    h.update("\n".join(image_ids).encode("utf-8"))
    _hash_rows(h, image_emb, dtype)
    h.update(np.ascontiguousarray(caption_ids, dtype="<i8").tobytes())
    h.update("\n".join(caption_image_ids).encode("utf-8"))
    if caption_emb is not None:
        _hash_rows(h, caption_emb, dtype)
    return h.hexdigest()


def _emb_array(emb: np.ndarray, dtype: str = "<f4") -> pa.FixedSizeListArray:
    arrow_type = pa.float16() if dtype == "<f2" else pa.float32()
    flat = pa.array(np.ascontiguousarray(emb, dtype=dtype).reshape(-1), type=arrow_type)
    return pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])


def _write_npy(path: Path, emb: np.ndarray, dtype: str = "<f4") -> None:
    with atomic_path(path, suffix=".npy.tmp") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(emb, dtype=dtype))


def _storage(out_dir: Path, emb: np.ndarray, dtype: str, what: str) -> np.ndarray:
    """`emb` in the storage dtype; float16 must not overflow (|x| > 65504 would become inf)."""
    with np.errstate(over="ignore"):  # overflow is reported below, as an error
        stored = np.asarray(emb, dtype=dtype)
    if dtype == "<f2":
        for start in range(0, len(stored), _HASH_ROWS):
            if not np.isfinite(stored[start : start + _HASH_ROWS]).all():
                raise KdmcseError(f"teacher cache {out_dir}: {what} embeddings overflow float16; store this cache "
                                  "as float32 (--cache-dtype float32)")
    return stored


def _write_parquet(path: Path, table: pa.Table, meta_json: bytes) -> None:
    table = table.replace_schema_metadata({META_KEY: meta_json})
    # No dictionary or min/max statistics for the embeddings (useless for floats, and for FLOAT16 they made a
    # 1M-row write take hours), and bounded row groups (the writer keeps a row group's levels in memory).
    ids = [name for name in table.column_names if name != "emb"]
    with atomic_path(path, suffix=".parquet.tmp") as tmp:
        pq.write_table(table, tmp, compression="zstd", use_dictionary=ids, write_statistics=ids,
                       row_group_size=_HASH_ROWS)


def write_teacher_cache(
    out_dir: str | os.PathLike[str],
    *,
    image_ids: Sequence[str],
    image_emb: np.ndarray,
    caption_ids: np.ndarray,
    caption_image_ids: Sequence[str],
    caption_texts: Sequence[str],
    caption_emb: np.ndarray | None,
    meta: Mapping[str, Any],
    dtype: str = "float32",
) -> dict[str, Any]:
    """Write a cache folder (every file atomically) and return the metadata stored in it.

    `caption_emb` None writes an image-feature cache (metadata `kind: image`, no caption embeddings).

    `dtype` is the storage of the embeddings: float32 or float16 (inputs are converted; float16 refuses values
    that would overflow to inf).

    `meta` is the caller's description (model, pretrained tag, captions_sha256, …); dimensions, counts, format
    version and the fingerprints are added here. Inconsistent inputs raise `KdmcseError` before anything is written.
    """
    out_dir = Path(out_dir)
    image_ids = [str(i) for i in image_ids]
    caption_image_ids = [str(i) for i in caption_image_ids]
    caption_ids = np.asarray(caption_ids, dtype=np.int64)
    # no float32 copy of float16 input (a 1M-row float16 table stays 1.5 GB); `_storage` converts below
    image_only = caption_emb is None
    image_emb = np.asarray(image_emb)
    image_emb = image_emb if image_emb.dtype.kind == "f" else image_emb.astype(np.float32)
    if image_only:
        # a stand-in of the right shape for the checks below, without memory (a view of one zero row)
        caption_emb = np.broadcast_to(np.zeros((1, image_emb.shape[1] if image_emb.ndim == 2 else 0), np.float32),
                                      (len(caption_ids), image_emb.shape[1] if image_emb.ndim == 2 else 0))
    caption_emb = np.asarray(caption_emb)
    caption_emb = caption_emb if caption_emb.dtype.kind == "f" else caption_emb.astype(np.float32)

    if image_emb.ndim != 2 or caption_emb.ndim != 2 or image_emb.shape[1] != caption_emb.shape[1]:
        raise KdmcseError(
            f"teacher cache {out_dir}: image_emb {image_emb.shape} and caption_emb {caption_emb.shape} must be "
            "2-D with the same embedding dimension"
        )
    n_img, n_cap, dim = len(image_ids), len(caption_ids), int(image_emb.shape[1])
    if image_emb.shape[0] != n_img:
        raise KdmcseError(f"teacher cache {out_dir}: {n_img} image_ids but image_emb has {image_emb.shape[0]} rows")
    if not (caption_emb.shape[0] == n_cap == len(caption_image_ids) == len(caption_texts)):
        raise KdmcseError(
            f"teacher cache {out_dir}: caption_ids ({n_cap}), caption_image_ids ({len(caption_image_ids)}), "
            f"caption_texts ({len(caption_texts)}) and caption_emb ({caption_emb.shape[0]} rows) differ in length"
        )
    if len(set(image_ids)) != n_img:
        raise KdmcseError(f"teacher cache {out_dir}: image_ids are not unique")
    if len(np.unique(caption_ids)) != n_cap:
        raise KdmcseError(f"teacher cache {out_dir}: caption_ids are not unique")
    missing = sorted(set(caption_image_ids) - set(image_ids))
    if missing:
        raise KdmcseError(
            f"teacher cache {out_dir}: {len(missing)} caption image_id(s) have no image row, e.g. {missing[:3]}"
        )
    if dtype not in EMB_DTYPES:
        raise KdmcseError(f"teacher cache {out_dir}: storage dtype {dtype!r} is not one of {', '.join(EMB_DTYPES)}")
    npy_dtype = EMB_DTYPES[dtype]
    image_emb = _storage(out_dir, image_emb, npy_dtype, "image")
    caption_emb = None if image_only else _storage(out_dir, caption_emb, npy_dtype, "caption")
    if "dim" in meta and int(meta["dim"]) != dim:
        raise KdmcseError(f"teacher cache {out_dir}: meta says dim={meta['dim']} but embeddings have {dim}")
    checked = [("image", image_emb, image_ids)] + ([] if image_only else [("caption", caption_emb, caption_ids)])
    for what, emb, ids in checked:
        row = first_non_finite_row(emb)
        if row is not None:
            raise KdmcseError(
                f"teacher cache {out_dir}: the {what} embedding in row {row} ({what} id {ids[row]}) is not finite "
                "(NaN or inf); nothing was written. With --precision fp16 or bf16 try fp32; else check that input"
            )

    full_meta: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "normalised": False}
    full_meta.update(dict(meta))
    fingerprints = {IMAGE_NPY: _row_fingerprint(image_emb, npy_dtype)}
    if not image_only:
        fingerprints[CAPTION_NPY] = _row_fingerprint(caption_emb, npy_dtype)
    if image_only:
        full_meta["kind"] = "image"  # absent = a CLIP cache (every cache written before image-feature caches)
    full_meta.update(
        dim=dim,
        n_images=n_img,
        n_captions=n_cap,
        emb_dtype=dtype,
        npy_fingerprints=fingerprints,
        content_sha256=_content_sha256(image_ids, image_emb, caption_ids, caption_image_ids, caption_emb, npy_dtype),
    )
    meta_json = json.dumps(full_meta, sort_keys=True).encode("utf-8")

    images = pa.table(
        {"image_id": pa.array(image_ids, type=pa.string()), "emb": _emb_array(image_emb, npy_dtype)}
    )
    captions = pa.table(
        {
            "caption_id": pa.array(caption_ids, type=pa.int64()),
            "image_id": pa.array(caption_image_ids, type=pa.string()),
            "text_sha256": pa.array([text_sha256(t) for t in caption_texts], type=pa.string()),
            **({} if image_only else {"emb": _emb_array(caption_emb, npy_dtype)}),
        }
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    # The .npy files first, the Parquet files (which carry the fingerprints) last.
    _write_npy(out_dir / IMAGE_NPY, image_emb, npy_dtype)
    if image_only:  # a CLIP cache rewritten in place as an image-feature cache must not keep its caption file
        (out_dir / CAPTION_NPY).unlink(missing_ok=True)
    else:
        _write_npy(out_dir / CAPTION_NPY, caption_emb, npy_dtype)
    _write_parquet(out_dir / CAPTIONS_PARQUET, captions, meta_json)
    _write_parquet(out_dir / IMAGES_PARQUET, images, meta_json)
    return full_meta


def read_cache_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a cache folder (from `images.parquet`), without opening the embeddings."""
    return _parquet_meta(Path(path) / IMAGES_PARQUET)


def _parquet_meta(file: Path) -> dict[str, Any]:
    try:
        schema = pq.read_schema(file)
    except (OSError, pa.ArrowException) as exc:
        raise KdmcseError(
            f"teacher cache file {file} is unreadable ({exc}); rebuild the cache with `python -m kdmcse teacher`"
        ) from exc
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise KdmcseError(f"teacher cache file {file} has no '{META_KEY.decode()}' metadata; it was not written by "
                          "`python -m kdmcse teacher`: rebuild the cache")
    return json.loads(raw)


def _open_npy(file: Path, rows: int, dim: int, fingerprint: str | None, dtype: str = "float32") -> np.ndarray:
    try:
        emb = np.load(file, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise KdmcseError(f"teacher cache file {file} is unreadable or truncated ({exc}); rebuild the cache") from exc
    if dtype not in EMB_DTYPES or emb.dtype != np.dtype(EMB_DTYPES[dtype]) or emb.shape != (rows, dim):
        raise KdmcseError(
            f"teacher cache file {file} holds {emb.dtype} {emb.shape}, but the metadata says {dtype} ({rows}, {dim}); "
            "the folder mixes files of different runs: rebuild the cache"
        )
    if fingerprint is not None and _row_fingerprint(emb, EMB_DTYPES[dtype]) != fingerprint:
        raise KdmcseError(
            f"teacher cache file {file} does not belong to the Parquet files beside it (fingerprint mismatch); "
            "the folder mixes files of different runs: rebuild the cache"
        )
    return emb


def _check_expect(path: Path, meta: Mapping[str, Any], expect: Mapping[str, Any]) -> None:
    for key, want in expect.items():
        if want is None:
            continue
        meta_key = _EXPECT_ALIASES.get(key, key)
        if meta_key not in meta:
            raise KdmcseError(f"teacher cache {path}: metadata has no '{meta_key}' to check against {want!r}")
        have = meta[meta_key]
        same = int(have) == int(want) if meta_key == "dim" else str(have) == str(want)
        if not same:
            raise KdmcseError(
                f"teacher cache {path} was built with {meta_key}={have!r}, but {want!r} is expected; rebuild it "
                f"with `python -m kdmcse teacher` for that setting, or point to the matching cache"
            )


def open_teacher_cache(path: str | os.PathLike[str], expect: Mapping[str, Any] | None = None) -> TeacherCache:
    """Open a cache folder: check it is complete and consistent (and matches `expect`), memory-map the embeddings.

    `expect` maps metadata keys to required values, e.g. {"model": "ViT-L-14", "pretrained": "openai",
    "dim": 768, "captions_sha256": …}; a None value is not checked.
    """
    path = Path(path)
    if not path.is_dir():
        raise KdmcseError(f"teacher cache folder {path} does not exist; build it with `python -m kdmcse teacher`")
    missing = [name for name in IMAGE_ONLY_FILES if not (path / name).is_file()]
    if missing:
        raise KdmcseError(
            f"teacher cache {path} is incomplete: missing {', '.join(missing)}; rerun `python -m kdmcse teacher`"
        )
    meta = _parquet_meta(path / IMAGES_PARQUET)
    image_only = meta.get("kind", "clip") == "image"
    if not image_only and not (path / CAPTION_NPY).is_file():
        raise KdmcseError(f"teacher cache {path} is incomplete: missing {CAPTION_NPY}; rerun `python -m kdmcse teacher`")
    if _parquet_meta(path / CAPTIONS_PARQUET) != meta:
        raise KdmcseError(
            f"teacher cache {path}: {IMAGES_PARQUET} and {CAPTIONS_PARQUET} come from different runs; rebuild the cache"
        )
    if meta.get("format") != FORMAT or int(meta.get("format_version", -1)) > FORMAT_VERSION:
        raise KdmcseError(f"teacher cache {path} has format {meta.get('format')!r} v{meta.get('format_version')}, "
                          f"this code reads {FORMAT!r} up to v{FORMAT_VERSION}; rebuild the cache")
    _check_expect(path, meta, expect or {})

    try:
        images = pq.read_table(path / IMAGES_PARQUET, columns=["image_id"])
        captions = pq.read_table(path / CAPTIONS_PARQUET, columns=["caption_id", "image_id"])
    except (OSError, pa.ArrowException) as exc:
        raise KdmcseError(f"teacher cache {path}: Parquet files are unreadable ({exc}); rebuild the cache") from exc
    n_img, n_cap, dim = int(meta["n_images"]), int(meta["n_captions"]), int(meta["dim"])
    if images.num_rows != n_img or captions.num_rows != n_cap:
        raise KdmcseError(
            f"teacher cache {path}: Parquet files hold {images.num_rows} images / {captions.num_rows} captions, "
            f"the metadata says {n_img} / {n_cap}; rebuild the cache"
        )
    image_id_col = images.column("image_id").combine_chunks()
    if pc.count_distinct(image_id_col).as_py() != n_img:
        raise KdmcseError(f"teacher cache {path}: {IMAGES_PARQUET} has duplicate image_id values; rebuild the cache")
    rows = pc.index_in(captions.column("image_id"), value_set=image_id_col).combine_chunks()
    if rows.null_count:
        orphan = captions.column("image_id").filter(pc.is_null(rows)).to_pylist()[:3]
        raise KdmcseError(
            f"teacher cache {path}: {rows.null_count} caption(s) refer to image_id(s) with no image row, "
            f"e.g. {orphan}; rebuild the cache"
        )

    fingerprints = meta.get("npy_fingerprints", {})
    dtype = str(meta.get("emb_dtype", "float32"))  # caches written before the option are float32
    image_emb = _open_npy(path / IMAGE_NPY, n_img, dim, fingerprints.get(IMAGE_NPY), dtype)
    caption_emb = None if image_only else _open_npy(path / CAPTION_NPY, n_cap, dim, fingerprints.get(CAPTION_NPY), dtype)
    for name, emb in ((IMAGE_NPY, image_emb), (CAPTION_NPY, caption_emb)):
        if emb is None:
            continue
        row = first_non_finite_row(emb)
        if row is not None:
            raise KdmcseError(
                f"teacher cache file {path / name}: row {row} is not finite (NaN or inf); the file is damaged or "
                "was not written by `python -m kdmcse teacher`: rebuild the cache"
            )
    return TeacherCache(
        path=path,
        image_emb=image_emb,
        caption_emb=caption_emb,
        caption_ids=captions.column("caption_id").to_numpy().astype(np.int64, copy=False),
        caption_image_row=rows.to_numpy(zero_copy_only=False).astype(np.int64),
        meta=meta,
        image_ids=image_id_col.to_pylist(),
    )
