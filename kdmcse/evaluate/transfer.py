"""SentEval transfer tasks (MR, CR, SUBJ, MPQA, SST2, TREC, MRPC) in SentEval's test mode (method.md §5.4).

Three protocols, as in SentEval's `senteval/tools/validation.py`, all with the `nhid 0` probe of
`kdmcse.evaluate.linear_probe` and the L2 grid {1e-5, 1e-4, 1e-3, 1e-2}:
- `inner_kfold` (MR/CR/SUBJ/MPQA): stratified 10-fold; on each outer train fold an inner 10-fold picks L2 (each
  inner model early-stops on its inner test fold), then a model is refit on the outer train fold with a 5%
  validation split and scored on the outer test fold; acc = mean outer test accuracy.
- `kfold` (TREC, MRPC): 10-fold CV on train picks L2; refit on all of train with a 5% validation split; test.
- `split` (SST2): each L2 trains on train and early-stops on dev; the best dev score picks L2; test. (SentEval
  refits the chosen L2 with the same seed and data, which reproduces the same model, so it is reused.)

Rounding and tie-breaking follow SentEval: per-L2 scores are rounded to 2 decimals before the (first) argmax,
fold test accuracies are rounded before averaging. Rows are ordered as SentEval orders them before encoding
(stable sort by token count, then label), because the fold assignment depends on the row order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from sklearn.model_selection import StratifiedKFold

from kdmcse.data import senteval as senteval_data
from kdmcse.errors import KdmcseError
from kdmcse.evaluate.linear_probe import FitResult, Job, ProbeConfig, fit_batched, fit_reference

log = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("MR", "CR", "SUBJ", "MPQA", "SST2", "TREC", "MRPC")
BINARY_TASKS = ("MR", "CR", "SUBJ", "MPQA")
_TASK_FOLDERS = {"MR": "MR", "CR": "CR", "SUBJ": "SUBJ", "MPQA": "MPQA", "SST2": "SST", "TREC": "TREC", "MRPC": "MRPC"}
KINDS = ("inner_kfold", "kfold", "split")
ENGINES = {"batched": fit_batched, "reference": fit_reference}
# SentEval's InnerKFoldClassifier seeds both of its StratifiedKFold splitters with 1111, whatever the task seed
INNER_KFOLD_SPLIT_SEED = 1111


class Encoder(Protocol):
    def encode(self, sentences: list[str]) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------------- protocols
def _fit(engine: str, X: np.ndarray, y: np.ndarray, jobs: list[Job], nclasses: int, cfg: ProbeConfig,
         desc: str) -> list[list[FitResult]]:
    if engine == "batched":
        return fit_batched(X, y, jobs, nclasses, cfg, desc=desc)
    return fit_reference(X, y, jobs, nclasses, cfg)


def _pick_l2(scores: list[float], regs: Sequence[float]) -> float:
    return regs[int(np.argmax(scores))]  # first maximum, as np.argmax in SentEval


def stratified_folds(y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """SentEval's `StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(X, y)` (X only sets n)."""
    y = np.asarray(y)
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros((len(y), 1)), y))


def inner_kfold(X: np.ndarray, y: np.ndarray, nclasses: int, cfg: ProbeConfig = ProbeConfig(),
                engine: str = "batched") -> dict:
    """SentEval's `InnerKFoldClassifier` (MR/CR/SUBJ/MPQA)."""
    k, regs = cfg.kfold, cfg.l2_grid
    outer = stratified_folds(y, k, INNER_KFOLD_SPLIT_SEED)
    jobs = []
    for tr, _ in outer:  # every outer fold's inner models train together in phase 1
        for itr, ite in stratified_folds(y[tr], k, INNER_KFOLD_SPLIT_SEED):
            jobs.append(Job(train_idx=tr[itr], dev_idx=tr[ite], regs=regs))
    inner = _fit(engine, X, y, jobs, nclasses, cfg, desc="inner folds")
    dev_scores, chosen, all_scores = [], [], []
    for o in range(len(outer)):
        fits = inner[o * k : (o + 1) * k]
        scores = [round(100 * float(np.mean([f[r].dev_acc for f in fits])), 2) for r in range(len(regs))]
        chosen.append(_pick_l2(scores, regs))
        all_scores.append(scores)
        dev_scores.append(float(np.max(scores)))
        log.debug("outer fold %d: L2 scores %s -> %g", o + 1, scores, chosen[-1])
    finals = _fit(engine, X, y, [Job(train_idx=tr, validation_split=cfg.validation_split, regs=(l2,))
                                 for (tr, _), l2 in zip(outer, chosen)], nclasses, cfg, desc="outer refits")
    test = [round(100 * f[0].accuracy(X[te], y[te]), 2) for f, (_, te) in zip(finals, outer)]
    return {"acc": round(float(np.mean(test)), 2), "devacc": round(float(np.mean(dev_scores)), 2),
            "l2": chosen, "l2_scores": all_scores, "fold_acc": test, "n": len(y)}


