"""The training stage: objectives learn, outputs and selection, resume equality, and input errors."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import signal
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kdmcse.errors import KdmcseError
from kdmcse.io import sha256_file
from kdmcse.teacher.cache import open_teacher_cache, write_teacher_cache
from kdmcse.train import loop as train_mod
from kdmcse.train.distributed import DistContext
from kdmcse.train.losses import LossSettings
from kdmcse.train.mixing import mixing_schedule

WORDS = ("man woman dog cat two people street water red blue green white black young little playing sitting "
         "standing walking running riding near front group boy girl child children ball grass snow car road").split()
TEACHER = {"model": "ViT-T-1", "pretrained": "fixture"}
DIM = 8


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 9))) for _ in range(n)]


def write_fixture_data(root: Path, n_text: int = 24, n_img: int = 5, caps_per_img: int = 2) -> dict[str, Path]:
    """wiki.parquet, captions.parquet, its teacher cache, and a tiny SentEval STS-B dev file."""
    root.mkdir(parents=True, exist_ok=True)
    wiki = root / "wiki.parquet"
    pd.DataFrame({"text": sentences(n_text, 0)}).to_parquet(wiki)
    image_ids = [f"img{i}" for i in range(n_img)]
    cap_img = [image_ids[i // caps_per_img] for i in range(n_img * caps_per_img)]
    caps = sentences(len(cap_img), 1)
    pairs = root / "captions.parquet"
    pd.DataFrame({"image_id": cap_img, "image_path": [f"images/{i}.jpg" for i in cap_img],
                  "caption_id": np.arange(len(caps), dtype=np.int64), "caption": caps}).to_parquet(pairs)
    rng = np.random.default_rng(2)
    img_emb = rng.normal(size=(n_img, DIM)).astype(np.float32) * 3
    cap_emb = (img_emb[[int(i[3:]) for i in cap_img]] + rng.normal(size=(len(caps), DIM))).astype(np.float32)
    teacher = root / "teacher"
    write_teacher_cache(teacher, image_ids=image_ids, image_emb=img_emb, caption_ids=np.arange(len(caps)),
                        caption_image_ids=cap_img, caption_texts=caps, caption_emb=cap_emb,
                        meta=dict(TEACHER, captions_sha256=sha256_file(pairs)))
    senteval = root / "senteval"
    sts = senteval / "STS" / "STSBenchmark"
    sts.mkdir(parents=True)
    s1, s2 = sentences(12, 3), sentences(12, 4)
    s2[:6] = s1[:6]  # some identical pairs so the score is not all noise
    rows = [f"main-captions\tMSRvid\t2012test\t{i:04d}\t{(5.0 if i < 6 else i % 5):.1f}\t{a}\t{b}"
            for i, (a, b) in enumerate(zip(s1, s2))]
    (sts / "sts-dev.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {"text": wiki, "pairs": pairs, "teacher": teacher, "senteval": senteval}


def run_config(model: Path, **over) -> dict:
    cfg = {
        "model": str(model), "objective": "kdmcse", "lr": 1e-3, "batch_size": 4, "epochs": 1, "max_steps": 6,
        "lambda": 0.5, "temperature": 0.05, "temperature_vl": 0.05, "margin1": 0.15, "margin2": 0.15,
        "threshold": None, "threshold_space": "cosine", "inter_reduction": "sum", "proj_dim": 6,
        "max_seq_length": 16, "eval_steps": 2, "pooling": "cls_before_pooler", "precision": "fp32",
        "teacher": dict(TEACHER), "checkpoint_minutes": None, "log_every": 3, "threshold_check": "warn",
        "head_init": "hf",
    }
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return write_fixture_data(tmp_path_factory.mktemp("train-data"))


def cli(cfg: dict, data: dict[str, Path], out: Path, *, pairs: bool = True, senteval: bool = True,
        seed: int = 7) -> list[str]:
    argv = ["--run-config", json.dumps(cfg), "--text", str(data["text"]), "--seed", str(seed), "--out", str(out),
            "--no-progress"]
    if pairs:
        argv += ["--pairs", str(data["pairs"]), "--teacher", str(data["teacher"])]
    if senteval:
        argv += ["--senteval", str(data["senteval"])]
    return argv


def weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "model" / "model.safetensors")


class StepClock:
    """The checkpoint policy's clock in a test: one minute per training step this run has taken.

    With `checkpoint_minutes: k` a run then checkpoints after every k-th step it takes (the policy's step gap
    permitting), on whatever machine the test runs.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps = 0
        real = train_mod.train_step

        def counting(*args, **kwargs):
            self.steps += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(train_mod, "train_step", counting)
        monkeypatch.setattr(train_mod, "CLOCK", lambda: 60.0 * self.steps)


