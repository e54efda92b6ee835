"""Same inputs and seed, same bytes: every file a stage writes is a function of its inputs and seed.

Wall-clock times, host names and whether a run was resumed are not; they go to `run_host.json` beside a
student (and to the logs), which is the one file left out of the comparison. docs/reliability.md lists
which outputs are byte-reproducible.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from kdmcse.train import loop as train_mod
from test_train import StepClock, cli, run_config, write_fixture_data

VOLATILE = {"run_host.json"}
# TensorBoard event files hold wall-clock times (and the host name in their file names): volatile by nature; the
# same curves are in curves.csv, which is compared
VOLATILE_DIRS = {"tensorboard"}


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path (the volatile side files excepted)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in VOLATILE and not VOLATILE_DIRS & set(p.relative_to(root).parts):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def scalar_events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> (step, value) of every scalar TensorBoard shows from the event files in `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_fixture_data(tmp_path_factory.mktemp("repro-data"))


def test_two_training_runs_give_identical_files(tiny_bert_dir, data, tmp_path):
    cfg = run_config(tiny_bert_dir)
    a, b = tmp_path / "a", tmp_path / "b"
    train_mod.main(cli(cfg, data, a))
    torch.manual_seed(1234)  # whatever state the process is in, the seed decides
    np.random.seed(99)
    train_mod.main(cli(cfg, data, b))
    da, db = digests(a), digests(b)
    assert {"heads.pt", "run_meta.json", "curves.csv", "model/model.safetensors", "model/config.json"} <= set(da)
    differ = sorted(k for k in da.keys() | db.keys() if da.get(k) != db.get(k))
    assert differ == [], f"files that differ between two runs with seed 7: {differ}"
    host = json.loads((a / "run_host.json").read_text())
    assert {"wall_time_s", "device", "resumed_from_step"} <= set(host)


def test_a_resumed_run_writes_the_same_files_as_an_uninterrupted_one(tiny_bert_dir, data, tmp_path, monkeypatch):
    # one checkpoint every 2 steps (StepClock: a minute per step), so the kill after step 3 resumes from step 2
    cfg = run_config(tiny_bert_dir, max_steps=6, checkpoint_minutes=2)
    ref, out = tmp_path / "ref", tmp_path / "resumed"
    StepClock(monkeypatch)
    train_mod.main(cli(cfg, data, ref))

    class Killed(Exception):
        pass

    def kill_at(done: int) -> None:
        if done == 3:
            raise Killed

    monkeypatch.setattr(train_mod, "STEP_END_HOOK", kill_at)
    with pytest.raises(Killed):
        train_mod.main(cli(cfg, data, out))
    monkeypatch.setattr(train_mod, "STEP_END_HOOK", None)
    train_mod.main(cli(cfg, data, out))
    assert json.loads((out / "run_host.json").read_text())["resumed_from_step"] == 2
    assert digests(ref) == digests(out)
    # TensorBoard: the killed run's events past the checkpoint are purged, and the resumed run continues them,
    # so the curves read the same as the uninterrupted run's (wall times aside); tensorboard is in the test extra
    assert scalar_events(out / "tensorboard") == scalar_events(ref / "tensorboard")


def test_two_teacher_runs_give_identical_caches(tmp_path):
    pytest.importorskip("open_clip")
    from test_teacher import TINY_CFG, TINY_MODEL, make_caption_table, make_images

    from kdmcse.teacher.run import run_teacher

    images = make_images(tmp_path / "imgs", 5)
    captions = make_caption_table(tmp_path / "captions.parquet", images)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY_CFG))
    for name in ("a", "b"):
        run_teacher(captions, tmp_path / name, model=TINY_MODEL, pretrained="none", model_config=cfg, device="cpu",
                    workers=0, chunk_size=4)
    da, db = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert set(da) == {"images.parquet", "captions.parquet", "image_emb.npy", "caption_emb.npy"}
    assert da == db


# ---------------------------------------------------------------- outputs others can read
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_student_folders_follow_the_umask(tiny_bert_dir, data, tmp_path, umask_022, monkeypatch):
    class Killed(Exception):
        pass

    def kill_at(done: int) -> None:
        if done == 2:
            raise Killed

    out = tmp_path / "run"
    StepClock(monkeypatch)  # a checkpoint every step (the policy's gap permitting), so one exists at the kill
    monkeypatch.setattr(train_mod, "STEP_END_HOOK", kill_at)
    with pytest.raises(Killed):
        train_mod.main(cli(run_config(tiny_bert_dir, checkpoint_minutes=1), data, out))
    assert _mode(out / "checkpoint") == 0o755
    monkeypatch.setattr(train_mod, "STEP_END_HOOK", None)
    train_mod.main(cli(run_config(tiny_bert_dir, checkpoint_minutes=1), data, out))
    assert _mode(out / "model") == 0o755
    assert _mode(out / "heads.pt") == 0o644 and _mode(out / "run_meta.json") == 0o644


def test_evaluation_and_report_give_identical_files(tiny_bert_dir, tmp_path):
    from test_report import PAPER, make_fixture
    from test_senteval_data import write_senteval_tree

    from kdmcse.evaluate import cli as evaluate
    from kdmcse.report.cli import main as report_main

    senteval = write_senteval_tree(tmp_path / "senteval")
    for name in ("a", "b"):
        out = tmp_path / name
        assert evaluate.main(["--model", str(tiny_bert_dir), "--tasks", "sts", "--data", str(senteval),
                              "--out", str(out / "m.json"), "--csv", str(out / "m.csv"), "--cell", "seed=0",
                              "--batch-size", "8", "--device", "cpu"]) == 0
    assert digests(tmp_path / "a") == digests(tmp_path / "b")

    fx = make_fixture(tmp_path / "metrics")
    for name in ("ra", "rb"):
        argv = ["--main", *fx.files["main"], "--margin-ablation", *fx.files["margin"], "--threshold-ablation",
                *fx.files["threshold"], "--transfer", *fx.files["transfer"], "--paper", str(PAPER),
                "--tables", str(tmp_path / name / "tables"), "--plots", str(tmp_path / name / "plots")]
        assert report_main(argv) == 0
    da, db = digests(tmp_path / "ra"), digests(tmp_path / "rb")
    assert {"plots/align_uniform.pdf", "plots/align_uniform.png", "tables/main.tex"} <= set(da)
    assert da == db


def test_temp_folders_left_by_a_killed_save_are_removed(tiny_bert_dir, data, tmp_path):
    out = tmp_path / "run"
    (out / ".model.k1ll3d.tmp").mkdir(parents=True)  # save_student killed before its rename
    (out / ".model.k1ll3d.tmp" / "model.safetensors").write_bytes(b"x" * 1000)
    (out / ".checkpoint.tmp-k1ll3d").mkdir()  # save_checkpoint killed before its rename
    train_mod.main(cli(run_config(tiny_bert_dir), data, out))
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
