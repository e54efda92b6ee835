"""SentEval transfer protocols: folds, L2 selection, early stopping, batched vs. reference engine, end to end."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from kdmcse.errors import KdmcseError
from kdmcse.evaluate.linear_probe import Job, ProbeConfig, fit_batched, fit_reference
from kdmcse.evaluate.transfer import (
    TASKS,
    binary_f1,
    evaluate_features,
    evaluate_transfer,
    inner_kfold,
    mrpc_features,
    senteval_order,
    stratified_folds,
)

# few folds and rounds, and a larger step so that tiny data sets train in a few dozen steps: same code paths
FAST = ProbeConfig(kfold=3, max_epoch=12, lr=0.05)


def blobs(n: int = 120, d: int = 16, sep: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    X = rng.normal(size=(n, d)).astype(np.float32)
    X[:, 0] += sep * (2 * y - 1)
    return X, y


# ---------------------------------------------------------------------------------------------- folds
def test_folds_are_stratified_disjoint_and_deterministic():
    y = np.array([0] * 70 + [1] * 30 + [2] * 20)
    folds = stratified_folds(y, 10, 1111)
    again = stratified_folds(y, 10, 1111)
    other = stratified_folds(y, 10, 7)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, other))
    tests = np.concatenate([te for _, te in folds])
    assert sorted(tests.tolist()) == list(range(len(y)))  # every row tested exactly once
    for tr, te in folds:
        assert not set(tr) & set(te)
        assert np.bincount(y[te], minlength=3).tolist() == [7, 3, 2]


def test_senteval_order_is_stable_sort_by_token_count_then_label():
    sents = ["a b c", "a", "x y", "b", "c d", "e"]
    labels = np.array([0, 1, 1, 0, 0, 1])
    # SentEval: sorted(zip(samples, labels), key=lambda z: (len(z[0]), z[1]))
    expected = [i for i, _ in sorted(enumerate(zip(sents, labels)), key=lambda z: (len(z[1][0].split()), z[1][1]))]
    assert senteval_order(sents, labels).tolist() == expected == [3, 1, 5, 4, 2, 0]


# ---------------------------------------------------------------------------------------------- engine
def test_batched_engine_matches_reference_on_a_small_problem():
    X, y = blobs(n=150, sep=0.8)
    jobs = [
        Job(train_idx=np.arange(0, 120), dev_idx=np.arange(120, 150), regs=(1e-5, 1e-2)),
        Job(train_idx=np.arange(30, 150), dev_idx=np.arange(0, 30), regs=(1e-4, 1e-3)),
        Job(train_idx=np.arange(0, 133), validation_split=0.05, regs=(1e-5, 1e-2)),  # uneven minibatches
    ]
    cfg = ProbeConfig(max_epoch=40)
    ref = fit_reference(X, y, jobs, 2, cfg)
    bat = fit_batched(X, y, jobs, 2, cfg)
    for rr, br in zip(ref, bat):
        for r, b in zip(rr, br):
            assert (r.l2, r.dev_acc, r.n_epochs) == (b.l2, b.dev_acc, b.n_epochs)
            np.testing.assert_allclose(b.weight, r.weight, atol=1e-5)
            np.testing.assert_allclose(b.bias, r.bias, atol=1e-5)
    # the models differ between jobs and L2 values, so the comparison above is not vacuous
    assert not np.allclose(ref[0][0].weight, ref[1][0].weight)


def test_inner_kfold_batched_equals_reference():
    X, y = blobs(n=90, sep=1.0, seed=3)
    cfg = ProbeConfig(kfold=3, max_epoch=8)
    a = inner_kfold(X, y, 2, cfg, engine="batched")
    b = inner_kfold(X, y, 2, cfg, engine="reference")
    assert a == b


def test_early_stopping_stops_after_tenacity_plus_one_non_improvements():
    X, y = blobs(n=100, sep=20.0)  # perfectly separable: 100% dev accuracy after the first round
    job = Job(train_idx=np.arange(80), dev_idx=np.arange(80, 100), regs=(1e-5,))
    cfg = ProbeConfig()  # tenacity 5, epoch_size 4, max_epoch 200
    for fit in (fit_batched, fit_reference):
        res = fit(X, y, [job], 2, cfg)[0][0]
        assert res.dev_acc == 1.0
        # best at round 1, then 6 non-improvements (the counter reaches tenacity) -> 7 rounds of 4 passes
        assert res.n_epochs == 7 * cfg.epoch_size


def test_training_runs_until_max_epoch_when_never_stopping():
    X, y = blobs(n=60, sep=0.0, seed=5)
    job = Job(train_idx=np.arange(40), dev_idx=np.arange(40, 60), regs=(1e-5,))
    cfg = ProbeConfig(tenacity=10_000, max_epoch=20)
    res = fit_batched(X, y, [job], 2, cfg)[0][0]
    assert res.n_epochs == 24  # SentEval's loop runs while nepoch <= max_epoch


# ---------------------------------------------------------------------------------------------- protocols
def test_separable_data_reaches_full_accuracy_and_random_labels_chance():
    X, y = blobs(n=200, sep=6.0)
    assert evaluate_features("inner_kfold", X, y, config=FAST)["acc"] >= 99.0
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(200, 16)).astype(np.float32)
    acc = evaluate_features("inner_kfold", noise, rng.integers(0, 2, 200), config=FAST)["acc"]
    assert 30.0 <= acc <= 70.0


def test_l2_selection_picks_the_value_with_the_best_inner_score():
    # 16-d, 120 rows, weak signal: the probe overfits without L2 and learns nothing with a huge one
    X, y = blobs(n=120, sep=1.0)
    grid = (1e4, 30.0, 1.0, 1e-5)
    cfg = ProbeConfig(kfold=3, max_epoch=24, lr=0.05, l2_grid=grid)
    res = evaluate_features("inner_kfold", X, y, config=cfg)
    for scores, l2 in zip(res["l2_scores"], res["l2"]):
        assert max(scores) - min(scores) > 5.0  # the choice matters
        assert l2 == grid[int(np.argmax(scores))]
    assert res["l2"] == [1.0, 1.0, 1.0]
    # the k-fold protocol selects the same way
    Xt, yt = blobs(n=60, sep=1.0, seed=9)
    kf = evaluate_features("kfold", X, y, X_test=Xt, y_test=yt, config=cfg)
    assert kf["l2"] == grid[int(np.argmax(kf["l2_scores"]))] and max(kf["l2_scores"]) - min(kf["l2_scores"]) > 5.0


def test_split_protocol_scores_dev_and_test():
    X, y = blobs(n=120, sep=20.0)
    Xd, yd = blobs(n=40, sep=20.0, seed=1)
    Xt, yt = blobs(n=50, sep=20.0, seed=2)
    res = evaluate_features("split", X, y, X_dev=Xd, y_dev=yd, X_test=Xt, y_test=yt, config=FAST)
    assert res["acc"] >= 90.0 and res["devacc"] == max(res["l2_scores"]) and len(res["pred"]) == 50
    with pytest.raises(KdmcseError, match="X_dev"):
        evaluate_features("split", X, y, X_test=Xt, y_test=yt)
    with pytest.raises(KdmcseError, match="protocol"):
        evaluate_features("nope", X, y)


def test_mrpc_features_and_f1_by_hand():
    u = np.array([[1.0, -2.0], [0.5, 3.0]], dtype=np.float32)
    v = np.array([[3.0, 1.0], [0.5, -1.0]], dtype=np.float32)
    np.testing.assert_array_equal(mrpc_features(u, v), [[2.0, 3.0, 3.0, -2.0], [0.0, 4.0, 0.25, -3.0]])
    y = np.array([1, 1, 1, 0, 0, 1])
    p = np.array([1, 0, 1, 1, 0, 1])
    # tp 3, fp 1, fn 1 -> precision 3/4, recall 3/4, F1 0.75
    assert binary_f1(y, p) == pytest.approx(0.75)
    assert binary_f1(np.array([0, 0]), np.array([0, 0])) == 0.0


# ---------------------------------------------------------------------------------------------- end to end
POS = ["good", "great", "fine", "nice"]
NEG = ["bad", "awful", "poor", "sad"]
FILLER = ["the", "movie", "was", "a", "plot", "really", "quite", "story"]


class HashEncoder:
    """Deterministic bag-of-words encoder: one fixed random vector per word, averaged."""

    dim = 24

    def __init__(self) -> None:
        self.calls = 0

    def vec(self, w: str) -> np.ndarray:
        return np.random.default_rng(zlib.crc32(w.encode())).normal(size=self.dim)

    def encode(self, sentences: list[str]) -> np.ndarray:
        self.calls += 1
        return np.stack([np.mean([self.vec(w) for w in s.split()] or [np.zeros(self.dim)], 0) for s in sentences])


def _sent(rng: np.random.Generator, words: list[str]) -> str:
    return " ".join(list(rng.choice(FILLER, rng.integers(1, 5))) + [str(rng.choice(words))])


def write_fixture(root: Path, n: int = 80) -> Path:
    rng = np.random.default_rng(0)
    def pair(folder: str, pos_name: str, neg_name: str) -> None:
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / pos_name).write_text("\n".join(_sent(rng, POS) for _ in range(n)) + "\n", encoding="latin-1")
        (root / folder / neg_name).write_text("\n".join(_sent(rng, NEG) for _ in range(n)) + "\n", encoding="latin-1")
    pair("MR", "rt-polarity.pos", "rt-polarity.neg")
    pair("CR", "custrev.pos", "custrev.neg")
    pair("SUBJ", "subj.objective", "subj.subjective")
    pair("MPQA", "mpqa.pos", "mpqa.neg")
    sst = root / "SST" / "binary"
    sst.mkdir(parents=True)
    for name, m in (("sentiment-train", 2 * n), ("sentiment-dev", n), ("sentiment-test", n)):
        lab = rng.integers(0, 2, m)
        sst.joinpath(name).write_text("".join(f"{_sent(rng, POS if l else NEG)}\t{l}\n" for l in lab), encoding="utf-8")
    trec = root / "TREC"
    trec.mkdir()
    coarse = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    for name, m in (("train_5500.label", 12 * n // 3), ("TREC_10.label", 2 * n)):
        lab = np.arange(m) % 6
        trec.joinpath(name).write_text(
            "".join(f"{coarse[l]}:x what is {coarse[l].lower()} {_sent(rng, FILLER)} ?\n" for l in lab), encoding="latin-1")
    mrpc = root / "MRPC"
    mrpc.mkdir()
    for name, m in (("msr_paraphrase_train.txt", 2 * n), ("msr_paraphrase_test.txt", n)):
        rows = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        for i in range(m):
            a = _sent(rng, POS + NEG)
            same = i % 2
            b = a if same else _sent(rng, FILLER)
            rows.append(f"{same}\t{i}\t{i + 1000}\t{a}\t{b}")
        mrpc.joinpath(name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def test_evaluate_transfer_end_to_end_on_fixture_files(tmp_path):
    root = write_fixture(tmp_path / "senteval")
    cfg = ProbeConfig(max_epoch=24, lr=0.05)  # SentEval's 10 folds
    res = evaluate_transfer(HashEncoder(), root, config=cfg)
    assert list(res) == [*TASKS, "avg"]
    for task in TASKS:
        assert 0.0 <= res[task]["acc"] <= 100.0 and res[task]["n"] > 0
    # one word decides the label in these fixtures, so the probe must find it
    for task in ("MR", "CR", "SUBJ", "MPQA", "SST2"):
        assert res[task]["acc"] >= 85.0, (task, res[task])
    assert res["TREC"]["acc"] >= 85.0
    assert res["MRPC"]["acc"] >= 80.0 and 0.0 <= res["MRPC"]["f1"] <= 100.0
    assert res["avg"] == pytest.approx(np.mean([res[t]["acc"] for t in TASKS]), abs=0.01)
    assert res["MR"]["n"] == 160 and res["SST2"]["n"] == 80 and res["TREC"]["n"] == 160 and res["MRPC"]["n"] == 80


def test_evaluate_transfer_rejects_bad_input_before_encoding(tmp_path):
    enc = HashEncoder()
    with pytest.raises(KdmcseError, match="unknown transfer task"):
        evaluate_transfer(enc, tmp_path, tasks=["MR", "STS12"])
    with pytest.raises(KdmcseError, match="SentEval data file missing"):
        evaluate_transfer(enc, tmp_path, tasks=["CR"])
    assert enc.calls == 0
