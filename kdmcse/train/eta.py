"""The line a training job's log opens with, and its ETA.

    train wiki+flickr/bert/kdmcse margin=0.15 threshold=off, seed 0 | model bert-base-uncased | device cuda:0
    (NVIDIA H200) | precision tf32 | 15,234 steps (2,178 paired) | ETA 1h 52m (0.44 s/step over steps 2-11; STS-B
    dev every 125 steps comes on top)

The step time is measured over the first few steps: the clock is read after the first step and after the probe,
each time right after the step values were read from the device (a sync), so queued GPU work is counted; the
first step is left out of the rate where the probe is longer (it pays for kernel selection and memory
allocation). The two reads are the only syncs this adds to a run. Later log lines give the ETA from the whole
run so far, evaluations included.
"""

from __future__ import annotations

import time
from typing import Callable

PROBE_STEPS = 10  # steps timed after the first before the opening line is written


def format_duration(seconds: float) -> str:
    """12s, 5m 12s, 1h 52m, 3d 4h."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


class StepTimer:
    """Wall-clock marks at the start of the loop, after its first step and after the probe.

    The probe ends after at most `PROBE_STEPS` steps past the first, a tenth of the run, and before the first
    log line or STS-B dev evaluation, so that the opening line comes first and the rate holds no evaluation.
    """

    def __init__(self, start: int, total: int, log_every: int, eval_steps: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.start, self.total, self.clock = start, total, clock
        self.first = min(total, start + 1)
        next_log = (start // log_every + 1) * log_every
        next_eval = (start // eval_steps + 1) * eval_steps
        span = min(PROBE_STEPS, max(1, (total - self.first) // 10))
        self.probe_end = max(self.first, min(total, self.first + span, next_log, next_eval))
        self.marks: dict[int, float] = {start: clock()}

    def wants(self, done: int) -> bool:
        """Whether the loop should read the device and `mark` after step `done`."""
        return done in (self.first, self.probe_end) and done not in self.marks

    def mark(self, done: int) -> None:
        self.marks[done] = self.clock()

    def seconds_per_step(self) -> float | None:
        """Over the probe; from the first step alone (warm-up included) when the probe is that step."""
        a, b = (self.first, self.probe_end) if self.probe_end > self.first else (self.start, self.first)
        if a in self.marks and b in self.marks and b > a:
            return (self.marks[b] - self.marks[a]) / (b - a)
        return None

    def eta(self, done: int, now: float | None = None) -> float | None:
        """Seconds left after step `done`: from the probe's rate, or from the whole run once it is past it."""
        if done >= self.total:
            return 0.0
        now = self.clock() if now is None else now
        if done > self.probe_end and self.first in self.marks and now > self.marks[self.first]:
            rate: float | None = (now - self.marks[self.first]) / (done - self.first)
        else:
            rate = self.seconds_per_step()
        return None if rate is None else rate * (self.total - done)


def opening_line(*, cell: str, seed: int, model: str, device: str, precision: str, total: int, paired: int,
                 start: int, timer: StepTimer, eval_steps: int) -> str:
    """One line naming the job and what it will cost (see module doc)."""
    steps = f"{total:,} steps ({paired:,} paired)" + (f", resumed at step {start:,}" if start else "")
    rate = timer.seconds_per_step() or 0.0
    eta = timer.eta(timer.probe_end) or 0.0
    if timer.probe_end > timer.first + 1:
        over = f"steps {timer.first + 1}-{timer.probe_end}"
    elif timer.probe_end > timer.first:
        over = f"step {timer.probe_end}"
    else:
        over = f"step {timer.first}, warm-up included"
    when = f"ETA {format_duration(eta)} ({rate:.3g} s/step over {over}; STS-B dev every {eval_steps:,} steps on top)"
    return (f"train {cell}, seed {seed} | model {model} | device {device} | precision {precision} | {steps} | "
            f"{when}")
