"""Training inputs: read and cross-check the corpora, the teacher cache and the SentEval folder before any model
is loaded, then tokenise each corpus once and map caption rows to teacher-cache rows.

Captions the teacher left out with `--skip-bad-images` (their image was unreadable; the cache records how many)
are left out of training too, and the log says how many. Any other caption without an embedding means the cache
is stale, and is refused.
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

    def teacher_batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw (unnormalised) teacher image and caption embeddings of caption-table rows `rows` (caption None for
        an image-feature cache)."""
        assert self.image_emb is not None
        img = np.asarray(self.image_emb[self.pair_image_row[rows]], dtype=np.float32)
        if self.caption_emb is None:
            return torch.from_numpy(img), None
        cap = np.asarray(self.caption_emb[self.pair_caption_row[rows]], dtype=np.float32)
        return torch.from_numpy(img), torch.from_numpy(cap)


@dataclass
class Inputs:
    """Validated paths, read before any model is loaded."""

    texts: list[str]
    captions: list[str] | None
    caption_ids: np.ndarray | None
    teacher: Any | None  # an opened TeacherCache (None for simcse, whose captions are text batches only)
    senteval: Path | None
    pairs_skipped: int = 0  # caption rows the teacher skipped (unreadable images), left out here too


def check_inputs(cfg: dict[str, Any], text: Path, pairs: Path | None, teacher: Path | None,
                 senteval: Path | None) -> Inputs:
    """Read and cross-check every input; fail with one clear error before any heavy work."""
    texts = read_column_table(text, ["text"], "--text corpus").column("text").to_pylist()
    if not texts:
        raise KdmcseError(f"--text corpus {text} has no rows")
    if any(t is None for t in texts):
        raise KdmcseError(f"--text corpus {text} has null rows; rebuild it with `python -m kdmcse prepare wiki`")
    captions = caption_ids = cache = None
    skipped = 0
    if cfg["objective"] == "simcse":
        # the released SimCSE run: the caption text batches interleave with Wikipedia (text-text term only)
        if teacher is not None:
            log.info("objective simcse uses no teacher: --teacher is ignored")
        if pairs is not None:
            table = read_column_table(pairs, ["caption_id", "caption"], "--pairs caption table")
            captions = table.column("caption").to_pylist()
            caption_ids = table.column("caption_id").to_numpy().astype(np.int64)
            if not captions:
                raise KdmcseError(f"--pairs caption table {pairs} has no rows")
            log.info("objective simcse: the %d captions of %s interleave as text batches (no teacher)", len(captions),
                     pairs)
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
        checkpoint = Path(expect["pretrained"])
        if checkpoint.is_file():  # the cache names a local checkpoint by its tag or file name: compare the bytes
            del expect["pretrained"]
        cache = open_teacher_cache(teacher, expect=expect)
        if cfg["objective"] == "kdmcse" and cache.caption_emb is None:
            raise KdmcseError(f"teacher cache {teacher} holds image features only; kdmcse distils from a CLIP "
                              "teacher's image and caption embeddings: point --teacher at a CLIP teacher cache")
        _check_model_config(cache, cfg["teacher"])
        if checkpoint.is_file():
            _check_checkpoint(cache, checkpoint)
        captions, caption_ids, skipped = _leave_out_skipped(captions, caption_ids, cache, pairs)
    if senteval is not None:
        dev = senteval / "STS" / "STSBenchmark" / "sts-dev.csv"
        if not dev.is_file():
            raise KdmcseError(f"--senteval {senteval} has no STS/STSBenchmark/sts-dev.csv; pass the folder that "
                              "holds SentEval's STS/ (the extracted senteval.tar), or omit --senteval")
    return Inputs(texts, captions, caption_ids, cache, senteval, pairs_skipped=skipped if cache else 0)