def keep_final_state(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record each run's optimiser state and gradients as training ends (a finished run deletes its checkpoint)."""
    kept: list[dict] = []
    real = train_mod.finish

    def finish(run, **kwargs):
        kept.append({"optimizer": copy.deepcopy(run.optimizer.state_dict()),
                     "grads": [None if p.grad is None else p.grad.clone() for p in run.params],
                     "scheduler": run.scheduler.state_dict()})
        return real(run, **kwargs)

    monkeypatch.setattr(train_mod, "finish", finish)
    return kept


def assert_same_optimizer_state(a: dict, b: dict) -> None:
    assert a["scheduler"] == b["scheduler"]
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and sa
    for i in sa:
        assert sa[i].keys() == sb[i].keys()
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), f"optimiser state {i}.{k} differs after resume"
    assert [g is None for g in a["grads"]] == [g is None for g in b["grads"]]


def assert_same_outputs(ref: Path, out: Path) -> None:
    """Bit-identical weights and heads, the same dev history and selection."""
    a, b = json.loads((ref / "run_meta.json").read_text()), json.loads((out / "run_meta.json").read_text())
    assert a["dev_history"] == b["dev_history"] and a["best_step"] == b["best_step"]
    wa, wb = weights(ref), weights(out)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"resumed weights differ from the uninterrupted run's: {different}"
    ha, hb = torch.load(ref / "heads.pt", weights_only=True), torch.load(out / "heads.pt", weights_only=True)
    for name in ("mlp", "grounding", "image_proj", "text_proj"):
        for k in ha[name]:
            assert torch.equal(ha[name][k], hb[name][k]), f"head {name}.{k} differs after resume"


# ---------------------------------------------------------------- the step itself
@pytest.mark.parametrize("objective", ["simcse", "mcse", "kdmcse"])
def test_repeating_one_batch_lowers_each_objective(objective, tiny_bert_dir, data):
    from kdmcse.train.model import StudentModel, load_tokenizer

    torch.manual_seed(0)
    cfg = run_config(tiny_bert_dir, objective=objective)
    inputs = train_mod.check_inputs(cfg, data["text"], data["pairs"], data["teacher"], None)
    tok = load_tokenizer(tiny_bert_dir)
    tdata = train_mod.build_data(inputs, tok, 16)
    paired = objective != "simcse"
    student = StudentModel.from_pretrained(tiny_bert_dir, proj_dim=6, teacher_dim=DIM if paired else None,
                                           dropout=0.0)
    batch = train_mod.make_batch(tdata, paired, np.array([0, 3, 5, 8, 9]), DistContext(), torch.device("cpu"))
    if paired:
        assert batch.image_emb.shape == batch.caption_emb.shape == (5, DIM)
        # captions 8 and 9 share image 4: identical teacher image rows, the false negative the margins handle
        assert torch.equal(batch.image_emb[3], batch.image_emb[4])
    settings = LossSettings.from_run_config(cfg)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2, eps=1e-6, weight_decay=0.0)
    history = []
    for _ in range(8):
        parts = train_mod.step_losses(student, batch, settings, DistContext(), nullcontext)
        history.append({k: float(v.detach()) for k, v in parts.items()})
        opt.zero_grad()
        parts["total"].backward()
        opt.step()
    expected = {"simcse": {"intra", "total"}, "mcse": {"intra", "image", "total"},
                "kdmcse": {"intra", "image", "text", "total"}}[objective]
    assert set(history[0]) == expected
    assert history[-1]["total"] < 0.8 * history[0]["total"]
    if paired:
        assert history[-1]["image"] < history[0]["image"]


