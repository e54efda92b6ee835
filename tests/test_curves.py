"""Training curves (`curves.csv`, TensorBoard) and the log's opening line with its ETA."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch

from kdmcse.train import loop as train_mod
from kdmcse.train.curves import TrainingCurves
from kdmcse.train.eta import StepTimer, format_duration, opening_line
from kdmcse.train.host import cell_label, device_text
from kdmcse.train.step_values import StepRecord
from test_train import cli, data, run_config  # noqa: F401  (data: a fixture)

MAX_STEPS, EVAL_STEPS, LOG_EVERY = 6, 2, 4


def read_curves(out: Path) -> list[dict[str, str]]:
    with open(out / "curves.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tiny_bert_dir, data, tmp_path_factory) -> tuple[Path, list[logging.LogRecord]]:
    """One run whose steps report an extra scalar on paired steps, as a new loss part would."""
    out = tmp_path_factory.mktemp("curves") / "student"
    original = train_mod.train_step

    def with_extra(run, paired, rows):
        values = original(run, paired, rows)
        if paired:
            values["mask_rate_image"] = torch.tensor(0.25, device=run.device)
        return values

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("kdmcse")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    mp = pytest.MonkeyPatch()
    mp.setattr(train_mod, "train_step", with_extra)
    try:
        cfg = run_config(tiny_bert_dir, max_steps=MAX_STEPS, eval_steps=EVAL_STEPS, log_every=LOG_EVERY)
        assert train_mod.main(cli(cfg, data, out) + ["--cell", "dataset=wiki+tiny", "backbone=tiny",
                                                     "objective=kdmcse", "margin=0.15", "threshold=off"]) == 0
    finally:
        mp.undo()
        logger.removeHandler(handler)
        logger.setLevel(level)
    return out, records


def test_curves_csv_has_one_row_per_step_with_every_value(trained):
    out, _ = trained
    rows = read_curves(out)
    assert [int(r["step"]) for r in rows] == list(range(1, MAX_STEPS + 1))
    columns = list(rows[0])
    assert columns[:5] == ["step", "paired", "lr", "grad_norm", "total"]
    assert columns[-1] == "stsb_dev"
    # a value the loop knows nothing about still gets its column, on the steps that report it
    assert "mask_rate_image" in columns
    for r in rows:
        assert float(r["grad_norm"]) > 0 and float(r["total"]) == float(r["total"])
        assert (r["mask_rate_image"] == "0.25") == (r["paired"] == "1")
        assert (r["image"] != "") == (r["paired"] == "1")
    assert {r["paired"] for r in rows} == {"0", "1"}, "the fixture mixes text-only and paired steps"
    # the learning rate decays linearly to 0 from the configured one (no warm-up)
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(1e-3) and all(a > b for a, b in zip(lrs, lrs[1:]))
    # STS-B dev at every evaluation, the same score the selection kept in run_meta.json
    import json

    meta = json.loads((out / "run_meta.json").read_text())
    dev = {int(r["step"]): float(r["stsb_dev"]) for r in rows if r["stsb_dev"]}
    assert dev == {h["step"]: h["stsb_dev_spearman"] for h in meta["dev_history"]}
    assert sorted(dev) == list(range(EVAL_STEPS, MAX_STEPS + 1, EVAL_STEPS))


def test_tensorboard_events_hold_the_same_curves(trained):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = trained
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/total", "optim/lr", "optim/grad_norm", "dev/stsb_spearman", "train/mask_rate_image"} <= tags
    rows = read_curves(out)
    assert [e.step for e in acc.Scalars("loss/total")] == [int(r["step"]) for r in rows]
    assert [e.value for e in acc.Scalars("optim/grad_norm")] == pytest.approx([float(r["grad_norm"]) for r in rows])
    assert [e.step for e in acc.Scalars("dev/stsb_spearman")] == [int(r["step"]) for r in rows if r["stsb_dev"]]


def test_the_log_opens_with_one_line_naming_the_job(trained):
    _, records = trained
    lines = [r.getMessage() for r in records if r.name.startswith("kdmcse.train")]
    first = lines[0]
    assert first.startswith("train wiki+tiny/tiny/kdmcse margin=0.15 threshold=off, seed 7 | model ")
    for part in ("| device cpu", "| precision fp32 |", f"| {MAX_STEPS} steps (", " paired) |", "| ETA "):
        assert part in first, f"{part!r} missing from the opening line: {first}"
    assert not any(line.startswith("step ") for line in lines[:1])
    # later step lines carry the ETA from the run so far
    assert any(line.startswith(f"step {LOG_EVERY}/{MAX_STEPS}") and "| ETA " in line for line in lines)


def test_curves_state_round_trip_and_rows_read_twice_stay_one():
    c = TrainingCurves()
    c.learning_rate(1, 0.1)
    c.learning_rate(2, 0.05)
    c.add([StepRecord(1, False, {"total": 1.0, "grad_norm": 2.0})])
    c.add([StepRecord(1, False, {"total": 1.0, "grad_norm": 2.0}), StepRecord(2, True, {"total": 0.5, "x": 3.0})])
    c.dev_score(2, 71.5)
    c.dev_score(4, None)  # no SentEval folder: nothing recorded
    d = TrainingCurves()
    d.load_state_dict(c.state_dict())
    assert d.rows == c.rows and sorted(c.rows) == [1, 2]
    assert c.columns() == ["step", "paired", "lr", "grad_norm", "total", "x", "stsb_dev"]
    assert c.rows[2] == {"step": 2, "paired": True, "lr": 0.05, "total": 0.5, "x": 3.0, "stsb_dev": 71.5}


def test_step_timer_probe_and_eta():
    now = [100.0]
    t = StepTimer(0, 1000, log_every=50, eval_steps=125, clock=lambda: now[0])
    assert (t.first, t.probe_end) == (1, 11)
    assert [d for d in range(1, 20) if t.wants(d)] == [1, 11]
    now[0] = 105.0  # the first step: warm-up, left out of the rate
    t.mark(1)
    now[0] = 110.0
    t.mark(11)
    assert t.seconds_per_step() == pytest.approx(0.5)
    assert t.eta(11) == pytest.approx(0.5 * 989)
    assert t.eta(211, now=210.0) == pytest.approx((210 - 105) / 210 * 789)  # the whole run so far
    assert t.eta(1000) == 0.0
    # the probe ends before the first log line or evaluation, so the opening line comes first
    assert StepTimer(0, 1000, log_every=4, eval_steps=125).probe_end == 4
    assert StepTimer(40, 1000, log_every=50, eval_steps=45).probe_end == 45
    assert StepTimer(0, 1, log_every=50, eval_steps=125).probe_end == 1
    line = opening_line(cell="c", seed=0, model="m", device="cpu", precision="fp32", total=1000, paired=100,
                        start=0, timer=t, eval_steps=125)
    assert "1,000 steps (100 paired) | ETA 8m 14s (0.5 s/step over steps 2-11;" in line


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (59, "59s"), (312, "5m 12s"), (6720, "1h 52m"),
                                           (273600, "3d 4h")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_cell_label_and_device_text():
    assert cell_label(["dataset=wiki+flickr", "backbone=bert", "objective=kdmcse", "margin=0.15",
                       "threshold=off", "seed=0"]) == "wiki+flickr/bert/kdmcse margin=0.15 threshold=off"
    assert cell_label([]) == ""
    assert device_text(torch.device("cpu"), 1).startswith("cpu (")
    assert device_text(torch.device("cpu"), 4).startswith("4 x cpu (")


def test_report_plots_one_panel_per_value_with_seeds_overlaid(trained, tmp_path):
    from kdmcse.report.cli import main as report_main
    from kdmcse.report.curves import plot_curves, read_curves as read_frame

    out, _ = trained
    other = tmp_path / "seed1.csv"
    rows = read_curves(out)
    with open(other, "w", newline="", encoding="utf-8") as f:  # a second seed without the extra value
        keep = [c for c in rows[0] if c != "mask_rate_image"]
        w = csv.DictWriter(f, keep, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    result = plot_curves({"0": read_frame(out / "curves.csv"), "1": read_frame(other)}, "a/b/c")
    panels = list(dict.fromkeys(result.points["value"]))
    assert panels[:3] == ["total", "intra", "image"] and panels[-1] == "stsb_dev"
    assert "mask_rate_image" in panels and "lr" in panels and "grad_norm" in panels
    per = result.points.set_index(["value", "seed"])["points"]
    assert per[("total", "0")] == per[("total", "1")] == MAX_STEPS
    assert per[("stsb_dev", "1")] == MAX_STEPS // EVAL_STEPS
    assert ("mask_rate_image", "1") not in per.index
    assert per[("image", "0")] == sum(r["paired"] == "1" for r in rows)
    stem = tmp_path / "plots" / "cell"
    assert report_main(["curves", "--curves", f"0={out / 'curves.csv'}", f"1={other}", "--title", "a/b/c",
                        "--plot", str(stem)]) == 0
    assert (tmp_path / "plots" / "cell.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "plots" / "cell.pdf").stat().st_size > 0


def test_report_curves_refuses_a_file_that_is_not_curves(tmp_path):
    from kdmcse.errors import KdmcseError
    from kdmcse.report.curves import main as curves_main

    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(KdmcseError, match="not a curves.csv"):
        curves_main(["--curves", f"0={bad}", "--title", "t", "--plot", str(tmp_path / "p")])
    with pytest.raises(KdmcseError, match="expected SEED=PATH"):
        curves_main(["--curves", str(bad), "--title", "t", "--plot", str(tmp_path / "p")])
    assert not (tmp_path / "p.png").exists()
