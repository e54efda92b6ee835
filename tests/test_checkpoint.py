"""Checkpoint format and policy: tensors apart from plain JSON, no code run on load, and what a paper run writes."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from kdmcse.errors import KdmcseError
from kdmcse.train import checkpoint as C
from kdmcse.train import checkpoint_policy as P
from kdmcse.train.mixing import mixing_schedule

GB = 1000**3


def test_state_tree_round_trips_exactly():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5, betas=(0.9, 0.999), eps=1e-6)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tree = {"step": 7, "optimizer": opt.state_dict(), "lrs": [3e-5 / 3, float("nan")], "t": (1, "a", None),
            "rng": C.capture_rng_state()}
    plain, tensors = C.split_tensors(tree)
    json.loads(json.dumps(plain))  # plain data only
    assert all(isinstance(v, torch.Tensor) for v in tensors.values()) and tensors
    back = C.join_tensors(json.loads(json.dumps(plain, allow_nan=True)), tensors)
    assert back["optimizer"]["param_groups"] == opt.state_dict()["param_groups"]  # betas come back as a tuple
    assert set(back["optimizer"]["state"]) == {0, 1}  # int parameter ids come back as ints
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            assert torch.equal(back["optimizer"]["state"][i][k], v)
    assert back["lrs"][0] == 3e-5 / 3 and math.isnan(back["lrs"][1]) and back["t"] == (1, "a", None)
    with pytest.raises(TypeError, match="ndarray"):
        C.split_tensors({"x": np.zeros(2)})


def test_rng_state_restores_every_generator():
    state = C.capture_rng_state()
    plain, tensors = C.split_tensors(state)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    C.restore_rng_state(C.join_tensors(json.loads(json.dumps(plain)), tensors))
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def _save(folder: Path, step: int, best_step: int | None, best: dict | None) -> None:
    C.save_checkpoint(folder, {"step": step, "w": torch.full((4,), float(step))}, "fp", best_step=best_step,
                      best_weights=best)


def test_best_weights_are_written_only_when_they_change(tmp_path):
    folder = tmp_path / "checkpoint"
    _save(folder, 2, None, None)
    assert not (folder / C.BEST_FILE).exists()
    _save(folder, 4, 4, {"w": torch.ones(3)})
    first = (folder / C.BEST_FILE).stat().st_ino
    _save(folder, 6, 4, None)  # unchanged: no weights needed, the file is linked
    assert (folder / C.BEST_FILE).stat().st_ino == first
    _save(folder, 8, 8, {"w": torch.zeros(3)})
    assert (folder / C.BEST_FILE).stat().st_ino != first
    got = C.load_checkpoint(folder, "fp")
    assert got.step == 8 and got.best_step == 8 and torch.equal(got.best_weights["w"], torch.zeros(3))
    assert torch.equal(got.state["w"], torch.full((4,), 8.0))
    assert not folder.with_name("checkpoint.old").exists()
    with pytest.raises(KdmcseError, match="different run config"):
        C.load_checkpoint(folder, "other")


class _Payload:
    """Unpickling this object runs code: what a hostile or corrupted checkpoint could hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_checkpoint_that_holds_code_is_refused_without_running_it(tmp_path):
    folder = tmp_path / "checkpoint"
    _save(folder, 2, None, None)
    marker = tmp_path / "ran"
    torch.save({"w": _Payload(marker)}, folder / C.STATE_FILE)
    with pytest.raises(KdmcseError, match="not a readable kdmcse checkpoint"):
        C.load_checkpoint(folder, "fp")
    assert not marker.exists()
    # the same file *would* run its code if unpickled in full: the check above is not vacuous
    torch.load(folder / C.STATE_FILE, weights_only=False)
    assert marker.read_text() == "pwned"


