"""Report figures: alignment against uniformity, and STS Avg along each ablation axis.

Figures are built on `matplotlib.figure.Figure` directly (Agg canvas, no pyplot): no global state and no
display backend, so the report runs headless and tests can inspect the returned objects.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kdmcse.evaluate.metrics_io import STS_COLUMNS, MetricsRecord, sts_scope
from kdmcse.io import atomic_path
from kdmcse.report.tables import (
    aggregate,
    axis_sort_key,
    display_value,
    format_mask_rate,
    group_by_series,
    mask_summary,
    short_labels,
)


@dataclass
class PlotResult:
    figure: Figure
    points: pd.DataFrame  # one row per plotted point (what the figure shows, for tests and logs)


def _title(text: str, note: str) -> str:
    full = f"{text} {note}".strip() if note else text
    return "\n".join(textwrap.wrap(full, 70))


def _new_figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no data: {what}", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) >= 2 else math.nan


def plot_align_uniform(records: list[MetricsRecord], note: str = "") -> PlotResult:
    """One point per student configuration: mean (align, uniform) over seeds, error bars = std (ddof=1)."""
    points = []
    by_config: dict = {}
    for rec in records:
        if math.isfinite(rec.align) and math.isfinite(rec.uniform):
            by_config.setdefault(rec.config, []).append(rec)
    labels = short_labels([recs[0].cell for recs in by_config.values()])
    for recs, label in zip(by_config.values(), labels):
        aligns, uniforms = [r.align for r in recs], [r.uniform for r in recs]
        points.append({
            "label": label, "n": len(recs),
            "align": float(np.mean(aligns)), "align_std": _std(aligns),
            "uniform": float(np.mean(uniforms)), "uniform_std": _std(uniforms),
        })
    frame = pd.DataFrame(points, columns=["label", "n", "align", "align_std", "uniform", "uniform_std"])
    fig = _new_figure((7.0, 5.0))
    ax = fig.add_subplot()
    ax.set_title(_title("Alignment vs uniformity: lower-left is better (STS test pairs, MCSE per-batch protocol).", note),
                 fontsize=9)
    if frame.empty:
        _no_data(ax, "no metrics file with align_uniform.mcse_batch")
        return PlotResult(fig, frame)
    ax.errorbar(frame["align"], frame["uniform"], xerr=frame["align_std"].fillna(0),
                yerr=frame["uniform_std"].fillna(0), fmt="none", ecolor="0.6", capsize=3, zorder=1)
    colours = [f"C{i % 10}" for i in range(len(frame))]
    ax.scatter(frame["align"], frame["uniform"], c=colours, zorder=2)
    middle = (frame["align"].min() + frame["align"].max()) / 2
    for (_, row), colour in zip(frame.iterrows(), colours):
        right_half = row["align"] > middle  # label towards the centre so it stays inside the axes
        ax.annotate(f"{row['label']} (n={row['n']})", (row["align"], row["uniform"]), textcoords="offset points",
                    xytext=(-5 if right_half else 5, 5), ha="right" if right_half else "left", fontsize=7,
                    color=colour, in_layout=False)
    ax.set_xlabel(r"$\ell_{\mathrm{align}}$ (lower is better)")
    ax.set_ylabel(r"$\ell_{\mathrm{uniform}}$ (lower is better)")
    ax.annotate("better", xy=(0.03, 0.03), xytext=(0.18, 0.18), xycoords="axes fraction",
                textcoords="axes fraction", arrowprops={"arrowstyle": "->"}, fontsize=8)
    ax.margins(x=0.35, y=0.2)  # room for the labels, which are kept out of the layout
    return PlotResult(fig, frame)


def sts_avg_label(records: list[MetricsRecord]) -> str:
    """The y-axis label of an STS Avg plot, naming the tasks when Avg covers fewer than the seven."""
    scope = sts_scope(records)
    return f"STS Avg of {', '.join(scope)} (Spearman ×100)" if scope else "STS Avg (Spearman ×100)"


def plot_ablation(records: list[MetricsRecord], axis: str, note: str = "") -> PlotResult:
    """STS Avg along `axis`: mean with std error bars and a min–max band over seeds, one line per series.

    Along the threshold, each point is labelled with its measured mask rate (share of negatives masked)."""
    fig = _new_figure((6.4, 4.2))
    ax = fig.add_subplot()
    ax.set_title(_title(f"STS Avg against the {axis} (error bars: std over seeds; band: min–max).", note),
                 fontsize=9)
    configs = aggregate(records, "sts", STS_COLUMNS) if records else []
    cols = ["series", axis, "x", "mean", "std", "min", "max", "n"] + (["mask_rate"] if axis == "threshold" else [])
    masks = mask_summary(records) if axis == "threshold" and records else {}
    if not configs:
        _no_data(ax, f"no {axis} ablation metrics")
        return PlotResult(fig, pd.DataFrame(columns=cols))
    values = sorted({c.cell.get(axis) for c in configs}, key=axis_sort_key)
    numeric = all(axis_sort_key(v)[0] == 1 for v in values)
    # Numbers sit at their value; anything with "off" (or text) becomes ordered categories.
    position = {v: (float(v) if numeric else float(i)) for i, v in enumerate(values)}
    points = []
    for i, (series, cfgs) in enumerate(group_by_series(configs, axis).items()):
        rows = []
        for c in cfgs:
            finite = [v for v in c.per_seed["Avg"].values() if math.isfinite(v)]
            if not finite:
                continue
            row = {"series": series, axis: display_value(c.cell.get(axis)), "x": position[c.cell.get(axis)],
                   "mean": float(np.mean(finite)), "std": _std(finite), "min": min(finite),
                   "max": max(finite), "n": len(finite)}
            if masks:
                row["mask_rate"] = masks[c.key]["image"]
                row["mask_label"] = format_mask_rate(masks[c.key]["image"], masks[c.key]["text"])
            rows.append(row)
        if not rows:
            continue
        part = pd.DataFrame(rows)
        colour = f"C{i % 10}"
        ax.errorbar(part["x"], part["mean"], yerr=part["std"].fillna(0), marker="o", capsize=3, color=colour,
                    label=series)
        ax.fill_between(part["x"], part["min"], part["max"], color=colour, alpha=0.15, linewidth=0)
        for row in rows if masks else []:
            ax.annotate(f"mask {row['mask_label']} %", (row["x"], row["mean"]), textcoords="offset points",
                        xytext=(0, 8), ha="center", fontsize=7, color=colour)
        points.extend({k: v for k, v in r.items() if k != "mask_label"} for r in rows)
    ax.set_xlabel({"margin": "margin (rad)",
                   "threshold": "threshold (off = no filtering; label: share of in-batch negatives masked)"}.get(axis, axis))
    ax.set_ylabel(sts_avg_label(records))
    if not numeric:
        ax.set_xticks([position[v] for v in values], [display_value(v) for v in values])
    if points:
        ax.legend(fontsize=7)
    else:
        _no_data(ax, f"every {axis} ablation value is NaN")
    return PlotResult(fig, pd.DataFrame(points, columns=cols))


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write `<stem>.pdf` and `<stem>.png` atomically."""
    out = []
    for fmt in ("pdf", "png"):
        path = Path(f"{stem}.{fmt}")
        with atomic_path(path, suffix=f".{fmt}.tmp") as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, metadata={"CreationDate": None} if fmt == "pdf" else None)
        out.append(path)
    return out
