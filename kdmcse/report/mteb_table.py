"""`python -m kdmcse report mteb`: the MTEB table (`mteb.tex/.csv/.html`) from `python -m kdmcse mteb` files.

    python -m kdmcse report mteb --metrics FILE… --tables results/tables [--caption-note TEXT]

One row per student configuration (mean over seeds, main score ×100 per task: cosine Spearman for STS), the
number of seeds, and Avg over the tasks every file scored; a task skipped (its data unreachable) shows "--".
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import pandas as pd

from kdmcse.errors import KdmcseError
from kdmcse.io import read_json
from kdmcse.report.html_table import render_frame_html
from kdmcse.report.render import write_frame, write_text

log = logging.getLogger(__name__)

CELL_KEYS = ("dataset", "backbone", "objective", "margin", "threshold")


def read_mteb(path: Path) -> dict:
    if not path.is_file():
        raise KdmcseError(f"MTEB metrics file {path} does not exist; run `python -m kdmcse mteb` for it first")
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("mteb"), dict):
        raise KdmcseError(f"{path} holds no 'mteb' section; is it an output of `python -m kdmcse mteb`?")
    return data


def mteb_frame(records: list[dict]) -> pd.DataFrame:
    tasks: list[str] = []
    for rec in records:
        tasks += [t for t in rec["mteb"] if t not in tasks]
    rows: dict[tuple, dict] = {}
    for rec in records:
        key = tuple(rec["cell"].get(k) for k in CELL_KEYS)
        row = rows.setdefault(key, {**dict(zip(CELL_KEYS, key)), "seeds": 0, **{t: [] for t in tasks}})
        row["seeds"] += 1
        for t in tasks:
            score = rec["mteb"].get(t, {}).get("main_score")
            if score is not None:
                row[t].append(float(score))
    out = []
    for row in rows.values():
        means = {t: (sum(v) / len(v) if v else math.nan) for t, v in ((t, row[t]) for t in tasks)}
        scored = [m for m in means.values() if math.isfinite(m)]
        avg = sum(scored) / len(scored) if scored and len(scored) == len(tasks) else math.nan
        out.append({**{k: row[k] for k in CELL_KEYS}, "seeds": row["seeds"], **means, "Avg": avg})
    return pd.DataFrame(out, columns=[*CELL_KEYS, "seeds", *tasks, "Avg"])


def render_tex(frame: pd.DataFrame, caption: str) -> str:
    body = frame.to_latex(index=False, float_format=lambda v: f"{v:.2f}", na_rep="--", escape=True)
    return ("% mteb.tex, written by `python -m kdmcse report mteb`; do not edit.\n\\begin{table}[htbp]\n\\centering\n"
            f"\\caption{{{caption}}}\n\\label{{tab:mteb}}\n{body}\\end{{table}}\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kdmcse report mteb", description=__doc__.splitlines()[0])
    p.add_argument("--metrics", nargs="*", default=[], type=Path, metavar="FILE")
    p.add_argument("--tables", required=True, type=Path, metavar="DIR")
    p.add_argument("--caption-note", default="", metavar="TEXT")
    args = p.parse_args(argv)
    frame = mteb_frame([read_mteb(path) for path in args.metrics])
    caption = ("MTEB tasks: main score x100 (STS: cosine Spearman), mean over seeds; -- = skipped (data not "
               "reachable); Avg only where every task was scored." + (f" {args.caption_note}" if args.caption_note else ""))
    tables = Path(args.tables)
    write_frame(tables / "mteb.csv", frame)
    write_text(tables / "mteb.tex", render_tex(frame, caption.replace("%", r"\%")))
    write_text(tables / "mteb.html", render_frame_html(frame, "MTEB", caption))
    log.info("wrote %s/mteb.{csv,tex,html}", tables)
    return 0
