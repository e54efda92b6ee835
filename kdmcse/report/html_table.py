"""Report tables as HTML, for `snakemake --report`: the same rows as the LaTeX table, shown as a table.

Snakemake's report shows an HTML file inline and offers every other text file (a CSV, a .tex) only as a
download, so each table gets a small self-contained HTML page beside its .tex and .csv.
"""

from __future__ import annotations

import html
import math

import pandas as pd

from kdmcse.report.tables import CellStat, Table

_STYLE = """<style>
body { font-family: system-ui, sans-serif; font-size: 14px; margin: 1em; }
table { border-collapse: collapse; }
caption { caption-side: top; text-align: left; padding-bottom: .5em; max-width: 60em; }
th, td { padding: .25em .6em; text-align: right; border-bottom: 1px solid #ddd; }
th { border-bottom: 2px solid #555; }
td.lead, th.lead { text-align: left; }
tr.group td { text-align: left; font-style: italic; background: #f4f4f4; }
tr.reported td, tr.diff td { color: #555; font-size: 90%; }
.std { color: #666; font-size: 85%; }
.notes { font-size: 85%; color: #444; max-width: 60em; }
</style>"""


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{html.escape(title)}"
            f"</title>\n{_STYLE}\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _stat_cell(stat: CellStat, expected_n: int, bold: bool) -> str:
    if stat.n == 0:
        return "<td>&ndash;</td>"
    text = f"{stat.mean:.2f}"
    if bold:
        text = f"<b>{text}</b>"
    if stat.n < expected_n:
        text += f"<sup>n={stat.n}</sup>"
    if stat.n >= 2:
        text += f" <span class=\"std\">&plusmn;{stat.std:.2f}</span>"
    return f"<td>{text}</td>"


def _plain_cell(value: float, signed: bool) -> str:
    if not math.isfinite(value):
        return "<td>&ndash;</td>"
    return f"<td>{value:+.2f}</td>" if signed else f"<td>{value:.2f}</td>"


def render_html(table: Table) -> str:
    """The table as an HTML page: caption, header, one row per table row (mean ± std), notes."""
    ncols = len(table.lead_headers) + len(table.columns)
    best = table.best()
    head = "".join(f"<th class=\"lead\">{html.escape(h)}</th>" for h in table.lead_headers)
    head += "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    rows = []
    for row in table.rows:
        if row.kind in ("header", "empty"):
            rows.append(f"<tr class=\"group\"><td colspan=\"{ncols}\">{html.escape(row.lead[0])}</td></tr>")
            continue
        cells = [f"<td class=\"lead\">{html.escape(t)}</td>" for t in row.lead]
        if row.kind == "ours":
            for col in table.columns:
                st = row.stats[col]
                is_best = st.n > 0 and math.isfinite(best[col]) and round(st.mean, 2) == best[col]
                cells.append(_stat_cell(st, table.expected_n, is_best))
        else:
            cells += [_plain_cell(row.values[c], row.kind == "diff") for c in table.columns]
        rows.append(f"<tr class=\"{row.kind}\">{''.join(cells)}</tr>")
    notes = "".join(f"<p>{html.escape(n)}</p>" for n in table.notes)
    body = (f"<table>\n<caption>{html.escape(table.caption)}</caption>\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
            + "\n".join(rows) + "\n</tbody>\n</table>\n" + (f"<div class=\"notes\">{notes}</div>" if notes else ""))
    return _page(table.name, body)


def render_frame_html(frame: pd.DataFrame, title: str, caption: str = "") -> str:
    """A plain data frame (e.g. the significance tests) as an HTML page."""
    table = frame.to_html(index=False, na_rep="–", float_format=lambda v: f"{v:.4g}", border=0, escape=True)
    cap = f"<p class=\"notes\">{html.escape(caption)}</p>\n" if caption else ""
    return _page(title, f"<h3>{html.escape(title)}</h3>\n{cap}{table}")
