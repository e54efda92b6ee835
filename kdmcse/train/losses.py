"""Contrastive losses of SimCSE, MCSE and KDMCSE as pure functions over tensors.

Every logit goes through one operator, :func:`angular_logits` (the published code's "ArcSimilarity"): cosine
similarities whose *negative* angles are reduced by a (fixed or teacher-adaptive) margin. Rows are always the
student sentences (anchors), columns the candidates; the positive of row i is column i.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from kdmcse.errors import KdmcseError
from kdmcse.teacher.scores import cross_modal_scores

# The value the published collator uses for masked logits; kept so that masked runs match it bit for bit.
MASK_VALUE = -99999.99
# Floor for 1 - c² under the square root: keeps sin θ's gradient finite where a cosine is exactly ±1.
_SIN2_FLOOR = 1e-12

Objective = Literal["simcse", "mcse", "kdmcse"]
ScoreSpace = Literal["raw_dot", "cosine"]
Reduction = Literal["sum", "mean"]
OBJECTIVES: tuple[str, ...] = ("simcse", "mcse", "kdmcse")


def cosine_matrix(x: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
    """n×m cosine similarities of the rows of `x` with the rows of `y`."""
    return F.normalize(x, dim=-1, eps=eps) @ F.normalize(y, dim=-1, eps=eps).T


def angular_logits(
    x: Tensor,
    y: Tensor,
    *,
    temperature: float,
    margin: float,
    teacher_sim: Tensor | None = None,
) -> Tensor:
    """n×n contrastive logits with an angular margin on the negatives (method §3.1).

    c = cos(x_i, y_j), θ = arccos c. Off-diagonal entries with θ > `margin` become cos(θ − margin·Δ), with
    Δ = 1 (fixed margin) or Δ = 1 − `teacher_sim` (adaptive margin); the diagonal (positives) stays cos θ.
    Returns cos(θ')/`temperature`. With margin 0 this is exactly cosine/temperature (SimCSE, MCSE).

    cos(θ − δ) is computed as c·cos δ + sin θ·sin δ with sin θ = sqrt(max(1 − c², floor)): no arccos in the
    differentiable path, so value and gradient stay finite at c = ±1 (where d arccos/dc is infinite and
    torch.where would turn 0·inf into NaN).
    Computed in float32 or wider whatever the input precision (the margin arithmetic is not bf16-safe).
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"angular_logits needs two [n, d] tensors of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    c = cosine_matrix(x.to(dtype), y.to(dtype)).clamp(-1.0, 1.0)
    n = c.shape[0]
    if margin == 0.0:
        return c / temperature

    # Eligibility uses the fixed margin even in the adaptive case, as the published code does.
    with torch.no_grad():
        theta = torch.arccos(c)
        off_diag = ~torch.eye(n, dtype=torch.bool, device=c.device)
        negative = off_diag & (theta > margin)
    if teacher_sim is None:
        delta: Tensor | float = margin
        cos_d, sin_d = math.cos(margin), math.sin(margin)
    else:
        if teacher_sim.shape != c.shape:
            raise ValueError(f"teacher_sim must be {tuple(c.shape)}, got {tuple(teacher_sim.shape)}")
        delta = margin * (1.0 - teacher_sim.detach().to(dtype))  # the teacher is frozen: no gradient into it
        cos_d, sin_d = torch.cos(delta), torch.sin(delta)
    sin_theta = torch.sqrt(torch.clamp(1.0 - c * c, min=_SIN2_FLOOR))
    shifted = c * cos_d + sin_theta * sin_d
    return torch.where(negative, shifted, c) / temperature


def masked_negatives(scores: Tensor, threshold: float) -> Tensor:
    """Boolean n×n: the off-diagonal entries (negatives) whose teacher score exceeds `threshold`."""
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"threshold_mask needs a square score matrix, got {tuple(scores.shape)}")
    n = scores.shape[0]
    off_diag = ~torch.eye(n, dtype=torch.bool, device=scores.device)
    return off_diag & (scores > threshold)


def threshold_mask(scores: Tensor, threshold: float) -> Tensor:
    """Additive logit mask: MASK_VALUE where `scores` > `threshold` off the diagonal, 0 elsewhere.

    Masked entries (suspected false negatives by the teacher) drop out of the softmax denominator; the
    diagonal (the positive) is never masked.
    """
    hit = masked_negatives(scores, threshold)
    dtype = scores.dtype if scores.dtype.is_floating_point else torch.float32
    zeros = torch.zeros(scores.shape, dtype=dtype, device=scores.device)
    return zeros.masked_fill(hit, MASK_VALUE)


