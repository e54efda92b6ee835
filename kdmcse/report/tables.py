"""Seed aggregation and the report tables (LaTeX booktabs + CSV).

Conventions, the same for every table:
- a cell is the mean ± sample std (ddof=1) over seeds; with one finite value only the mean is shown;
- a NaN in one seed is left out (nanmean) and lowers that cell's n; n is shown (superscript) wherever it is
  below the number of distinct seeds in the table; a cell with no finite value shows "--" and is never bold;
- bold marks the best mean (at the shown 2 decimals, ties all bold) per column among our rows;
- reported rows come from config/paper_results.yaml: the first entry matching a row of ours is shown under it,
  with a Δ row (ours − reported); later matches are listed in the notes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

import numpy as np

from kdmcse.errors import KdmcseError
from kdmcse.evaluate.metrics_io import (STS_COLUMNS, TRANSFER_COLUMNS, ConfigKey, MetricsRecord, Section,
                                       sts_scope, sts_scope_note)
from kdmcse.report.paper_results import PaperEntry
from kdmcse.report.significance import PairedTest, format_test, paired_seed_test

OBJECTIVE_NAMES = {"simcse": "SimCSE", "mcse": "MCSE", "kdmcse": "KDMCSE"}
BACKBONE_NAMES = {"bert": "BERT", "roberta": "RoBERTa"}
_OBJECTIVE_ORDER = ["simcse", "mcse", "kdmcse"]
_BACKBONE_ORDER = ["bert", "roberta"]
_DATASET_ORDER = ["wiki", "wiki+flickr", "wiki+coco"]
_IDENTITY = ("objective", "backbone", "dataset")


# ---------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class CellStat:
    mean: float
    std: float  # NaN when n < 2 (undefined)
    n: int  # finite values that went into the mean

    @classmethod
    def of(cls, values: Iterable[float]) -> "CellStat":
        arr = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
        n = int(arr.size)
        mean = float(arr.mean()) if n else math.nan
        std = float(arr.std(ddof=1)) if n >= 2 else math.nan
        return cls(mean, std, n)


@dataclass
class ConfigStats:
    """All seeds of one configuration (cell without seed) for one table."""

    cell: dict[str, Any]
    key: ConfigKey
    seeds: list[Any]
    per_seed: dict[str, dict[Any, float]]  # column -> seed -> value
    stats: dict[str, CellStat]


def _seed_order(seed: Any) -> tuple[str, Any]:
    return (type(seed).__name__, seed)


def aggregate(records: list[MetricsRecord], section: Section, columns: tuple[str, ...]) -> list[ConfigStats]:
    """Group per-seed records by configuration and summarise every column."""
    groups: dict[ConfigKey, list[MetricsRecord]] = {}
    for rec in records:
        groups.setdefault(rec.config, []).append(rec)
    out = []
    for key, recs in groups.items():
        recs = sorted(recs, key=lambda r: _seed_order(r.seed))
        per_seed = {c: {r.seed: getattr(r, section).get(c, math.nan) for r in recs} for c in columns}
        out.append(
            ConfigStats(
                cell=dict(recs[0].cell),
                key=key,
                seeds=[r.seed for r in recs],
                per_seed=per_seed,
                stats={c: CellStat.of(per_seed[c].values()) for c in columns},
            )
        )
    return out


def _rank(value: Any, order: list[str]) -> tuple[int, str]:
    text = str(value)
    return (order.index(text), "") if text in order else (len(order), text)


def axis_sort_key(value: Any) -> tuple[int, float, str]:
    """"off"/None first, then numbers ascending, then any other text."""
    if value is None or (isinstance(value, str) and value.lower() == "off"):
        return (0, 0.0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, float(value), "")
    try:
        return (1, float(value), "")
    except (TypeError, ValueError):
        return (2, 0.0, str(value))


def display_value(value: Any) -> str:
    if value is None:
        return "off"
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    return str(value)


# ---------------------------------------------------------------- table model


RowKind = Literal["header", "ours", "reported", "diff", "empty"]


@dataclass
class Row:
    kind: RowKind
    lead: list[str]  # texts of the leading (label) columns; header/empty rows use lead[0] only
    fields: dict[str, Any] = field(default_factory=dict)  # identity columns for the CSV
    stats: dict[str, CellStat] = field(default_factory=dict)  # ours
    values: dict[str, float] = field(default_factory=dict)  # reported / diff


@dataclass
class Table:
    name: str  # file stem
    caption: str
    label: str
    lead_headers: list[str]
    columns: tuple[str, ...]
    rows: list[Row]
    notes: list[str]
    expected_n: int
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. significance results

    def best(self) -> dict[str, float]:
        """Best (rounded) mean per column among our rows; NaN when the column has none."""
        out = {}
        for col in self.columns:
            vals = [round(r.stats[col].mean, 2) for r in self.rows if r.kind == "ours" and r.stats[col].n > 0]
            out[col] = max(vals) if vals else math.nan
        return out


# ---------------------------------------------------------------- building


def _config_label(cfg: ConfigStats) -> str:
    return " ".join(
        [
            OBJECTIVE_NAMES.get(str(cfg.cell.get("objective")), str(cfg.cell.get("objective", "?"))),
            BACKBONE_NAMES.get(str(cfg.cell.get("backbone")), str(cfg.cell.get("backbone", "?"))),
            str(cfg.cell.get("dataset", "?")),
        ]
    )


def short_labels(cells: list[dict[str, Any]]) -> list[str]:
    """"KDMCSE BERT wiki+flickr", plus the keys that tell apart cells sharing those three."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault(tuple(str(c.get(k)) for k in _IDENTITY), []).append(c)
    out = []
    for c in cells:
        group = groups[tuple(str(c.get(k)) for k in _IDENTITY)]
        keys = sorted(k for k in {k for g in group for k in g} - set(_IDENTITY)
                      if len({repr(g.get(k)) for g in group}) > 1)
        base = " ".join([OBJECTIVE_NAMES.get(str(c.get("objective")), str(c.get("objective", "?"))),
                         BACKBONE_NAMES.get(str(c.get("backbone")), str(c.get("backbone", "?"))),
                         str(c.get("dataset", "?"))])
        out.append(base + "".join(f", {k}={display_value(c.get(k))}" for k in keys))
    return out


