"""The caption table as the teacher reads it: validated, with its unique images in order of first appearance."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kdmcse.data.shards import read_shard_meta
from kdmcse.errors import KdmcseError
from kdmcse.io import sha256_file

CAPTION_COLUMNS = {"image_id": "string", "image_path": "string", "caption_id": "int64", "caption": "string"}


@dataclass
class CaptionTable:
    """The caption table, plus its unique images in order of first appearance."""

    path: Path
    sha256: str
    caption_ids: np.ndarray  # [N_cap] int64
    captions: list[str]
    caption_image_ids: list[str]
    image_ids: list[str]  # unique, order of first appearance
    image_paths: list[str]  # the image file, or for a shard table the tar shard holding the image
    image_members: list[str] | None = None  # shard tables: each image's member name inside its shard
    shard_meta: dict[str, dict[str, Any]] = field(default_factory=dict)  # shard -> {sha256, size, members}


def load_caption_table(path: str | os.PathLike[str]) -> CaptionTable:
    """Read and validate a caption table (architecture.md §2); any problem is one `KdmcseError`."""
    path = Path(path)
    if not path.is_file():
        raise KdmcseError(f"caption table {path} does not exist; build it with `python -m kdmcse prepare captions`")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise KdmcseError(f"caption table {path} is not a readable Parquet file ({exc})") from exc
    for name, kind in CAPTION_COLUMNS.items():
        if name not in table.column_names:
            raise KdmcseError(f"caption table {path} has no '{name}' column (expected columns {list(CAPTION_COLUMNS)})")
        typ = table.schema.field(name).type
        ok = pa.types.is_integer(typ) if kind == "int64" else (pa.types.is_string(typ) or pa.types.is_large_string(typ))
        if not ok:
            raise KdmcseError(f"caption table {path}: column '{name}' is {typ}, expected {kind}")
        if table.column(name).null_count:
            raise KdmcseError(f"caption table {path}: column '{name}' has {table.column(name).null_count} null value(s)")
    if table.num_rows == 0:
        raise KdmcseError(f"caption table {path} has no rows")
    caption_ids = table.column("caption_id").to_numpy().astype(np.int64)
    if len(np.unique(caption_ids)) != len(caption_ids):
        raise KdmcseError(f"caption table {path}: caption_id values are not unique")
    caption_image_ids = table.column("image_id").to_pylist()
    paths = table.column("image_path").to_pylist()
    # shard tables also name each image's member inside its shard (image_path): the pair identifies the image
    has_member = "member" in table.column_names
    if has_member and (not pa.types.is_string(table.schema.field("member").type) or table.column("member").null_count):
        raise KdmcseError(f"caption table {path}: column 'member' must be strings without nulls")
    locations = list(zip(paths, table.column("member").to_pylist())) if has_member else paths
    first_path: dict[str, Any] = {}
    for image_id, location in zip(caption_image_ids, locations):
        seen = first_path.setdefault(image_id, location)
        if seen != location:
            raise KdmcseError(
                f"caption table {path}: image_id {image_id!r} has two image paths ({seen!r}, {location!r}); "
                "each image_id must name one file"
            )
    firsts = list(first_path.values())
    return CaptionTable(
        path=path,
        sha256=sha256_file(path),
        caption_ids=caption_ids,
        captions=table.column("caption").to_pylist(),
        caption_image_ids=caption_image_ids,
        image_ids=list(first_path),
        image_paths=[loc[0] for loc in firsts] if has_member else firsts,
        image_members=[loc[1] for loc in firsts] if has_member else None,
        shard_meta=read_shard_meta(table.schema.metadata) if has_member else {},
    )
