"""The reported numbers (`config/paper_results.yaml`) that the tables put beside ours."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdmcse.errors import KdmcseError
from kdmcse.evaluate.metrics_io import STS_COLUMNS, TRANSFER_COLUMNS

TABLE_COLUMNS = {"sts": STS_COLUMNS, "transfer": TRANSFER_COLUMNS}
_REQUIRED = ("table", "objective", "backbone", "dataset", "label", "section", "source", "trust", "values")


@dataclass(frozen=True)
class PaperEntry:
    table: str  # sts | transfer
    objective: str  # matched against our cell's objective/backbone/dataset
    backbone: str
    dataset: str
    label: str
    section: str  # method.md section the number comes from
    source: str
    trust: str  # tag from method.md §0, e.g. SEC-DALR
    values: dict[str, float]  # column -> value; missing columns are NaN
    note: str = ""

    def matches(self, cell: dict[str, Any]) -> bool:
        return all(
            str(cell.get(key, "")).lower() == str(getattr(self, key)).lower()
            for key in ("objective", "backbone", "dataset")
        )

    def value(self, column: str) -> float:
        return self.values.get(column, math.nan)


def load_paper_results(path: str | Path | None) -> list[PaperEntry]:
    """Read and validate the file; None means "no reported numbers" (the tables then say so)."""
    if path is None:
        return []
    path = Path(path)
    if not path.is_file():
        raise KdmcseError(f"--paper file {path} does not exist; point it at config/paper_results.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise KdmcseError(f"--paper file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise KdmcseError(f"--paper file {path} needs a top-level 'entries:' list")
    entries = []
    for i, raw in enumerate(data["entries"]):
        where = f"{path}: entries[{i}]"
        if not isinstance(raw, dict):
            raise KdmcseError(f"{where} is not a mapping")
        missing = [k for k in _REQUIRED if k not in raw]
        if missing:
            raise KdmcseError(f"{where} lacks {', '.join(missing)}")
        table = raw["table"]
        if table not in TABLE_COLUMNS:
            raise KdmcseError(f"{where}: table must be one of {sorted(TABLE_COLUMNS)}, got {table!r}")
        values = raw["values"]
        if not isinstance(values, dict) or not values:
            raise KdmcseError(f"{where}: 'values' must map column names to numbers")
        unknown = sorted(set(values) - set(TABLE_COLUMNS[table]))
        if unknown:
            raise KdmcseError(f"{where}: unknown columns {unknown}; use {list(TABLE_COLUMNS[table])}")
        bad = [k for k, v in values.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
        if bad:
            raise KdmcseError(f"{where}: values for {bad} are not numbers (write 1.0e-5, not 1e-5)")
        entries.append(
            PaperEntry(
                table=table,
                objective=str(raw["objective"]),
                backbone=str(raw["backbone"]),
                dataset=str(raw["dataset"]),
                label=str(raw["label"]),
                section=str(raw["section"]),
                source=str(raw["source"]),
                trust=str(raw["trust"]),
                values={k: float(v) for k, v in values.items()},
                note=str(raw.get("note", "")),
            )
        )
    return entries
