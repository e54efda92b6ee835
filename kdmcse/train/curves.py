"""Training curves: one row per step with every value a step reports, written as `curves.csv` beside the model,
and the same values live in TensorBoard event files when `tensorboard` is installed.

The values come from the loop's `StepValues` (read from the device every `log_every` steps, so curves add no
device sync): the loss parts, the gradient norm, and whatever else a step reports (mask rates on paired steps);
the learning rate is known on the host; STS-B dev is added at each evaluation. Columns appear as values do, so
a new per-step value needs no change here. The rows live in the checkpoint, so a resumed run writes the same
CSV, byte for byte, as an uninterrupted one.
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Iterable

from kdmcse.io import atomic_path
from kdmcse.train.step_values import StepRecord

log = logging.getLogger(__name__)

FIRST_COLUMNS = ("step", "paired", "lr", "grad_norm", "total", "intra", "image", "text")
DEV_COLUMN = "stsb_dev"
TENSORBOARD_DIR = "tensorboard"


def _tag(name: str) -> str:
    """TensorBoard tag of a value: losses, optimiser values, dev score and everything else in their own groups."""
    if name in ("total", "intra", "image", "text"):
        return f"loss/{name}"
    if name in ("lr", "grad_norm"):
        return f"optim/{name}"
    if name == DEV_COLUMN:
        return "dev/stsb_spearman"
    return f"train/{name}"


def _cell(value: Any) -> str:
    """CSV text of a value: floats by their shortest exact repr (the same bytes on every run), blank if absent."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


class TrainingCurves:
    """Per-step rows (`step` -> values), the learning rate of each step, and an optional TensorBoard writer."""

    def __init__(self, tensorboard_dir: Path | None = None, start_step: int = 0) -> None:
        self.rows: dict[int, dict[str, Any]] = {}
        self._lr: dict[int, float] = {}
        self._written = start_step  # the last step TensorBoard has
        self._writer = _open_writer(tensorboard_dir, start_step) if tensorboard_dir is not None else None

    def learning_rate(self, step: int, lr: float) -> None:
        """The learning rate step `step` (1-based) was taken with (a host value: no device sync)."""
        self._lr[step] = lr

    def add(self, records: Iterable[StepRecord]) -> None:
        """Rows of the records read from the device; a step seen again (read twice) keeps one row."""
        for rec in records:
            row = self.rows.setdefault(rec.step, {"step": rec.step})  # the dev score may have come first
            row["paired"] = rec.paired
            if rec.step in self._lr:
                row["lr"] = self._lr.pop(rec.step)
            row.update(rec.values)
        self._to_tensorboard()

    def dev_score(self, step: int, score: float | None) -> None:
        """STS-B dev Spearman ×100 after step `step` (the selection's own score)."""
        if score is None:
            return
        self.rows.setdefault(step, {"step": step})[DEV_COLUMN] = float(score)
        if self._writer is not None:
            self._writer.add_scalar(_tag(DEV_COLUMN), float(score), step)

    def _to_tensorboard(self) -> None:
        if self._writer is None:
            return
        steps = sorted(s for s in self.rows if s > self._written)
        for step in steps:
            for name, value in self.rows[step].items():
                if name not in ("step", "paired", DEV_COLUMN) and isinstance(value, (int, float)):
                    self._writer.add_scalar(_tag(name), float(value), step)
        if steps:
            self._written = steps[-1]

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ------------------------------------------------------------ checkpoint and output
    def state_dict(self) -> dict[str, Any]:
        return {"rows": [self.rows[s] for s in sorted(self.rows)],
                "lr": [[s, lr] for s, lr in sorted(self._lr.items())]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = {int(r["step"]): dict(r) for r in state["rows"]}
        self._lr = {int(s): float(lr) for s, lr in state["lr"]}
        self._written = max(self._written, max(self.rows, default=0))

    def columns(self) -> list[str]:
        seen = {k for row in self.rows.values() for k in row}
        rest = sorted(seen - set(FIRST_COLUMNS) - {DEV_COLUMN})
        return [c for c in FIRST_COLUMNS if c in seen or c in ("step", "paired", "lr")] + rest + [DEV_COLUMN]

    def write_csv(self, path: Path) -> Path:
        """`curves.csv`: one row per step in step order; blank where a step has no such value."""
        columns = self.columns()
        with atomic_path(path, suffix=".csv.tmp") as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(columns)
                for step in sorted(self.rows):
                    writer.writerow([_cell(self.rows[step].get(c)) for c in columns])
        return path


def _open_writer(folder: Path, start_step: int) -> Any:
    """A TensorBoard `SummaryWriter`, or None when `tensorboard` is not installed (an optional extra).

    A fresh run empties the folder (events of an earlier run would mix in); a resumed one purges the events
    after its checkpoint step, which the killed run may have written before it stopped. TensorBoard purges from
    `purge_step` on, so that is the first step the resumed run takes: the checkpoint step's own events stay.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed (pip install 'kdmcse[tensorboard]'): curves go to curves.csv only")
        return None
    if start_step == 0 and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(folder), purge_step=start_step + 1 if start_step else None)
