"""Training inputs: read and cross-check the corpora, the teacher cache and the SentEval folder before any model
is loaded, then tokenise each corpus once and map caption rows to teacher-cache rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdmcse.errors import KdmcseError
from kdmcse.io import sha256_file
from kdmcse.teacher.cache import open_teacher_cache
from kdmcse.train.mixing import TokenizedTexts

log = logging.getLogger(__name__)


def read_column_table(path: Path, columns: list[str], what: str) -> Any:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise KdmcseError(f"{what} {path} does not exist; build it with `python -m kdmcse prepare`")
    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        raise KdmcseError(f"{what} {path} is not a readable Parquet file ({exc})") from exc
    lacking = [c for c in columns if c not in names]
    if lacking:
        raise KdmcseError(f"{what} {path} lacks column(s) {', '.join(lacking)}; rebuild it with "
                          "`python -m kdmcse prepare`")
    return pq.read_table(path, columns=columns)


@dataclass
class TrainData:
    text: TokenizedTexts
    pairs: TokenizedTexts | None = None
    image_emb: np.ndarray | None = None  # [N_img, D], memory-mapped
    caption_emb: np.ndarray | None = None  # [N_cap, D], memory-mapped
    pair_caption_row: np.ndarray | None = None  # caption table row -> cache caption row
    pair_image_row: np.ndarray | None = None  # caption table row -> cache image row
    info: dict[str, Any] = field(default_factory=dict)

    def teacher_batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (unnormalised) teacher image and caption embeddings of caption-table rows `rows`."""
        assert self.image_emb is not None and self.caption_emb is not None
        img = np.asarray(self.image_emb[self.pair_image_row[rows]], dtype=np.float32)
        cap = np.asarray(self.caption_emb[self.pair_caption_row[rows]], dtype=np.float32)
        return torch.from_numpy(img), torch.from_numpy(cap)


@dataclass
class Inputs:
    """Validated paths, read before any model is loaded."""

    texts: list[str]
    captions: list[str] | None
    caption_ids: np.ndarray | None
    teacher: Any | None  # an opened TeacherCache
    senteval: Path | None


def check_inputs(cfg: dict[str, Any], text: Path, pairs: Path | None, teacher: Path | None,
                 senteval: Path | None) -> Inputs:
    """Read and cross-check every input; fail with one clear error before any heavy work."""
    texts = read_column_table(text, ["text"], "--text corpus").column("text").to_pylist()
    if not texts:
        raise KdmcseError(f"--text corpus {text} has no rows")
    if any(t is None for t in texts):
        raise KdmcseError(f"--text corpus {text} has null rows; rebuild it with `python -m kdmcse prepare wiki`")
    captions = caption_ids = cache = None
    if cfg["objective"] == "simcse":
        if pairs is not None or teacher is not None:
            log.info("objective simcse trains on the text corpus only: --pairs/--teacher are ignored")
    else:
        if pairs is None or teacher is None:
            raise KdmcseError(f"objective {cfg['objective']} needs --pairs (captions parquet) and --teacher "
                              "(its teacher cache folder)")
        table = read_column_table(pairs, ["caption_id", "caption"], "--pairs caption table")
        captions = table.column("caption").to_pylist()
        caption_ids = table.column("caption_id").to_numpy().astype(np.int64)
        if not captions:
            raise KdmcseError(f"--pairs caption table {pairs} has no rows")
        expect = dict(cfg["teacher"], captions_sha256=sha256_file(pairs))
        cache = open_teacher_cache(teacher, expect=expect)
    if senteval is not None:
        dev = senteval / "STS" / "STSBenchmark" / "sts-dev.csv"
        if not dev.is_file():
            raise KdmcseError(f"--senteval {senteval} has no STS/STSBenchmark/sts-dev.csv; pass the folder that "
                              "holds SentEval's STS/ (the extracted senteval.tar), or omit --senteval")
    return Inputs(texts, captions, caption_ids, cache, senteval)


def data_info(inputs: Inputs) -> dict[str, Any]:
    """What identifies the training data (part of the checkpoint fingerprint and of run_meta.json)."""
    info: dict[str, Any] = {"text_rows": len(inputs.texts)}
    if inputs.captions is not None:
        info.update(pair_rows=len(inputs.captions), teacher_dim=inputs.teacher.dim,
                    teacher_content_sha256=inputs.teacher.meta.get("content_sha256"))
    return info


def build_data(inputs: Inputs, tokenizer: Any, max_length: int, show_progress: bool = True) -> TrainData:
    """Tokenise each corpus once and map caption rows to teacher-cache rows."""
    data = TrainData(text=TokenizedTexts.from_texts(tokenizer, inputs.texts, max_length, desc="tokenise text",
                                                          show_progress=show_progress))
    data.info = data_info(inputs)
    if inputs.captions is not None:
        cache = inputs.teacher
        data.pairs = TokenizedTexts.from_texts(tokenizer, inputs.captions, max_length,
                                                desc="tokenise captions", show_progress=show_progress)
        order = np.argsort(cache.caption_ids, kind="stable")
        pos = np.searchsorted(cache.caption_ids, inputs.caption_ids, sorter=order)
        pos = np.minimum(pos, len(order) - 1)
        rows = order[pos]
        found = cache.caption_ids[rows] == inputs.caption_ids
        if not found.all():
            missing = inputs.caption_ids[~found][:3].tolist()
            raise KdmcseError(f"teacher cache {cache.path} has no embedding for caption_id(s) {missing}; "
                              "rebuild it from this caption table")
        data.image_emb, data.caption_emb = cache.image_emb, cache.caption_emb
        data.pair_caption_row = rows
        data.pair_image_row = cache.caption_image_row[rows]
    return data