def test_text_batch_collates_two_views(tiny_bert_dir, data):
    from kdmcse.train.model import load_tokenizer

    cfg = run_config(tiny_bert_dir, objective="simcse")
    inputs = train_mod.check_inputs(cfg, data["text"], None, None, None)
    tdata = train_mod.build_data(inputs, load_tokenizer(tiny_bert_dir), 16)
    assert tdata.pairs is None and len(tdata.text) == 24
    batch = train_mod.make_batch(tdata, False, np.array([1, 2, 3]), DistContext(), torch.device("cpu"))
    ids = batch.tokens["input_ids"]
    assert ids.shape[0] == 6 and torch.equal(ids[0::2], ids[1::2])
    assert batch.image_emb is None


# ---------------------------------------------------------------- the stage
def test_train_writes_best_student_and_metadata(tiny_bert_dir, data, tmp_path):
    out = tmp_path / "run"
    assert train_mod.main(cli(run_config(tiny_bert_dir), data, out)) == 0
    meta = json.loads((out / "run_meta.json").read_text())
    sched = mixing_schedule(24, 10, 4, 1, 6)  # 6 text + 3 pair batches, step 2
    assert meta["total_steps"] == 6 and meta["paired_steps"] == sched.paired_steps_until(6) == 3
    assert [h["step"] for h in meta["dev_history"]] == [2, 4, 6]
    best = max(meta["dev_history"], key=lambda h: h["stsb_dev_spearman"])  # max keeps the first of ties
    assert (meta["best_step"], meta["best_dev_spearman"]) == (best["step"], best["stsb_dev_spearman"])
    assert meta["seed"] == 7 and meta["run_config"]["objective"] == "kdmcse"
    assert {"torch", "transformers", "kdmcse"} <= set(meta["versions"])
    assert (out / "model" / "config.json").is_file() and (out / "heads.pt").is_file()
    assert not (out / "checkpoint").exists()  # resumable state is dropped once the outputs exist
    # the saved model scores what the run recorded as best
    from kdmcse.evaluate.encoder import load_encoder
    from kdmcse.train.selection import stsb_dev_spearman

    score = stsb_dev_spearman(load_encoder(out / "model", device="cpu"), data["senteval"])
    assert score == pytest.approx(meta["best_dev_spearman"], abs=1e-4)


def test_simcse_without_senteval_saves_final_model(tiny_bert_dir, data, tmp_path):
    out = tmp_path / "run"
    cfg = run_config(tiny_bert_dir, objective="simcse", max_steps=3)
    assert train_mod.main(cli(cfg, data, out, pairs=False, senteval=False)) == 0
    meta = json.loads((out / "run_meta.json").read_text())
    assert meta["paired_steps"] == 0 and meta["best_step"] is None and meta["dev_history"] == []
    assert meta["selection"].startswith("none")
    heads = torch.load(out / "heads.pt", weights_only=True)
    assert heads["image_proj"] is None  # no teacher heads for a text-only objective


