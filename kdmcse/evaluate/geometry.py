"""Alignment and uniformity (Wang & Isola 2020) of sentence embeddings on the STS data (method.md §5.3).

    align   = mean over positive pairs of ||x̂ − ŷ||²               (x̂ = x/||x||, α = 2)
    uniform = log mean over i<j of exp(−2·||x̂_i − x̂_j||²)          (t = 2)

Two protocols, reported under separate keys:
- `mcse_batch`: MCSE's SentEval `sts.py`, comparable with the paper. Values are computed per SentEval batch of 128
  pairs — STS12–16 pairs sorted per subset by (tokens in s1, tokens in s2, gold) as SentEval's loader does, STS-B and
  SICK-R test pairs in file order — with positives = gold >= 4.0 and uniformity over the batch's 2x128 embeddings.
  A batch without positives contributes align = 0 (MCSE's quirk, kept for comparability). A task's value is the mean
  of its per-batch values (STS12–16: over all batches of all subsets); `avg` is the mean over the 7 tasks (over
  the tasks scored, when `evaluate.sts_tasks` is a subset).
- `stsb_full`: the whole STS-B test set at once; align over every pair with gold >= 4.0, uniformity over all
  2xN embeddings (both sides of every pair). Absent when STS-B is not among the tasks scored.
Both reuse the embeddings computed for STS.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import pdist

from kdmcse.data.senteval import StsPairs
from kdmcse.evaluate.sts import STS_TASKS, STS_YEARS, PairEmbeddings, StsSuite, SuiteEmbeddings

POSITIVE_GOLD = 4.0
SENTEVAL_BATCH = 128


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    # same eps as torch.nn.functional.normalize: a zero vector stays zero
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def align_loss(x: np.ndarray, y: np.ndarray) -> float:
    """Mean squared distance between normalised positive pairs; 0 for no pairs (as MCSE)."""
    if len(x) == 0:
        return 0.0
    return float((((_normalize(x) - _normalize(y)) ** 2).sum(1)).mean())


def uniform_loss(x: np.ndarray) -> float:
    """log mean exp(−2·squared distance) over all i<j of the normalised rows; 0 for fewer than 2 rows."""
    if len(x) < 2:
        return 0.0
    d2 = pdist(_normalize(x), "sqeuclidean")
    return float(np.log(np.exp(-2.0 * d2).mean()))


def senteval_order(pairs: StsPairs) -> np.ndarray:
    """Permutation SentEval's STS12–16 loader applies: stable sort by (len s1, len s2, gold), lengths in tokens."""
    keys = [(len(a.split()), len(b.split()), g) for a, b, g in zip(pairs.s1, pairs.s2, pairs.gold)]
    return np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)


def batch_values(
    e1: np.ndarray, e2: np.ndarray, gold: np.ndarray, batch_size: int = SENTEVAL_BATCH
) -> list[tuple[float, float]]:
    """(align, uniform) of each consecutive batch of pairs, in the order given."""
    values = []
    for start in range(0, len(gold), batch_size):
        a, b, g = e1[start : start + batch_size], e2[start : start + batch_size], gold[start : start + batch_size]
        pos = g >= POSITIVE_GOLD
        values.append((align_loss(a[pos], b[pos]), uniform_loss(np.concatenate([a, b]))))
    return values


def _task_batches(task: str, subsets: dict[str, StsPairs], emb: dict[str, PairEmbeddings], batch_size: int):
    values = []
    for name, pairs in subsets.items():
        e = emb[name]
        if task in STS_YEARS:
            order = senteval_order(pairs)
            values += batch_values(e.e1[order], e.e2[order], pairs.gold[order], batch_size)
        else:
            values += batch_values(e.e1, e.e2, pairs.gold, batch_size)
    return values


def mcse_batch_protocol(suite: StsSuite, emb: SuiteEmbeddings, batch_size: int = SENTEVAL_BATCH) -> dict:
    """Per-task mean of per-batch align/uniform, plus the average over the tasks (MCSE's numbers with all 7)."""
    out: dict = {}
    tasks = [t for t in STS_TASKS if t in suite]
    for task in tasks:
        vals = np.array(_task_batches(task, suite[task], emb[task], batch_size))
        out[task] = {"align": float(vals[:, 0].mean()), "uniform": float(vals[:, 1].mean())}
    out["avg"] = {k: float(np.mean([out[t][k] for t in tasks])) for k in ("align", "uniform")}
    return out


def full_set(e1: np.ndarray, e2: np.ndarray, gold: np.ndarray) -> dict:
    """Align over all positive pairs (gold >= 4.0) and uniformity over all 2xN embeddings of one split."""
    pos = np.asarray(gold) >= POSITIVE_GOLD
    return {"align": align_loss(e1[pos], e2[pos]), "uniform": uniform_loss(np.concatenate([e1, e2]))}


def align_uniform(suite: StsSuite, emb: SuiteEmbeddings) -> dict:
    """The `align_uniform` block of the metrics JSON."""
    out = {"mcse_batch": mcse_batch_protocol(suite, emb)}
    if "STSBenchmark" in suite:
        stsb, e = suite["STSBenchmark"]["test"], emb["STSBenchmark"]["test"]
        out["stsb_full"] = full_set(e.e1, e.e2, stsb.gold)
    return out