def mask_rate(hit: Tensor) -> Tensor:
    """Fraction of the n(n-1) in-batch negatives that `hit` masks, as a 0-d device tensor (no host sync)."""
    n = hit.shape[0]
    return hit.sum(dtype=torch.float32) / max(1, n * (n - 1))


def teacher_scores(image_emb: Tensor, text_emb: Tensor, space: ScoreSpace = "raw_dot") -> tuple[Tensor, Tensor]:
    """(cv, vc), the teacher's cross-modal scores the mask compares (`kdmcse.teacher.scores.cross_modal_scores`:
    one definition for training and for the score statistics that calibrate thresholds)."""
    return cross_modal_scores(image_emb, text_emb, space)


def teacher_cosine(emb: Tensor) -> Tensor:
    """Normalised Gram matrix of teacher features (vv for images, cc for captions): the adaptive-margin input."""
    e = F.normalize(emb.detach().float(), dim=-1)
    return e @ e.T


def simcse_loss(z1: Tensor, z2: Tensor, *, temperature: float, margin: float) -> Tensor:
    """Text–text term (§3.2): CE over angular logits, rows = dropout view 1, positives on the diagonal."""
    logits = angular_logits(z1, z2, temperature=temperature, margin=margin)
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


def multimodal_loss(
    p1: Tensor,
    p2: Tensor,
    target: Tensor,
    *,
    temperature: float,
    margin: float,
    teacher_sim: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Sentence→target term (§3.3), averaged over the two dropout views `p1`, `p2`.

    `target` is the projected teacher image (or caption) embedding of each sentence; `mask` is added after the
    temperature, so a masked negative leaves the softmax.
    """
    labels = torch.arange(target.shape[0], device=target.device)
    total = p1.new_zeros((), dtype=torch.promote_types(p1.dtype, torch.float32))
    for p in (p1, p2):
        logits = angular_logits(p, target, temperature=temperature, margin=margin, teacher_sim=teacher_sim)
        if mask is not None:
            logits = logits + mask.to(logits.dtype)
        total = total + F.cross_entropy(logits, labels)
    return total / 2


def combine_losses(
    intra: Tensor,
    l_image: Tensor,
    l_text: Tensor | None,
    *,
    lam: float,
    reduction: Reduction = "sum",
) -> Tensor:
    """intra + λ·(l_v + l_t) (`sum`, the published code) or intra + λ·(l_v + l_t)/2 (`mean`, the paper).

    `l_text` None (MCSE: image term only) gives intra + λ·l_v under either reduction.
    """
    if reduction not in ("sum", "mean"):
        raise KdmcseError(f"inter_reduction must be 'sum' or 'mean', got {reduction!r}")
    if l_text is None:
        return intra + lam * l_image
    inter = l_image + l_text
    if reduction == "mean":
        inter = inter / 2
    return intra + lam * inter


@dataclass(frozen=True)
class LossSettings:
    """The run-config keys that define the step loss (see docs/architecture.md §4)."""

    objective: Objective
    temperature: float = 0.05
    temperature_vl: float = 0.05
    margin1: float = 0.15
    margin2: float = 0.15
    lam: float = 0.01
    threshold: float | None = None  # a score (quantile thresholds are resolved before, kdmcse.train.thresholds)
    threshold_space: ScoreSpace = "raw_dot"
    inter_reduction: Reduction = "sum"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise KdmcseError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.threshold_space not in ("raw_dot", "cosine"):
            raise KdmcseError(f"threshold_space must be 'raw_dot' or 'cosine', got {self.threshold_space!r}")
        if self.inter_reduction not in ("sum", "mean"):
            raise KdmcseError(f"inter_reduction must be 'sum' or 'mean', got {self.inter_reduction!r}")
        for key in ("temperature", "temperature_vl"):
            if not getattr(self, key) > 0:
                raise KdmcseError(f"{key} must be > 0, got {getattr(self, key)!r}")
        for key in ("margin1", "margin2"):
            if not 0 <= getattr(self, key) <= math.pi:
                raise KdmcseError(f"{key} must be an angle in radians in [0, pi], got {getattr(self, key)!r}")

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any]) -> "LossSettings":
        """Build from a run config; `lambda` is the config key for λ."""
        keys = ("objective", "temperature", "temperature_vl", "margin1", "margin2", "lambda", "threshold",
                "threshold_space", "inter_reduction")
        missing = [k for k in keys if k not in cfg]
        if missing:
            raise KdmcseError(f"run config lacks {', '.join(missing)}: add them (see config/config.yaml)")
        if isinstance(cfg["threshold"], str):
            raise KdmcseError(f"run config threshold {cfg['threshold']!r} is a quantile: resolve it to a score first "
                              "(kdmcse.train.thresholds.resolve_threshold)")
        return cls(
            objective=cfg["objective"],
            temperature=float(cfg["temperature"]),
            temperature_vl=float(cfg["temperature_vl"]),
            margin1=float(cfg["margin1"]),
            margin2=float(cfg["margin2"]),
            lam=float(cfg["lambda"]),
            threshold=None if cfg["threshold"] is None else float(cfg["threshold"]),
            threshold_space=cfg["threshold_space"],
            inter_reduction=cfg["inter_reduction"],
        )


def objective_loss(
    settings: LossSettings,
    *,
    z1: Tensor,
    z2: Tensor,
    p1: Tensor | None = None,
    p2: Tensor | None = None,
    image_proj: Tensor | None = None,
    text_proj: Tensor | None = None,
    image_emb: Tensor | None = None,
    text_emb: Tensor | None = None,
) -> dict[str, Tensor]:
    """The whole loss of one optimisation step (§3.4) and its parts, for logging.

    Inputs: `z1`, `z2` the MLP outputs of the two dropout views; on paired steps `p1`, `p2` the normalised
    grounding outputs, `image_proj`/`text_proj` the projected teacher features, and `image_emb`/`text_emb`
    the raw teacher features of the batch (for the adaptive margins and the threshold mask).
    A step is paired when `p1` is given; text-only steps and `simcse` use the text–text term only.

    - simcse: intra(margin1) on every batch.
    - mcse:   intra(margin 0) + λ·l_v with plain cosines (no margins, no text term, no mask).
    - kdmcse: intra(margin1) + λ·(l_v + l_t) [sum or mean], adaptive margins from vv/cc, optional mask.

    Returns {"intra", "total"} plus "image" (mcse, kdmcse) and "text" (kdmcse) on paired steps, and with a
    threshold "mask_rate_image"/"mask_rate_text": the fraction of in-batch negatives each term's mask drops.
    """
    s = settings
    paired = p1 is not None
    if s.objective == "mcse":
        intra = simcse_loss(z1, z2, temperature=s.temperature, margin=0.0)
    else:
        intra = simcse_loss(z1, z2, temperature=s.temperature, margin=s.margin1)
    if s.objective == "simcse" or not paired:
        return {"intra": intra, "total": intra}
    if p2 is None or image_proj is None:
        raise ValueError("a paired step needs p1, p2 and image_proj")

    if s.objective == "mcse":
        l_image = multimodal_loss(p1, p2, image_proj, temperature=s.temperature_vl, margin=0.0)
        return {"intra": intra, "image": l_image, "total": combine_losses(intra, l_image, None, lam=s.lam)}

    if text_proj is None or image_emb is None or text_emb is None:
        raise ValueError("a kdmcse paired step needs text_proj, image_emb and text_emb")
    mask_v = mask_t = None
    rates: dict[str, Tensor] = {}
    if s.threshold is not None:
        cv, vc = teacher_scores(image_emb, text_emb, s.threshold_space)
        hit_v, hit_t = masked_negatives(cv, s.threshold), masked_negatives(vc, s.threshold)
        zeros = torch.zeros(cv.shape, dtype=cv.dtype, device=cv.device)
        mask_v, mask_t = zeros.masked_fill(hit_v, MASK_VALUE), zeros.masked_fill(hit_t, MASK_VALUE)
        rates = {"mask_rate_image": mask_rate(hit_v), "mask_rate_text": mask_rate(hit_t)}
    l_image = multimodal_loss(p1, p2, image_proj, temperature=s.temperature_vl, margin=s.margin2,
                              teacher_sim=teacher_cosine(image_emb), mask=mask_v)
    l_text = multimodal_loss(p1, p2, text_proj, temperature=s.temperature_vl, margin=s.margin2,
                             teacher_sim=teacher_cosine(text_emb), mask=mask_t)
    total = combine_losses(intra, l_image, l_text, lam=s.lam, reduction=s.inter_reduction)
    return {"intra": intra, "image": l_image, "text": l_text, "total": total, **rates}
