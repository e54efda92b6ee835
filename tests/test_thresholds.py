"""Thresholds against CLIP-like teacher features that carry a modality gap: a cosine of 0.9 masks about nothing
(and says so before training), a quantile masks the share it names when training measures it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from kdmcse.errors import KdmcseError
from kdmcse.teacher.cache import open_teacher_cache, write_teacher_cache
from kdmcse.teacher.scores import sample_batches, score_statistics
from kdmcse.train.losses import LossSettings, objective_loss
from kdmcse.train.thresholds import resolve_threshold

BATCH = 64
DIM = 64
N_IMAGES, CAPTIONS_PER_IMAGE = 1000, 2


def clip_like_features(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image and caption features whose image-text cosines sit where CLIP's do (positives ~0.3, negatives ~0.15).

    Each modality has its own offset direction (the modality gap), both share a common direction (every pair
    is somewhat alike) and a caption shares its image's content vector. Raw norms are ~25, like unnormalised
    CLIP features, so raw dot products live on another scale than cosines.
    """
    rng = np.random.default_rng(seed)
    content = rng.normal(size=(N_IMAGES, DIM))
    content[:, :3] = 0.0
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    gap_image, gap_text, common = (np.eye(DIM)[i] for i in range(3))

    def noise(n: int) -> np.ndarray:
        e = rng.normal(size=(n, DIM)) * 0.8 / np.sqrt(DIM - 3)
        e[:, :3] = 0.0
        return e

    image = 2.0 * gap_image + common + content + noise(N_IMAGES)
    owner = np.repeat(np.arange(N_IMAGES), CAPTIONS_PER_IMAGE)
    text = 2.0 * gap_text + common + content[owner] + noise(len(owner))
    return (10 * image).astype(np.float32), (10 * text).astype(np.float32)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    image, text = clip_like_features()
    owner = np.repeat(np.arange(N_IMAGES), CAPTIONS_PER_IMAGE)
    out = tmp_path_factory.mktemp("thresholds") / "cache"
    write_teacher_cache(
        out, image_ids=[str(i) for i in range(N_IMAGES)], image_emb=image,
        caption_ids=np.arange(len(owner), dtype=np.int64), caption_image_ids=[str(i) for i in owner],
        caption_texts=[f"caption {i}" for i in range(len(owner))], caption_emb=text,
        meta={"model": "clip-like", "pretrained": "synthetic", "captions_sha256": "ab" * 32, "precision": "fp32"},
    )
    stats = score_statistics(out, batch_size=BATCH, batches=200, seed=0)
    stats_path = out.parent / "scores.json"
    stats_path.write_text(json.dumps(stats))
    return out, {"stats": stats, "path": stats_path, "meta": open_teacher_cache(out).meta}


def run_cfg(threshold, space: str = "cosine", check: str = "warn") -> dict:
    return {"objective": "kdmcse", "threshold": threshold, "threshold_space": space, "threshold_check": check,
            "batch_size": BATCH}


def measured_mask_rates(cache_dir: Path, value: float, space: str, batches: int = 150) -> dict[str, float]:
    """Mean mask rate per term that the training loss records, on batches drawn apart from the statistics."""
    teacher = open_teacher_cache(cache_dir)
    settings = LossSettings(objective="kdmcse", threshold=value, threshold_space=space)
    rng = torch.Generator().manual_seed(0)
    sums = {"mask_rate_image": 0.0, "mask_rate_text": 0.0}
    for rows in sample_batches(len(teacher.caption_ids), BATCH, batches, seed=12345):
        image = torch.from_numpy(np.asarray(teacher.image_emb[teacher.caption_image_row[rows]]))
        text = torch.from_numpy(np.asarray(teacher.caption_emb[rows]))
        p1, p2, ip, tp = (torch.nn.functional.normalize(torch.randn(BATCH, 8, generator=rng), dim=-1)
                          for _ in range(4))
        parts = objective_loss(settings, z1=torch.randn(BATCH, 8), z2=torch.randn(BATCH, 8), p1=p1, p2=p2,
                               image_proj=ip, text_proj=tp, image_emb=image, text_emb=text)
        for key in sums:
            sums[key] += float(parts[key])
    return {key.removeprefix("mask_rate_"): total / batches for key, total in sums.items()}


def test_the_fixture_has_a_modality_gap(cache):
    _, c = cache
    cosine = c["stats"]["spaces"]["cosine"]["image"]
    assert 0.1 < cosine["negatives"]["mean"] < 0.22 and 0.25 < cosine["positives"]["mean"] < 0.4
    assert cosine["negatives"]["max"] < 0.6  # far below the paper's 0.8-0.95
    assert c["stats"]["spaces"]["raw_dot"]["image"]["negatives"]["mean"] > 10  # raw dots are on another scale


