"""Data parallelism on 2 CPU processes (gloo): the global-batch loss and gradient equal the single-process ones."""

from __future__ import annotations

import faulthandler
import json
import os
import pickle
import socket
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from kdmcse.train import loop as train_mod
from kdmcse.train.distributed import DistContext, init_distributed, shard_rows, shard_sizes, shutdown_distributed
from kdmcse.train.losses import LossSettings

WORLD = 2
ROWS = np.array([9, 0, 4, 8, 2])  # odd size: shards of 3 and 2 rows exercise the padded gather


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_student(model_dir: Path, teacher_dim: int):
    from kdmcse.train.model import StudentModel

    torch.manual_seed(0)
    return StudentModel.from_pretrained(model_dir, proj_dim=6, teacher_dim=teacher_dim, dropout=0.0)


def loss_and_grads(student, tdata, settings, ctx: DistContext, paired: bool):
    batch = train_mod.make_batch(tdata, paired, ROWS, ctx, torch.device("cpu"))
    parts = train_mod.step_losses(student, batch, settings, ctx, nullcontext)
    student.zero_grad(set_to_none=True)
    parts["total"].backward()
    from kdmcse.train.distributed import average_gradients

    average_gradients(student.parameters(), ctx)
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    return {k: float(v.detach()) for k, v in parts.items()}, grads


def _setup_env(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def _worker(rank: int, port: int, work: str) -> None:
    """One spawned process: the step comparison, then a short training run (one spawn: imports are slow)."""
    # a stuck collective (e.g. the port was taken meanwhile) fails the test with tracebacks instead of hanging
    faulthandler.dump_traceback_later(240, exit=True)
    _setup_env(rank, port)
    job = pickle.loads(Path(work, "job.pkl").read_bytes())
    ctx = init_distributed("cpu")
    try:
        assert (ctx.rank, ctx.world_size) == (rank, WORLD)
        result = {}
        for name, paired in (("paired", True), ("text", False)):
            student = build_student(job["model_dir"], job["teacher_dim"])
            result[name] = loss_and_grads(student, job["data"], job["settings"], ctx, paired)
        torch.save(result, Path(work, f"rank{rank}.pt"))
        # training reuses this process group (tearing one down and re-creating it on the same port races)
        train_mod.main(job["train_argv"])
    finally:
        shutdown_distributed(ctx)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from test_train import write_fixture_data

    return write_fixture_data(tmp_path_factory.mktemp("ddp-data"))


@pytest.fixture(scope="module")
def spawned(tiny_bert_dir, data, tmp_path_factory):
    """Run both jobs on 2 gloo processes; return what the single-process checks need."""
    from test_train import DIM, cli, run_config

    from kdmcse.train.model import load_tokenizer

    work = tmp_path_factory.mktemp("ddp-work")
    # threshold on, so the teacher mask is part of what must agree across processes
    cfg = run_config(tiny_bert_dir, threshold=0.2, threshold_space="cosine")
    settings = LossSettings.from_run_config(cfg)
    inputs = train_mod.check_inputs(cfg, data["text"], data["pairs"], data["teacher"], None)
    tdata = train_mod.build_data(inputs, load_tokenizer(tiny_bert_dir), 16)
    tdata.image_emb, tdata.caption_emb = np.asarray(tdata.image_emb), np.asarray(tdata.caption_emb)
    out = work / "run"
    # a checkpoint is due after every step; under torchrun the processes agree on it every log_every = 2 steps
    train_argv = cli(run_config(tiny_bert_dir, max_steps=4, eval_steps=2, checkpoint_minutes=1e-9, log_every=2),
                     data, out)
    job = {"model_dir": tiny_bert_dir, "teacher_dim": DIM, "data": tdata, "settings": settings,
           "train_argv": train_argv}
    Path(work, "job.pkl").write_bytes(pickle.dumps(job))
    mp.spawn(_worker, args=(free_port(), str(work)), nprocs=WORLD, join=True)
    ranks = [torch.load(work / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return {"ranks": ranks, "tdata": tdata, "settings": settings, "out": out}


def test_shards_partition_the_batch():
    parts = [shard_rows(ROWS, DistContext(r, WORLD, r)) for r in range(WORLD)]
    assert [len(p) for p in parts] == shard_sizes(len(ROWS), WORLD) == [3, 2]
    assert np.array_equal(np.concatenate(parts), ROWS)


def test_two_processes_match_one_on_the_global_batch(tiny_bert_dir, spawned):
    from test_train import DIM

    tdata, settings = spawned["tdata"], spawned["settings"]
    for name, paired in (("paired", True), ("text", False)):
        ref_loss, ref_grads = loss_and_grads(build_student(tiny_bert_dir, DIM), tdata, settings, DistContext(),
                                             paired)
        assert ("image" in ref_loss) == paired
        for loss, grads in (r[name] for r in spawned["ranks"]):
            assert loss.keys() == ref_loss.keys()
            for k in ref_loss:
                assert loss[k] == pytest.approx(ref_loss[k], rel=1e-5, abs=1e-6), (name, k)
            assert grads.keys() == ref_grads.keys()
            for k in ref_grads:  # summation order differs with the shard padding: float tolerance
                torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-5)
        # the encoder really received gradient (a vacuous all-zero match would pass the loop above)
        assert ref_grads["encoder.embeddings.word_embeddings.weight"].abs().sum() > 0


def test_torchrun_style_training_writes_outputs_once(spawned):
    out = spawned["out"]
    meta = json.loads((out / "run_meta.json").read_text())
    assert meta["world_size"] == WORLD and meta["total_steps"] == 4
    assert [h["step"] for h in meta["dev_history"]] == [2, 4]
    assert (out / "model" / "config.json").is_file() and not (out / "checkpoint").exists()
