"""One optimisation step and what it is built from: the batch, the two dropout views in one encoder pass, the
heads and losses on the gathered global batch; plus the optimiser, schedule, precision and seeding it runs under
(method.md §1.5, §2, §4.1). The precision (autocast, TF32, loss scaling) is `kdmcse.train.precision`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from kdmcse.errors import KdmcseError
from kdmcse.train.distributed import DistContext, gather_rows, shard_rows, shard_sizes
from kdmcse.train.inputs import TrainData
from kdmcse.train.losses import objective_loss


@dataclass
class StepBatch:
    paired: bool
    rows: np.ndarray  # this process's shard of the global batch (row indices)
    sizes: list[int]  # shard sizes of every process
    tokens: dict[str, torch.Tensor]
    image_emb: torch.Tensor | None = None  # teacher features of the *global* batch (raw)
    caption_emb: torch.Tensor | None = None


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor -> `device`; to a GPU through pinned memory, so the copy is asynchronous and the host goes
    on preparing the next step instead of waiting for the GPU to drain."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def make_batch(data: TrainData, paired: bool, global_rows: np.ndarray, ctx: DistContext,
               device: torch.device) -> StepBatch:
    local = shard_rows(global_rows, ctx)
    corpus = data.pairs if paired else data.text
    assert corpus is not None
    tokens = {k: to_device(v, device) for k, v in corpus.collate(local).items()}
    batch = StepBatch(paired, local, shard_sizes(len(global_rows), ctx.world_size), tokens)
    if paired and data.image_emb is not None:
        # every process knows the global batch, so it reads the teacher rows itself instead of gathering them
        img, cap = data.teacher_batch(global_rows)
        batch.image_emb = to_device(img, device)
        batch.caption_emb = None if cap is None else to_device(cap, device)
    return batch


def encode_cls(student: Any, batch: StepBatch, autocast: Any) -> torch.Tensor:
    """CLS vectors before the MLP (`h`) of this process's 2·n rows, as float32 (autocast covers the encoder)."""
    with autocast():
        out = student.encoder(input_ids=batch.tokens["input_ids"], attention_mask=batch.tokens["attention_mask"])
    return out.last_hidden_state[:, 0].float()


def losses_from_cls(student: Any, h: torch.Tensor, batch: StepBatch, settings: Any,
                    ctx: DistContext) -> dict[str, torch.Tensor]:
    """Heads and losses from the CLS vectors; the global batch is gathered so every rank gets the same loss."""
    n = h.shape[0] // 2
    z = student.mlp(h)
    # rows are [s0, s0, s1, s1, …]: view 1 is the even rows, view 2 the odd ones
    hv, zv = h.view(n, 2, -1), z.view(n, 2, -1)
    z1, z2 = gather_rows(zv[:, 0], ctx, batch.sizes), gather_rows(zv[:, 1], ctx, batch.sizes)
    if not batch.paired or batch.image_emb is None:  # text-only steps, and SimCSE's caption batches
        return objective_loss(settings, z1=z1, z2=z2)
    p = student.ground(hv.reshape(2 * n, -1)).view(n, 2, -1)
    p1, p2 = gather_rows(p[:, 0], ctx, batch.sizes), gather_rows(p[:, 1], ctx, batch.sizes)
    return objective_loss(
        settings, z1=z1, z2=z2, p1=p1, p2=p2,
        image_proj=student.project_image(batch.image_emb),
        # an image-feature cache (the released MCSE baseline) has no caption features: MCSE uses none
        text_proj=None if batch.caption_emb is None else student.project_text(batch.caption_emb),
        image_emb=batch.image_emb, text_emb=batch.caption_emb,
    )


def step_losses(student: Any, batch: StepBatch, settings: Any, ctx: DistContext,
                autocast: Any) -> dict[str, torch.Tensor]:
    """Forward both dropout views in one pass and return the loss parts of the global batch.

    Same as `StudentModel.forward` (h = CLS before the MLP, z = mlp(h)), split in two so the benchmark can time
    the encoder apart from the heads.
    """
    return losses_from_cls(student, encode_cls(student, batch, autocast), batch, settings, ctx)


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices), as transformers.set_seed does."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def check_shardable(batch_size: int, n_text: int, n_pair: int, world_size: int) -> None:
    """Every process needs at least one row of every batch, the last partial ones included."""
    if world_size <= 1:
        return
    if world_size > batch_size:
        raise KdmcseError(f"run config batch_size {batch_size} is smaller than the {world_size} processes")
    for rows, what in ((n_text, "text corpus"), (n_pair, "caption table")):
        last = rows % batch_size
        if last and last < world_size:
            raise KdmcseError(f"the last batch of the {what} ({rows} rows) has {last} row(s), fewer than the "
                              f"{world_size} processes; pick a batch_size that leaves at least {world_size}")


def make_optimizer(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """AdamW as the published trainer sets it (eps 1e-6, no weight decay, every parameter).

    The fused kernel where torch has one: on CPU it is ~7x faster than the default for-each kernel, which
    otherwise costs ~10 % of a mid-size step (the 30k-row embedding matrix alone is millions of parameters).
    """
    kwargs = dict(lr=lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, **kwargs)


def linear_decay(total_steps: int) -> Callable[[int], float]:
    """LR factor: linear from 1 to 0 over `total_steps`, no warm-up (transformers' `linear` with 0 warm-up)."""
    return lambda step: max(0.0, float(total_steps - step) / float(max(1, total_steps)))


def pick_device(ctx: DistContext) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", ctx.local_rank)
    return torch.device("cpu")