def kfold(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, nclasses: int,
          cfg: ProbeConfig = ProbeConfig(), engine: str = "batched") -> dict:
    """SentEval's `KFoldClassifier` (TREC, MRPC); also returns the test predictions (`pred`)."""
    regs = cfg.l2_grid
    folds = stratified_folds(y, cfg.kfold, cfg.seed)
    fits = _fit(engine, X, y, [Job(train_idx=tr, dev_idx=te, regs=regs) for tr, te in folds], nclasses, cfg,
                desc="cv folds")
    scores = [round(100 * float(np.mean([f[r].dev_acc for f in fits])), 2) for r in range(len(regs))]
    l2 = _pick_l2(scores, regs)
    log.info("cross-validation L2 scores %s -> %g", scores, l2)
    final = _fit(engine, X, y, [Job(train_idx=np.arange(len(y)), validation_split=cfg.validation_split, regs=(l2,))],
                 nclasses, cfg, desc="refit")[0][0]
    pred = final.predict(X_test)
    return {"acc": round(100 * float(np.mean(pred == np.asarray(y_test))), 2), "devacc": float(np.max(scores)),
            "l2": l2, "l2_scores": scores, "pred": pred, "n": len(y_test)}


def split(X: np.ndarray, y: np.ndarray, X_dev: np.ndarray, y_dev: np.ndarray, X_test: np.ndarray,
          y_test: np.ndarray, nclasses: int, cfg: ProbeConfig = ProbeConfig(), engine: str = "batched") -> dict:
    """SentEval's `SplitClassifier` (SST2)."""
    regs = cfg.l2_grid
    pool_X = np.concatenate([X, X_dev]).astype(np.float32, copy=False)
    pool_y = np.concatenate([y, y_dev])
    job = Job(train_idx=np.arange(len(y)), dev_idx=len(y) + np.arange(len(y_dev)), regs=regs)
    fits = _fit(engine, pool_X, pool_y, [job], nclasses, cfg, desc="dev split")[0]
    scores = [round(100 * f.dev_acc, 2) for f in fits]
    best = fits[int(np.argmax(scores))]
    log.info("dev L2 scores %s -> %g", scores, best.l2)
    pred = best.predict(X_test)
    return {"acc": round(100 * float(np.mean(pred == np.asarray(y_test))), 2), "devacc": float(np.max(scores)),
            "l2": best.l2, "l2_scores": scores, "pred": pred, "n": len(y_test)}


