"""Single-node data parallelism, driven by the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK).

Every process draws the same global batch and encodes its own shard of it. The contrastive losses need
in-batch negatives from the whole batch, so the shard outputs (and the teacher features that set the margins
and the mask) are all-gathered, and every process computes the loss of the *global* batch: the same value on
every rank.

Why the gradient comes out right: `torch.distributed.nn.functional.all_gather` is differentiable and its
backward sums, over ranks, the gradients that each rank's (identical) loss sends to a shard. Rank r's shard
therefore receives W·∂L/∂x_r, and its parameter gradient is W·(∂L/∂θ through shard r). Averaging the
parameter gradients over the W ranks (what DDP does, and what `average_gradients` does here) gives
Σ_r ∂L/∂θ through shard r = ∂L/∂θ, the full-batch gradient. Parameters applied after the gather (the teacher
projections) get the full gradient on every rank, and the average of W equal values leaves it unchanged.

The gradients are averaged by hand instead of with a DistributedDataParallel wrapper: on text-only steps the
heads are unused, and calling the heads outside the wrapped forward confuses DDP's unused-parameter detection.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # whether init_distributed created the process group (and so must destroy it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str | None = None) -> DistContext:
    """Join the process group described by torchrun's variables; a single process without them.

    nccl on CUDA, gloo on CPU. Each process uses GPU LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        torch.cuda.set_device(local)
    owns = not dist.is_initialized()  # a caller may have joined the group already: reuse it
    if owns:
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    log.info("process %d of %d (local rank %d)", rank, world, local)
    return DistContext(rank, world, local, owns)


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.enabled and ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def shard_rows(rows: np.ndarray, ctx: DistContext) -> np.ndarray:
    """This rank's contiguous part of a global batch; sizes differ by at most one (no drop_last)."""
    if not ctx.enabled:
        return rows
    return np.array_split(rows, ctx.world_size)[ctx.rank]


def shard_sizes(n: int, world_size: int) -> list[int]:
    return [len(part) for part in np.array_split(np.arange(n), world_size)]


def gather_rows(x: torch.Tensor, ctx: DistContext, sizes: list[int]) -> torch.Tensor:
    """Concatenate every rank's rows in rank order, keeping the gradient path to each rank's shard.

    Shards may differ in length by one (the last, partial batch), and the collective needs equal shapes:
    each is padded to the longest and the padding is dropped after the gather.
    """
    if not ctx.enabled:
        return x
    from torch.distributed.nn.functional import all_gather

    longest = max(sizes)
    if x.shape[0] < longest:
        pad = x.new_zeros((longest - x.shape[0],) + tuple(x.shape[1:]))
        x = torch.cat([x, pad], dim=0)
    with warnings.catch_warnings():
        # deprecated in favour of a private functional-collectives API; still the public differentiable gather
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        parts = all_gather(x, group=dist.group.WORLD)  # the current group, not one bound at import
    return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)


def average_gradients(params: Iterable[torch.nn.Parameter], ctx: DistContext) -> None:
    """All-reduce the mean of the parameter gradients, in one flat buffer.

    Parameters without a gradient are left without one, as a single process leaves them (the optimiser then
    skips them). Every rank runs the same code path on a step (same step type, non-empty shards), so the set
    of parameters with a gradient is the same on all ranks.
    """
    if not ctx.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def all_reduce_max(values: list[int], ctx: DistContext, device: torch.device) -> list[int]:
    """Element-wise maximum of small integers over every rank (one collective, then one host read)."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.int64, device=device)  # nccl reduces CUDA tensors, gloo CPU ones
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [int(v) for v in t.tolist()]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def broadcast_object(obj: object, ctx: DistContext, src: int = 0) -> object:
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: object, ctx: DistContext) -> list[object]:
    """Every rank's `obj`, in rank order, on every rank (used for per-rank RNG states in checkpoints)."""
    if not ctx.enabled:
        return [obj]
    out: list[object] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