def _extra_keys(configs: list[ConfigStats]) -> list[str]:
    """Cell keys beyond objective/backbone/dataset that tell apart configs sharing those three."""
    by_identity: dict[tuple, list[ConfigStats]] = {}
    for c in configs:
        by_identity.setdefault(tuple(str(c.cell.get(k)) for k in _IDENTITY), []).append(c)
    keys: set[str] = set()
    for group in by_identity.values():
        if len(group) > 1:
            for k in {k for c in group for k in c.cell} - set(_IDENTITY):
                if len({repr(c.cell.get(k)) for c in group}) > 1:
                    keys.add(k)
    return sorted(keys)


def _cell_fields(cell: dict[str, Any]) -> dict[str, Any]:
    return {k: display_value(v) if k == "threshold" else v for k, v in cell.items()}


def _main_like_rows(
    configs: list[ConfigStats], columns: tuple[str, ...], paper: list[PaperEntry], paper_table: str,
    no_diff: tuple[str, ...] = (),
) -> tuple[list[Row], list[str]]:
    """Rows grouped by backbone: our configs (dataset order, objective order), each with its reported row.

    `no_diff` names columns whose Δ is not shown (our Avg over a task subset against the paper's seven)."""
    extra = _extra_keys(configs)
    configs = sorted(
        configs,
        key=lambda c: (
            _rank(c.cell.get("backbone"), _BACKBONE_ORDER),
            _rank(c.cell.get("dataset"), _DATASET_ORDER),
            _rank(c.cell.get("objective"), _OBJECTIVE_ORDER),
            tuple(axis_sort_key(c.cell.get(k)) for k in extra),
        ),
    )
    rows: list[Row] = []
    other_matches: list[str] = []
    entries = [p for p in paper if p.table == paper_table]
    current_backbone = object()
    for cfg in configs:
        backbone = cfg.cell.get("backbone")
        if backbone != current_backbone:
            current_backbone = backbone
            rows.append(Row("header", [BACKBONE_NAMES.get(str(backbone), str(backbone))]))
        label = OBJECTIVE_NAMES.get(str(cfg.cell.get("objective")), str(cfg.cell.get("objective")))
        if extra:
            label += " (" + ", ".join(f"{k}={display_value(cfg.cell.get(k))}" for k in extra) + ")"
        fields = {"kind": "ours", **_cell_fields(cfg.cell), "label": label,
                  "seeds": " ".join(map(str, cfg.seeds)), "source": "this run", "trust": ""}
        rows.append(Row("ours", [label, str(cfg.cell.get("dataset", ""))], fields, stats=cfg.stats))
        matches = [p for p in entries if p.matches(cfg.cell)]
        if not matches:
            continue
        first, rest = matches[0], matches[1:]
        ident = {k: cfg.cell.get(k) for k in _IDENTITY}
        rows.append(
            Row(
                "reported",
                [f"reported [{first.trust}]", ""],
                {"kind": "reported", **ident, "label": first.label, "seeds": "",
                 "source": f"method.md §{first.section}: {first.source}", "trust": first.trust},
                values={c: first.value(c) for c in columns},
            )
        )
        rows.append(
            Row(
                "diff",
                ["Δ ours − reported", ""],
                {"kind": "diff", **_cell_fields(cfg.cell), "label": f"{label} − {first.label}", "seeds": "",
                 "source": f"ours − method.md §{first.section}", "trust": first.trust},
                values={c: math.nan if c in no_diff else cfg.stats[c].mean - first.value(c) for c in columns},
            )
        )
        for p in rest:
            shown = ", ".join(f"{c} {p.values[c]:g}" for c in columns if c in p.values)
            key = f"{p.label}, {p.dataset}: {shown} [{p.trust}, method.md §{p.section}: {p.source}]"
            if key not in other_matches:
                other_matches.append(key)
    return rows, other_matches


