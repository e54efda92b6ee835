"""Write report tables: LaTeX (booktabs, std under the mean, best in bold, n where short), the CSV beside it and
an HTML rendering for the Snakemake report (`kdmcse.report.html_table`).

Every file is written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from kdmcse.io import atomic_path
from kdmcse.report.html_table import render_frame_html, render_html
from kdmcse.report.significance import PairedTest
from kdmcse.report.tables import CellStat, Table

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "−": r"$-$", "Δ": r"$\Delta$", "×": r"$\times$", "≥": r"$\geq$", "–": "--", "§": r"\S{}",
    "<": r"$<$", ">": r"$>$",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def format_stat(stat: CellStat, expected_n: int, bold: bool = False) -> str:
    """Mean (bold if best) with n where short; the std goes under it, small, so 8 columns fit a page."""
    if stat.n == 0:
        return "--"
    text = f"{stat.mean:.2f}"
    if bold:
        text = rf"\textbf{{{text}}}"
    if stat.n < expected_n:
        text += rf"$^{{n={stat.n}}}$"
    if stat.n >= 2:
        text = rf"\begin{{tabular}}[c]{{@{{}}c@{{}}}}{text}\\[-2pt]{{\scriptsize$\pm${stat.std:.2f}}}\end{{tabular}}"
    return text


def _format_plain(value: float, signed: bool) -> str:
    if not math.isfinite(value):
        return "--"
    if signed:
        return f"{value:+.2f}".replace("-", "$-$")
    # reported numbers keep their published precision (1 or 2 decimals)
    return f"{value:.1f}" if round(value, 1) == value else f"{value:.2f}"


def render_tex(table: Table) -> str:
    ncols = len(table.lead_headers) + len(table.columns)
    best = table.best()
    lines = [
        f"% {table.name}.tex, written by `python -m kdmcse report` from metrics JSON files; do not edit.",
        r"% Needs \usepackage{booktabs} in the preamble; use it with \input{" + table.name + "}.",
        r"\begin{table}[htbp]",
        r"\centering",
        r"\footnotesize",
        r"\setlength{\tabcolsep}{3pt}",
        rf"\caption{{{latex_escape(table.caption)}}}",
        rf"\label{{{table.label}}}",
        r"\begin{tabular}{" + "l" * len(table.lead_headers) + "c" * len(table.columns) + "}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in [*table.lead_headers, *table.columns]) + r" \\",
        r"\midrule",
    ]
    for i, row in enumerate(table.rows):
        if row.kind == "header":
            if i > 0:
                lines.append(r"\midrule")
            lines.append(rf"\multicolumn{{{ncols}}}{{l}}{{\textit{{{latex_escape(row.lead[0])}}}}} \\")
        elif row.kind == "empty":
            lines.append(rf"\multicolumn{{{ncols}}}{{c}}{{{latex_escape(row.lead[0])}}} \\")
        elif row.kind == "ours":
            cells = [latex_escape(t) for t in row.lead]
            for col in table.columns:
                st = row.stats[col]
                is_best = st.n > 0 and math.isfinite(best[col]) and round(st.mean, 2) == best[col]
                cells.append(format_stat(st, table.expected_n, bold=is_best))
            lines.append(" & ".join(cells) + r" \\")
        else:
            signed = row.kind == "diff"
            cells = [r"\quad\textit{" + latex_escape(row.lead[0]) + "}", *map(latex_escape, row.lead[1:])]
            cells += [_format_plain(row.values[c], signed) for c in table.columns]
            lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.notes:
        lines += [r"\par\smallskip", r"\begin{minipage}{\linewidth}\scriptsize"]
        lines += [latex_escape(n) + r"\par" for n in table.notes]
        lines.append(r"\end{minipage}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def table_frame(table: Table) -> pd.DataFrame:
    """The CSV form: identity columns, then <col>_mean, <col>_std, <col>_n per metric column."""
    records = []
    for row in table.rows:
        if row.kind in ("header", "empty"):
            continue
        rec = dict(row.fields)
        for col in table.columns:
            if row.kind == "ours":
                st = row.stats[col]
                rec.update({f"{col}_mean": st.mean, f"{col}_std": st.std, f"{col}_n": st.n})
            else:
                rec.update({f"{col}_mean": row.values[col], f"{col}_std": math.nan, f"{col}_n": pd.NA})
        records.append(rec)
    metric_cols = [f"{c}_{s}" for c in table.columns for s in ("mean", "std", "n")]
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return pd.DataFrame(columns=["kind", *metric_cols])
    lead = [c for c in frame.columns if c not in metric_cols]
    return frame[lead + metric_cols]


def significance_frame(tests: list[tuple[dict[str, Any], PairedTest]]) -> pd.DataFrame:
    cols = ["dataset", "backbone", "treatment", "baseline", "metric", "n", "seeds", "mean_diff", "t_stat",
            "t_p", "wilcoxon_p", "note"]
    rows = [
        {**info, "metric": "STS Avg", "n": t.n, "seeds": " ".join(map(str, t.seeds)), "mean_diff": t.mean_diff,
         "t_stat": t.t_stat, "t_p": t.t_p, "wilcoxon_p": t.wilcoxon_p, "note": t.note}
        for info, t in tests
    ]
    return pd.DataFrame(rows, columns=cols)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path, suffix=path.suffix + ".tmp") as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_frame(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path, suffix=".csv.tmp") as tmp:
        frame.to_csv(tmp, index=False)


def write_table(table: Table, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    tex, csv, page = (out_dir / f"{table.name}.{ext}" for ext in ("tex", "csv", "html"))
    write_text(tex, render_tex(table))
    write_frame(csv, table_frame(table))
    write_text(page, render_html(table))
    return [tex, csv, page]


def write_frame_with_html(path: Path, frame: pd.DataFrame, title: str) -> list[Path]:
    """A CSV and its HTML rendering beside it (same stem)."""
    page = Path(path).with_suffix(".html")
    write_frame(path, frame)
    write_text(page, render_frame_html(frame, title))
    return [Path(path), page]
