"""Score statistics of a teacher cache: the distribution of exactly the scores the threshold mask compares.

    python -m kdmcse teacher scores --cache results/teacher/<name>/<teacher> --batch-size 64
           --out results/teacher/<name>/<teacher>/scores/batch~64.json [--batches 200] [--seed 0]

The threshold mask (method.md §1.5, §3.3) compares, for every in-batch pair (caption i, image j) with i ≠ j, a
cross-modal teacher score with the threshold: cv = T·Iᵀ masks the sentence→image term and vc = I·Tᵀ the
sentence→CLIP-text term, in `raw_dot` (the released code: unnormalised features) or `cosine` space. Which share
of negatives a threshold drops depends on the teacher, the space and the data (CLIP's image–text cosines sit
around 0.2–0.4, so a cosine of 0.9 drops about nothing), so the pipeline measures it: batches of the run's size
are drawn at random, like the training loader's, and every off-diagonal score (negative) and diagonal score
(positive) is kept. The JSON holds, per space and term, the mean, spread, a fine quantile grid and a histogram of
negatives and positives, and the share of positives above the negatives' main quantiles.

A threshold "q0.99" is resolved from these statistics to the score of the 0.99 quantile of the negatives (it
masks the top 1 %), and any threshold's expected mask rate is read off the same grid (`expected_mask_rate`).
The off-diagonal entries of vc are those of cv transposed, so both terms share one distribution (and one mask
rate per batch); both are kept, so that a reader need not take that on trust.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kdmcse.errors import KdmcseError
from kdmcse.io import read_json, write_json
from kdmcse.teacher.cache import open_teacher_cache

log = logging.getLogger(__name__)

FORMAT = "kdmcse-score-stats"
FORMAT_VERSION = 1
SPACES = ("cosine", "raw_dot")
TERMS = ("image", "text")  # image: cv = T·Iᵀ (rows captions, columns images); text: vc = I·Tᵀ
# Quantile levels kept for every distribution: a 0.1 % grid, finer in the upper tail where thresholds sit.
LEVELS = tuple(
    [round(i / 1000, 3) for i in range(1000)]
    + [round(0.999 + i / 10000, 4) for i in range(1, 10)]
    + [round(0.9999 + i / 100000, 5) for i in range(1, 10)]
    + [1.0]
)
SUMMARY_LEVELS = (0.5, 0.9, 0.95, 0.99, 0.995, 0.999)  # the quantiles shown in logs and `positives_above`
HISTOGRAM_BINS = 120
# Expected mask rates outside this range make a threshold suspect: it drops (almost) nothing, or most negatives.
RATE_LOW, RATE_HIGH = 0.001, 0.5


def cross_modal_scores(image_emb: torch.Tensor, text_emb: torch.Tensor, space: str = "raw_dot") -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's cross-modal score matrices that the threshold mask is computed from.

    Returns (cv, vc): cv = T·Iᵀ (row caption i, column image j) masks the image term, vc = I·Tᵀ masks the
    text term. `raw_dot` uses the unnormalised features as the published code does; `cosine` normalises first.
    """
    if space == "raw_dot":
        img, txt = image_emb, text_emb
    elif space == "cosine":
        img, txt = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)
    else:
        raise KdmcseError(f"threshold_space must be 'raw_dot' or 'cosine', got {space!r}")
    img, txt = img.detach().float(), txt.detach().float()
    return txt @ img.T, img @ txt.T


def sample_batches(n_rows: int, batch_size: int, batches: int, seed: int) -> list[np.ndarray]:
    """`batches` random batches of distinct rows (all rows when there are fewer than `batch_size`)."""
    rng = np.random.default_rng([seed, n_rows, batch_size])
    size = min(batch_size, n_rows)
    return [rng.choice(n_rows, size=size, replace=False) for _ in range(batches)]


def _distribution(values: np.ndarray, edges: np.ndarray) -> dict[str, Any]:
    values = values.astype(np.float64)
    counts, _ = np.histogram(values, bins=edges)
    return {
        "n": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "quantiles": [float(v) for v in np.quantile(values, LEVELS)],
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }


def score_statistics(cache_dir: str | os.PathLike[str], *, batch_size: int, batches: int = 200,
                     seed: int = 0) -> dict[str, Any]:
    """Sample in-batch negatives and positives of the cache at `batch_size` and summarise them (module doc)."""
    if batch_size < 2 or batches < 1:
        raise KdmcseError(f"score statistics need --batch-size >= 2 and --batches >= 1, got {batch_size}, {batches}")
    cache = open_teacher_cache(cache_dir)
    if cache.caption_emb is None:
        raise KdmcseError(f"cache {cache.path} holds image features only (no caption embeddings): the threshold "
                          "mask compares image and caption embeddings of a CLIP teacher cache")
    n = len(cache.caption_ids)
    if n < 2:
        raise KdmcseError(f"cache {cache.path} has {n} caption(s); in-batch negatives need at least 2")
    rows = sample_batches(n, batch_size, batches, seed)
    neg: dict[tuple[str, str], list[np.ndarray]] = {(s, t): [] for s in SPACES for t in TERMS}
    pos: dict[tuple[str, str], list[np.ndarray]] = {(s, t): [] for s in SPACES for t in TERMS}
    for batch in rows:
        img = torch.from_numpy(np.asarray(cache.image_emb[cache.caption_image_row[batch]], dtype=np.float32))
        txt = torch.from_numpy(np.asarray(cache.caption_emb[batch], dtype=np.float32))
        off = ~torch.eye(len(batch), dtype=torch.bool)
        for space in SPACES:
            for term, scores in zip(TERMS, cross_modal_scores(img, txt, space)):
                neg[space, term].append(scores[off].numpy())
                pos[space, term].append(torch.diagonal(scores).numpy())
    spaces: dict[str, Any] = {}
    for space in SPACES:
        spaces[space] = {}
        for term in TERMS:
            negatives, positives = np.concatenate(neg[space, term]), np.concatenate(pos[space, term])
            lo, hi = float(min(negatives.min(), positives.min())), float(max(negatives.max(), positives.max()))
            edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, HISTOGRAM_BINS + 1)
            entry = {"negatives": _distribution(negatives, edges), "positives": _distribution(positives, edges)}
            entry["positives_above"] = {
                f"{q:g}": float((positives > np.quantile(negatives, q)).mean()) for q in SUMMARY_LEVELS
            }
            spaces[space][term] = entry
    meta = cache.meta
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "cache": str(cache.path), "content_sha256": meta.get("content_sha256"),
        "teacher": {k: meta.get(k) for k in ("model", "pretrained", "random_init")},
        "n_captions": n, "batch_size": int(batch_size), "batches": int(batches), "seed": int(seed),
        "levels": list(LEVELS), "summary_levels": list(SUMMARY_LEVELS), "spaces": spaces,
    }