def test_cosine_09_masks_about_nothing_and_warns(cache, caplog):
    cache_dir, c = cache
    with caplog.at_level(logging.WARNING, logger="kdmcse.train.thresholds"):
        plan = resolve_threshold(run_cfg(0.9), c["path"], cache_meta=c["meta"], where="results/students/cell-x")
    assert plan["value"] == 0.9 and plan["expected_mask_rate"] == {"image": 0.0, "text": 0.0}
    assert measured_mask_rates(cache_dir, 0.9, "cosine", batches=30) == {"image": 0.0, "text": 0.0}
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and warned[0] == f"\n{'!' * 100}\nWARNING: {plan['warning']}\n{'!' * 100}"
    # the warning names the cell, the threshold and the rate
    assert "cell results/students/cell-x" in plan["warning"] and "threshold 0.9" in plan["warning"]
    assert "mask image term 0 %, text term 0 %" in plan["warning"] and "almost no negatives" in plan["warning"]


def test_q099_masks_one_percent_when_training_measures_it(cache, caplog):
    cache_dir, c = cache
    with caplog.at_level(logging.WARNING, logger="kdmcse.train.thresholds"):
        plan = resolve_threshold(run_cfg("q0.99"), c["path"], cache_meta=c["meta"], where="cell")
    assert plan["configured"] == "q0.99" and plan["warning"] is None and not caplog.records
    assert 0.2 < plan["value"] < 0.5  # a cosine inside the negatives' upper tail, not 0.9
    assert plan["expected_mask_rate"]["image"] == pytest.approx(0.01, abs=1e-4)
    measured = measured_mask_rates(cache_dir, plan["value"], "cosine")
    assert measured["image"] == pytest.approx(0.01, abs=0.003)
    assert measured["text"] == pytest.approx(measured["image"])  # the text term's negatives are the transpose


def test_a_quantile_that_masks_most_negatives_warns(cache, caplog):
    _, c = cache
    with caplog.at_level(logging.WARNING, logger="kdmcse.train.thresholds"):
        plan = resolve_threshold(run_cfg("q0.3"), c["path"], cache_meta=c["meta"], where="cell")
    assert plan["expected_mask_rate"]["image"] == pytest.approx(0.7, abs=1e-3)
    assert "most of the negatives" in plan["warning"] and "70 %" in plan["warning"]
    assert any("threshold q0.3" in r.getMessage() for r in caplog.records)


def test_the_released_raw_dot_value_masks_nearly_everything_here(cache):
    # 0.8 in raw_dot space (the released scripts' score_base) against features of norm ~25
    _, c = cache
    plan = resolve_threshold(run_cfg(0.8, space="raw_dot"), c["path"], cache_meta=c["meta"], where="cell")
    assert plan["expected_mask_rate"]["image"] > 0.99 and "most of the negatives" in plan["warning"]


@pytest.mark.parametrize(("threshold", "word"), [(0.9, "almost no"), ("q0.2", "most of the")])
def test_threshold_check_error_stops_before_training(cache, threshold, word):
    _, c = cache
    with pytest.raises(KdmcseError) as exc:
        resolve_threshold(run_cfg(threshold, check="error"), c["path"], cache_meta=c["meta"], where="cell-y")
    msg = str(exc.value)
    assert "\n" not in msg and "cell cell-y" in msg and f"threshold {threshold}" in msg and word in msg
    assert "train.threshold_check is error" in msg


def test_a_suspect_threshold_only_warns_by_default_and_a_good_one_passes_the_error_check(cache):
    _, c = cache
    assert resolve_threshold(run_cfg(0.9), c["path"], cache_meta=c["meta"], where="c")["warning"]
    assert resolve_threshold(run_cfg("q0.95", check="error"), c["path"], cache_meta=c["meta"],
                             where="c")["warning"] is None


def test_statistics_of_another_cache_or_batch_size_are_refused(cache):
    _, c = cache
    with pytest.raises(KdmcseError, match="another teacher cache"):
        resolve_threshold(run_cfg("q0.99"), c["path"], cache_meta={**c["meta"], "content_sha256": "00" * 32},
                          where="c")
    with pytest.raises(KdmcseError, match="--batch-size 32"):
        resolve_threshold({**run_cfg("q0.99"), "batch_size": 32}, c["path"], cache_meta=c["meta"], where="c")


def test_a_quantile_without_statistics_is_refused_and_off_needs_none():
    with pytest.raises(KdmcseError, match="--score-stats"):
        resolve_threshold(run_cfg("q0.99"), None, cache_meta=None, where="c")
    assert resolve_threshold(run_cfg(None), None, cache_meta=None, where="c") is None