def _check_model_config(cache: Any, teacher: dict[str, Any]) -> None:
    """A custom architecture is known by its model config, not by its name alone (tiny test teachers share one)."""
    want, have = teacher.get("model_config_sha256"), cache.meta.get("model_config_sha256")
    if want != have:
        raise KdmcseError(
            f"teacher cache {cache.path} was built with model_config_sha256={have!r}, but the run config's teacher "
            f"has {want!r} (another model-config JSON); rebuild the cache with `python -m kdmcse teacher` for that "
            "setting, or point to the matching cache"
        )


def _check_checkpoint(cache: Any, checkpoint: Path) -> None:
    """A teacher given as a local checkpoint file is the cache's teacher if the cache was built from those bytes."""
    have, want = cache.meta.get("pretrained_sha256"), sha256_file(checkpoint)
    if have != want:
        raise KdmcseError(
            f"teacher cache {cache.path} was built from a checkpoint with pretrained_sha256={have!r}, but "
            f"{checkpoint} has {want}; rebuild the cache with `python -m kdmcse teacher --pretrained {checkpoint}`, "
            "or point to the matching cache"
        )


def _leave_out_skipped(captions: list[str], caption_ids: np.ndarray, cache: Any,
                       pairs: Path) -> tuple[list[str], np.ndarray, int]:
    """Drop the caption rows the teacher recorded as skipped; refuse any other caption without an embedding."""
    present = np.isin(caption_ids, cache.caption_ids)
    missing = int((~present).sum())
    if not missing:
        return captions, caption_ids, 0
    recorded = int(cache.meta.get("n_skipped_captions") or 0)
    if missing != recorded or int(cache.meta.get("n_captions_source", -1)) != len(caption_ids):
        raise KdmcseError(
            f"teacher cache {cache.path} has no embedding for {missing} caption(s) of {pairs}, e.g. caption_id(s) "
            f"{caption_ids[~present][:3].tolist()}, and records {recorded} as skipped; rebuild it from this "
            "caption table"
        )
    n_images = len(cache.meta.get("skipped_images") or [])
    log.warning("the teacher skipped %d unreadable image(s) and their %d caption(s) (--skip-bad-images): "
                "training on %d of %d image-caption pairs", n_images, missing, len(caption_ids) - missing,
                len(caption_ids))
    return [c for c, keep in zip(captions, present) if keep], caption_ids[present], missing


def data_info(inputs: Inputs) -> dict[str, Any]:
    """What identifies the training data (part of the checkpoint fingerprint and of run_meta.json)."""
    info: dict[str, Any] = {"text_rows": len(inputs.texts)}
    if inputs.captions is not None:
        info["pair_rows"] = len(inputs.captions)
    if inputs.teacher is not None:
        info.update(teacher_dim=inputs.teacher.dim, teacher_content_sha256=inputs.teacher.meta.get("content_sha256"))
        if inputs.teacher.meta.get("kind", "clip") != "clip":  # only then: other fingerprints stay as they were
            info["teacher_kind"] = inputs.teacher.meta["kind"]
        if inputs.pairs_skipped:  # only when non-zero, so the fingerprints of other runs stay as they were
            info["pairs_skipped"] = inputs.pairs_skipped
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
        if cache is None:  # SimCSE over caption text: no teacher rows to map
            return data
        order = np.argsort(cache.caption_ids, kind="stable")
        pos = np.searchsorted(cache.caption_ids, inputs.caption_ids, sorter=order)
        pos = np.minimum(pos, len(order) - 1)
        rows = order[pos]
        found = cache.caption_ids[rows] == inputs.caption_ids
        if not found.all():  # check_inputs has refused this already; kept as a guard for direct callers
            missing = inputs.caption_ids[~found][:3].tolist()
            raise KdmcseError(f"teacher cache {cache.path} has no embedding for caption_id(s) {missing}; "
                              "rebuild it from this caption table")
        data.image_emb, data.caption_emb = cache.image_emb, cache.caption_emb
        data.pair_caption_row = rows
        data.pair_image_row = cache.caption_image_row[rows]
    return data
