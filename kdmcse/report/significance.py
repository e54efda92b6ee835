"""Paired tests across seeds: does a method beat its baseline on the same seeds?

Seeds pair the runs (same data order and initialisation of the shared parts), so the paired t-test
(`scipy.stats.ttest_rel`) is used; the Wilcoxon signed-rank test is added only from 6 pairs on, below which
its smallest attainable two-sided p (1/16 at n=5) makes it uninformative.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from scipy import stats

WILCOXON_MIN_N = 6


@dataclass(frozen=True)
class PairedTest:
    """Result of comparing `treatment` with `baseline` over the seeds both have a finite value for."""

    n: int
    seeds: tuple[Any, ...]
    mean_diff: float  # mean of (treatment − baseline)
    t_stat: float
    t_p: float  # NaN when not testable
    wilcoxon_p: float  # NaN when not applicable
    note: str  # "" when both tests ran, else why not

    @property
    def testable(self) -> bool:
        return self.n >= 2


def paired_seed_test(treatment: Mapping[Any, float], baseline: Mapping[Any, float]) -> PairedTest:
    """Pair the two runs by seed and test the differences (two-sided)."""
    seeds = tuple(
        s
        for s in sorted(set(treatment) & set(baseline), key=lambda s: (str(type(s)), s))
        if math.isfinite(treatment[s]) and math.isfinite(baseline[s])
    )
    a = np.array([treatment[s] for s in seeds], dtype=float)
    b = np.array([baseline[s] for s in seeds], dtype=float)
    n = len(seeds)
    mean_diff = float(np.mean(a - b)) if n else math.nan
    if n < 2:
        return PairedTest(n, seeds, mean_diff, math.nan, math.nan, math.nan, f"not testable (n={n} paired seeds)")
    notes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant differences: scipy returns NaN and warns
        t = stats.ttest_rel(a, b)
    t_stat, t_p = float(t.statistic), float(t.pvalue)
    if not math.isfinite(t_p):
        notes.append("t-test undefined: the differences are constant")
    w_p = math.nan
    if n < WILCOXON_MIN_N:
        notes.append(f"Wilcoxon n/a (n<{WILCOXON_MIN_N})")
    elif np.all(a == b):
        notes.append("Wilcoxon undefined: all differences are zero")
    else:
        w_p = float(stats.wilcoxon(a, b).pvalue)
    return PairedTest(n, seeds, mean_diff, t_stat, t_p, w_p, "; ".join(notes))


def format_test(test: PairedTest) -> str:
    """One plain-text line: n, mean difference, p values (or why there are none)."""
    if not test.testable:
        diff = f", mean diff {test.mean_diff:+.2f}" if test.n == 1 else ""
        return f"{test.note}{diff}"
    parts = [f"n={test.n}", f"mean diff {test.mean_diff:+.2f}"]
    if math.isfinite(test.t_p):
        parts.append(f"paired t-test p={test.t_p:.3g}")
    if math.isfinite(test.wilcoxon_p):
        parts.append(f"Wilcoxon p={test.wilcoxon_p:.3g}")
    if test.note:
        parts.append(test.note)
    return ", ".join(parts)