def _convention_notes(configs: list[ConfigStats], columns: tuple[str, ...], expected_n: int,
                      scope: tuple[str, ...] | None = None) -> list[str]:
    """The notes every table carries; `scope` (the STS columns scored, None = all) keeps the columns that were
    not scored on purpose out of the missing-value note."""
    if scope is not None:
        columns = tuple(c for c in columns if c in scope or c == "Avg")
    seeds = sorted({s for c in configs for s in c.seeds}, key=_seed_order)
    notes = [
        f"Mean ± sample std (ddof=1) over {expected_n} seed(s) ({', '.join(map(str, seeds))}); "
        "bold: best of our rows per column; -- : no finite value."
    ]
    if expected_n == 1:
        notes.append("Single seed: std is undefined and not shown.")
    short = any(c.stats[col].n < expected_n for c in configs for col in columns)
    if short:
        notes.append(
            f"A superscript n marks cells with fewer than {expected_n} values (a missing seed, or a NaN metric, "
            "which is left out of the mean); with n=1 only the mean is shown (std undefined)."
        )
    return notes


def _empty_table(name: str, caption: str, label: str, lead: list[str], columns: tuple[str, ...], what: str) -> Table:
    return Table(name, caption, label, lead, columns, [Row("empty", [f"No metrics files were given for {what}."])],
                 [], 0)


def _with_note(caption: str, note: str) -> str:
    return f"{caption} {note}".strip() if note else caption


def significance_tests(configs: list[ConfigStats]) -> list[tuple[dict[str, Any], PairedTest]]:
    """KDMCSE against MCSE for each (dataset, backbone) on STS Avg, paired by seed."""
    out = []
    for kd in configs:
        if kd.cell.get("objective") != "kdmcse":
            continue
        for base in configs:
            if base.cell.get("objective") != "mcse":
                continue
            if any(base.cell.get(k) != kd.cell.get(k) for k in ("dataset", "backbone")):
                continue
            test = paired_seed_test(kd.per_seed["Avg"], base.per_seed["Avg"])
            info = {"dataset": kd.cell.get("dataset"), "backbone": kd.cell.get("backbone"),
                    "treatment": _config_label(kd), "baseline": _config_label(base)}
            out.append((info, test))
    return out