def test_released_simcse_interleaves_the_caption_text_without_a_teacher(tiny_bert_dir, data, tmp_path, caplog):
    # baselines.simcse: released passes the caption table and no teacher: caption batches train the text term
    out = tmp_path / "run"
    cfg = run_config(tiny_bert_dir, objective="simcse", max_steps=6)
    argv = [a for a in cli(cfg, data, out, senteval=False) if a not in ("--teacher", str(data["teacher"]))]
    with caplog.at_level(logging.INFO, logger="kdmcse.train.inputs"):
        assert train_mod.main(argv) == 0
    meta = json.loads((out / "run_meta.json").read_text())
    assert meta["paired_steps"] == mixing_schedule(24, 10, 4, 1, 6).paired_steps_until(6) == 3
    assert meta["inputs"]["pair_rows"] == 10 and "teacher_dim" not in meta["inputs"]
    assert any("interleave as text batches" in r.getMessage() for r in caplog.records)
    assert torch.load(out / "heads.pt", weights_only=True)["image_proj"] is None


def test_mcse_trains_from_an_image_feature_cache_and_kdmcse_refuses_one(tiny_bert_dir, data, tmp_path):
    # the released MCSE baseline: image features only (ResNet-50 in the grid), no caption embeddings
    cache = open_teacher_cache(data["teacher"])
    features = tmp_path / "resnet"
    write_teacher_cache(features, image_ids=cache.image_ids, image_emb=np.random.default_rng(5).normal(size=(len(cache.image_ids), 6)).astype(np.float32),
                        caption_ids=cache.caption_ids, caption_image_ids=[cache.image_ids[r] for r in cache.caption_image_row],
                        caption_texts=["x"] * len(cache.caption_ids), caption_emb=None,
                        meta=dict(TEACHER, captions_sha256=cache.meta["captions_sha256"]))
    out = tmp_path / "mcse"
    assert train_mod.main(cli(run_config(tiny_bert_dir, objective="mcse"), dict(data, teacher=features), out,
                              senteval=False)) == 0
    meta = json.loads((out / "run_meta.json").read_text())
    assert meta["paired_steps"] == 3 and meta["inputs"]["teacher_dim"] == 6
    assert meta["inputs"]["teacher_kind"] == "image"
    with pytest.raises(KdmcseError, match="image features only"):
        train_mod.main(cli(run_config(tiny_bert_dir), dict(data, teacher=features), tmp_path / "kd"))


@pytest.mark.parametrize("senteval", [False, True], ids=["final-model", "best-on-dev"])
def test_killed_run_resumes_to_identical_result(senteval, tiny_bert_dir, data, tmp_path, monkeypatch):
    # dropout is on, so the RNG states must be restored; without --senteval the saved model is the last step's.
    # Paired steps are 0, 2, 4, 6: the checkpoint after 3 steps resumes on a text-only step, where the heads get
    # a zero gradient, which AdamW must see as zero (moving them by momentum), not as missing.
    cfg = run_config(tiny_bert_dir, max_steps=7, eval_steps=3, checkpoint_minutes=3, log_every=2)
    kept = keep_final_state(monkeypatch)
    ref = tmp_path / "ref"
    with monkeypatch.context() as m:
        StepClock(m)
        train_mod.main(cli(cfg, data, ref, senteval=senteval))

    class Killed(Exception):
        pass

    def kill_at(done: int) -> None:
        if done == 5:
            raise Killed

    out = tmp_path / "resumed"
    with monkeypatch.context() as m:
        StepClock(m)
        m.setattr(train_mod, "STEP_END_HOOK", kill_at)
        with pytest.raises(Killed):
            train_mod.main(cli(cfg, data, out, senteval=senteval))
    assert json.loads((out / "checkpoint" / "meta.json").read_text())["step"] == 3
    assert not (out / "run_meta.json").exists()

    # a different run config must not pick this checkpoint up; the checkpoint and log intervals may change
    with pytest.raises(KdmcseError, match="different run config"):
        train_mod.main(cli(dict(cfg, lr=2e-3), data, out, senteval=senteval))

    train_mod.main(cli(dict(cfg, checkpoint_minutes=None, log_every=5), data, out, senteval=senteval))
    assert json.loads((out / "run_host.json").read_text())["resumed_from_step"] == 3
    assert len(json.loads((out / "run_meta.json").read_text())["dev_history"]) == (3 if senteval else 0)
    assert_same_outputs(ref, out)
    assert_same_optimizer_state(kept[0], kept[1])


