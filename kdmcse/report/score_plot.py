"""`python -m kdmcse report scores`: the histogram of the scores the threshold mask compares, with every
configured threshold marked where it falls and the share of negatives it would mask.

    python -m kdmcse report scores --stats results/teacher/<name>/<teacher>/scores/batch~64.json
           --space cosine [--threshold q0.99 0.9 …] --out-stem results/teacher/<name>/<teacher>/scores/batch~64
           [--caption-note TEXT]

One panel per term (sentence→image masked by T·Iᵀ, sentence→CLIP-text by I·Tᵀ): the in-batch negatives and the
positives (the diagonal, never masked) on a log count axis, so the upper tail where thresholds sit is visible.
A threshold whose expected mask rate is below 0.1 % or above 50 % is drawn in red and logged as a warning.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from kdmcse.errors import KdmcseError
from kdmcse.grid import is_quantile, parse_threshold, quantile_level, threshold_label
from kdmcse.report.plots import PlotResult, _new_figure, _title, save_figure
from kdmcse.teacher.scores import (
    TERMS,
    expected_mask_rate,
    format_rate,
    quantile_score,
    rate_is_suspect,
    read_score_stats,
)

log = logging.getLogger(__name__)

TERM_TITLES = {"image": "image term: caption i vs image j (T·Iᵀ)", "text": "text term: image of i vs caption j (I·Tᵀ)"}


def threshold_points(stats: dict, space: str, thresholds: list[float | str]) -> pd.DataFrame:
    """One row per threshold and term: its score in `space` and the expected share of negatives above it."""
    rows = []
    for t in thresholds:
        value = quantile_score(stats, space, quantile_level(t)) if is_quantile(t) else float(t)
        for term in TERMS:
            rate = expected_mask_rate(stats, space, value, term)
            rows.append({"threshold": threshold_label(t), "term": term, "value": value, "mask_rate": rate,
                         "suspect": rate_is_suspect(rate)})
    return pd.DataFrame(rows, columns=["threshold", "term", "value", "mask_rate", "suspect"])


def plot_scores(stats: dict, space: str, thresholds: list[float | str], note: str = "") -> PlotResult:
    """The figure and the table of what it marks (module doc)."""
    if space not in stats["spaces"]:
        raise KdmcseError(f"score statistics {stats.get('cache')} have no {space!r} space")
    points = threshold_points(stats, space, thresholds)
    fig = _new_figure((10.0, 4.2))
    teacher = stats.get("teacher") or {}
    random_note = " RANDOM-INIT TEACHER." if teacher.get("random_init") else ""
    fig.suptitle(_title(f"Teacher {space} scores of in-batch pairs, batch {stats['batch_size']} "
                        f"({teacher.get('model')}/{teacher.get('pretrained')}, {stats['batches']} sampled batches)."
                        f"{random_note}", note), fontsize=9)
    for i, term in enumerate(TERMS):
        ax = fig.add_subplot(1, 2, i + 1)
        entry = stats["spaces"][space][term]
        for what, colour in (("negatives", "C0"), ("positives", "C2")):
            hist = entry[what]["histogram"]
            edges, counts = np.asarray(hist["edges"]), np.asarray(hist["counts"])
            # baseline below 1 on the log axis: empty bins stay empty instead of reaching to -inf
            ax.stairs(counts, edges, baseline=0.5, color=colour, fill=True, alpha=0.35,
                      label=f"{what} (n={entry[what]['n']:,}, mean {entry[what]['mean']:.3g})")
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.5)
        ax.set_title(TERM_TITLES[term], fontsize=8)
        ax.set_xlabel(f"teacher score ({space})")
        ax.set_ylabel("pairs (log scale)")
        for k, row in enumerate(points[points["term"] == term].itertuples()):
            colour = "red" if row.suspect else "black"
            ax.axvline(row.value, color=colour, linestyle="--", linewidth=1)
            ax.annotate(f"{row.threshold}: {row.value:.3g}\nmasks {format_rate(row.mask_rate)}", (row.value, 1.0),
                        xycoords=("data", "axes fraction"), xytext=(3, -12 - 22 * k), textcoords="offset points",
                        fontsize=7, color=colour, va="top")
        ax.legend(fontsize=7, loc="upper left")
    return PlotResult(fig, points)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdmcse report scores", description=__doc__.splitlines()[0])
    p.add_argument("--stats", required=True, help="score statistics JSON (`python -m kdmcse teacher scores`)")
    p.add_argument("--space", required=True, choices=["cosine", "raw_dot"], help="the space thresholds compare in")
    p.add_argument("--threshold", nargs="*", default=[], help="configured thresholds: numbers or quantiles (q0.99)")
    p.add_argument("--out-stem", required=True, type=Path, help="writes <stem>.pdf and <stem>.png")
    p.add_argument("--caption-note", default="", help="appended to the title")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stats = read_score_stats(args.stats)
    try:
        thresholds = [parse_threshold(t) for t in args.threshold if t != "off"]
    except ValueError as exc:
        raise KdmcseError(f"--threshold: {exc}; give numbers or quantiles such as q0.99") from exc
    result = plot_scores(stats, args.space, thresholds, args.caption_note.strip())
    for row in result.points.itertuples():
        line = (f"threshold {row.threshold} ({args.space} score {row.value:.6g}): {row.term} term masks "
                f"{format_rate(row.mask_rate)} of the in-batch negatives of {args.stats}")
        if row.suspect:
            log.warning("WARNING: %s (outside 0.1 %%-50 %%)", line)
        else:
            log.info("%s", line)
    for path in save_figure(result.figure, args.out_stem):
        log.info("wrote %s", path)
    return 0