def evaluate_features(
    kind: str, X: np.ndarray, y: np.ndarray, *, X_dev: np.ndarray | None = None, y_dev: np.ndarray | None = None,
    X_test: np.ndarray | None = None, y_test: np.ndarray | None = None, nclasses: int | None = None,
    seed: int = 1111, engine: str = "batched", config: ProbeConfig | None = None,
) -> dict:
    """Run one SentEval protocol on ready-made features (`kind` in inner_kfold|kfold|split); accuracies in %."""
    if kind not in KINDS:
        raise KdmcseError(f"unknown transfer protocol {kind!r}; use one of {', '.join(KINDS)}")
    if engine not in ENGINES:
        raise KdmcseError(f"unknown probe engine {engine!r}; use one of {', '.join(ENGINES)}")
    need = {"inner_kfold": (), "kfold": ("X_test", "y_test"), "split": ("X_dev", "y_dev", "X_test", "y_test")}[kind]
    given = {"X_dev": X_dev, "y_dev": y_dev, "X_test": X_test, "y_test": y_test}
    missing = [k for k in need if given[k] is None]
    if missing:
        raise KdmcseError(f"protocol {kind} needs {', '.join(missing)}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if X.ndim != 2 or len(X) != len(y):
        raise KdmcseError(f"features must be [n, d] with one label per row; got X {X.shape}, y {y.shape}")
    labels = [y] + [np.asarray(v) for k, v in given.items() if k.startswith("y") and v is not None]
    nclasses = nclasses or int(max(int(v.max()) for v in labels)) + 1
    cfg = ProbeConfig(seed=seed) if config is None else config
    if kind == "inner_kfold":
        return inner_kfold(X, y, nclasses, cfg, engine)
    if kind == "kfold":
        return kfold(X, y, X_test, np.asarray(y_test), nclasses, cfg, engine)
    return split(X, y, X_dev, np.asarray(y_dev), X_test, np.asarray(y_test), nclasses, cfg, engine)


# ---------------------------------------------------------------------------------------------- tasks
def senteval_order(*keys: Sequence) -> np.ndarray:
    """Row order of SentEval's `sorted(zip(...), key=...)`: a stable sort on the given key columns.

    Sentences count as their number of whitespace tokens, labels as themselves.
    """
    cols = [[len(v.split()) if isinstance(v, str) else int(v) for v in col] for col in keys]
    return np.asarray(sorted(range(len(cols[0])), key=lambda i: tuple(c[i] for c in cols)), dtype=np.int64)


def mrpc_features(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SentEval's MRPC pair features `[|u - v|, u * v]`."""
    return np.c_[np.abs(a - b), a * b].astype(np.float32, copy=False)


def binary_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 of the positive class (label 1), as `sklearn.metrics.f1_score(y, yhat)`; 0 when undefined."""
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    tp = int(np.sum((y_true == 1) & (y_pred == 1)))
    denom = 2 * tp + int(np.sum((y_true == 0) & (y_pred == 1))) + int(np.sum((y_true == 1) & (y_pred == 0)))
    return 2 * tp / denom if denom else 0.0


def _encode(encoder: Encoder, sentences: list[str]) -> np.ndarray:
    emb = np.asarray(encoder.encode(list(sentences)), dtype=np.float32)
    if emb.ndim != 2 or len(emb) != len(sentences):
        raise KdmcseError(f"encoder returned shape {emb.shape} for {len(sentences)} sentences; expected [n, d]")
    return emb


def _run_task(task: str, encoder: Encoder, root: Path, cfg: ProbeConfig, engine: str) -> dict:
    if task in BINARY_TASKS:
        sents, y = senteval_data.read_binary(root, task)
        order = senteval_order(sents, y)
        X = _encode(encoder, [sents[i] for i in order])
        return inner_kfold(X, y[order], 2, cfg, engine)
    if task == "SST2":
        data = senteval_data.read_sst2(root)
        feats = {}
        for part, (sents, y) in data.items():
            order = senteval_order(sents, y)
            feats[part] = (_encode(encoder, [sents[i] for i in order]), y[order])
        res = split(*feats["train"], *feats["dev"], *feats["test"], 2, cfg, engine)
        res.pop("pred")
        return {**res, "ndev": len(feats["dev"][1])}
    if task == "TREC":
        data = senteval_data.read_trec(root)
        feats = {}
        for part, (sents, y) in data.items():
            order = senteval_order(sents, y)
            feats[part] = (_encode(encoder, [sents[i] for i in order]), y[order])
        res = kfold(*feats["train"], *feats["test"], 6, cfg, engine)
        res.pop("pred")
        return {**res, "ndev": len(feats["train"][1])}
    if task == "MRPC":
        data = senteval_data.read_mrpc(root)
        feats = {}
        for part, (a, b, y) in data.items():
            order = senteval_order(a, b, y)
            ea = _encode(encoder, [a[i] for i in order])
            eb = _encode(encoder, [b[i] for i in order])
            feats[part] = (mrpc_features(ea, eb), y[order])
        res = kfold(*feats["train"], *feats["test"], 2, cfg, engine)
        pred = res.pop("pred")
        return {**res, "f1": round(100 * binary_f1(feats["test"][1], pred), 2), "ndev": len(feats["train"][1])}
    raise KdmcseError(f"unknown transfer task {task!r}; use some of {', '.join(TASKS)}")


def evaluate_transfer(encoder: Encoder, data_dir: str | Path, tasks: Sequence[str] | None = None, seed: int = 1111,
                      engine: str = "batched", config: ProbeConfig | None = None) -> dict:
    """Encode and evaluate the transfer tasks; returns `{task: {"acc": %, …}, …, "avg": mean acc}`.

    `data_dir` holds SentEval's `data/downstream` folders (MR/, CR/, …, SST/binary/, TREC/, MRPC/).
    """
    tasks = list(TASKS if tasks is None else tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise KdmcseError(f"unknown transfer task(s) {', '.join(unknown)}; use some of {', '.join(TASKS)}")
    if engine not in ENGINES:
        raise KdmcseError(f"unknown probe engine {engine!r}; use one of {', '.join(ENGINES)}")
    root = Path(data_dir)
    folders = {_TASK_FOLDERS[t] for t in tasks}
    senteval_data.check_files([p for p in senteval_data.transfer_files(root)
                               if p.relative_to(root).parts[0] in folders])
    cfg = ProbeConfig(seed=seed) if config is None else config
    out: dict = {}
    for task in tasks:
        t0 = time.perf_counter()
        res = _run_task(task, encoder, root, cfg, engine)
        keep = ("acc", "f1", "devacc", "n", "ndev", "l2")
        out[task] = {k: res[k] for k in keep if k in res}
        log.info("%s: acc %.2f (%.0f s)", task, res["acc"], time.perf_counter() - t0)
    out["avg"] = round(float(np.mean([out[t]["acc"] for t in tasks])), 2) if tasks else float("nan")
    return out