@pytest.fixture(scope="module")
def uninterrupted(tiny_bert_dir, data, tmp_path_factory) -> tuple[dict, Path]:
    """A 7-step run without periodic checkpoints, and its output folder."""
    cfg = run_config(tiny_bert_dir, max_steps=7, eval_steps=3)
    ref = tmp_path_factory.mktemp("uninterrupted") / "run"
    train_mod.main(cli(cfg, data, ref))
    return cfg, ref


@pytest.mark.parametrize("signame", ["SIGUSR1", "SIGTERM"])
def test_stop_signal_checkpoints_exits_and_resumes(signame, uninterrupted, data, tmp_path, monkeypatch, caplog):
    """SLURM warns a job with a signal before its time limit: checkpoint at the step boundary, exit non-zero."""
    signum = getattr(signal, signame)
    cfg, ref = uninterrupted
    before = signal.getsignal(signum)

    def signal_at(done: int) -> None:
        if done == 3:
            os.kill(os.getpid(), signum)  # delivered at once; the handler only sets a flag

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(train_mod, "STEP_END_HOOK", signal_at)
        caplog.set_level("INFO", logger="kdmcse.train.loop")
        assert train_mod.main(cli(cfg, data, out)) == 128 + signum
    # the checkpoint comes at the boundary after the step the signal arrived in, then the job stops
    assert json.loads((out / "checkpoint" / "meta.json").read_text())["step"] == 4
    assert not (out / "run_meta.json").exists()
    assert f"received {signame}: checkpoint saved at step 4" in caplog.text
    assert signal.getsignal(signum) == before  # the previous handler is back
    assert train_mod.main(cli(cfg, data, out)) == 0
    assert json.loads((out / "run_host.json").read_text())["resumed_from_step"] == 4
    assert_same_outputs(ref, out)


def test_checkpoints_follow_the_clock_and_keep_unchanged_best_weights(tiny_bert_dir, data, tmp_path, monkeypatch):
    from kdmcse.train import checkpoint as ckpt

    writes: list[tuple[int, int | None, int | None]] = []  # (step, best step, inode of best.pt)
    real = ckpt.save_checkpoint

    def spy(ckpt_dir, state, fingerprint, *, best_step=None, best_weights=None):
        real(ckpt_dir, state, fingerprint, best_step=best_step, best_weights=best_weights)
        best = Path(ckpt_dir) / ckpt.BEST_FILE
        writes.append((state["step"], best_step, best.stat().st_ino if best.exists() else None))

    monkeypatch.setattr(train_mod, "save_checkpoint", spy)
    StepClock(monkeypatch)
    # 2 minutes per checkpoint but a run of 12 steps may write at most 4: one every ceil(12 / 5) = 3 steps
    cfg = run_config(tiny_bert_dir, max_steps=12, eval_steps=6, checkpoint_minutes=2)
    train_mod.main(cli(cfg, data, tmp_path / "run"))
    assert [w[0] for w in writes] == [3, 6, 9]
    # the best model is first known after the evaluation at step 6; the checkpoint at 9 reuses its file
    assert [w[1] for w in writes] == [None, 6, 6]
    assert writes[0][2] is None and writes[2][2] == writes[1][2]  # the same file: linked, not written again


def test_non_finite_loss_stops_with_step_and_parts(tiny_bert_dir, data, tmp_path, monkeypatch):
    real = train_mod.step_losses
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        parts = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            parts["total"] = parts["total"] * float("nan")
        return parts

    monkeypatch.setattr(train_mod, "step_losses", poisoned)
    StepClock(monkeypatch)
    out = tmp_path / "run"
    # values are read every 50 steps, but the checkpoint due after step 4 reads them first and is not written
    cfg = run_config(tiny_bert_dir, checkpoint_minutes=2, log_every=50, eval_steps=100)
    with pytest.raises(KdmcseError, match=r"non-finite loss at step 3 .*intra=.*total=nan"):
        train_mod.main(cli(cfg, data, out, senteval=False))
    assert json.loads((out / "checkpoint" / "meta.json").read_text())["step"] == 2
    assert not (out / "model").exists()