def test_checkpoint_of_another_format_is_refused(tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    torch.save({"step": 3}, folder / C.STATE_FILE)
    (folder / C.META_FILE).write_text(json.dumps({"fingerprint": "fp", "step": 3}))  # the earlier layout
    with pytest.raises(KdmcseError, match="another format"):
        C.load_checkpoint(folder, "fp")


def test_crash_between_the_renames_falls_back_to_the_previous_checkpoint(tmp_path):
    folder = tmp_path / "checkpoint"
    _save(folder, 2, None, None)
    os.replace(folder, folder.with_name("checkpoint.old"))  # as if the new one never took the name
    assert C.load_checkpoint(folder, "fp").step == 2


# ---------------------------------------------------------------- the policy
def test_policy_follows_the_clock_within_the_step_gap():
    now = {"t": 0.0}
    policy = P.CheckpointPolicy(30, total_steps=100, start_step=0, clock=lambda: now["t"])
    assert policy.min_gap_steps == 20
    due = []
    for done in range(1, 101):
        now["t"] = done * 60.0  # one minute per step
        if policy.due(done):
            due.append(done)
            policy.written(done)
    assert due == [30, 60, 90]  # every 30 minutes; never after the last step
    slow = P.CheckpointPolicy(30, total_steps=100, start_step=0, clock=lambda: now["t"])
    due = []
    for done in range(1, 101):
        now["t"] = done * 3600.0  # one hour per step: the clock alone would checkpoint every step
        if slow.due(done):
            due.append(done)
            slow.written(done)
    assert due == [20, 40, 60, 80] and len(due) == P.max_periodic_checkpoints(100) == P.MAX_PERIODIC
    assert not P.CheckpointPolicy(None, 100, 0, clock=lambda: 1e9).due(50)


def _student_on_meta(encoder_config):
    from transformers import AutoModel

    from kdmcse.train.model import StudentModel

    with torch.device("meta"):
        encoder = AutoModel.from_config(encoder_config)
        return StudentModel(encoder, proj_dim=256, teacher_dim=768)


@pytest.mark.parametrize("backbone", ["bert-base", "roberta-base"])
def test_a_paper_run_writes_at_most_10_gb_of_checkpoints(backbone):
    """The bound from the policy and the model sizes: every periodic checkpoint, each with new best weights."""
    from transformers import BertConfig, RobertaConfig

    config = BertConfig() if backbone == "bert-base" else RobertaConfig(
        vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, layer_norm_eps=1e-5)
    student = _student_on_meta(config)  # the real architecture, no memory, no download
    n = sum(p.numel() for p in student.parameters())
    assert 110e6 < n < 126e6  # bert-base 110M / roberta-base 125M plus the heads
    state, best = P.checkpoint_bytes(student)
    assert state > 3 * 4 * 0.99 * n  # fp32 weights + two fp32 AdamW moments
    # the paper's schedules (method.md §1.3): Wiki1M with all Flickr30k / COCO captions, 3 epochs
    batch = 64 if backbone == "bert-base" else 128
    steps = [mixing_schedule(1_000_000, pairs, batch, 3).total_steps for pairs in (158_915, 414_113)]
    if backbone == "bert-base":
        assert steps == [54_327, 66_288]  # the counts method.md gives
    for total in steps:
        assert P.max_periodic_checkpoints(total) == 4
        written = P.planned_checkpoint_bytes(total, state, best)
        assert written <= 10 * GB, f"{backbone}, {total} steps: {written / GB:.1f} GB"


def test_size_model_matches_the_files_a_run_writes(tiny_bert_dir, tmp_path):
    from kdmcse.train.model import StudentModel
    from kdmcse.train.step import make_optimizer

    student = StudentModel.from_pretrained(tiny_bert_dir, proj_dim=6, teacher_dim=8)
    opt = make_optimizer(list(student.parameters()), 1e-3)
    h, z = student(torch.randint(5, 50, (4, 7)), torch.ones(4, 7, dtype=torch.long))
    (z.sum() + student.ground(h).sum() + student.project_image(torch.randn(4, 8)).sum()
     + student.project_text(torch.randn(4, 8)).sum()).backward()
    opt.step()
    state_bytes, best_bytes = P.checkpoint_bytes(student)
    folder = tmp_path / "checkpoint"
    C.save_checkpoint(folder, {"step": 1, "model": student.state_dict(), "optimizer": opt.state_dict()}, "fp",
                      best_step=1, best_weights=student.state_dict())
    written = (folder / C.STATE_FILE).stat().st_size
    assert state_bytes <= written <= state_bytes * 1.02 + 64_000  # the container adds a little per tensor
    assert best_bytes <= (folder / C.BEST_FILE).stat().st_size <= best_bytes * 1.02 + 32_000
