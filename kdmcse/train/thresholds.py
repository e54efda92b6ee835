"""The threshold of one run, settled before any model loads: a quantile resolved to a score, the expected mask
rate read off the teacher cache's score statistics, and a loud warning (or, with `threshold_check: error`, a
refusal) when that rate says the threshold drops almost no negative or most of them.

A threshold only means something against the distribution it cuts: CLIP's image–text cosines sit around
0.2–0.4, so a cosine of 0.9 masks about nothing, and raw dot products scale with the teacher's feature norms.
`kdmcse.teacher.scores` measures the distribution; this module applies it to the run config. What training then
really masked is measured per paired step (`mask_rate_image`/`mask_rate_text`, `kdmcse.train.losses`) and its
mean goes to run_meta.json next to what was expected here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kdmcse.errors import KdmcseError
from kdmcse.grid import is_quantile, quantile_level
from kdmcse.teacher.scores import (
    RATE_HIGH,
    RATE_LOW,
    TERMS,
    expected_mask_rate,
    format_rate,
    quantile_score,
    rate_is_suspect,
    read_score_stats,
)

log = logging.getLogger(__name__)

BANNER = "!" * 100


def _check_stats(stats: dict[str, Any], path: Path, cfg: dict[str, Any], cache_meta: dict[str, Any] | None) -> None:
    """The statistics must describe this run's cache at this run's batch size (else the rates mean nothing)."""
    if cache_meta is not None and stats.get("content_sha256") != cache_meta.get("content_sha256"):
        raise KdmcseError(f"score statistics {path} were computed from another teacher cache (content_sha256 "
                          f"{stats.get('content_sha256')!r}, the run's cache has {cache_meta.get('content_sha256')!r}); "
                          "recompute them with `python -m kdmcse teacher scores` for this cache")
    if int(stats.get("batch_size", -1)) != int(cfg["batch_size"]):
        raise KdmcseError(f"score statistics {path} sample batches of {stats.get('batch_size')}, the run trains with "
                          f"batch_size {cfg['batch_size']}; recompute them with --batch-size {cfg['batch_size']}")


def resolve_threshold(cfg: dict[str, Any], stats_path: Path | None, *, cache_meta: dict[str, Any] | None,
                      where: str) -> dict[str, Any] | None:
    """The run's threshold settled (None when it is off), for run_meta.json: configured form, score, space,
    expected mask rate per term; warns loudly or raises (`threshold_check`) on a suspect rate. `where` names the
    cell in messages (its output folder)."""
    configured = cfg["threshold"]
    if configured is None or cfg["objective"] != "kdmcse":
        return None
    space = cfg["threshold_space"]
    stats = None
    if stats_path is not None:
        stats = read_score_stats(stats_path)
        _check_stats(stats, stats_path, cfg, cache_meta)
    if is_quantile(configured):
        if stats is None:
            raise KdmcseError(f"run config threshold {configured!r} is a quantile of the negative scores: pass the "
                              "teacher cache's score statistics (--score-stats FILE, from `python -m kdmcse teacher "
                              "scores`)")
        value = quantile_score(stats, space, quantile_level(configured))
    else:
        value = float(configured)
    plan: dict[str, Any] = {"configured": configured, "space": space, "value": value,
                            "score_stats": str(stats_path) if stats_path is not None else None,
                            "expected_mask_rate": None, "warning": None}
    if stats is None:
        log.warning("threshold %s (%s): no score statistics given (--score-stats), so its mask rate is unknown until "
                    "training measures it", configured, space)
        return plan
    rates = {term: expected_mask_rate(stats, space, value, term) for term in TERMS}
    plan["expected_mask_rate"] = rates
    log.info("threshold %s (%s) = %.6g: expected to mask %s of the in-batch negatives (image term) and %s (text "
             "term), from %s", configured, space, value, format_rate(rates["image"]), format_rate(rates["text"]),
             stats_path)
    suspect = {t: r for t, r in rates.items() if rate_is_suspect(r)}
    if suspect:
        shown = ", ".join(f"{t} term {format_rate(r)}" for t, r in suspect.items())
        kind = "almost no" if max(suspect.values()) < RATE_LOW else "most of the"
        message = (f"cell {where}: threshold {configured} ({space} score {value:.6g}) would mask {shown} of the "
                   f"in-batch negatives ({kind} negatives; expected between {format_rate(RATE_LOW)} and "
                   f"{format_rate(RATE_HIGH)}). See the score statistics {stats_path}; a quantile threshold "
                   "such as q0.99 masks a set share")
        plan["warning"] = message
        if cfg["threshold_check"] == "error":
            raise KdmcseError(message + "; train.threshold_check is error, so this run stops before training")
        log.warning("\n%s\nWARNING: %s\n%s", BANNER, message, BANNER)
    return plan