# ---------------------------------------------------------------- input errors, before heavy work
@pytest.mark.parametrize(
    "change, message",
    [
        ({"batchsize": 4}, "unknown run config key.*'batchsize'"),
        ({"lr": "3e-5"}, "'lr' is '3e-5'"),
        ({"objective": "clip"}, "'objective'"),
        ({"threshold_space": "dot"}, "'threshold_space'"),
        ({"teacher": {"model": "ViT-L-14"}}, "'teacher'"),
        ({"max_steps": 0}, "'max_steps'"),
    ],
)
def test_bad_run_config_names_the_key(change, message, tiny_bert_dir, data, tmp_path):
    with pytest.raises(KdmcseError, match=message):
        train_mod.main(cli(run_config(tiny_bert_dir, **change), data, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_missing_key_and_cli_exit_code(tiny_bert_dir, data, tmp_path, capsys):
    from kdmcse.__main__ import main as kdmcse_main

    cfg = run_config(tiny_bert_dir)
    del cfg["eval_steps"]
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg))
    argv = cli(cfg, data, tmp_path / "run")
    argv[1] = "@" + str(cfg_file)
    assert kdmcse_main(["train", *argv]) == 2
    assert "'eval_steps'" in capsys.readouterr().err


def test_input_errors(tiny_bert_dir, data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KdmcseError, match="needs --pairs"):
        train_mod.main(cli(run_config(tiny_bert_dir, objective="mcse"), data, out, pairs=False))
    with pytest.raises(KdmcseError, match="ViT-T-1"):  # the cache was built by another teacher
        train_mod.main(cli(run_config(tiny_bert_dir, teacher={"model": "ViT-L-14", "pretrained": "fixture"}),
                           data, out))
    with pytest.raises(KdmcseError, match="sts-dev.csv"):
        train_mod.main(cli(run_config(tiny_bert_dir), dict(data, senteval=tmp_path), out))
    with pytest.raises(KdmcseError, match="--text corpus"):
        train_mod.main(cli(run_config(tiny_bert_dir), dict(data, text=tmp_path / "nope.parquet"), out))


def test_more_caption_batches_than_text_batches_is_refused(tiny_bert_dir, tmp_path):
    small = write_fixture_data(tmp_path / "d", n_text=6, n_img=6, caps_per_img=2)  # 2 text vs 3 pair batches
    with pytest.raises(KdmcseError, match="more batches per pass"):
        train_mod.main(cli(run_config(tiny_bert_dir), small, tmp_path / "run"))


def test_changed_caption_table_refuses_the_cache(tiny_bert_dir, data, tmp_path):
    pairs = tmp_path / "captions.parquet"
    shutil.copy(data["pairs"], pairs)
    df = pd.read_parquet(pairs)
    df.loc[0, "caption"] = "a different caption"
    df.to_parquet(pairs)
    with pytest.raises(KdmcseError, match="captions_sha256"):
        train_mod.main(cli(run_config(tiny_bert_dir), dict(data, pairs=pairs), tmp_path / "run"))


