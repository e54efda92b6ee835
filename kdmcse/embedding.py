"""How a model turns sentences into vectors, and how two vectors are compared: shared by training-time dev
selection and the evaluate stage, so that dev and test scores come from the same code.

SentEval's batcher tokenizes each batch with padding and no truncation, runs the model in eval mode and pools.
`SentenceEncoder.encode` gives the same vectors faster: each distinct sentence is tokenized and encoded once, and
batches are formed from length-sorted sentences so that almost no padding is computed. Results come back in
input order.

Pooling (method.md §2.3):
- `cls_before_pooler`: last-layer CLS hidden state (the paper's evaluation embedding);
- `cls`: CLS passed through the training MLP head (`Linear + Tanh`) when one is given (`heads.pt` of a trained
  student); without it, the HF pooler output, which is the same thing for a checkpoint converted the SimCSE way
  (the MLP overwrote BERT's pooler) and BERT's own pooler otherwise;
- `avg`: mean of the last hidden states over the non-padding tokens (CLS and SEP included, as SimCSE's `avg`
  and sentence-transformers' mean pooling).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from kdmcse.errors import KdmcseError

log = logging.getLogger(__name__)

POOLINGS = ("cls_before_pooler", "cls", "avg")
# RoBERTa-style models offset positions by padding_idx + 1, so fewer tokens fit than max_position_embeddings
_OFFSET_POSITION_MODELS = {"roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text"}


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """`auto`/None -> CUDA when available, else CPU; anything else as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise KdmcseError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise KdmcseError(f"device {device!r} requested but CUDA is not available here; use --device cpu or auto")
    return dev


def max_tokens(model: torch.nn.Module, tokenizer) -> int | None:
    """Longest input the model accepts (position embeddings), or None when unbounded/unknown."""
    limits = []
    cfg = getattr(model, "config", None)
    n_pos = getattr(cfg, "max_position_embeddings", None)
    if isinstance(n_pos, int) and n_pos > 0:
        if getattr(cfg, "model_type", "") in _OFFSET_POSITION_MODELS:
            n_pos -= (getattr(cfg, "pad_token_id", 1) or 1) + 1
        limits.append(n_pos)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 100_000:
        limits.append(tok_max)
    return min(limits) if limits else None


class Encoder(Protocol):
    """Anything that maps sentences to an [n, d] float array (a `SentenceEncoder`, a test double, an MTEB model)."""

    def encode(self, sentences: list[str]) -> np.ndarray: ...


class SentenceEncoder:
    """Encode sentences with an HF encoder the way SentEval's batcher does (eval mode, no truncation).

    `mlp` is the training MLP head used by `pooling="cls"` (a module mapping [n, h] -> [n, h]); see module doc.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        pooling: str = "cls_before_pooler",
        batch_size: int = 128,
        device: str | torch.device | None = None,
        mlp: torch.nn.Module | None = None,
        show_progress: bool = True,
    ) -> None:
        if pooling not in POOLINGS:
            raise KdmcseError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
        if batch_size < 1:
            raise KdmcseError(f"batch size must be positive, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.batch_size = batch_size
        self.mlp = mlp
        self.show_progress = show_progress
        if device is not None:
            dev = resolve_device(device)
            self.model.to(dev)
            if self.mlp is not None:
                self.mlp.to(dev)
        self.max_tokens = max_tokens(model, tokenizer)
        self._accepts_token_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _tokenize(self, sentences: list[str]) -> list[list[int]]:
        ids = self.tokenizer(sentences, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        limit = self.max_tokens
        if limit is not None:
            too_long = sum(len(x) > limit for x in ids)
            if too_long:
                # SentEval never truncates, but a longer input would crash the position embeddings
                log.warning("%d sentence(s) exceed the model's %d positions; truncating only those", too_long, limit)
                ids = [x if len(x) <= limit else x[: limit - 1] + x[-1:] for x in ids]
        return ids

    def _batch_tensors(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):  # right padding, as the tokenizer's padding=True does for BERT/RoBERTa
            input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[row, : len(x)] = 1
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if self._accepts_token_types:
            batch["token_type_ids"] = torch.zeros_like(input_ids)
        dev = self.device
        return {k: v.to(dev) for k, v in batch.items()}

    def _pool(self, out, mask: torch.Tensor) -> torch.Tensor:
        hidden = out.last_hidden_state
        if self.pooling == "cls_before_pooler":
            return hidden[:, 0]
        if self.pooling == "avg":
            m = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(1) / m.sum(1)
        if self.mlp is not None:
            return self.mlp(hidden[:, 0])
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            raise KdmcseError("pooling 'cls' needs the training MLP (heads.pt) or a model with a pooler; use cls_before_pooler")
        return pooled

    def encode(self, sentences: Sequence[str]) -> np.ndarray:
        """Return float32 embeddings [len(sentences), d] in input order."""
        sentences = list(sentences)
        if not sentences:
            raise KdmcseError("nothing to encode: the sentence list is empty")
        unique = list(dict.fromkeys(sentences))
        ids = self._tokenize(unique)
        # longest first: a memory problem shows up at once, and similar lengths share a batch
        order = sorted(range(len(unique)), key=lambda i: -len(ids[i]))
        modules = [self.model] + ([self.mlp] if self.mlp is not None else [])
        states = [(m, m.training) for mod in modules for m in mod.modules()]
        out = None
        try:
            for mod in modules:
                mod.eval()
            with torch.inference_mode():
                starts = range(0, len(order), self.batch_size)
                for start in tqdm(starts, desc="encode", unit="batch", disable=not self.show_progress, leave=False):
                    rows = order[start : start + self.batch_size]
                    batch = self._batch_tensors([ids[i] for i in rows])
                    res = self.model(**batch)
                    emb = self._pool(res, batch["attention_mask"]).float().cpu().numpy()
                    if out is None:
                        out = np.empty((len(unique), emb.shape[1]), dtype=np.float32)
                    out[rows] = emb
        finally:
            for m, was_training in states:  # training calls this mid-run for dev selection
                m.train(was_training)
        index = {s: i for i, s in enumerate(unique)}
        return out[[index[s] for s in sentences]]


# ---------------------------------------------------------------- comparing embeddings
def cosine(e1: np.ndarray, e2: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity; NaN (zero vectors) becomes 0 as in SentEval."""
    a = np.nan_to_num(np.asarray(e1, dtype=np.float64))
    b = np.nan_to_num(np.asarray(e2, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return np.nan_to_num(sim)


def spearman100(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(spearmanr(pred, gold)[0] * 100.0)
