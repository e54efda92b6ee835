"""Train one student: SimCSE, MCSE or KDMCSE, with the published trainer's mixing, optimiser and selection.

```
python -m kdmcse train --run-config JSON_OR_@FILE --text wiki.parquet
       [--pairs captions.parquet --teacher DIR] [--senteval DIR] --seed N --out DIR
```

What it reproduces (method §1.3–§4.1): text-only and image–caption batches interleaved by a fixed step
(`kdmcse.train.mixing`); each sentence encoded twice in one forward (dropout views); AdamW (eps 1e-6, no weight
decay) over every parameter with a linear decay to 0 and no warm-up; gradient clipping at 1.0; STS-B dev
Spearman every `eval_steps` and at the last step, keeping the strictly best model. Resumable checkpoints every
`checkpoint_minutes` and on SIGTERM/SIGUSR1 (`kdmcse.train.checkpoint_policy`) let a killed or preempted job
resume to the same result. The loss parts and the gradient norm stay on the device and are read every `log_every`
steps (`kdmcse.train.step_values`): no step waits for the GPU. Every value read goes into the training curves
(`curves.csv` beside the model, and TensorBoard when installed: `kdmcse.train.curves`), and the log opens with one
line naming the job and its ETA (`kdmcse.train.eta`). Under torchrun each process encodes a shard of every
batch and the loss is computed on the gathered global batch (`kdmcse.train.distributed`).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from platform import node
from typing import Any, Callable

import numpy as np
import torch

from kdmcse.errors import KdmcseError
from kdmcse.grid import is_quantile
from kdmcse.io import write_json
from kdmcse.train.checkpoint import (
    Checkpoint,
    capture_rng_state,
    load_checkpoint,
    remove_checkpoint,
    restore_rng_state,
    run_fingerprint,
    save_checkpoint,
)
from kdmcse.train.checkpoint_policy import CheckpointPolicy, StopSignals, TrainingInterrupted
from kdmcse.train.curves import TENSORBOARD_DIR, TrainingCurves
from kdmcse.train.eta import StepTimer, format_duration, opening_line
from kdmcse.train.distributed import (
    DistContext,
    all_reduce_max,
    average_gradients,
    barrier,
    gather_objects,
    init_distributed,
    shutdown_distributed,
)
from kdmcse.train.host import cell_label, device_name, device_text, versions
from kdmcse.train.inputs import Inputs, TrainData, build_data, check_inputs, data_info
from kdmcse.train.losses import LossSettings
from kdmcse.train.mixing import MixedBatches, MixSchedule, mixing_schedule
from kdmcse.train.model import StudentModel, load_tokenizer, save_student
from kdmcse.train.precision import autocast_for, check_precision, make_scaler, tf32_mode
from kdmcse.train.run_config import load_run_config, result_config, validate_run_config
from kdmcse.train.selection import DevSelection
from kdmcse.train.step import (
    check_shardable,
    linear_decay,
    make_batch,
    make_optimizer,
    pick_device,
    set_seed,
    step_losses,
)
from kdmcse.train.step_values import StepValues, first_non_finite, means
from kdmcse.train.thresholds import resolve_threshold

log = logging.getLogger(__name__)

LOSS_PARTS = ("intra", "image", "text", "total")  # step values that stop the run when not finite
# Called with the number of completed steps after each step's evaluation and checkpoint; tests use it to
# simulate a job killed mid-run.
STEP_END_HOOK: Callable[[int], None] | None = None
# The wall clock of the checkpoint policy (tests replace it to make checkpoints fall on chosen steps).
CLOCK: Callable[[], float] = time.monotonic


@dataclass
class Run:
    """Everything one training run carries from step to step."""

    cfg: dict[str, Any]
    settings: LossSettings
    inputs: Inputs
    ctx: DistContext
    device: torch.device
    autocast: Callable[[], Any]
    schedule: MixSchedule
    fingerprint: str
    ckpt_dir: Path
    tokenizer: Any
    student: StudentModel
    data: TrainData
    batches: MixedBatches
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    selection: DevSelection
    values: StepValues  # per-step device values, with whole-run totals (mask rates) that a checkpoint keeps
    threshold: dict[str, Any] | None = None  # the settled threshold (kdmcse.train.thresholds), for run_meta.json
    start_step: int = 0
    curves: TrainingCurves | None = None
    seed: int = 0
    label: str = ""  # the cell, for the opening line


# ---------------------------------------------------------------- set-up
def set_up(cfg: dict[str, Any], settings: LossSettings, inputs: Inputs, ctx: DistContext, *, seed: int,
           out: Path, show_progress: bool, label: str = "", threshold: dict[str, Any] | None = None) -> Run:
    """Build the run, or continue the checkpointed one; whatever can refuse it comes before the model loads."""
    device = pick_device(ctx)
    check_precision(cfg["precision"], device)
    autocast = autocast_for(cfg["precision"], device)
    n_text, n_pair = len(inputs.texts), len(inputs.captions) if inputs.captions is not None else 0
    check_shardable(cfg["batch_size"], n_text, n_pair, ctx.world_size)
    schedule = mixing_schedule(n_text, n_pair, cfg["batch_size"], cfg["epochs"], cfg["max_steps"])
    result = result_config(cfg)
    if is_quantile(cfg["threshold"]):  # the score it resolved to follows from the statistics, not the config
        result["threshold_value"] = settings.threshold
    fingerprint = run_fingerprint(result, seed, data_info(inputs), ctx.world_size)
    ckpt_dir = out / "checkpoint"
    saved = load_checkpoint(ckpt_dir, fingerprint)

    set_seed(seed)  # before model init: the heads' random init depends on it
    tokenizer = load_tokenizer(cfg["model"])
    teacher_dim = inputs.teacher.dim if inputs.teacher is not None else None
    student = StudentModel.from_pretrained(cfg["model"], proj_dim=cfg["proj_dim"], teacher_dim=teacher_dim,
                                           head_init=cfg["head_init"])
    student.to(device)
    student.train()

    data = build_data(inputs, tokenizer, cfg["max_seq_length"], show_progress=show_progress and ctx.is_main)
    batches = MixedBatches(schedule, n_text, n_pair, cfg["batch_size"], seed)
    params = list(student.parameters())
    optimizer = make_optimizer(params, cfg["lr"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_decay(schedule.total_steps))
    scaler = make_scaler(cfg["precision"], device)
    set_seed(seed + ctx.rank)  # again after loaders/optimiser, as the published trainer does
    log.debug("schedule: %s", schedule)  # the opening line gives the step counts; run_meta.json the rest

    run = Run(cfg, settings, inputs, ctx, device, autocast, schedule, fingerprint,
              ckpt_dir, tokenizer, student, data, batches, params, optimizer, scheduler, scaler,
              DevSelection(inputs.senteval, cfg["pooling"]), StepValues(), threshold, seed=seed,
              label=label or str(out))
    if saved is not None:
        resume(run, saved)
    run.curves = TrainingCurves(out / TENSORBOARD_DIR if ctx.is_main else None, run.start_step)
    if saved is not None and "curves" in saved.state:
        run.curves.load_state_dict(saved.state["curves"])
    return run


def resume(run: Run, saved: Checkpoint) -> None:
    """Put a run back where its checkpoint left it."""
    state = saved.state
    run.student.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    # An uninterrupted run carries zero (not None) gradients from step to step (`zero_grad(set_to_none=False)`),
    # and AdamW moves a parameter with a zero gradient by its momentum but skips one without a gradient: the
    # heads unused on a text-only step would stand still after a resume without this.
    for p, had_grad in zip(run.params, state["grad_present"], strict=True):
        if had_grad:
            p.grad = torch.zeros_like(p)
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    run.batches.load_state_dict(state["loaders"])
    restore_rng_state(state["rng"][run.ctx.rank])
    run.selection.load_state_dict(state["selection"], saved.best_weights)
    run.values = StepValues(totals=state.get("step_totals"))
    run.start_step = saved.step


# ---------------------------------------------------------------- the step
def train_step(run: Run, paired: bool, global_rows: np.ndarray) -> dict[str, torch.Tensor]:
    """One optimisation step; returns its loss parts and gradient norm (before clipping) as device tensors
    (nothing here waits for the device).

    A non-finite loss is caught when the values are read (`check_finite`), at the latest before the next
    evaluation or checkpoint, so no checkpoint and no selected model ever holds the weights it produced.
    """
    batch = make_batch(run.data, paired, global_rows, run.ctx, run.device)
    losses = step_losses(run.student, batch, run.settings, run.ctx, run.autocast)
    run.scaler.scale(losses["total"]).backward()
    average_gradients(run.params, run.ctx)
    run.scaler.unscale_(run.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, 1.0)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    # zero (not None) as torch 1.x did in the published trainer: AdamW keeps moving the heads on
    # text-only steps from their momentum, exactly as there
    run.optimizer.zero_grad(set_to_none=False)
    return {**losses, "grad_norm": grad_norm}


def check_finite(run: Run, values: StepValues) -> None:
    """Read the queued step values (one device sync) and stop at the first step whose loss is NaN/inf."""
    bad = first_non_finite(values.read(), LOSS_PARTS)
    if bad is not None:
        parts = ", ".join(f"{k}={v:.6g}" for k, v in bad.values.items())
        raise KdmcseError(
            f"non-finite loss at step {bad.step} ({'paired' if bad.paired else 'text-only'} batch): {parts}. "
            f"The last good checkpoint (if any) is kept in {run.ckpt_dir}; lower lr or use precision fp32"
        )


def log_values(run: Run, values: StepValues, done: int, bar: Any, timer: StepTimer) -> None:
    """Check, record (curves) and log the mean of every value since the last log line."""
    check_finite(run, values)
    records = values.take()
    run.curves.add(records)
    mean = means(records)
    if bar is not None:
        bar.set_postfix({k: f"{v:.4f}" for k, v in mean.items()}, refresh=False)
    eta = timer.eta(done)
    log.info("step %d/%d lr %.3g %s%s", done, run.schedule.total_steps, run.scheduler.get_last_lr()[0],
             " ".join(f"{k}={v:.4f}" for k, v in mean.items()), "" if eta is None else f" | ETA {format_duration(eta)}")


# ---------------------------------------------------------------- evaluation/selection and checkpointing
def evaluate(run: Run, done: int) -> None:
    """STS-B dev on the main process (the others wait at the barrier)."""
    if run.ctx.is_main:
        run.curves.dev_score(done, run.selection.evaluate(run.student, run.tokenizer, done))
    barrier(run.ctx)


def checkpoint(run: Run, done: int) -> None:
    """Save what an uninterrupted run carries to the next step (every process's RNG; one writer)."""
    rng = gather_objects(capture_rng_state(), run.ctx)
    if run.ctx.is_main:
        best = run.selection.best
        save_checkpoint(run.ckpt_dir, {
            "step": done, "model": run.student.state_dict(), "optimizer": run.optimizer.state_dict(),
            "grad_present": [p.grad is not None for p in run.params],
            "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
            "loaders": run.batches.state_dict(), "rng": rng, "selection": run.selection.state_dict(),
            "curves": run.curves.state_dict(), "step_totals": run.values.totals(),
        }, run.fingerprint, best_step=best["step"] if best["state"] is not None else None,
            best_weights=best["state"])
    barrier(run.ctx)


def checkpoint_decision(run: Run, done: int, policy: CheckpointPolicy, stop: StopSignals) -> tuple[bool, int]:
    """(write a checkpoint now, the stop signal received or 0), the same on every process.

    A single process decides at every step boundary from host values alone. Processes under torchrun must
    agree (each has its own clock and may get the signal alone); they do so every `log_every` steps, where
    the loss values are read anyway, so the agreement adds no wait of its own to the other steps.
    """
    if done >= run.schedule.total_steps:
        return False, 0  # the outputs are written next: nothing to resume
    due, signum = policy.due(done), stop.received or 0
    if not run.ctx.enabled:
        return due or bool(signum), signum
    if done % run.cfg["log_every"]:
        return False, 0
    due, signum = all_reduce_max([int(due), signum], run.ctx, run.device)
    return bool(due or signum), signum


# ---------------------------------------------------------------- outputs
def mask_rates(run: Run) -> dict[str, Any] | None:
    """Mean share of in-batch negatives each term's mask dropped over the run's paired steps (None: no mask)."""
    if run.threshold is None:
        return None
    totals = run.values.totals()
    return {"image": run.values.run_mean("mask_rate_image"), "text": run.values.run_mean("mask_rate_text"),
            "paired_steps": int(totals.get("mask_rate_image", [0.0, 0])[1])}


def finish(run: Run, *, seed: int, text: Path, out: Path, pairs: Path | None, teacher: Path | None,
           senteval: Path | None, paired_done: int, started: float) -> dict[str, Any]:
    """Load the selected weights and write model/, heads.pt and run_meta.json (the completion marker).

    run_meta.json holds only what follows from the inputs and the seed, so two runs give the same bytes; the wall
    time, the device's name and a resume go to run_host.json beside it (not a declared output).
    """
    best = run.selection.best
    if best["state"] is not None:
        run.student.load_state_dict(best["state"])
        selection = "best STS-B dev spearman (strictly greater)"
    else:
        selection = "none (no --senteval): final model"
    has_pairs = run.data.pairs is not None
    meta = {
        "run_config": run.cfg, "seed": seed,
        "inputs": {"text": str(text), "pairs": str(pairs) if has_pairs else None,
                   "teacher": str(teacher) if has_pairs else None,
                   "senteval": str(senteval) if senteval is not None else None, **run.data.info},
        "versions": versions(), "device_type": run.device.type, "world_size": run.ctx.world_size,
        "schedule": run.schedule.to_dict(), "total_steps": run.schedule.total_steps, "paired_steps": paired_done,
        "selection": selection, "best_dev_spearman": best["score"], "best_step": best["step"],
        "dev_history": run.selection.history,
        "threshold": run.threshold, "mask_rate": mask_rates(run),
    }
    host = {"device": device_name(run.device), "host": node(), "resumed_from_step": run.start_step or None,
            "wall_time_s": round(time.time() - started, 3)}
    save_student(run.student, run.tokenizer, out / "model", pooling=run.cfg["pooling"])
    run.curves.write_csv(out / "curves.csv")
    write_json(out / "run_host.json", host)
    write_json(out / "run_meta.json", meta)
    remove_checkpoint(run.ckpt_dir)
    return meta


# ---------------------------------------------------------------- the run
def train(
    run_config: dict[str, Any],
    *,
    text: Path,
    out: Path,
    seed: int,
    pairs: Path | None = None,
    teacher: Path | None = None,
    senteval: Path | None = None,
    score_stats: Path | None = None,
    show_progress: bool = True,
    label: str = "",
) -> dict[str, Any]:
    """Train one student and write `out/` (see module doc). Returns the run metadata.

    `label` names the job (its cell) in the log's opening line. `score_stats` (the teacher cache's score
    statistics) resolves a quantile threshold and predicts the mask rate of any threshold before the model loads
    (`kdmcse.train.thresholds`). Raises `TrainingInterrupted` after saving a checkpoint when the job gets SIGTERM
    or SIGUSR1.
    """
    cfg = validate_run_config(run_config)
    inputs = check_inputs(cfg, text, pairs, teacher, senteval)
    threshold = resolve_threshold(cfg, score_stats, cache_meta=inputs.teacher.meta if inputs.teacher else None,
                                  where=str(out))
    settings = LossSettings.from_run_config({**cfg, "threshold": threshold["value"] if threshold else None})
    ctx = init_distributed()
    run = None
    try:
        started = time.time()
        run = set_up(cfg, settings, inputs, ctx, seed=seed, out=out, show_progress=show_progress, label=label,
                     threshold=threshold)
        with StopSignals() as stop, tf32_mode(cfg["precision"], run.device):
            paired_done = run_steps(run, stop, show_progress=show_progress)
            meta: dict[str, Any] = {}
            if ctx.is_main:
                meta = finish(run, seed=seed, text=text, out=out, pairs=pairs, teacher=teacher,
                              senteval=senteval, paired_done=paired_done, started=started)
        barrier(ctx)
        return meta
    finally:
        if run is not None and run.curves is not None:
            run.curves.close()
        shutdown_distributed(ctx)


def announce(run: Run, timer: StepTimer) -> None:
    """The log's opening line: the job, its device and precision, its steps and its ETA."""
    total = run.schedule.total_steps
    log.info("%s", opening_line(cell=run.label, seed=run.seed, model=run.cfg["model"],
                                device=device_text(run.device, run.ctx.world_size), precision=run.cfg["precision"],
                                total=total, paired=run.schedule.paired_steps_until(total), start=run.start_step,
                                timer=timer, eval_steps=run.cfg["eval_steps"]))


def run_steps(run: Run, stop: StopSignals, *, show_progress: bool) -> int:
    """Train from `run.start_step` to the last step; returns the number of paired steps done in the whole run."""
    from tqdm.auto import tqdm

    cfg, total = run.cfg, run.schedule.total_steps
    values = run.values
    policy = CheckpointPolicy(cfg["checkpoint_minutes"], total, run.start_step, clock=CLOCK)
    timer = StepTimer(run.start_step, total, cfg["log_every"], cfg["eval_steps"])
    paired_done = run.schedule.paired_steps_until(run.start_step)
    bar = None
    for step in range(run.start_step, total):
        paired, global_rows = next(run.batches)
        done = step + 1
        run.curves.learning_rate(done, run.scheduler.get_last_lr()[0])
        values.add(done, paired, train_step(run, paired, global_rows))
        paired_done += int(paired)
        if run.ctx.is_main and timer.wants(done):
            values.read()  # waits for the device, so that the clock sees the steps done, not just queued
            timer.mark(done)
            if done == timer.probe_end:
                announce(run, timer)
        if bar is None and (done == timer.probe_end or not run.ctx.is_main):
            # the bar starts after the opening line, so that the line opens the log
            bar = tqdm(total=total, initial=done, desc="train", unit="step",
                       disable=not (show_progress and run.ctx.is_main))
        elif bar is not None:
            bar.update(1)
        if done % cfg["log_every"] == 0 or done == total:
            log_values(run, values, done, bar, timer)
        if done % cfg["eval_steps"] == 0 or done == total:
            check_finite(run, values)
            evaluate(run, done)
        write, signum = checkpoint_decision(run, done, policy, stop)
        if write:
            check_finite(run, values)
            run.curves.add(values.read())  # the rows of every step up to here go into the checkpoint
            checkpoint(run, done)
            policy.written(done)
            if signum:
                if bar is not None:
                    bar.close()
                run.curves.flush()
                raise TrainingInterrupted(signum, done, run.ckpt_dir)
        if STEP_END_HOOK is not None:
            STEP_END_HOOK(done)
    if bar is not None:
        bar.close()
    return paired_done


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdmcse train", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-config", required=True, help="run config as JSON, or @file.json")
    p.add_argument("--text", required=True, type=Path, help="wiki.parquet (column text)")
    p.add_argument("--pairs", type=Path, help="captions_<name>.parquet (mcse/kdmcse)")
    p.add_argument("--teacher", type=Path, help="teacher cache folder of those captions (mcse/kdmcse)")
    p.add_argument("--senteval", type=Path, help="SentEval data folder (holds STS/); enables dev selection")
    p.add_argument("--score-stats", type=Path,
                   help="score statistics of the teacher cache (`teacher scores`): resolves a quantile threshold "
                        "and predicts a threshold's mask rate")
    p.add_argument("--seed", required=True, type=int)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars (logging only)")
    p.add_argument("--cell", nargs="*", default=[], metavar="KEY=VALUE",
                   help="the grid cell this student belongs to, named in the log's opening line and in run_meta.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_run_config(args.run_config)
    try:
        train(cfg, text=args.text, out=args.out, seed=args.seed, pairs=args.pairs, teacher=args.teacher,
              senteval=args.senteval, score_stats=args.score_stats, show_progress=not args.no_progress,
              label=cell_label(args.cell))
    except TrainingInterrupted as stop:
        log.error("%s", stop)
        return stop.exit_code
    return 0