# ---------------------------------------------------------------- the teacher's model config is part of its identity
def test_cache_of_another_teacher_model_config_is_refused(tiny_bert_dir, tmp_path):
    """Two custom architectures under one name (as tiny test teachers are) differ only in their model config."""
    from kdmcse.grid import Cell
    from kdmcse.grid import run_config as grid_run_config

    d = write_fixture_data(tmp_path / "d")
    built_with, now = tmp_path / "clip-a.json", tmp_path / "clip-b.json"
    built_with.write_text(json.dumps({"embed_dim": DIM, "layers": 2}))
    now.write_text(json.dumps({"embed_dim": DIM, "layers": 3}))
    # rebuild the fixture cache as the teacher stage records a custom architecture
    meta = dict(TEACHER, captions_sha256=sha256_file(d["pairs"]), model_config_sha256=sha256_file(built_with))
    cache = train_mod.check_inputs(run_config(tiny_bert_dir), d["text"], d["pairs"], d["teacher"], None).teacher
    write_teacher_cache(d["teacher"], image_ids=cache.image_ids, image_emb=np.array(cache.image_emb),
                        caption_ids=cache.caption_ids, caption_image_ids=[cache.image_ids[r] for r in cache.caption_image_row],
                        caption_texts=["x"] * len(cache.caption_ids), caption_emb=np.array(cache.caption_emb), meta=meta)
    cfg = {
        "teachers": {"t": {"model": TEACHER["model"], "pretrained": TEACHER["pretrained"], "model_config": str(now)}},
        "teacher": "t",
        "backbones": {"tiny": {"model": str(tiny_bert_dir), "lr": 1e-3, "batch_size": 4}},
        "train": {"epochs": 1, "max_steps": 6, "lambda": 0.5, "temperature": 0.05, "temperature_vl": 0.05,
                  "margin1": "tied", "threshold_space": "cosine", "inter_reduction": "sum", "proj_dim": 6,
                  "max_seq_length": 16, "eval_steps": 2, "checkpoint_minutes": None, "log_every": 50, "pooling": "cls_before_pooler",
                  "precision": "fp32", "threshold_check": "warn", "head_init": "hf"},
    }
    rc = grid_run_config(cfg, Cell("wiki+x", "tiny", "kdmcse", 0.15, None))
    with pytest.raises(KdmcseError, match="model_config_sha256"):
        train_mod.main(cli(rc, d, tmp_path / "run"))
    cfg["teachers"]["t"]["model_config"] = str(built_with)
    rc = grid_run_config(cfg, Cell("wiki+x", "tiny", "kdmcse", 0.15, None))
    assert train_mod.main(cli(rc, d, tmp_path / "run", senteval=False)) == 0


def test_teacher_given_as_a_local_checkpoint_is_matched_by_its_checksum(tiny_bert_dir, tmp_path):
    """The cache records a local checkpoint by its tag (if recognised) and sha256; the run config names the file."""
    d = write_fixture_data(tmp_path / "d")
    ckpt, other = tmp_path / "ViT-T-1.pt", tmp_path / "other.pt"
    ckpt.write_bytes(b"weights")
    other.write_bytes(b"other weights")
    cache = train_mod.check_inputs(run_config(tiny_bert_dir), d["text"], d["pairs"], d["teacher"], None).teacher
    meta = dict(TEACHER, captions_sha256=sha256_file(d["pairs"]), pretrained="openai", pretrained_source="file",
                pretrained_file=str(ckpt), pretrained_sha256=sha256_file(ckpt))
    write_teacher_cache(d["teacher"], image_ids=cache.image_ids, image_emb=np.array(cache.image_emb),
                        caption_ids=cache.caption_ids, caption_image_ids=[cache.image_ids[r] for r in cache.caption_image_row],
                        caption_texts=["x"] * len(cache.caption_ids), caption_emb=np.array(cache.caption_emb), meta=meta)
    cfg = run_config(tiny_bert_dir, teacher={"model": TEACHER["model"], "pretrained": str(ckpt)})
    assert train_mod.check_inputs(cfg, d["text"], d["pairs"], d["teacher"], None).teacher is not None
    cfg = run_config(tiny_bert_dir, teacher={"model": TEACHER["model"], "pretrained": str(other)})
    with pytest.raises(KdmcseError, match="pretrained_sha256"):
        train_mod.check_inputs(cfg, d["text"], d["pairs"], d["teacher"], None)