def build_main_table(records: list[MetricsRecord], paper: list[PaperEntry], note: str = "") -> Table:
    caption = _with_note("STS results (Spearman ×100; STS12–16 'all', STS-B and SICK-R test, unsupervised cosine).",
                         note)
    lead = ["Model", "Data"]
    if not records:
        return _empty_table("main", caption, "tab:main", lead, STS_COLUMNS, "the main STS table")
    configs = aggregate(records, "sts", STS_COLUMNS)
    expected_n = len({s for c in configs for s in c.seeds})
    scope = sts_scope(records)
    rows, others = _main_like_rows(configs, STS_COLUMNS, paper, "sts", no_diff=("Avg",) if scope else ())
    notes = _convention_notes(configs, STS_COLUMNS, expected_n, scope)
    if scope:
        compared = any(r.kind == "diff" for r in rows)
        notes.append(sts_scope_note(scope) + (" No Δ is shown for Avg." if compared else ""))
    if paper:
        notes.append("Reported rows: config/paper_results.yaml (source and trust tag per row; docs/method.md §0 rates "
                     "the tags); Δ = ours − reported.")
    else:
        notes.append("No reported numbers were given (--paper).")
    if others:
        notes.append("Also reported for these settings: " + "; ".join(others) + ".")
    tests = significance_tests(configs)
    if tests:
        for info, t in tests:
            notes.append(f"Paired test over seeds, {info['treatment']} vs {info['baseline']} on STS Avg: "
                         f"{format_test(t)}.")
    else:
        notes.append("Significance: no KDMCSE/MCSE pair with the same dataset and backbone; not testable.")
    return Table("main", caption, "tab:main", lead, STS_COLUMNS, rows, notes, expected_n, {"significance": tests})


def build_transfer_table(records: list[MetricsRecord], paper: list[PaperEntry], note: str = "") -> Table:
    caption = _with_note("SentEval transfer tasks (test accuracy %, MRPC accuracy).", note)
    lead = ["Model", "Data"]
    if not records:
        return _empty_table("transfer", caption, "tab:transfer", lead, TRANSFER_COLUMNS, "the transfer table")
    configs = aggregate(records, "transfer", TRANSFER_COLUMNS)
    expected_n = len({s for c in configs for s in c.seeds})
    rows, others = _main_like_rows(configs, TRANSFER_COLUMNS, paper, "transfer")
    notes = _convention_notes(configs, TRANSFER_COLUMNS, expected_n)
    if paper:
        notes.append("Reported rows: config/paper_results.yaml (source and trust tag per row); Δ = ours − reported.")
    if others:
        notes.append("Also reported for these settings: " + "; ".join(others) + ".")
    return Table("transfer", caption, "tab:transfer", lead, TRANSFER_COLUMNS, rows, notes, expected_n)


def series_label(cell: dict[str, Any], axis: str) -> str:
    """What stays fixed along an ablation axis, in words."""
    parts = [
        OBJECTIVE_NAMES.get(str(cell.get("objective")), str(cell.get("objective", "?"))),
        BACKBONE_NAMES.get(str(cell.get("backbone")), str(cell.get("backbone", "?"))),
        str(cell.get("dataset", "?")),
    ]
    rest = [f"{k}={display_value(v)}" for k, v in sorted(cell.items()) if k not in (*_IDENTITY, axis)]
    return ", ".join(parts + rest)


def group_by_series(configs: list[ConfigStats], axis: str) -> dict[str, list[ConfigStats]]:
    """Series (everything but the axis) -> its configs sorted along the axis."""
    series: dict[str, list[ConfigStats]] = {}
    for c in configs:
        series.setdefault(series_label(c.cell, axis), []).append(c)
    return {k: sorted(v, key=lambda c: axis_sort_key(c.cell.get(axis))) for k, v in sorted(series.items())}


