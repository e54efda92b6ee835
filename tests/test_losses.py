"""Losses against values worked out by hand on small 2-D examples at known angles."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdmcse.errors import KdmcseError
from kdmcse.train.losses import (
    MASK_VALUE,
    LossSettings,
    angular_logits,
    combine_losses,
    multimodal_loss,
    objective_loss,
    simcse_loss,
    teacher_cosine,
    teacher_scores,
    threshold_mask,
)

TAU = 0.05
M = 0.15


def at(*angles: float, scale: float = 1.0) -> torch.Tensor:
    """2-D vectors at the given angles (radians); `scale` checks that only directions matter."""
    return torch.tensor([[scale * math.cos(a), scale * math.sin(a)] for a in angles], dtype=torch.float64)


def hand_ce(row: list[float], target: int) -> float:
    return -row[target] + math.log(sum(math.exp(v) for v in row))


# x at 0, 0.1, 1.0 rad; y at 0.05, 0.0, 2.0 rad. Angles θ_ij = |x_i − y_j|:
#   [[0.05, 0.00, 2.00],
#    [0.05, 0.10, 1.90],
#    [0.95, 1.00, 1.00]]
X_ANGLES = (0.0, 0.1, 1.0)
Y_ANGLES = (0.05, 0.0, 2.0)


def test_fixed_margin_logits_by_hand():
    got = angular_logits(at(*X_ANGLES), at(*Y_ANGLES, scale=3.0), temperature=TAU, margin=M)
    c = math.cos
    expected = torch.tensor(
        [
            [c(0.05), c(0.0), c(2.0 - M)],  # (0,1): θ=0 ≤ m and cos=+1 off the diagonal: untouched
            [c(0.05), c(0.10), c(1.9 - M)],  # (1,0): θ=0.05 ≤ m: untouched; diagonal untouched
            [c(0.95 - M), c(1.0 - M), c(1.0)],  # diagonal θ=1.0 > m but positives keep their angle
        ],
        dtype=torch.float64,
    ) / TAU
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)


def test_adaptive_margin_logits_by_hand():
    s = torch.tensor([[1.0, 0.2, -0.5], [0.3, 1.0, 1.0], [0.0, 0.9, 1.0]], dtype=torch.float64)
    got = angular_logits(at(*X_ANGLES), at(*Y_ANGLES), temperature=TAU, margin=M, teacher_sim=s)
    c = math.cos
    expected = torch.tensor(
        [
            [c(0.05), c(0.0), c(2.0 - M * 1.5)],  # Δ = 1 − (−0.5) = 1.5: a wider margin than the fixed one
            [c(0.05), c(0.10), c(1.9 - M * 0.0)],  # teacher says identical (S=1): Δ = 0
            [c(0.95 - M * 1.0), c(1.0 - M * 0.1), c(1.0)],
        ],
        dtype=torch.float64,
    ) / TAU
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)


def test_eligibility_uses_the_fixed_margin_even_when_adaptive():
    # θ = 0.1 ≤ m = 0.15: no margin at all, even though Δ = 1 − 0.9 = 0.1 would keep θ − mΔ positive.
    x, y = at(0.0, 1.0), at(1.5, 0.1)
    s = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
    got = angular_logits(x, y, temperature=1.0, margin=M, teacher_sim=s)
    assert got[0, 1].item() == pytest.approx(math.cos(0.1), abs=1e-12)
    assert got[1, 0].item() == pytest.approx(math.cos(0.5 - M * 0.1), abs=1e-12)


def test_margin_zero_is_cosine_over_temperature():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    want = F.cosine_similarity(x[:, None], y[None, :], dim=-1) / TAU
    torch.testing.assert_close(angular_logits(x, y, temperature=TAU, margin=0.0), want)
    s = torch.rand(5, 5, generator=g)
    torch.testing.assert_close(angular_logits(x, y, temperature=TAU, margin=0.0, teacher_sim=s), want)


@pytest.mark.parametrize("teacher", [False, True])
def test_cosine_plus_and_minus_one_give_finite_value_and_gradient(teacher):
    # Positives at cos = +1 and −1, negatives at cos = +1 (θ = 0 ≤ m) and −1 (θ = π, margin applied).
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, -1.0]], requires_grad=True)
    s = torch.full((3, 3), 0.5) if teacher else None
    logits = angular_logits(x, y, temperature=TAU, margin=M, teacher_sim=s)
    delta = M * (0.5 if teacher else 1.0)
    assert logits[1, 0].item() == pytest.approx(math.cos(math.pi - delta) / TAU, abs=1e-4)
    assert logits[0, 1].item() == pytest.approx(1.0 / TAU, abs=1e-5)
    loss = F.cross_entropy(logits, torch.arange(3))
    gx, gy = torch.autograd.grad(loss, (x, y))
    assert torch.isfinite(loss) and torch.isfinite(gx).all() and torch.isfinite(gy).all()


def test_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.rand(4, 4, generator=g, dtype=torch.float64)
    # Random directions are far from the kink θ = m, so the function is smooth there.
    assert torch.autograd.gradcheck(lambda a, b: angular_logits(a, b, temperature=TAU, margin=M, teacher_sim=s), (x, y))


def test_half_precision_inputs_give_float32_logits():
    x = at(*X_ANGLES).to(torch.bfloat16)
    assert angular_logits(x, x, temperature=TAU, margin=M).dtype == torch.float32


def test_threshold_mask_by_hand():
    scores = torch.tensor([[0.95, 0.9, 0.1], [0.5, 0.7, 0.81], [0.8, 0.79, 0.2]])
    mask = threshold_mask(scores, 0.8)
    expected = torch.tensor([[0.0, MASK_VALUE, 0.0], [0.0, 0.0, MASK_VALUE], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(mask, expected)  # 0.8 itself is not > 0.8; the diagonal is never masked
    assert MASK_VALUE == -99999.99


def test_teacher_scores_orientation_and_spaces():
    img = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    txt = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    cv, vc = teacher_scores(img, txt, "raw_dot")
    torch.testing.assert_close(cv, torch.tensor([[2.0, 3.0], [0.0, -3.0]]))  # row caption i, column image j
    torch.testing.assert_close(vc, cv.T)
    cv_cos, _ = teacher_scores(img, txt, "cosine")
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(cv_cos, torch.tensor([[r, r], [0.0, -1.0]]))
    with pytest.raises(KdmcseError, match="threshold_space"):
        teacher_scores(img, txt, "dot")


def test_teacher_cosine_is_normalised_gram():
    emb = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(teacher_cosine(emb), torch.tensor([[1.0, r], [r, 1.0]]))


def test_simcse_loss_by_hand():
    z1, z2 = at(0.0, 1.0), at(0.2, 1.5)  # θ = [[0.2, 1.5], [0.8, 0.5]]
    row0 = [math.cos(0.2) / TAU, math.cos(1.5 - M) / TAU]
    row1 = [math.cos(0.8 - M) / TAU, math.cos(0.5) / TAU]
    want = (hand_ce(row0, 0) + hand_ce(row1, 1)) / 2
    got = simcse_loss(z1, z2, temperature=TAU, margin=M)
    assert got.item() == pytest.approx(want, rel=1e-9)
    # Rows are view 1: swapping the views changes the loss.
    assert simcse_loss(z2, z1, temperature=TAU, margin=M).item() != pytest.approx(want, rel=1e-6)


def test_multimodal_loss_averages_views_and_applies_mask_after_temperature():
    p1, p2, v = at(0.0, 1.0, 2.0), at(0.1, 1.2, 2.0), at(0.0, 0.9, 2.5)
    tau = 0.5

    def rows(p_angles, masked: set[tuple[int, int]]):
        out = []
        for i, a in enumerate(p_angles):
            row = []
            for j, b in enumerate((0.0, 0.9, 2.5)):
                theta = abs(a - b)
                th = theta - M if (i != j and theta > M) else theta
                row.append(math.cos(th) / tau + (MASK_VALUE if (i, j) in masked else 0.0))
            out.append(row)
        return out

    def hand(masked):
        per_view = [sum(hand_ce(r, i) for i, r in enumerate(rows(a, masked))) / 3 for a in ((0.0, 1.0, 2.0), (0.1, 1.2, 2.0))]
        return sum(per_view) / 2

    got = multimodal_loss(p1, p2, v, temperature=tau, margin=M)
    assert got.item() == pytest.approx(hand(set()), rel=1e-9)
    mask = torch.zeros(3, 3, dtype=torch.float64)
    mask[0, 1] = MASK_VALUE
    got_masked = multimodal_loss(p1, p2, v, temperature=tau, margin=M, mask=mask)
    assert got_masked.item() == pytest.approx(hand({(0, 1)}), rel=1e-9)
    assert got_masked.item() < got.item()  # a hard negative left the denominator


def test_combine_sum_vs_mean():
    intra, lv, lt = torch.tensor(2.0), torch.tensor(3.0), torch.tensor(5.0)
    assert combine_losses(intra, lv, lt, lam=0.1, reduction="sum").item() == pytest.approx(2.0 + 0.1 * 8.0)
    assert combine_losses(intra, lv, lt, lam=0.1, reduction="mean").item() == pytest.approx(2.0 + 0.1 * 4.0)
    assert combine_losses(intra, lv, None, lam=0.1, reduction="mean").item() == pytest.approx(2.0 + 0.1 * 3.0)
    with pytest.raises(KdmcseError, match="inter_reduction"):
        combine_losses(intra, lv, lt, lam=0.1, reduction="avg")


def _batch(seed: int = 0, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    r = lambda d: torch.randn(n, d, generator=g, dtype=torch.float64)  # noqa: E731
    return dict(z1=r(6), z2=r(6), p1=F.normalize(r(5), dim=-1), p2=F.normalize(r(5), dim=-1),
                image_proj=F.normalize(r(5), dim=-1), text_proj=F.normalize(r(5), dim=-1),
                image_emb=r(8) * 5, text_emb=r(8) * 5)


def test_mcse_objective_ignores_text_term_and_margins():
    b = _batch()
    s = LossSettings("mcse", margin1=0.3, margin2=0.3, lam=0.5)
    out = objective_loss(s, **b)
    intra = simcse_loss(b["z1"], b["z2"], temperature=TAU, margin=0.0)
    lv = multimodal_loss(b["p1"], b["p2"], b["image_proj"], temperature=TAU, margin=0.0)
    assert set(out) == {"intra", "image", "total"}
    assert out["total"].item() == pytest.approx((intra + 0.5 * lv).item(), rel=1e-12)
    other = dict(b, text_proj=-b["text_proj"], text_emb=torch.ones_like(b["text_emb"]))
    s2 = LossSettings("mcse", margin1=0.0, margin2=0.0, lam=0.5, threshold=0.0)
    assert objective_loss(s2, **other)["total"].item() == pytest.approx(out["total"].item(), rel=1e-12)


def test_kdmcse_objective_composes_adaptive_terms():
    b = _batch(1)
    s = LossSettings("kdmcse", lam=0.5, inter_reduction="mean")
    out = objective_loss(s, **b)
    intra = simcse_loss(b["z1"], b["z2"], temperature=TAU, margin=M)
    lv = multimodal_loss(b["p1"], b["p2"], b["image_proj"], temperature=TAU, margin=M,
                         teacher_sim=teacher_cosine(b["image_emb"]))
    lt = multimodal_loss(b["p1"], b["p2"], b["text_proj"], temperature=TAU, margin=M,
                         teacher_sim=teacher_cosine(b["text_emb"]))
    assert out["text"].item() == pytest.approx(lt.item(), rel=1e-6)
    assert out["total"].item() == pytest.approx((intra + 0.5 * (lv + lt) / 2).item(), rel=1e-6)
    # The text term matters here, unlike mcse.
    changed = objective_loss(s, **dict(b, text_proj=-b["text_proj"]))
    assert changed["total"].item() != pytest.approx(out["total"].item(), rel=1e-6)


def test_kdmcse_threshold_masks_by_teacher_cross_scores():
    b = _batch(2)
    cv, vc = teacher_scores(b["image_emb"], b["text_emb"], "cosine")
    thr = float(cv.flatten().sort().values[8])  # some off-diagonal entries above, some below
    s = LossSettings("kdmcse", lam=1.0, threshold=thr, threshold_space="cosine")
    out = objective_loss(s, **b)
    lv = multimodal_loss(b["p1"], b["p2"], b["image_proj"], temperature=TAU, margin=M,
                         teacher_sim=teacher_cosine(b["image_emb"]), mask=threshold_mask(cv, thr))
    lt = multimodal_loss(b["p1"], b["p2"], b["text_proj"], temperature=TAU, margin=M,
                         teacher_sim=teacher_cosine(b["text_emb"]), mask=threshold_mask(vc, thr))
    assert out["image"].item() == pytest.approx(lv.item(), rel=1e-6)
    assert out["text"].item() == pytest.approx(lt.item(), rel=1e-6)
    unmasked = objective_loss(LossSettings("kdmcse", lam=1.0), **b)
    assert out["image"].item() != pytest.approx(unmasked["image"].item(), rel=1e-6)


def test_simcse_objective_uses_only_the_text_term_even_on_paired_batches():
    b = _batch(3)
    out = objective_loss(LossSettings("simcse", margin1=0.1), **b)
    assert set(out) == {"intra", "total"}
    assert out["total"].item() == pytest.approx(simcse_loss(b["z1"], b["z2"], temperature=TAU, margin=0.1).item())


def test_text_only_step_of_kdmcse_is_intra():
    b = _batch(4)
    out = objective_loss(LossSettings("kdmcse"), z1=b["z1"], z2=b["z2"])
    assert set(out) == {"intra", "total"}
    assert out["total"] is out["intra"]


def test_objective_loss_gradient_reaches_every_input():
    b = {k: v.clone().requires_grad_(True) for k, v in _batch(5).items()}
    out = objective_loss(LossSettings("kdmcse", threshold=0.0, threshold_space="cosine"), **b)
    grads = torch.autograd.grad(out["total"], [b[k] for k in ("z1", "z2", "p1", "p2", "image_proj", "text_proj")])
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_settings_from_run_config_and_validation():
    cfg = {"objective": "kdmcse", "temperature": 0.05, "temperature_vl": 0.05, "margin1": 0.15, "margin2": 0.125,
           "lambda": 0.01, "threshold": None, "threshold_space": "raw_dot", "inter_reduction": "sum", "lr": 3e-5}
    s = LossSettings.from_run_config(cfg)
    assert (s.lam, s.margin2, s.threshold) == (0.01, 0.125, None)
    with pytest.raises(KdmcseError, match="lambda"):
        LossSettings.from_run_config({k: v for k, v in cfg.items() if k != "lambda"})
    with pytest.raises(KdmcseError, match="objective"):
        LossSettings("arcse")
    with pytest.raises(KdmcseError, match="temperature"):
        LossSettings("simcse", temperature=0.0)
