"""Unsupervised STS evaluation (method.md §5.2): cosine similarity vs. gold, Spearman x100.

STS12–16 report SentEval's three aggregations: `all` (one Spearman over every subset's pairs concatenated — the
number papers print), `wmean` (subset Spearmans weighted by pair count) and `mean`. STS-B and SICK-R are scored the
same unsupervised way on their test splits. Avg is the mean of the seven numbers each rounded to 2 decimals first,
as SimCSE's evaluation script averages the printed strings.

A subset of the seven tasks may be scored (`evaluate.sts_tasks`, for quick runs such as the CPU demo): each task's
number is then the same as in a full run, `tasks` lists what was scored, and `avg` is the mean over those tasks
only, so it does not compare with the paper's seven-task Avg (the tables say so).

Speed: every sentence of the suite goes through the encoder in one call, so each distinct sentence is encoded once
and batches are length-sorted across tasks (SentEval encodes both sides of every pair per batch, in file order).
The embeddings are returned too, so that alignment/uniformity need no second encoding pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdmcse.data.senteval import STS_SUBSETS, StsPairs, read_sick, read_sts_year, read_stsb
from kdmcse.embedding import Encoder, cosine, spearman100
from kdmcse.errors import KdmcseError

log = logging.getLogger(__name__)

STS_YEARS = tuple(STS_SUBSETS)  # STS12 … STS16
STS_TASKS = STS_YEARS + ("STSBenchmark", "SICKRelatedness")


@dataclass
class PairEmbeddings:
    e1: np.ndarray  # [n, d] embeddings of the first sentences
    e2: np.ndarray  # [n, d] embeddings of the second sentences


# task -> subset -> pairs; STS-B and SICK-R hold their test split under the subset name "test"
StsSuite = dict[str, dict[str, StsPairs]]
SuiteEmbeddings = dict[str, dict[str, PairEmbeddings]]


def check_sts_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """The tasks in their canonical order; an unknown or repeated name is an error that lists the valid ones."""
    bad = [t for t in tasks if t not in STS_TASKS]
    if bad or not tasks or len(set(tasks)) != len(tasks):
        what = f"unknown task(s) {', '.join(map(repr, bad))}" if bad else "an empty or repeated list"
        raise KdmcseError(f"STS tasks (evaluate.sts_tasks / --sts-tasks): {what}; choose from {', '.join(STS_TASKS)}")
    return tuple(t for t in STS_TASKS if t in tasks)


def load_sts_suite(root: str | Path, tasks: Sequence[str] = STS_TASKS) -> StsSuite:
    """The test pairs of the given tasks (all seven by default), in the canonical task order."""
    suite: StsSuite = {}
    for task in check_sts_tasks(tasks):
        if task == "STSBenchmark":
            suite[task] = {"test": read_stsb(root, "test")}
        elif task == "SICKRelatedness":
            suite[task] = {"test": read_sick(root, "test")}
        else:
            suite[task] = read_sts_year(root, task)
    return suite


def encode_suite(encoder: Encoder, suite: StsSuite) -> SuiteEmbeddings:
    """Encode every sentence of the suite in one call and slice the embeddings back per task and subset."""
    sentences: list[str] = []
    spans: list[tuple[str, str, int, int]] = []
    for task, subsets in suite.items():
        for name, pairs in subsets.items():
            spans.append((task, name, len(sentences), len(pairs)))
            sentences += pairs.s1 + pairs.s2
    log.info("encoding %d sentences (%d distinct) for %d STS tasks", len(sentences), len(set(sentences)), len(suite))
    emb = encoder.encode(sentences)
    out: SuiteEmbeddings = {}
    for task, name, start, n in spans:
        out.setdefault(task, {})[name] = PairEmbeddings(emb[start : start + n], emb[start + n : start + 2 * n])
    return out


def score_year(subsets: dict[str, StsPairs], emb: dict[str, PairEmbeddings]) -> dict:
    """SentEval's STS12–16 aggregations (x100) plus per-subset Spearman."""
    per: dict[str, dict] = {}
    preds, golds = [], []
    for name, pairs in subsets.items():
        pred = cosine(emb[name].e1, emb[name].e2)
        per[name] = {"spearman": spearman100(pred, pairs.gold), "n": len(pairs)}
        preds.append(pred)
        golds.append(pairs.gold)
    rhos = np.array([v["spearman"] for v in per.values()])
    ns = np.array([v["n"] for v in per.values()])
    return {
        "all": spearman100(np.concatenate(preds), np.concatenate(golds)),
        "wmean": float(np.average(rhos, weights=ns)),
        "mean": float(np.mean(rhos)),
        "n": int(ns.sum()),
        "subsets": per,
    }


def paper_average(values: list[float]) -> float:
    """Mean of numbers each rounded to 2 decimals first (SimCSE averages the printed '%.2f' strings)."""
    return round(float(np.mean([round(v, 2) for v in values])), 2)


def score_suite(suite: StsSuite, emb: SuiteEmbeddings) -> dict:
    """The `sts` block of the metrics JSON: one entry per task of the suite, `tasks` and their `avg`."""
    result: dict = {}
    main = []
    tasks = check_sts_tasks(list(suite))
    for task in tasks:
        if task in STS_YEARS:
            result[task] = score_year(suite[task], emb[task])
            main.append(result[task]["all"])
        else:
            pairs, e = suite[task]["test"], emb[task]["test"]
            result[task] = {"spearman": spearman100(cosine(e.e1, e.e2), pairs.gold), "n": len(pairs)}
            main.append(result[task]["spearman"])
    result["tasks"] = list(tasks)
    result["avg"] = paper_average(main)
    return result


def evaluate_sts(
    encoder: Encoder, senteval_dir: str | Path, tasks: Sequence[str] = STS_TASKS
) -> tuple[dict, StsSuite, SuiteEmbeddings]:
    """Score the STS tasks (all seven by default); also return the data and embeddings for alignment/uniformity."""
    suite = load_sts_suite(senteval_dir, tasks)
    emb = encode_suite(encoder, suite)
    return score_suite(suite, emb), suite, emb
