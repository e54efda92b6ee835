"""Per-step scalars (the loss parts, and whatever else a step reports) kept on the device between reads.

Reading a CUDA tensor on the host waits for every kernel queued before it; doing that on every step leaves the
GPU idle while the host prepares the next batch. The loop therefore `add`s each step's values as device tensors
and `read`s them in one transfer every `log_every` steps (and before an evaluation or a checkpoint). A step may
report any set of 0-d tensors: adding a value (a mask rate, a gradient norm) costs no extra sync.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch


@dataclass(frozen=True)
class StepRecord:
    """The host values of one finished step (1-based `step`)."""

    step: int
    paired: bool
    values: dict[str, float]


class StepValues:
    """A queue of per-step device values, moved to the host in one copy per `read`."""

    def __init__(self, totals: dict[str, list[float]] | None = None) -> None:
        self._pending: list[tuple[int, bool, tuple[str, ...], torch.Tensor]] = []
        self._records: list[StepRecord] = []
        # key -> [sum, count] over every step read so far (the whole run, across a resume: see `totals`)
        self._totals: dict[str, list[float]] = {k: [float(v[0]), int(v[1])] for k, v in (totals or {}).items()}

    def __len__(self) -> int:
        return len(self._pending) + len(self._records)

    def add(self, step: int, paired: bool, values: dict[str, torch.Tensor]) -> None:
        """Queue the values of finished step `step` (no host sync: one small stack on the device)."""
        names = tuple(values)
        stacked = torch.stack([v.detach().reshape(()).float() for v in values.values()])
        self._pending.append((step, paired, names, stacked))

    def read(self) -> list[StepRecord]:
        """Move every queued value to the host (one device->host copy) and return the records not yet taken."""
        if self._pending:
            flat = torch.cat([t for *_, t in self._pending]).tolist()
            offset = 0
            for step, paired, names, _ in self._pending:
                record = StepRecord(step, paired, dict(zip(names, flat[offset : offset + len(names)])))
                self._records.append(record)
                for k, v in record.values.items():
                    total = self._totals.setdefault(k, [0.0, 0])
                    total[0] += v
                    total[1] += 1
                offset += len(names)
            self._pending.clear()
        return list(self._records)

    def totals(self) -> dict[str, list[float]]:
        """{key: [sum, count]} over every step read so far: plain data, saved in a checkpoint so that a resumed
        run's whole-run means (`run_mean`) equal an uninterrupted run's."""
        return {k: [v[0], v[1]] for k, v in self._totals.items()}

    def run_mean(self, key: str) -> float | None:
        """Mean of `key` over every step read so far that reported it (None when none did)."""
        total = self._totals.get(key)
        return total[0] / total[1] if total and total[1] else None

    def take(self) -> list[StepRecord]:
        """`read`, then forget the records (the caller has logged them)."""
        records = self.read()
        self._records.clear()
        return records


def first_non_finite(records: Iterable[StepRecord], keys: Iterable[str] | None = None) -> StepRecord | None:
    """The earliest record with a NaN/inf among `keys` (all its values when None)."""
    wanted = None if keys is None else set(keys)
    for rec in records:
        if any(not math.isfinite(v) for k, v in rec.values.items() if wanted is None or k in wanted):
            return rec
    return None


def means(records: Iterable[StepRecord]) -> dict[str, float]:
    """Mean of each value over the records that have it (image/text parts exist on paired steps only)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for rec in records:
        for k, v in rec.values.items():
            sums[k] = sums.get(k, 0.0) + v
            counts[k] = counts.get(k, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}
