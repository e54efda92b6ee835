"""Model selection on STS-B dev (method.md §4.1): score the student every `eval_steps` and at the last step, keep
the weights of the strictly best score.

The score is the evaluation's own: the same `SentenceEncoder` (eval mode, no truncation, SentEval's batch of 128)
and the same cosine/Spearman, on the dev split instead of test.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from kdmcse.data.senteval import read_stsb
from kdmcse.embedding import Encoder, SentenceEncoder, cosine, spearman100

log = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 128  # SentEval's batch size


def stsb_dev_spearman(encoder: Encoder, senteval_dir: str | Path) -> float:
    """Spearman x100 on STS-B dev: the training-time selection score."""
    pairs = read_stsb(senteval_dir, "dev")
    emb = encoder.encode(pairs.s1 + pairs.s2)
    n = len(pairs)
    return spearman100(cosine(emb[:n], emb[n:]), pairs.gold)


def state_to_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


class DevSelection:
    """The dev history and the best weights so far; without a SentEval folder it records nothing."""

    def __init__(self, senteval: Path | None, pooling: str) -> None:
        self.senteval = senteval
        self.pooling = pooling
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"score": None, "step": None, "state": None}

    @property
    def enabled(self) -> bool:
        return self.senteval is not None

    def evaluate(self, student: Any, tokenizer: Any, done: int) -> float | None:
        """Score the student after `done` steps; keep its weights if the score is strictly the best so far."""
        if self.senteval is None:
            return None
        # `cls` selection must use the training MLP: the encoder's own pooler only receives it on save.
        enc = SentenceEncoder(student.encoder, tokenizer, pooling=self.pooling, batch_size=EVAL_BATCH_SIZE,
                              show_progress=False, mlp=student.mlp if self.pooling == "cls" else None)
        score = float(stsb_dev_spearman(enc, self.senteval))
        self.history.append({"step": done, "stsb_dev_spearman": score})
        if not math.isfinite(score):
            log.warning("step %d: STS-B dev spearman is %s (constant embeddings?)", done, score)
        best = self.best
        # strictly greater keeps the earlier model; a NaN score never wins over a real one
        if best["score"] is None or (math.isfinite(score) and not score <= best["score"]):
            best.update(score=score, step=done, state=state_to_cpu(student))
        log.info("step %d: STS-B dev spearman %.2f (best %.2f at step %s)", done, score, best["score"], best["step"])
        return score

    def state_dict(self) -> dict[str, Any]:
        """The history and the best score and step; the best weights are saved apart (`best["state"]`)."""
        return {"history": self.history, "best_score": self.best["score"], "best_step": self.best["step"]}

    def load_state_dict(self, state: dict[str, Any], best_weights: dict[str, torch.Tensor] | None) -> None:
        self.history = list(state["history"])
        self.best = {"score": state["best_score"], "step": state["best_step"], "state": best_weights}
