"""Read the metrics JSON files written by `evaluate` into flat per-seed records for the report.

Only the numbers the tables and plots need are pulled out; the files are validated first so a wrong file
(e.g. a transfer file passed as an STS file) fails with one clear message before anything is written.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

from kdmcse.errors import KdmcseError

log = logging.getLogger(__name__)

# Table column -> how it is found in the `sts` section (STS12–16 use SentEval's "all" aggregation, method.md §5.2).
STS_COLUMNS: tuple[str, ...] = ("STS12", "STS13", "STS14", "STS15", "STS16", "STS-B", "SICK-R", "Avg")
_STS_SOURCES: dict[str, tuple[str, str]] = {
    "STS12": ("STS12", "all"),
    "STS13": ("STS13", "all"),
    "STS14": ("STS14", "all"),
    "STS15": ("STS15", "all"),
    "STS16": ("STS16", "all"),
    "STS-B": ("STSBenchmark", "spearman"),
    "SICK-R": ("SICKRelatedness", "spearman"),
}
TRANSFER_COLUMNS: tuple[str, ...] = ("MR", "CR", "SUBJ", "MPQA", "SST2", "TREC", "MRPC", "Avg")

Section = Literal["sts", "transfer"]

# A configuration is the cell without its seed; values are made hashable so configurations can key dicts.
ConfigKey = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class MetricsRecord:
    """The numbers of one metrics file (one student, one seed)."""

    path: Path
    cell: dict[str, Any]  # without "seed"
    seed: Any
    sts: dict[str, float] = field(default_factory=dict)  # STS_COLUMNS -> value (NaN where absent)
    # the STS columns the file scored (all seven unless `evaluate.sts_tasks` chose a subset; then Avg is theirs)
    sts_scored: tuple[str, ...] = ()
    transfer: dict[str, float] = field(default_factory=dict)  # TRANSFER_COLUMNS -> accuracy
    align: float = math.nan  # align_uniform.mcse_batch.avg (the MCSE/KDMCSE protocol, method.md §5.3)
    uniform: float = math.nan
    # from the student's run_meta.json (section `training`, `evaluate --run-meta`): the score the threshold
    # resolved to and the mean share of in-batch negatives each term's mask dropped (0 with the threshold off;
    # NaN where the metrics file does not say)
    threshold_value: float = math.nan
    mask_rate_image: float = math.nan
    mask_rate_text: float = math.nan

    @property
    def config(self) -> ConfigKey:
        return config_key(self.cell)


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def config_key(cell: dict[str, Any]) -> ConfigKey:
    return tuple(sorted((k, _hashable(v)) for k, v in cell.items() if k != "seed"))


def _number(value: Any) -> float:
    """A metric as float; null/missing/non-numeric become NaN (shown as "--" in the tables)."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _rounded_avg(values: Iterable[float]) -> float:
    # The original evaluation script averages the 2-decimal strings (method.md §5.2, §7.13).
    vals = [round(v, 2) for v in values]
    return sum(vals) / len(vals) if vals else math.nan


def _parse_sts(sts: dict[str, Any], path: Path) -> tuple[dict[str, float], tuple[str, ...]]:
    """The STS columns and which of them were scored; `sts.tasks` (written since task subsets exist) says which."""
    listed = sts.get("tasks")
    known = {task for task, _ in _STS_SOURCES.values()}
    if listed is not None and (not isinstance(listed, list) or not set(listed) <= known):
        raise KdmcseError(f"metrics file {path}: sts.tasks is not a list of STS task names; re-run `evaluate`")
    out: dict[str, float] = {}
    scored = []
    for col, (task, key) in _STS_SOURCES.items():
        entry = sts.get(task)
        if listed is not None and task not in listed:
            out[col] = math.nan  # not scored on purpose: shown as -- without a warning
            continue
        if entry is None:
            log.warning("%s: sts.%s is missing; shown as --", path, task)
        out[col] = _number(entry.get(key) if isinstance(entry, dict) else None)
        scored.append(col)
    if "avg" in sts:
        out["Avg"] = _number(sts["avg"])
    else:
        out["Avg"] = _rounded_avg(out[c] for c in _STS_SOURCES)
    return out, tuple(scored)