def mask_summary(records: list[MetricsRecord]) -> dict[ConfigKey, dict[str, float]]:
    """Per configuration: the mean over seeds of the resolved threshold score and of each term's mask rate."""
    groups: dict[ConfigKey, list[MetricsRecord]] = {}
    for rec in records:
        groups.setdefault(rec.config, []).append(rec)

    def mean(values: list[float]) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.nan

    return {key: {"value": mean([r.threshold_value for r in recs]),
                  "image": mean([r.mask_rate_image for r in recs]), "text": mean([r.mask_rate_text for r in recs])}
            for key, recs in groups.items()}


def format_mask_rate(image: float, text: float) -> str:
    """Mask % of a row: one number when both terms agree (the text term's mask is the image term's transposed)."""
    if not math.isfinite(image) and not math.isfinite(text):
        return "--"
    shown = [f"{100 * v:.2f}" if math.isfinite(v) else "--" for v in (image, text)]
    return shown[0] if shown[0] == shown[1] else " / ".join(shown)


def build_ablation_table(
    records: list[MetricsRecord], axis: str, main_keys: set[ConfigKey] | None = None, note: str = ""
) -> Table:
    """One row per value of `axis` (margin or threshold), grouped by what stays fixed.

    The threshold ablation also shows, beside each threshold, the score it resolved to and the measured mask
    rate: the share of in-batch negatives the mask dropped (mean over paired steps and seeds).
    """
    axis_title = axis.capitalize()
    caption = _with_note(f"Ablation over the {axis}: STS Spearman ×100, other settings fixed.", note)
    name = f"ablation_{axis}"
    thresholds = axis == "threshold"
    lead = [axis_title, "Score", "Mask %"] if thresholds else [axis_title]
    if not records:
        return _empty_table(name, caption, f"tab:{name}", lead, STS_COLUMNS, f"the {axis} ablation")
    missing = [str(r.path) for r in records if axis not in r.cell]
    if missing:
        raise KdmcseError(f"{axis} ablation: cell of {missing[0]} has no '{axis}' key; pass `--cell {axis}=…` to "
                          "`evaluate`")
    configs = aggregate(records, "sts", STS_COLUMNS)
    expected_n = len({s for c in configs for s in c.seeds})
    main_keys = main_keys or set()
    masks = mask_summary(records) if thresholds else {}
    rows: list[Row] = []
    for series, cfgs in group_by_series(configs, axis).items():
        rows.append(Row("header", [series]))
        for cfg in cfgs:
            value = display_value(cfg.cell.get(axis))
            shown = value + (" (main)" if cfg.key in main_keys else "")
            fields = {"kind": "ours", "series": series, **_cell_fields(cfg.cell), axis: value,
                      "seeds": " ".join(map(str, cfg.seeds)), "main_setting": cfg.key in main_keys}
            lead = [shown]
            if thresholds:
                m = masks[cfg.key]
                fields.update(threshold_score=m["value"], mask_rate_image=m["image"], mask_rate_text=m["text"])
                lead += [f"{m['value']:.4g}" if math.isfinite(m["value"]) else "--",
                         format_mask_rate(m["image"], m["text"])]
            rows.append(Row("ours", lead, fields, stats=cfg.stats))
    scope = sts_scope(records)
    notes = _convention_notes(configs, STS_COLUMNS, expected_n, scope)
    if scope:
        notes.append(sts_scope_note(scope))
    if any(r.fields.get("main_setting") for r in rows):
        notes.append("(main): the setting of the main table.")
    if thresholds:
        notes.append("Score: the teacher score the threshold compares (a quantile qL resolved from the score "
                     "statistics of the teacher cache); Mask %: the share of in-batch negatives the threshold "
                     "masked, measured over the paired steps (image term, and text term where it differs); "
                     "off masks none.")
    return Table(name, caption, f"tab:{name}", lead, STS_COLUMNS, rows, notes, expected_n)
