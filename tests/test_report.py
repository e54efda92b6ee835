"""The report stage: tables, plots and significance built from fixture metrics JSON files."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kdmcse.__main__ import main as cli_main
from kdmcse.errors import KdmcseError
from kdmcse.evaluate.metrics_io import STS_COLUMNS, TRANSFER_COLUMNS, read_metrics_group
from kdmcse.report.cli import main as report_main
from kdmcse.report.paper_results import load_paper_results
from kdmcse.report.plots import plot_ablation, plot_align_uniform
from kdmcse.report.significance import paired_seed_test

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "config" / "paper_results.yaml"
STS_TASKS = ["STS12", "STS13", "STS14", "STS15", "STS16"]


def _metrics_json(cell: dict, sts: dict[str, float] | None, au: tuple[float, float] | None = None,
                  transfer: dict[str, float] | None = None) -> dict:
    """A metrics file in the architecture.md §5 format; `sts` maps table columns to values."""
    out: dict = {"cell": cell, "model": "fixture/model", "pooling": "cls_before_pooler"}
    if sts is not None:
        sec: dict = {t: {"all": sts[t], "wmean": 0.0, "mean": 0.0, "n": 10, "subsets": {}} for t in STS_TASKS}
        sec["STSBenchmark"] = {"spearman": sts["STS-B"], "n": 10}
        sec["SICKRelatedness"] = {"spearman": sts["SICK-R"], "n": 10}
        sec["avg"] = sts["Avg"]
        out["sts"] = sec
        if au is not None:
            out["align_uniform"] = {"mcse_batch": {"avg": {"align": au[0], "uniform": au[1]}},
                                    "stsb_full": {"align": au[0], "uniform": au[1]}}
    if transfer is not None:
        out["transfer"] = {t: {"acc": transfer[t]} for t in TRANSFER_COLUMNS[:-1]}
        out["transfer"]["MRPC"]["f1"] = 80.0
        out["transfer"]["avg"] = transfer["Avg"]
    return out


class Fixture:
    """Writes metrics files and remembers every value so tests can recompute the expected numbers."""

    def __init__(self, root: Path, seed: int = 0):
        self.root = root
        self.rng = np.random.default_rng(seed)
        self.values: dict[tuple, dict] = {}  # (group, config tuple) -> {seed: {col: value}}
        self.au: dict[tuple, dict] = {}
        self.files: dict[str, list[str]] = {"main": [], "margin": [], "threshold": [], "transfer": []}

    def add(self, group: str, base: float, seeds, nan: dict | None = None, au=None, **cell) -> None:
        key = (group, tuple(sorted(cell.items())))
        for s in seeds:
            cols = TRANSFER_COLUMNS if group == "transfer" else STS_COLUMNS
            vals = {c: round(float(base + self.rng.normal(0, 1.0)), 2) for c in cols[:-1]}
            for c in (nan or {}).get(s, []):
                vals[c] = math.nan
            vals["Avg"] = float(np.mean([vals[c] for c in cols[:-1]]))
            self.values.setdefault(key, {})[s] = vals
            a_u = None
            if au is not None:
                a_u = (au[0] + 0.01 * s, au[1] - 0.05 * s)
                self.au.setdefault(key, {})[s] = a_u
            doc = _metrics_json({**cell, "seed": s}, None if group == "transfer" else vals, a_u,
                                vals if group == "transfer" else None)
            path = self.root / group / "_".join(f"{k}-{v}" for k, v in sorted(cell.items())) / f"seed{s}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(doc), encoding="utf-8")  # NaN written as the JSON literal, as evaluate does
            self.files[group].append(str(path))

    def series(self, group: str, col: str, **cell) -> list[float]:
        key = (group, tuple(sorted(cell.items())))
        return [v[col] for _, v in sorted(self.values[key].items())]


def _cell(objective, backbone, dataset, margin=0.15, threshold="off"):
    return dict(objective=objective, backbone=backbone, dataset=dataset, margin=margin, threshold=threshold)


def make_fixture(root: Path) -> Fixture:
    """Main grid (3 seeds, one NaN, one missing seed, one single-seed run), both ablations and transfer."""
    f = Fixture(root)
    f.add("main", 74, [0, 1, 2], au=(0.20, -2.0), **_cell("simcse", "bert", "wiki", margin=0.0))
    f.add("main", 76, [0, 1, 2], au=(0.25, -2.2), **_cell("mcse", "bert", "wiki+flickr", margin=0.0))
    # seed 1 has a NaN STS13: that cell is a nanmean over 2 seeds (n shown)
    f.add("main", 78, [0, 1, 2], nan={1: ["STS13"]}, au=(0.22, -2.4), **_cell("kdmcse", "bert", "wiki+flickr"))
    f.add("main", 77, [0, 1], au=(0.21, -2.3), **_cell("kdmcse", "bert", "wiki+coco"))  # seed 2 missing
    # one seed only; SICK-R NaN in every seed -> "--"
    f.add("main", 90, [0], nan={0: ["SICK-R"]}, au=(0.30, -2.1), **_cell("kdmcse", "roberta", "wiki+flickr"))
    for m in (0.2, 0.0, 0.15, 0.125, 0.1):
        f.add("margin", 75 + 10 * m, [0, 1], **_cell("kdmcse", "bert", "wiki+flickr", margin=m))
    for t in (0.9, "off", 0.85):
        f.add("threshold", 76, [0, 1], **_cell("kdmcse", "bert", "wiki+flickr", threshold=t))
    f.add("transfer", 85, [0, 1], **_cell("kdmcse", "bert", "wiki+flickr"))
    f.add("transfer", 84, [0, 1], **_cell("mcse", "bert", "wiki+flickr", margin=0.0))
    return f


@pytest.fixture()
def fx(tmp_path) -> Fixture:
    return make_fixture(tmp_path / "metrics")


def _run(fx: Fixture, tmp_path: Path, note: str = "", **override) -> tuple[Path, Path]:
    tables, plots = tmp_path / "tables", tmp_path / "plots"
    groups = {"main": fx.files["main"], "margin": fx.files["margin"], "threshold": fx.files["threshold"],
              "transfer": fx.files["transfer"], **override}
    argv = ["--main", *groups["main"], "--margin-ablation", *groups["margin"],
            "--threshold-ablation", *groups["threshold"], "--transfer", *groups["transfer"],
            "--paper", str(PAPER), "--tables", str(tables), "--plots", str(plots)]
    if note:
        argv += ["--caption-note", note]
    assert report_main(argv) == 0
    return tables, plots


def _ours(frame: pd.DataFrame, **cell) -> pd.Series:
    sel = frame[frame["kind"] == "ours"]
    for k, v in cell.items():
        sel = sel[sel[k].astype(str) == str(v)]
    assert len(sel) == 1, f"expected one row for {cell}, got {len(sel)}"
    return sel.iloc[0]


def _tex_rows(tex: str) -> list[list[str]]:
    rows = []
    for line in tex.splitlines():
        if line.endswith(r"\\") and "&" in line:
            rows.append([c.strip() for c in line[:-2].split(" & ")])
    return rows


# ---------------------------------------------------------------- main table


def test_main_csv_means_and_stds_equal_numpy(fx, tmp_path):
    tables, _ = _run(fx, tmp_path)
    frame = pd.read_csv(tables / "main.csv")
    for (group, cell_items), per_seed in fx.values.items():
        if group != "main":
            continue
        cell = dict(cell_items)
        row = _ours(frame, objective=cell["objective"], backbone=cell["backbone"], dataset=cell["dataset"])
        for col in STS_COLUMNS:
            vals = np.array([v[col] for v in per_seed.values()])
            finite = vals[np.isfinite(vals)]
            assert row[f"{col}_n"] == finite.size
            if finite.size == 0:
                assert math.isnan(row[f"{col}_mean"])
                continue
            assert row[f"{col}_mean"] == pytest.approx(np.nanmean(vals), abs=1e-5)
            if finite.size >= 2:
                assert row[f"{col}_std"] == pytest.approx(np.std(finite, ddof=1), abs=1e-5)
            else:
                assert math.isnan(row[f"{col}_std"])


def test_main_tex_bold_marks_best_of_our_rows_per_column(fx, tmp_path):
    tables, _ = _run(fx, tmp_path)
    frame = pd.read_csv(tables / "main.csv")
    ours = frame[frame["kind"] == "ours"]
    rows = _tex_rows((tables / "main.tex").read_text())
    header = rows[0]
    for col in STS_COLUMNS:
        j = header.index(col)
        bold = [r for r in rows[1:] if r"\textbf{" in r[j]]
        best = ours[f"{col}_mean"].round(2).max()
        assert len(bold) == (ours[f"{col}_mean"].round(2) == best).sum(), col
        assert rf"\textbf{{{best:.2f}}}" in bold[0][j], (col, bold[0][j])
    # the roberta row (one seed, SICK-R NaN) shows "--" there, not bold
    sick = header.index("SICK-R")
    dashes = [r for r in rows if r[sick] == "--"]
    assert dashes and all(r"\textbf" not in r[sick] for r in dashes)


def test_main_table_puts_paper_numbers_and_differences_beside_ours(fx, tmp_path):
    tables, _ = _run(fx, tmp_path)
    frame = pd.read_csv(tables / "main.csv")
    rep = frame[(frame["kind"] == "reported") & (frame["objective"] == "kdmcse") & (frame["backbone"] == "bert")
                & (frame["dataset"] == "wiki+flickr")]
    assert len(rep) == 1 and rep.iloc[0]["STS12_mean"] == pytest.approx(74.4)
    assert rep.iloc[0]["trust"] == "SEC-DALR"
    diff = frame[(frame["kind"] == "diff") & (frame["objective"] == "kdmcse") & (frame["backbone"] == "bert")
                 & (frame["dataset"] == "wiki+flickr")].iloc[0]
    ours = _ours(frame, objective="kdmcse", backbone="bert", dataset="wiki+flickr")
    for col in STS_COLUMNS:
        assert diff[f"{col}_mean"] == pytest.approx(ours[f"{col}_mean"] - rep.iloc[0][f"{col}_mean"], abs=1e-4)
    # wiki+coco has only the SEC-LLM average: Avg is compared, the other columns are "--"
    coco_rep = frame[(frame["kind"] == "reported") & (frame["dataset"] == "wiki+coco")].iloc[0]
    assert coco_rep["Avg_mean"] == pytest.approx(76.6) and math.isnan(coco_rep["STS12_mean"])
    tex = (tables / "main.tex").read_text()
    assert r"reported [SEC-DALR]" in tex and r"\quad\textit{$\Delta$ ours $-$ reported}" in tex
    expected = f"{ours['STS12_mean'] - 74.4:+.2f}".replace("-", "$-$")
    assert expected in tex
    # later matches (SEC-LLM average, SimCSE paper row) are named in the notes
    assert "SimCSE-BERT (SimCSE paper)" in tex and "76.25" in tex
    # SimCSE's text-only dataset is shown once per backbone, before the multimodal rows
    data_col = [r[1] for r in _tex_rows(tex)[1:] if r[0] in {"SimCSE", "MCSE", "KDMCSE"}]
    assert data_col[0] == "wiki" and data_col.count("wiki") == 1


def test_missing_seed_single_seed_and_nan_are_marked(fx, tmp_path):
    tables, _ = _run(fx, tmp_path)
    rows = _tex_rows((tables / "main.tex").read_text())
    header = rows[0]
    by_data = {}
    backbone = None
    for line in (tables / "main.tex").read_text().splitlines():
        if r"\multicolumn" in line and r"\textit{" in line:
            backbone = re.search(r"\\textit\{(.*?)\}", line).group(1)
        elif line.startswith("KDMCSE &"):
            by_data[(backbone, line.split(" & ")[1])] = [c.strip() for c in line[:-2].split(" & ")]
    coco = by_data[("BERT", "wiki+coco")]
    assert all("$^{n=2}$" in coco[header.index(c)] for c in STS_COLUMNS)  # seed 2 missing
    flickr = by_data[("BERT", "wiki+flickr")]
    assert "$^{n=2}$" in flickr[header.index("STS13")]  # NaN in seed 1 left out
    sts12 = flickr[header.index("STS12")]
    assert "$^{n=" not in sts12 and re.search(r"\{\\scriptsize\$\\pm\$\d+\.\d\d\}", sts12)
    single = by_data[("RoBERTa", "wiki+flickr")]
    assert r"\pm" not in " ".join(single) and "$^{n=1}$" in single[header.index("STS12")]
    assert single[header.index("SICK-R")] == "--"
    tex = (tables / "main.tex").read_text()
    assert "std undefined" in tex and "left out of the mean" in tex


def test_significance_equals_scipy_paired_test(fx, tmp_path):
    tables, _ = _run(fx, tmp_path)
    kd = fx.series("main", "Avg", **_cell("kdmcse", "bert", "wiki+flickr"))
    mc = fx.series("main", "Avg", **_cell("mcse", "bert", "wiki+flickr", margin=0.0))
    # seed 1 of KDMCSE has a NaN STS13, hence a NaN Avg: that pair is dropped, seeds 0 and 2 remain
    assert math.isnan(kd[1]) and all(math.isfinite(v) for v in kd[::2])
    kd, mc = kd[::2], mc[::2]
    expected = stats.ttest_rel(kd, mc)
    sig = pd.read_csv(tables / "significance.csv")
    row = sig[(sig["backbone"] == "bert") & (sig["dataset"] == "wiki+flickr")].iloc[0]
    assert row["n"] == 2 and row["seeds"] == "0 2"
    assert row["t_p"] == pytest.approx(expected.pvalue, rel=1e-6)
    assert row["mean_diff"] == pytest.approx(np.mean(np.array(kd) - np.array(mc)), abs=1e-9)
    assert "Wilcoxon n/a" in row["note"]
    tex = (tables / "main.tex").read_text()
    assert f"p={expected.pvalue:.3g}" in tex and "n=2, mean diff" in tex
    # wiki+coco has no MCSE run: no test is invented for it
    assert set(sig["dataset"]) == {"wiki+flickr"}


def test_paired_seed_test_pairs_by_seed_and_adds_wilcoxon_from_six():
    rng = np.random.default_rng(3)
    a = {s: float(v) for s, v in enumerate(rng.normal(78, 1, 7))}
    b = {s: float(v) for s, v in enumerate(rng.normal(77, 1, 7))}
    del b[6]  # unpaired seed is dropped
    t = paired_seed_test(a, b)
    xs, ys = [a[s] for s in range(6)], [b[s] for s in range(6)]
    assert t.n == 6 and t.t_p == pytest.approx(stats.ttest_rel(xs, ys).pvalue)
    assert t.wilcoxon_p == pytest.approx(stats.wilcoxon(xs, ys).pvalue)
    one = paired_seed_test({0: 1.0, 1: 2.0}, {0: 0.5})
    assert one.n == 1 and not one.testable and "not testable" in one.note and math.isnan(one.t_p)


# ---------------------------------------------------------------- other tables


def test_ablation_tables_sort_axes_and_aggregate(fx, tmp_path):
    tables, _ = _run(fx, tmp_path)
    margin = pd.read_csv(tables / "ablation_margin.csv")
    assert [float(m) for m in margin["margin"]] == [0.0, 0.1, 0.125, 0.15, 0.2]
    for m in (0.0, 0.125, 0.2):
        avg = fx.series("margin", "Avg", **_cell("kdmcse", "bert", "wiki+flickr", margin=m))
        row = margin[margin["margin"].astype(float) == m].iloc[0]
        assert row["Avg_mean"] == pytest.approx(np.mean(avg), abs=1e-5)
        assert row["Avg_std"] == pytest.approx(np.std(avg, ddof=1), abs=1e-5)
    # the main setting (margin 0.15, threshold off) is marked
    assert margin.loc[margin["margin"].astype(float) == 0.15, "main_setting"].item()
    assert "0.15 (main)" in (tables / "ablation_margin.tex").read_text()
    threshold = pd.read_csv(tables / "ablation_threshold.csv")
    assert list(threshold["threshold"].astype(str)) == ["off", "0.85", "0.9"]


def test_transfer_table_with_paper_rows(fx, tmp_path):
    tables, _ = _run(fx, tmp_path)
    frame = pd.read_csv(tables / "transfer.csv")
    ours = _ours(frame, objective="kdmcse", backbone="bert", dataset="wiki+flickr")
    vals = fx.series("transfer", "MRPC", **_cell("kdmcse", "bert", "wiki+flickr"))
    assert ours["MRPC_mean"] == pytest.approx(np.mean(vals), abs=1e-5)
    rep = frame[frame["kind"] == "reported"]
    assert len(rep) == 1 and rep.iloc[0]["SST2_mean"] == pytest.approx(87.61)  # MCSE has no reported transfer row
    assert list(frame.columns[-24:]) == [f"{c}_{s}" for c in TRANSFER_COLUMNS for s in ("mean", "std", "n")]


def test_empty_groups_give_tables_that_say_so(fx, tmp_path):
    tables, plots = _run(fx, tmp_path, main=[], margin=[], threshold=[], transfer=[])
    for name in ("main", "transfer", "ablation_margin", "ablation_threshold"):
        assert "No metrics files were given" in (tables / f"{name}.tex").read_text()
        assert pd.read_csv(tables / f"{name}.csv").empty
    assert (plots / "align_uniform.png").stat().st_size > 0


def test_caption_note_reaches_every_caption_and_title(fx, tmp_path):
    note = "Random-init teacher: mechanics check only (100% not comparable)."
    tables, _ = _run(fx, tmp_path, note=note)
    for name in ("main", "transfer", "ablation_margin", "ablation_threshold"):
        caption = re.search(r"\\caption\{(.*)\}", (tables / f"{name}.tex").read_text()).group(1)
        assert caption.endswith(r"mechanics check only (100\% not comparable).")
    records = read_metrics_group(fx.files["main"], require="sts")
    for result in (plot_align_uniform(records, note), plot_ablation(records, "margin", note)):
        assert note in " ".join(result.figure.axes[0].get_title().split())  # titles are wrapped


# ---------------------------------------------------------------- plots


def test_plots_are_valid_files_with_one_point_per_configuration(fx, tmp_path):
    _, plots = _run(fx, tmp_path)
    for stem in ("align_uniform", "ablation_margin", "ablation_threshold"):
        assert (plots / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
        assert (plots / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = read_metrics_group(fx.files["main"], require="sts")
    result = plot_align_uniform(records)
    assert len(result.points) == 5
    scatter = result.figure.axes[0].collections
    assert sum(len(c.get_offsets()) for c in scatter if c.__class__.__name__ == "PathCollection") == 5
    key = ("main", tuple(sorted(_cell("kdmcse", "bert", "wiki+flickr").items())))
    aligns = [a for a, _ in fx.au[key].values()]
    row = result.points[result.points["label"] == "KDMCSE BERT wiki+flickr"].iloc[0]
    assert row["align"] == pytest.approx(np.mean(aligns)) and row["align_std"] == pytest.approx(np.std(aligns, ddof=1))
    assert "lower-left is better" in " ".join(result.figure.axes[0].get_title().split())
    thr = plot_ablation(read_metrics_group(fx.files["threshold"], require="sts"), "threshold")
    assert list(thr.points["threshold"]) == ["off", "0.85", "0.9"]
    assert [t.get_text() for t in thr.figure.axes[0].get_xticklabels()] == ["off", "0.85", "0.9"]


# ---------------------------------------------------------------- inputs and errors


def test_paper_results_file_is_consistent():
    entries = load_paper_results(PAPER)
    full = [e for e in entries if e.table == "sts" and len(e.values) == 8]
    assert {e.label for e in full} >= {"SimCSE-BERT", "MCSE-BERT", "KDMCSE-BERT", "KDMCSE-RoBERTa"}
    for e in full:  # method.md §6.1: the per-task numbers reproduce the averages within rounding
        assert np.mean([e.values[c] for c in STS_COLUMNS[:-1]]) == pytest.approx(e.values["Avg"], abs=0.06), e.label
    for e in entries:
        assert e.trust in {"SEC-DALR", "SEC-LLM", "SIMCSE", "MCSE"} and e.source


def test_bad_inputs_fail_before_writing(fx, tmp_path):
    with pytest.raises(KdmcseError, match="no 'sts' section"):
        _run(fx, tmp_path, main=fx.files["transfer"])
    with pytest.raises(KdmcseError, match="same cell and seed"):
        _run(fx, tmp_path, main=fx.files["main"] + fx.files["main"][:1])
    assert not (tmp_path / "tables").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("entries:\n  - {table: sts, objective: x, backbone: y, dataset: z, label: l, section: s,"
                   " source: s, trust: t, values: {STS99: 1.0}}\n")
    code = cli_main(["report", "--main", *fx.files["main"], "--paper", str(bad), "--tables", str(tmp_path / "t"),
                     "--plots", str(tmp_path / "p")])
    assert code == 2 and not (tmp_path / "t").exists()


def test_tex_is_structurally_sound(fx, tmp_path):
    """Checks that hold without a TeX engine: balanced braces and environments, full rows, escaped specials."""
    tables, _ = _run(fx, tmp_path, note="demo_run: 50% random & #1 {check} ~ ^")
    for name in ("main", "transfer", "ablation_margin", "ablation_threshold"):
        tex = (tables / f"{name}.tex").read_text()
        body = "\n".join(l for l in tex.splitlines() if not l.startswith("%"))
        unescaped = re.sub(r"\\[{}%&#_$]", "", body)
        assert unescaped.count("{") == unescaped.count("}"), name
        text = re.sub(r"\\label\{[^}]*\}", "", unescaped).replace(" & ", "")  # labels may hold "_"
        assert not re.search(r"[%&#_]", text), name
        stack = []
        for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", body):
            if kind == "begin":
                stack.append(env)
            else:
                assert stack.pop() == env, name
        assert not stack, name
        ncols = len(re.search(r"\\begin\{tabular\}\{([lc]+)\}", body).group(1))
        for row in _tex_rows(body):
            assert len(row) == ncols, (name, row)
        assert r"demo\_run: 50\% random \& \#1 \{check\}" in body


def _tex_engine() -> str | None:
    return next((e for e in ("pdflatex", "lualatex", "tectonic") if shutil.which(e)), None)


def test_tables_compile_under_input(fx, tmp_path):
    if _tex_engine() is None:
        # .ci/run installs pdflatex and sets KDMCSE_REQUIRE_TEX, so CI fails here instead of skipping
        if os.environ.get("KDMCSE_REQUIRE_TEX") == "1":
            pytest.fail("KDMCSE_REQUIRE_TEX=1 but no TeX engine (pdflatex/lualatex/tectonic) is on PATH")
        pytest.skip("no TeX engine (pdflatex/lualatex/tectonic) installed")
    tables, _ = _run(fx, tmp_path, note="demo: random teacher & 100% mechanics_check")
    doc = tables / "doc.tex"
    body = "\n".join(rf"\input{{{n}}}" for n in ("main", "transfer", "ablation_margin", "ablation_threshold"))
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + body
                   + "\n\\end{document}\n")
    engine = _tex_engine()
    cmd = [engine, "doc.tex"] if engine == "tectonic" else [engine, "-interaction=nonstopmode", "-halt-on-error",
                                                            "doc.tex"]
    proc = subprocess.run(cmd, cwd=tables, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tables / "doc.pdf").stat().st_size > 0


def test_null_threshold_and_null_metric_are_handled(tmp_path):
    """threshold null reads as "off" (first); a null metric is a NaN: left out of the mean, n shown."""
    files = []
    for t, s, sts12 in [(0.9, 0, 70.0), (None, 0, 71.0), (None, 1, None), (0.9, 1, 72.0)]:
        vals = {c: 75.0 + s for c in STS_COLUMNS}
        doc = _metrics_json({**_cell("kdmcse", "bert", "wiki+flickr", threshold=t), "seed": s}, vals)
        doc["sts"]["STS12"]["all"] = sts12
        path = tmp_path / f"t{t}_s{s}.json"
        path.write_text(json.dumps(doc))
        files.append(str(path))
    tables = tmp_path / "tables"
    assert cli_main(["report", "--threshold-ablation", *files, "--tables", str(tables),
                     "--plots", str(tmp_path / "plots")]) == 0
    frame = pd.read_csv(tables / "ablation_threshold.csv")
    assert list(frame["threshold"].astype(str)) == ["off", "0.9"]
    off = frame.iloc[0]
    assert off["STS12_n"] == 1 and off["STS12_mean"] == 71.0 and math.isnan(off["STS12_std"])
    assert frame.iloc[1]["STS12_mean"] == pytest.approx(71.0) and frame.iloc[1]["STS12_std"] == pytest.approx(
        np.std([70.0, 72.0], ddof=1))
    # no --paper and no main files: the main table says so, nothing crashes
    assert "No metrics files were given" in (tables / "main.tex").read_text()


def test_ablation_plot_points_follow_the_seeds(fx):
    records = read_metrics_group(fx.files["margin"], require="sts")
    result = plot_ablation(records, "margin")
    assert list(result.points["x"]) == [0.0, 0.1, 0.125, 0.15, 0.2]
    for _, row in result.points.iterrows():
        avg = fx.series("margin", "Avg", **_cell("kdmcse", "bert", "wiki+flickr", margin=row["x"]))
        assert (row["mean"], row["min"], row["max"]) == pytest.approx((np.mean(avg), min(avg), max(avg)))
        assert row["std"] == pytest.approx(np.std(avg, ddof=1))
    assert len(result.figure.axes[0].lines) >= 1 and result.figure.axes[0].get_legend() is not None


def test_report_captions_exist_and_are_valid_rst():
    docutils_core = pytest.importorskip("docutils.core", reason="docutils is needed to parse the captions")
    for name in ("main", "transfer", "ablation_margin", "ablation_threshold", "align_uniform", "ablation_plots",
                 "significance"):
        text = (ROOT / "workflow" / "report" / f"{name}.rst").read_text(encoding="utf-8")
        docutils_core.publish_doctree(text, settings_overrides={"report_level": 2, "halt_level": 2})
        assert len(text.split()) > 30


# ---------------------------------------------------------------- a subset of the STS tasks (evaluate.sts_tasks)


def _subset_file(path: Path, cell: dict, stsb: float, sick: float) -> str:
    """A metrics file as `evaluate --sts-tasks STSBenchmark,SICKRelatedness` writes it."""
    doc = {"cell": cell, "model": "fixture/model", "pooling": "cls_before_pooler",
           "sts": {"STSBenchmark": {"spearman": stsb, "n": 10}, "SICKRelatedness": {"spearman": sick, "n": 10},
                   "tasks": ["STSBenchmark", "SICKRelatedness"], "avg": round((stsb + sick) / 2, 2)},
           "align_uniform": {"mcse_batch": {"avg": {"align": 0.2, "uniform": -2.0}}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc), encoding="utf-8")
    return str(path)


def test_a_task_subset_shows_dashes_says_what_avg_covers_and_compares_no_avg(tmp_path, caplog):
    root = tmp_path / "sub"
    main = [_subset_file(root / f"{o}.json", {**_cell(o, "bert", "wiki+flickr"), "seed": 0}, 80.0 + i, 70.0 + i)
            for i, o in enumerate(("mcse", "kdmcse"))]
    thr = [_subset_file(root / f"t{t}.json", {**_cell("kdmcse", "bert", "wiki+flickr", threshold=t), "seed": 0},
                        81.0, 71.0) for t in ("off", 0.9)]
    with caplog.at_level("WARNING"):
        tables, plots = _run(Fixture(tmp_path), tmp_path, main=main, margin=[], threshold=thr, transfer=[])
    assert "is missing" not in caplog.text  # unscored on purpose: no warning per task
    frame = pd.read_csv(tables / "main.csv")
    ours = _ours(frame, objective="kdmcse", backbone="bert", dataset="wiki+flickr")
    assert math.isnan(ours["STS12_mean"]) and ours["STS-B_mean"] == pytest.approx(81.0)
    assert ours["Avg_mean"] == pytest.approx(76.0)
    diff = frame[(frame["kind"] == "diff") & (frame["objective"] == "kdmcse")].iloc[0]
    assert math.isnan(diff["Avg_mean"])  # our two-task Avg against the paper's seven-task Avg: not compared
    assert diff["STS-B_mean"] == pytest.approx(81.0 - frame[(frame["kind"] == "reported")
                                                            & (frame["objective"] == "kdmcse")].iloc[0]["STS-B_mean"])
    note = r"Only STS-B, SICK-R were scored (evaluate.sts\_tasks)"  # as LaTeX escapes it
    for name in ("main", "ablation_threshold"):
        tex = (tables / f"{name}.tex").read_text()
        assert note in tex, name
        assert "superscript n" not in tex, name  # unscored columns are not "missing values"
    assert r"No $\Delta$ is shown for Avg." in (tables / "main.tex").read_text()
    assert note not in _run(make_fixture(tmp_path / "full"), tmp_path / "f")[0].joinpath("main.tex").read_text()


def test_files_that_scored_different_sts_tasks_do_not_share_a_table(fx, tmp_path):
    sub = _subset_file(tmp_path / "sub.json", {**_cell("kdmcse", "bert", "wiki+flickr", margin=0.3), "seed": 0},
                       80.0, 70.0)
    with pytest.raises(KdmcseError, match="scored different STS tasks.*same evaluate.sts_tasks"):
        read_metrics_group(fx.files["main"] + [sub], require="sts")
    with pytest.raises(KdmcseError, match="scored different STS tasks"):
        _run(fx, tmp_path, margin=fx.files["margin"] + [sub])
    assert not (tmp_path / "tables").exists()  # refused before anything is written
