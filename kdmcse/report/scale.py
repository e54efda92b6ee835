"""The scale experiment: one student configuration trained on caption sets of growing size (table + plot).

    python -m kdmcse report scale --metrics FILE… --corpus DATASET=CAPTIONS_PARQUET… --tables DIR --plots DIR
           [--caption-note TEXT]

Rows are the datasets in order of their number of image–caption pairs (read from each dataset's caption
table), with STS12–16, STS-B, SICK-R and Avg as mean ± std over seeds like the main table. The plot shows STS
Avg against the number of pairs on a log axis. Writes `scale.tex`, `scale.csv`, `scale.pdf`, `scale.png`.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kdmcse.errors import KdmcseError
from kdmcse.evaluate.metrics_io import STS_COLUMNS, MetricsRecord, read_metrics_group, sts_scope, sts_scope_note
from kdmcse.report.plots import PlotResult, _new_figure, _no_data, _std, _title, save_figure, sts_avg_label
from kdmcse.report.render import write_table
from kdmcse.report.tables import (
    BACKBONE_NAMES,
    OBJECTIVE_NAMES,
    Row,
    Table,
    _cell_fields,
    _convention_notes,
    _empty_table,
    _with_note,
    aggregate,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CorpusSize:
    pairs: int  # caption rows = image–caption pairs
    images: int


def corpus_size(path: Path) -> CorpusSize:
    """Pairs and distinct images of a caption table (reads only its image_id column)."""
    try:
        ids = pq.read_table(path, columns=["image_id"]).column("image_id")
    except (OSError, pa.ArrowException, KeyError) as exc:
        raise KdmcseError(f"caption table {path} is unreadable or has no image_id column ({exc}); "
                          "rebuild it with `python -m kdmcse prepare captions`") from exc
    return CorpusSize(pairs=len(ids), images=int(pc.count_distinct(ids).as_py()))


def parse_corpora(items: list[str]) -> dict[str, CorpusSize]:
    """`DATASET=PARQUET` pairs -> sizes; every caption table is read before anything is written."""
    sizes = {}
    for item in items:
        dataset, sep, path = item.partition("=")
        if not sep or not dataset or not path:
            raise KdmcseError(f"--corpus {item!r}: expected DATASET=CAPTIONS_PARQUET, e.g. wiki+flickr=results/"
                              "corpora/captions_flickr.parquet")
        sizes[dataset] = corpus_size(Path(path))
    return sizes


def build_scale_table(records: list[MetricsRecord], sizes: dict[str, CorpusSize], note: str = "") -> Table:
    caption = _with_note("Scale: STS results (Spearman ×100) of one student configuration trained on Wikipedia plus "
                         "image–caption sets of growing size.", note)
    lead = ["Data", "Pairs", "Images"]
    if not records:
        return _empty_table("scale", caption, "tab:scale", lead, STS_COLUMNS, "the scale table")
    configs = aggregate(records, "sts", STS_COLUMNS)
    unknown = sorted({str(c.cell.get("dataset")) for c in configs} - set(sizes))
    if unknown:
        raise KdmcseError(f"scale table: no --corpus DATASET=CAPTIONS_PARQUET for dataset(s) {', '.join(unknown)}")
    configs.sort(key=lambda c: (sizes[str(c.cell["dataset"])].pairs, str(c.cell["dataset"])))
    expected_n = len({s for c in configs for s in c.seeds})
    rows = []
    for cfg in configs:
        size = sizes[str(cfg.cell["dataset"])]
        fields = {"kind": "ours", **_cell_fields(cfg.cell), "pairs": size.pairs, "images": size.images,
                  "seeds": " ".join(map(str, cfg.seeds))}
        rows.append(Row("ours", [str(cfg.cell["dataset"]), f"{size.pairs:,}", f"{size.images:,}"], fields,
                        stats=cfg.stats))
    first = configs[0].cell
    setting = (f"{OBJECTIVE_NAMES.get(str(first.get('objective')), first.get('objective'))} "
               f"{BACKBONE_NAMES.get(str(first.get('backbone')), first.get('backbone'))}, margin "
               f"{first.get('margin')}, threshold {first.get('threshold')}")
    notes = [f"Every row: {setting}; Pairs/Images: rows and distinct images of the dataset's caption table."]
    scope = sts_scope(records)
    notes += _convention_notes(configs, STS_COLUMNS, expected_n, scope)
    if scope:
        notes.append(sts_scope_note(scope))
    return Table("scale", caption, "tab:scale", lead, STS_COLUMNS, rows, notes, expected_n)


def plot_scale(records: list[MetricsRecord], sizes: dict[str, CorpusSize], note: str = "") -> PlotResult:
    """STS Avg against the number of image–caption pairs (log axis), mean ± std over seeds."""
    fig = _new_figure((6.4, 4.2))
    ax = fig.add_subplot()
    ax.set_title(_title("STS Avg against the number of image–caption pairs (error bars: std over seeds).", note),
                 fontsize=9)
    cols = ["dataset", "pairs", "mean", "std", "n"]
    points = []
    for cfg in aggregate(records, "sts", STS_COLUMNS) if records else []:
        finite = [v for v in cfg.per_seed["Avg"].values() if math.isfinite(v)]
        dataset = str(cfg.cell.get("dataset"))
        if finite and dataset in sizes:
            points.append({"dataset": dataset, "pairs": sizes[dataset].pairs, "mean": float(np.mean(finite)),
                           "std": _std(finite), "n": len(finite)})
    frame = pd.DataFrame(points, columns=cols).sort_values("pairs", ignore_index=True)
    if frame.empty:
        _no_data(ax, "no scale metrics with a finite STS Avg")
        return PlotResult(fig, frame)
    ax.errorbar(frame["pairs"], frame["mean"], yerr=frame["std"].fillna(0), marker="o", capsize=3, color="C0")
    for _, row in frame.iterrows():
        ax.annotate(f"{row['dataset']} (n={row['n']})", (row["pairs"], row["mean"]), textcoords="offset points",
                    xytext=(4, 6), fontsize=7, in_layout=False)
    ax.set_xscale("log")
    ax.set_xlabel("image–caption pairs (log scale)")
    ax.set_ylabel(sts_avg_label(records))
    ax.margins(x=0.25, y=0.2)
    return PlotResult(fig, frame)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdmcse report scale", description=__doc__.splitlines()[0])
    p.add_argument("--metrics", nargs="*", default=[], metavar="FILE", help="STS metrics JSON files of the students")
    p.add_argument("--corpus", nargs="*", default=[], metavar="DATASET=PARQUET",
                   help="each dataset's caption table, for its number of pairs")
    p.add_argument("--tables", required=True, type=Path, metavar="DIR")
    p.add_argument("--plots", required=True, type=Path, metavar="DIR")
    p.add_argument("--caption-note", default="", metavar="TEXT")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    note = args.caption_note.strip()
    records = read_metrics_group(args.metrics, require="sts")
    sizes = parse_corpora(args.corpus)
    table = build_scale_table(records, sizes, note)
    plot = plot_scale(records, sizes, note)
    written = write_table(table, args.tables) + save_figure(plot.figure, args.plots / "scale")
    for path in written:
        log.info("wrote %s", path)
    return 0
