"""The Snakemake plan: job counts per rule for the paper grid and for small overrides (dry runs only)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def plan(*args: str, target: str = "results/tables/main.tex") -> dict[str, int]:
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", target, "-n", "--cores", "all", *args, "--quiet", "rules"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    table = out.split("Job stats:")[1]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
    assert counts, out
    return counts


def test_paper_grid_plan():
    counts = plan()
    assert counts == {
        "download": 6,  # wiki1m, senteval, flickr images + captions, coco images + annotations
        "extract": 3,  # senteval, flickr images, coco images
        "prepare_wiki": 1,
        # flickr and coco, each also with one random caption per image (the released MCSE baseline)
        "prepare_captions": 4,
        # ViT-L-14 on flickr and coco; ResNet-50 image features on their one-caption versions (MCSE)
        "teacher": 4,
        # score statistics of the two ViT-L-14 caches at the two training batch sizes (bert 64, roberta 128)
        "teacher_scores": 4,
        "score_plot": 4,
        # main: 4 SimCSE (the released SimCSE reads the caption text, so one per dataset and backbone) + 4 MCSE
        # + 4 KDMCSE; ablations add 4 margins + 4 thresholds
        "train": 20 * 5,
        "evaluate_sts": 20 * 5,
        "evaluate_transfer": 12 * 5,  # transfer tasks for the main-table cells
        "curves": 20,  # one figure per trained cell, its seeds overlaid
        "report": 1,
        "total": 6 + 3 + 1 + 4 + 4 + 4 + 4 + 100 + 100 + 60 + 20 + 1,
    }


def test_wiki_only_simcse_and_clip_mcse_restore_the_former_plan():
    # baselines: wiki (SimCSE on Wikipedia alone, margin 0) and clip (MCSE on the CLIP teacher's image features
    # with every caption): one SimCSE per backbone, no ResNet caches, no one-caption corpora
    counts = plan("--config", "baselines={simcse: wiki, mcse: clip}")
    assert counts["train"] == 18 * 5 and counts["evaluate_transfer"] == 10 * 5
    assert counts["teacher"] == 2 and counts["prepare_captions"] == 2


def test_small_override_plan():
    counts = plan("--config", 'grid={"seeds": [0, 1], "main": {"backbones": [bert], "datasets": [wiki+flickr]}}')
    # main: SimCSE + MCSE + KDMCSE; ablations: 4 other margins + 4 other thresholds
    assert counts["train"] == (3 + 4 + 4) * 2
    assert counts["evaluate_sts"] == 11 * 2
    assert counts["evaluate_transfer"] == 3 * 2
    assert counts["teacher"] == 2  # CLIP on flickr, ResNet-50 on flickr with one caption per image
    assert counts["prepare_captions"] == 2
    assert counts["teacher_scores"] == 1  # one CLIP cache at one batch size
    assert counts["download"] == 4  # COCO is no longer needed


def test_ablation_target_alone():
    # One ablation cell can be asked for directly, without the rest of the grid.
    counts = plan(target="results/metrics/wiki+flickr/bert/kdmcse/margin~0.1_threshold~off/seed~0.sts.json")
    assert counts["train"] == 1 and counts["evaluate_sts"] == 1 and "report" not in counts


def test_demo_overlay_plan():
    demo = ROOT / "config" / "demo.yaml"
    if not demo.exists():
        pytest.fail("config/demo.yaml is missing")
    counts = plan("--configfile", str(demo), target="all")
    # SimCSE, MCSE, KDMCSE at two margins, and KDMCSE at a second threshold setting; one backbone, one seed.
    assert counts["train"] == 5 and counts["curves"] == 5
    assert counts["teacher"] == 2  # the CLIP teacher, and the MCSE baseline's ResNet-50
    assert counts["teacher_scores"] == 1 and counts["score_plot"] == 1


def evaluate_sts_commands(*args: str) -> list[str]:
    """The shell command of every evaluate_sts job a dry run plans."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "all", "results/tables/main.tex", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    blocks = [b for b in re.split(r"^rule ", out, flags=re.M)[1:] if b.startswith("evaluate_sts:")]
    return [re.search(r"^Shell command: (.*)$", b, re.M).group(1) for b in blocks]


def test_evaluate_sts_scores_the_configured_tasks():
    default = evaluate_sts_commands()
    assert len(default) == 100
    assert all("--sts-tasks STS12,STS13,STS14,STS15,STS16,STSBenchmark,SICKRelatedness " in c for c in default)
    demo = evaluate_sts_commands("--configfile", str(ROOT / "config" / "demo.yaml"))
    assert len(demo) == 5 and all("--sts-tasks STSBenchmark,SICKRelatedness " in c for c in demo)
