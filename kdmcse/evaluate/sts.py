"""Unsupervised STS evaluation (method.md §5.2): cosine similarity vs. gold, Spearman x100.

STS12–16 report SentEval's three aggregations: `all` (one Spearman over every subset's pairs concatenated — the
number papers print), `wmean` (subset Spearmans weighted by pair count) and `mean`. STS-B and SICK-R are scored the
same unsupervised way on their test splits. Avg is the mean of the seven numbers each rounded to 2 decimals first,
as SimCSE's evaluation script averages the printed strings.

Speed: every sentence of the suite goes through the encoder in one call, so each distinct sentence is encoded once
and batches are length-sorted across tasks (SentEval encodes both sides of every pair per batch, in file order).
The embeddings are returned too, so that alignment/uniformity need no second encoding pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdmcse.data.senteval import STS_SUBSETS, StsPairs, read_sick, read_sts_year, read_stsb
from kdmcse.embedding import Encoder, cosine, spearman100

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


def load_sts_suite(root: str | Path) -> StsSuite:
    suite: StsSuite = {year: read_sts_year(root, year) for year in STS_YEARS}
    suite["STSBenchmark"] = {"test": read_stsb(root, "test")}
    suite["SICKRelatedness"] = {"test": read_sick(root, "test")}
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
    """The `sts` block of the metrics JSON."""
    result: dict = {}
    for year in STS_YEARS:
        result[year] = score_year(suite[year], emb[year])
    for task in ("STSBenchmark", "SICKRelatedness"):
        pairs, e = suite[task]["test"], emb[task]["test"]
        result[task] = {"spearman": spearman100(cosine(e.e1, e.e2), pairs.gold), "n": len(pairs)}
    main = [result[y]["all"] for y in STS_YEARS] + [result[t]["spearman"] for t in ("STSBenchmark", "SICKRelatedness")]
    result["avg"] = paper_average(main)
    return result


def evaluate_sts(encoder: Encoder, senteval_dir: str | Path) -> tuple[dict, StsSuite, SuiteEmbeddings]:
    """Score the 7 STS tasks; also return the data and embeddings for alignment/uniformity."""
    suite = load_sts_suite(senteval_dir)
    emb = encode_suite(encoder, suite)
    return score_suite(suite, emb), suite, emb
