"""Every training precision runs on CPU; the CUDA-only switches (TF32) are set and restored as intended."""

from __future__ import annotations

import json
from contextlib import nullcontext

import pytest
import torch
from test_train import cli, run_config, weights

from kdmcse.errors import KdmcseError
from kdmcse.train import loop as train_mod
from kdmcse.train import precision as P


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from test_train import write_fixture_data

    return write_fixture_data(tmp_path_factory.mktemp("precision-data"))


def _train(precision, tiny_bert_dir, data, out, monkeypatch):
    """Run 4 steps (2 paired) and return (the dtypes of every Linear output seen, the gradient scaler)."""
    dtypes: set[torch.dtype] = set()

    def record(module, args, output):
        if isinstance(module, torch.nn.Linear) and isinstance(output, torch.Tensor):
            dtypes.add(output.dtype)

    scalers = []
    real_scaler = train_mod.make_scaler
    monkeypatch.setattr(train_mod, "make_scaler", lambda *a: scalers.append(real_scaler(*a)) or scalers[-1])
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        cfg = run_config(tiny_bert_dir, precision=precision, max_steps=4, lr=1e-4)
        assert train_mod.main(cli(cfg, data, out, senteval=False)) == 0
    finally:
        handle.remove()
    return dtypes, scalers[0]


@pytest.mark.parametrize("precision", P.PRECISIONS)
def test_every_precision_trains_on_cpu(precision, tiny_bert_dir, data, tmp_path, monkeypatch):
    out = tmp_path / precision
    dtypes, scaler = _train(precision, tiny_bert_dir, data, out, monkeypatch)
    meta = json.loads((out / "run_meta.json").read_text())
    assert meta["run_config"]["precision"] == precision and meta["total_steps"] == 4
    # the encoder runs in the autocast dtype; the heads and losses (and every fp32/tf32 op) in float32
    expected = {"bf16": {torch.bfloat16, torch.float32}, "fp16": {torch.float16, torch.float32}}
    assert dtypes == expected.get(precision, {torch.float32})
    assert scaler.is_enabled() == (precision == "fp16")
    # weights are stored in float32 whatever the compute precision, and stay finite
    w = weights(out)
    assert {v.dtype for v in w.values()} == {torch.float32}
    assert all(torch.isfinite(v).all() for v in w.values())


def test_tf32_is_exactly_fp32_on_cpu(tiny_bert_dir, data, tmp_path, monkeypatch):
    _train("fp32", tiny_bert_dir, data, tmp_path / "fp32", monkeypatch)
    _train("tf32", tiny_bert_dir, data, tmp_path / "tf32", monkeypatch)
    a, b = weights(tmp_path / "fp32"), weights(tmp_path / "tf32")
    assert all(torch.equal(a[k], b[k]) for k in a)
    _train("bf16", tiny_bert_dir, data, tmp_path / "bf16", monkeypatch)
    c = weights(tmp_path / "bf16")
    assert not all(torch.equal(a[k], c[k]) for k in a)  # a precision that differs does show up here


def test_tf32_switches_are_set_for_cuda_and_restored():
    """Only flags: runs without a GPU. TF32 for `tf32`, strict IEEE for every other precision, CPU untouched."""
    before = P.tf32_state()
    cuda = torch.device("cuda")
    with P.tf32_mode("tf32", cuda):
        assert P.tf32_state() == P.tf32_enabled_state(True)
    assert P.tf32_state() == before
    for precision in ("fp32", "bf16", "fp16"):
        with P.tf32_mode(precision, cuda):
            assert P.tf32_state() == P.tf32_enabled_state(False)
    with pytest.raises(ValueError), P.tf32_mode("tf32", cuda):
        raise ValueError  # restored on errors too
    assert P.tf32_state() == before
    with P.tf32_mode("tf32", torch.device("cpu")):
        assert P.tf32_state() == before
    if P.tf32_state()[0] == "new":  # torch >= 2.9: the new API's names
        assert P.tf32_enabled_state(True) == ("new", "tf32", "tf32", "tf32")
        assert P.tf32_enabled_state(False) == ("new", "ieee", "ieee", "ieee")


def test_autocast_and_scaler_follow_the_device():
    cuda = torch.device("cuda")
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else nullcontext():
        ctx = P.autocast_for("bf16", cuda)()
    assert (ctx.device, ctx.fast_dtype) == ("cuda", torch.bfloat16)
    assert P.autocast_for("tf32", cuda) is P.autocast_for("fp32", cuda)  # no autocast: plain float32 ops
    assert P.make_scaler("fp16", torch.device("cpu")).is_enabled()
    assert not P.make_scaler("bf16", torch.device("cpu")).is_enabled()


def test_bf16_is_refused_on_a_gpu_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    with pytest.raises(KdmcseError, match="V100 has no bfloat16"):
        P.check_precision("bf16", torch.device("cuda"))
    P.check_precision("tf32", torch.device("cuda"))
    with pytest.raises(KdmcseError, match="not one of"):
        P.check_precision("fp64", torch.device("cpu"))