def _parse_transfer(transfer: dict[str, Any], path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for col in TRANSFER_COLUMNS[:-1]:
        entry = transfer.get(col)
        if entry is None:
            log.warning("%s: transfer.%s is missing; shown as --", path, col)
        out[col] = _number(entry.get("acc") if isinstance(entry, dict) else None)
    if "avg" in transfer:
        out["Avg"] = _number(transfer["avg"])
    else:
        vals = [out[c] for c in TRANSFER_COLUMNS[:-1]]
        out["Avg"] = sum(vals) / len(vals)
    return out


def read_metrics(path: str | Path, require: Section | None = None) -> MetricsRecord:
    """Parse one metrics JSON; `require` names the section the caller's table needs."""
    path = Path(path)
    if not path.is_file():
        raise KdmcseError(f"metrics file {path} does not exist; run `python -m kdmcse evaluate` for it first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise KdmcseError(f"metrics file {path} is not valid JSON ({exc}); re-run `evaluate` to rewrite it") from exc
    if not isinstance(data, dict) or not isinstance(data.get("cell"), dict):
        raise KdmcseError(f"metrics file {path} has no 'cell' object; pass `--cell key=value …` to `evaluate`")
    cell = dict(data["cell"])
    if "seed" not in cell:
        raise KdmcseError(f"metrics file {path}: cell has no 'seed'; pass `--cell seed=N` to `evaluate`")
    seed = cell.pop("seed")
    if require is not None and not isinstance(data.get(require), dict):
        flag = "sts" if require == "sts" else "transfer"
        raise KdmcseError(
            f"metrics file {path} has no '{require}' section; it is needed for this table "
            f"(write it with `evaluate --tasks {flag}` or pass the file under the right report flag)"
        )
    sts, sts_scored = _parse_sts(data["sts"], path) if isinstance(data.get("sts"), dict) else ({}, ())
    transfer = _parse_transfer(data["transfer"], path) if isinstance(data.get("transfer"), dict) else {}
    align = uniform = math.nan
    batch_avg = ((data.get("align_uniform") or {}).get("mcse_batch") or {}).get("avg")
    if isinstance(batch_avg, dict):
        align, uniform = _number(batch_avg.get("align")), _number(batch_avg.get("uniform"))
    threshold_value, rates = _training(data.get("training"))
    return MetricsRecord(path=path, cell=cell, seed=seed, sts=sts, sts_scored=sts_scored, transfer=transfer,
                         align=align, uniform=uniform, threshold_value=threshold_value, mask_rate_image=rates[0],
                         mask_rate_text=rates[1])


def _training(training: Any) -> tuple[float, tuple[float, float]]:
    """(resolved threshold score, (image, text) mask rates) of a metrics file's `training` section."""
    if not isinstance(training, dict):
        return math.nan, (math.nan, math.nan)
    threshold = training.get("threshold")
    if threshold is None:  # threshold filtering off: nothing was masked
        return math.nan, (0.0, 0.0)
    rate = training.get("mask_rate") or {}
    value = _number(threshold.get("value")) if isinstance(threshold, dict) else math.nan
    return value, (_number(rate.get("image")), _number(rate.get("text")))


def read_metrics_group(paths: Iterable[str | Path], require: Section | None = None) -> list[MetricsRecord]:
    """Read a group of files; two files for the same configuration and seed are an error (ambiguous), and so are
    STS files that scored different tasks (their Avg would not compare)."""
    records = [read_metrics(p, require) for p in paths]
    seen: dict[tuple[ConfigKey, Any], Path] = {}
    for rec in records:
        key = (rec.config, _hashable(rec.seed))
        if key in seen:
            raise KdmcseError(
                f"metrics files {seen[key]} and {rec.path} have the same cell and seed {rec.seed!r}; "
                "pass each student's metrics once per table"
            )
        seen[key] = rec.path
    if require == "sts" and records:
        first = records[0]
        for rec in records[1:]:
            if rec.sts_scored != first.sts_scored:
                raise KdmcseError(
                    f"metrics files {first.path} ({', '.join(first.sts_scored)}) and {rec.path} "
                    f"({', '.join(rec.sts_scored)}) scored different STS tasks, so their Avg does not compare; "
                    "re-run `evaluate` for all of them with the same evaluate.sts_tasks / --sts-tasks"
                )
    return records


def sts_scope(records: Iterable[MetricsRecord]) -> tuple[str, ...] | None:
    """The STS columns a group of records scored, or None when it is all seven (the paper's Avg)."""
    scored = next((r.sts_scored for r in records if r.sts_scored), None)
    if scored is None or len(scored) == len(_STS_SOURCES):
        return None
    return scored


def sts_scope_note(scored: tuple[str, ...]) -> str:
    """The table note that says Avg covers fewer tasks than the paper's seven (`scored`: from `sts_scope`)."""
    return (f"Only {', '.join(scored)} were scored (evaluate.sts_tasks): Avg is their mean and does not compare "
            "with the seven-task Avg of the paper.")