def read_score_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a score-statistics file, checking it is one."""
    path = Path(path)
    if not path.is_file():
        raise KdmcseError(f"score statistics {path} do not exist; write them with `python -m kdmcse teacher scores`")
    try:
        stats = read_json(path)
    except ValueError as exc:
        raise KdmcseError(f"score statistics {path} are not valid JSON ({exc}); rewrite them") from exc
    if not isinstance(stats, dict) or stats.get("format") != FORMAT or stats.get("format_version") != FORMAT_VERSION:
        raise KdmcseError(f"{path} is not a score-statistics file of this version ({FORMAT} v{FORMAT_VERSION}); "
                          "rewrite it with `python -m kdmcse teacher scores`")
    return stats


def _distribution_of(stats: dict[str, Any], space: str, term: str) -> dict[str, Any]:
    if space not in stats["spaces"] or term not in stats["spaces"][space]:
        raise KdmcseError(f"score statistics of {stats.get('cache')} have no {space}/{term} distribution")
    return stats["spaces"][space][term]["negatives"]


def quantile_score(stats: dict[str, Any], space: str, level: float, term: str = "image") -> float:
    """The score of quantile `level` of the negatives (linear between the kept levels)."""
    if not 0.0 <= level <= 1.0:
        raise KdmcseError(f"quantile level {level} is outside [0, 1]")
    return float(np.interp(level, stats["levels"], _distribution_of(stats, space, term)["quantiles"]))


def expected_mask_rate(stats: dict[str, Any], space: str, threshold: float, term: str = "image") -> float:
    """Share of sampled negatives whose score exceeds `threshold` (read off the quantile grid)."""
    dist = _distribution_of(stats, space, term)
    values, levels = np.asarray(dist["quantiles"]), np.asarray(stats["levels"])
    if threshold >= values[-1]:
        return 0.0
    if threshold < values[0]:
        return 1.0
    # the largest level whose score is still <= threshold, interpolated within its step of the grid
    i = int(np.searchsorted(values, threshold, side="right"))  # values[i-1] <= threshold < values[i]
    lo, hi = values[i - 1], values[i]
    frac = 0.0 if hi <= lo else (threshold - lo) / (hi - lo)
    return float(1.0 - (levels[i - 1] + frac * (levels[i] - levels[i - 1])))


def rate_is_suspect(rate: float) -> bool:
    return rate < RATE_LOW or rate > RATE_HIGH


def format_rate(rate: float) -> str:
    return f"{100 * rate:.3g} %" if rate >= 1e-4 or rate == 0 else f"{100 * rate:.2g} %"


def summary_lines(stats: dict[str, Any]) -> list[str]:
    """One readable line per space and term (logged by the command)."""
    lines = []
    for space in SPACES:
        for term in TERMS:
            entry = stats["spaces"][space][term]
            neg, pos = entry["negatives"], entry["positives"]
            qs = ", ".join(f"q{q:g}={quantile_score(stats, space, q, term):.4g}" for q in SUMMARY_LEVELS)
            lines.append(f"{space}/{term}: negatives n={neg['n']} mean={neg['mean']:.4g} ({qs}); positives "
                         f"mean={pos['mean']:.4g}, above q0.99 of the negatives: "
                         f"{format_rate(entry['positives_above']['0.99'])}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdmcse teacher scores", description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", required=True, help="teacher cache folder (images.parquet, captions.parquet, …)")
    p.add_argument("--batch-size", required=True, type=int, help="the training batch size (in-batch negatives)")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--batches", type=int, default=200, help="random batches to sample (default 200)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stats = score_statistics(args.cache, batch_size=args.batch_size, batches=args.batches, seed=args.seed)
    if stats["teacher"].get("random_init"):
        log.warning("the cache's teacher has RANDOM weights: these statistics describe no real teacher")
    for line in summary_lines(stats):
        log.info("%s", line)
    write_json(args.out, stats)
    log.info("wrote %s (%d batches of %d)", args.out, args.batches, stats["batch_size"])
    return 0


__all__ = ["cross_modal_scores", "expected_mask_rate", "quantile_score", "read_score_stats", "score_statistics"]
