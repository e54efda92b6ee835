"""`python -m kdmcse report curves`: the training curves of one grid cell, its seeds overlaid.

Reads the `curves.csv` files the train stage writes beside each student (`kdmcse.train.curves`): one panel per
value found there (loss parts, learning rate, gradient norm, mask rates, STS-B dev), so a value a later version
of the training loop reports gets its panel without a change here. Per-step values are noisy at batch size 64:
each seed is drawn as a faint raw line under its moving average. Values that only paired steps report (the
image-caption losses, mask rates) are plotted over the paired steps alone.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from kdmcse.errors import KdmcseError
from kdmcse.report.plots import PlotResult, _new_figure, _title, save_figure

log = logging.getLogger(__name__)

KNOWN = {  # panel titles of the values the loop reports today; any other column is titled by its name
    "total": "loss (total)", "intra": "loss: sentence-sentence (intra)",
    "image": "loss: sentence vs. image", "text": "loss: sentence vs. teacher text", "lr": "learning rate",
    "grad_norm": "gradient norm (before clipping)",
    "stsb_dev": "STS-B dev Spearman ×100",
}
NOT_PLOTTED = {"step", "paired"}
SMOOTH_POINTS = 60  # the moving average spans about 1/60 of the run


def read_curves(path: Path) -> pd.DataFrame:
    """A `curves.csv`, checked: a `step` column and at least one value column."""
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise KdmcseError(f"{path}: cannot read the training curves ({e}); retrain the student or delete the file "
                          "to have it written again") from e
    if "step" not in frame.columns or len(frame.columns) < 2:
        raise KdmcseError(f"{path}: not a curves.csv (no 'step' column or no values); it is written by "
                          "`python -m kdmcse train` beside the model")
    return frame


def _panels(frames: dict[str, pd.DataFrame]) -> list[str]:
    seen: list[str] = []
    for frame in frames.values():
        seen += [c for c in frame.columns if c not in NOT_PLOTTED and c not in seen]
    known = [c for c in KNOWN if c in seen and c != "stsb_dev"]
    return known + sorted(set(seen) - set(KNOWN)) + ["stsb_dev"] * ("stsb_dev" in seen)


def plot_curves(frames: dict[str, pd.DataFrame], title: str) -> PlotResult:
    """One panel per value, one colour per seed (`frames`: seed label -> curves)."""
    if not frames:
        raise KdmcseError("report curves: no curves.csv given")
    names = _panels(frames)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig: Figure = _new_figure((4.2 * cols, 2.8 * rows + 0.6))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    colours = [f"C{i % 10}" for i in range(len(frames))]
    points = []
    for ax, name in zip(axes, names):
        for colour, (seed, frame) in zip(colours, frames.items()):
            if name not in frame.columns:
                continue
            series = frame[["step", name]].dropna()
            if series.empty:
                continue
            x, y = series["step"].to_numpy(), series[name].to_numpy(dtype=float)
            if name == "stsb_dev":  # a few evaluations: points joined by lines
                ax.plot(x, y, marker="o", ms=3, color=colour, label=seed)
            else:
                window = max(1, len(y) // SMOOTH_POINTS)
                ax.plot(x, y, color=colour, alpha=0.25 if window > 1 else 1.0, lw=0.6,
                        label=seed if window == 1 else None)
                if window > 1:
                    smooth = pd.Series(y).rolling(window, min_periods=1).mean().to_numpy()
                    ax.plot(x, smooth, color=colour, lw=1.2, label=seed)
            points.append({"value": name, "seed": seed, "points": len(y), "last": float(y[-1])})
        ax.set_title(KNOWN.get(name, name), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if name == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in axes[len(names):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper right", fontsize=8, ncols=len(frames), title="seed",
               title_fontsize=8)
    fig.suptitle(_title(f"Training curves: {title}", ""), fontsize=10)
    return PlotResult(fig, pd.DataFrame(points))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdmcse report curves", description=__doc__.splitlines()[0])
    p.add_argument("--curves", nargs="+", required=True, metavar="SEED=CSV",
                   help="the curves.csv of each seed of the cell, labelled by its seed")
    p.add_argument("--title", required=True, help="the cell, for the figure's title")
    p.add_argument("--plot", required=True, type=Path, metavar="STEM", help="writes STEM.png and STEM.pdf")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    frames = {}
    for item in args.curves:
        seed, sep, path = item.partition("=")
        if not sep or not path:
            raise KdmcseError(f"--curves {item!r}: expected SEED=PATH (e.g. 0=results/students/…/curves.csv)")
        frames[seed] = read_curves(Path(path))
    result = plot_curves(frames, args.title)
    for path in save_figure(result.figure, args.plot):
        log.info("wrote %s", path)
    return 0
