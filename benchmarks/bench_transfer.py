"""Time the SentEval transfer suite on the real data with cheap 768-d features (embedding time excluded).

Features: a deterministic hashed bag of words (one fixed Gaussian vector per lowercased token, seeded by its
CRC32, averaged per sentence), so the accuracies mean something while no model runs. Prints seconds and
accuracy per task for the batched engine, and for the one-model-at-a-time reference engine (SentEval's own
loops) on the tasks named by --reference (CR by default), with the speed ratio.

    python benchmarks/bench_transfer.py [--data /work/shared/mirror/senteval.tar] [--tasks MR,CR,…]
        [--reference CR] [--threads 1] [--dim 768]
"""

from __future__ import annotations

import argparse
import logging
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from kdmcse.evaluate.transfer import TASKS, evaluate_transfer

DEFAULT_TAR = Path(__file__).resolve().parents[1].parent / "shared" / "mirror" / "senteval.tar"


class HashedBowEncoder:
    """Mean of fixed per-token Gaussian vectors; keeps its own encoding time so it can be subtracted."""

    def __init__(self, dim: int = 768) -> None:
        self.dim = dim
        self.vocab: dict[str, np.ndarray] = {}
        self.seconds = 0.0

    def _vec(self, tok: str) -> np.ndarray:
        v = self.vocab.get(tok)
        if v is None:
            v = np.random.default_rng(zlib.crc32(tok.encode())).standard_normal(self.dim).astype(np.float32)
            self.vocab[tok] = v
        return v

    def encode(self, sentences: list[str]) -> np.ndarray:
        t0 = time.perf_counter()
        out = np.zeros((len(sentences), self.dim), dtype=np.float32)
        for i, s in enumerate(sentences):
            toks = s.lower().split()
            if toks:
                out[i] = np.mean([self._vec(t) for t in toks], axis=0)
        self.seconds += time.perf_counter() - t0
        return out


def run(enc: HashedBowEncoder, root: Path, task: str, engine: str) -> tuple[float, dict]:
    enc.seconds = 0.0
    t0 = time.perf_counter()
    res = evaluate_transfer(enc, root, tasks=[task], engine=engine)
    return time.perf_counter() - t0 - enc.seconds, res[task]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_TAR, help="senteval.tar (data/downstream layout)")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--reference", default="CR", help="tasks also run with the reference engine ('' for none)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--dim", type=int, default=768)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    tasks = [t for t in args.tasks.split(",") if t]
    ref_tasks = [t for t in args.reference.split(",") if t]

    rows = []
    with tempfile.TemporaryDirectory(prefix="senteval-bench-") as tmp:
        with tarfile.open(args.data) as tar:
            tar.extractall(tmp, filter="data")
        root = Path(tmp)
        if not (root / "MR").is_dir():  # tolerate one leading folder in the archive
            root = next(p.parent for p in root.rglob("MR") if p.is_dir())
        enc = HashedBowEncoder(args.dim)
        for task in tasks:
            secs, res = run(enc, root, task, "batched")
            ref = run(enc, root, task, "reference") if task in ref_tasks else None
            rows.append((task, secs, res, ref))
            print(f"{task}: batched {secs:.1f} s acc {res['acc']}" + (f"; reference {ref[0]:.1f} s acc {ref[1]['acc']}"
                                                                       if ref else ""), flush=True)

    print(f"\nthreads={args.threads} dim={args.dim}  (seconds exclude embedding)")
    print(f"{'task':6} {'batched s':>10} {'acc':>7} {'f1':>7} {'L2':>22} {'reference s':>12} {'ref acc':>8} {'speed-up':>9}")
    for task, secs, res, ref in rows:
        l2 = res["l2"] if isinstance(res["l2"], float) else ",".join(f"{v:g}" for v in sorted(set(res["l2"])))
        line = f"{task:6} {secs:10.1f} {res['acc']:7.2f} {res.get('f1', float('nan')):7.2f} {l2:>22}"
        if ref:
            line += f" {ref[0]:12.1f} {ref[1]['acc']:8.2f} {ref[0] / secs:8.1f}x"
        print(line)
    total = sum(r[1] for r in rows)
    print(f"{'total':6} {total:10.1f}   avg acc {np.mean([r[2]['acc'] for r in rows]):.2f}")


if __name__ == "__main__":
    main()
