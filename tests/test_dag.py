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
        "prepare_captions": 2,
        "teacher": 2,  # flickr and coco, ViT-L-14
        # main: 2 SimCSE (wiki, per backbone) + 4 MCSE + 4 KDMCSE; ablations add 4 margins + 4 thresholds
        "train": 18 * 5,
        "evaluate_sts": 18 * 5,
        "evaluate_transfer": 10 * 5,  # transfer tasks for the main-table cells
        "curves": 18,  # one figure per trained cell, its seeds overlaid
        "report": 1,
        "total": 6 + 3 + 1 + 2 + 2 + 90 + 90 + 50 + 18 + 1,
    }


def test_small_override_plan():
    counts = plan("--config", 'grid={"seeds": [0, 1], "main": {"backbones": [bert], "datasets": [wiki+flickr]}}')
    # main: SimCSE + MCSE + KDMCSE; ablations: 4 other margins + 4 other thresholds
    assert counts["train"] == (3 + 4 + 4) * 2
    assert counts["evaluate_sts"] == 11 * 2
    assert counts["evaluate_transfer"] == 3 * 2
    assert counts["teacher"] == 1
    assert counts["prepare_captions"] == 1
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
    # SimCSE, MCSE, KDMCSE at two margins; one backbone, one seed, one threshold setting.
    assert counts["train"] == 4
    assert counts["teacher"] == 1

