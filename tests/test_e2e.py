"""End to end through the real `snakemake` CLI on a tiny config.

Downloads come from a fixture server on 127.0.0.1 (through the `sources.mirror` code path), the student is a tiny
random BERT and the teacher a tiny random open_clip model. The test checks that the first run reaches main.tex,
that a second run has nothing to do, and that changing one margin reruns only that cell's jobs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import build_tiny_bert
from e2e_fixtures import TINY_CLIP, TINY_IMAGE_FEATURES, coco_archives, senteval_tar, wiki_text
from http_server import FixtureServer

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str, timeout: int = 600) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *args, "--cores", "2", "--configfile", "e2e.yaml"],
        cwd=workdir, capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),  # the fixture mirror's bytes are not the Hub's files
    )
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((workdir / "logs").rglob("*.log")))
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{out[-6000:]}\n{logs[-12000:]}")
    return out


def job_counts(out: str) -> dict[str, int]:
    if "Job stats:" not in out:
        return {}
    table = out.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory):
    """A fresh copy of the workflow (as a user's clone would have it) plus the tiny config, with the server up."""
    work = tmp_path_factory.mktemp("e2e")
    for name in ("Snakefile", "workflow", "config", "profiles", "envs"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    student = build_tiny_bert(work / "models" / "tiny-bert")
    clip_cfg = work / "models" / "tiny-clip.json"
    clip_cfg.write_text(json.dumps(TINY_CLIP))
    ann_zip, img_zip = coco_archives()
    files = {
        "/wiki1m_for_simcse.txt": wiki_text(),
        "/senteval.tar": senteval_tar(),
        "/annotations_trainval2014.zip": ann_zip,
        "/train2014.zip": img_zip,
    }
    with FixtureServer(files) as server:
        config = {
            "sources": {"mirror": server.url("/").rstrip("/")},
            "captions": {
                "tiny": {
                    "format": "coco",
                    "annotations": "coco_annotations_2014",
                    "images": "coco_train2014_images",
                    "images_subdir": "train2014",
                }
            },
            "datasets": {"wiki+tiny": {"pairs": "tiny"}},
            "teachers": {
                "tinyclip": {"model": "kdmcse-tiny-clip", "pretrained": "none", "model_config": str(clip_cfg), "batch_size": 8}
            },
            "teacher": "tinyclip",
            "image_features": TINY_IMAGE_FEATURES,
            "baselines": {"mcse_features": "tinyresnet"},
            "backbones": {"tiny": {"model": str(student), "lr": 1.0e-3, "batch_size": 8}},
            "train": {"max_steps": 6, "eval_steps": 3, "log_every": 2, "proj_dim": 16},
            "grid": {
                "seeds": [0],
                "main": {
                    "datasets": ["wiki+tiny"],
                    "backbones": ["tiny"],
                    "objectives": ["simcse", "mcse", "kdmcse"],
                    "margin": 0.15,
                    "threshold": "off",
                },
                "ablations": {
                    "margin": {"dataset": "wiki+tiny", "backbone": "tiny", "objective": "kdmcse", "values": [0.1, 0.15]},
                    # quantiles of the negative scores: the top 10 % and 30 % masked
                    "threshold": {"dataset": "wiki+tiny", "backbone": "tiny", "objective": "kdmcse",
                                  "values": ["off", "q0.9", "q0.7"]},
                },
            },
            "evaluate": {"transfer": "main", "batch_size": 16, "mteb_tasks": ["SentEvalSTSB", "STS12"]},
            "report": {"caption_note": "Fixture run: random-init tiny models."},
        }
        (work / "e2e.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        yield work, server


def test_first_run_reaches_the_tables(workdir):
    work, server = workdir
    # the limit only guards against a hang: six students and two feature caches take several times longer on a
    # machine shared with other work than on a quiet one
    out = snakemake(work, "results/tables/main.tex", timeout=1500)
    counts = job_counts(out)
    # SimCSE, MCSE, KDMCSE (m 0.15), KDMCSE m 0.1, two threshold cells
    assert counts["train"] == 6 and counts["evaluate_sts"] == 6
    # the CLIP teacher on the captions, the MCSE baseline's ResNet on one caption per image
    assert counts["teacher"] == 2 and counts["prepare_captions"] == 2
    assert counts["teacher_scores"] == 1 and counts["score_plot"] == 1
    assert counts["evaluate_transfer"] == 3  # SimCSE, MCSE, KDMCSE of the main table
    # Every download went through the mirror on 127.0.0.1.
    served = {path for path, _ in server.requests}
    assert {"/wiki1m_for_simcse.txt", "/senteval.tar", "/annotations_trainval2014.zip", "/train2014.zip"} <= served

    main = pd.read_csv(work / "results" / "tables" / "main.csv")
    assert len(main) >= 3  # SimCSE, MCSE, KDMCSE rows
    tex = (work / "results" / "tables" / "main.tex").read_text()
    assert "Fixture run: random-init tiny models." in tex
    transfer = pd.read_csv(work / "results" / "tables" / "transfer.csv")
    ours = transfer[transfer["kind"] == "ours"]
    assert len(ours) == 3 and ours["MRPC_mean"].between(0, 100).all()
    for name in ("ablation_margin", "ablation_threshold"):
        assert (work / "results" / "tables" / f"{name}.tex").stat().st_size > 0
    for name in ("align_uniform", "ablation_margin", "ablation_threshold"):
        assert (work / "results" / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    metrics = json.loads(
        (work / "results/metrics/wiki+tiny/tiny/kdmcse/margin~0.15_threshold~off/seed~0.sts.json").read_text()
    )
    assert metrics["cell"]["objective"] == "kdmcse" and metrics["cell"]["seed"] == 0
    assert -100 <= metrics["sts"]["avg"] <= 100
    meta = json.loads((work / "results/students/wiki+tiny/tiny/kdmcse/margin~0.15_threshold~off/seed~0/run_meta.json").read_text())
    assert meta["run_config"]["margin2"] == 0.15
    assert meta["threshold"] is None and meta["mask_rate"] is None


def test_threshold_cells_mask_distinct_measured_shares(workdir):
    """Each threshold cell records a distinct, non-zero mask rate (it filters), resolved from the statistics."""
    work, _ = workdir
    stats = json.loads((work / "results/teacher/tiny/tinyclip/scores/batch~8.json").read_text())
    assert stats["batch_size"] == 8 and stats["spaces"]["cosine"]["image"]["negatives"]["n"] == 200 * 8 * 7
    rates = {}
    for q in ("q0.9", "q0.7"):
        meta = json.loads((work / f"results/students/wiki+tiny/tiny/kdmcse/margin~0.15_threshold~{q}/seed~0/"
                           "run_meta.json").read_text())
        plan, measured = meta["threshold"], meta["mask_rate"]
        assert plan["configured"] == q and plan["space"] == "cosine"
        assert plan["expected_mask_rate"]["image"] == pytest.approx(1 - float(q[1:]), abs=0.01)
        assert measured["paired_steps"] == meta["paired_steps"] >= 1
        assert measured["image"] > 0 and measured["image"] == measured["text"]  # the text mask is the transpose
        rates[q] = measured["image"]
        # the curves hold the same per-step rates, on paired steps only
        curves = pd.read_csv(work / f"results/students/wiki+tiny/tiny/kdmcse/margin~0.15_threshold~{q}/seed~0/curves.csv")
        paired = curves[curves["paired"] == 1]
        assert paired["mask_rate_image"].notna().all() and curves.loc[curves["paired"] == 0, "mask_rate_image"].isna().all()
        assert paired["mask_rate_image"].mean() == pytest.approx(measured["image"])
    assert rates["q0.9"] < rates["q0.7"]
    table = pd.read_csv(work / "results" / "tables" / "ablation_threshold.csv")
    ours = table[table["kind"] == "ours"].set_index("threshold")
    assert ours.loc["off", "mask_rate_image"] == 0.0
    for q, rate in rates.items():
        assert ours.loc[q, "mask_rate_image"] == pytest.approx(rate)
    tex = (work / "results" / "tables" / "ablation_threshold.tex").read_text()
    assert "Mask" in tex and f"{100 * rates['q0.9']:.2f}" in tex
    assert (work / "results/teacher/tiny/tinyclip/scores/batch~8.png").read_bytes()[:4] == b"\x89PNG"


KDMCSE_CELL = "wiki+tiny/tiny/kdmcse/margin~0.15_threshold~off"


def test_training_curves_have_every_step_and_dev_at_each_evaluation(workdir):
    work, _ = workdir
    student = work / "results" / "students" / KDMCSE_CELL / "seed~0"
    curves = pd.read_csv(student / "curves.csv")
    assert curves["step"].tolist() == list(range(1, 7))  # train.max_steps 6: one row per step
    assert ["step", "paired", "lr", "grad_norm", "total", "intra", "image", "text"] == list(curves.columns[:8])
    assert curves.columns[-1] == "stsb_dev"
    assert (curves["grad_norm"] > 0).all() and curves["total"].notna().all()
    assert curves["paired"].any() and not curves["paired"].all()  # text-only and image-caption steps
    assert curves.loc[curves["paired"] == 1, "image"].notna().all()
    assert curves.loc[curves["paired"] == 0, "image"].isna().all()
    assert curves["lr"].is_monotonic_decreasing and curves["lr"].iloc[0] == pytest.approx(1.0e-3)
    # STS-B dev at each evaluation (train.eval_steps 3), the scores the model selection saw
    meta = json.loads((student / "run_meta.json").read_text())
    dev = curves.dropna(subset=["stsb_dev"])
    assert dev["step"].tolist() == [3, 6]
    assert dev["stsb_dev"].tolist() == pytest.approx([h["stsb_dev_spearman"] for h in meta["dev_history"]])
    # one figure per trained cell (6 here), its seeds overlaid
    plots = sorted((work / "results" / "plots" / "curves").rglob("*.png"))
    assert len(plots) == 6 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)


def test_logs_open_with_the_job_and_hold_no_carriage_return_floods(workdir):
    work, _ = workdir
    logs = sorted((work / "logs").rglob("*.log"))
    assert len(logs) >= 10
    flooded = [str(p.relative_to(work)) for p in logs if b"\r" in p.read_bytes()]  # bytes: no newline translation
    assert flooded == []
    text = (work / "logs" / "train" / KDMCSE_CELL / "seed~0.log").read_text(encoding="utf-8")
    # the first line of the train stage (after the GPU launcher's and the model loading's)
    ours = [line for line in text.splitlines() if " kdmcse.train." in line]
    opening = ours[0].split(": ", 1)[1]
    assert opening.startswith("train wiki+tiny/tiny/kdmcse margin=0.15 threshold=off, seed 0 | model "), ours[0]
    assert "| device cpu" in opening and "| precision tf32 | 6 steps (" in opening and "| ETA " in opening, opening
    assert re.search(r"train: +\d+%.*\| 6/6", text), "the progress bar's final state is a line of the log"


def test_model_folders_are_ready_to_share(workdir):
    """Each student's model folder: its model card, no workflow marker files, readable, loadable as it is."""
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard import metadata_load
    from sentence_transformers import SentenceTransformer

    work, _ = workdir
    out = snakemake(work)  # the default target adds the model cards
    assert job_counts(out).get("model_card") == 6, out[-3000:]  # one per student
    student = work / "results/students/wiki+tiny/tiny/kdmcse/margin~0.15_threshold~off/seed~0"
    folder = student / "model"
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    # what huggingface_hub.upload_folder would publish: every file, none of them workflow or temp files
    assert not [n for n in names if any(part.startswith(".") for part in n.split("/"))], names
    assert {"README.md", "config.json", "model.safetensors", "modules.json"} <= names
    from kdmcse.io import current_umask

    readable = 0o044 & ~current_umask()  # what an ordinary write gives group/others under this umask
    for path in [folder, *folder.rglob("*")]:
        assert path.stat().st_mode & 0o044 == readable, f"{path}: not readable as the umask allows"
    meta = metadata_load(folder / "README.md")
    assert meta["pipeline_tag"] == "sentence-similarity" and meta["license"]
    assert "base_model" not in meta  # a local folder, not a hub id
    card = ModelCard.load(folder / "README.md")
    metrics = json.loads(
        (work / "results/metrics/wiki+tiny/tiny/kdmcse/margin~0.15_threshold~off/seed~0.sts.json").read_text()
    )
    assert f"| {metrics['sts']['STSBenchmark']['spearman']:.2f} |" in card.text
    assert f"| {metrics['sts']['avg']:.2f} |" in card.text
    assert '"objective": "kdmcse"' in card.text and "kdmcse-tiny-clip" in card.text
    assert SentenceTransformer(str(folder), device="cpu").encode(["a dog"]).shape[0] == 1


def test_mteb_local_task_gives_the_project_stsb_score(workdir):
    """The optional MTEB target: the local SentEval STS-B task equals the evaluate stage's STS-B to 1e-6; STS12
    needs the Hub, which is offline here, so it is skipped and the table shows it."""
    work, _ = workdir
    out = snakemake(work, "results/tables/mteb.tex")
    assert job_counts(out).get("evaluate_mteb") == 3  # the main table's students
    files = sorted((work / "results" / "metrics").rglob("seed~0.mteb.json"))
    assert {f.parent.parent.name for f in files} == {"simcse", "mcse", "kdmcse"}, files
    for path in files:
        ours = json.loads(path.with_name("seed~0.sts.json").read_text())["sts"]["STSBenchmark"]["spearman"]
        theirs = json.loads(path.read_text())["mteb"]
        assert abs(theirs["SentEvalSTSB"]["main_score"] - ours) <= 1e-6, (path, theirs, ours)
        assert "skipped" in theirs["STS12"]
    table = pd.read_csv(work / "results" / "tables" / "mteb.csv")
    assert len(table) == 3 and table["STS12"].isna().all()
    assert "<table" in (work / "results" / "tables" / "mteb.html").read_text()


def test_html_report_has_the_tables_and_plots(workdir):
    work, _ = workdir
    snakemake(work, "--report", "results/report.html")
    html = (work / "results" / "report.html").read_text(encoding="utf-8", errors="replace")
    for name in ("main.tex", "ablation_margin.tex", "align_uniform.png"):
        assert name in html


def test_html_report_shows_the_training_curves(workdir):
    work, _ = workdir
    html = (work / "results" / "report.html").read_text(encoding="utf-8", errors="replace")
    assert "Training curves" in html
    plots = sorted((work / "results" / "plots" / "curves").rglob("*.png"))
    missing = [str(p) for p in plots if f"Adding {p.name}" not in html and p.name not in html]
    assert len(plots) == 6 and missing == []
    assert "wiki+tiny / tiny / kdmcse" in html  # grouped by dataset, backbone and objective


def test_html_report_renders_tables_as_tables(workdir):
    """The report embeds each table as an HTML table (not LaTeX source) and opens with the workflow description."""
    import base64

    work, _ = workdir
    page = (work / "results" / "report.html").read_text(encoding="utf-8", errors="replace")
    embedded = {}
    for m in re.finditer(r"data:([a-z/+.-]+);[^,\"']*?filename=([^;,\"']+)[^,\"']*?;base64,([A-Za-z0-9+/=]+)", page):
        embedded[m.group(2)] = (m.group(1), base64.b64decode(m.group(3)).decode("utf-8", errors="replace"))
    for name in ("main.html", "transfer.html", "ablation_margin.html", "ablation_threshold.html", "significance.html"):
        assert name in embedded, sorted(embedded)
        mime, text = embedded[name]
        assert mime == "text/html" and "<table" in text and "</td>" in text
    assert "KDMCSE" in embedded["main.html"][1] or "SimCSE" in embedded["main.html"][1]
    assert not any(name.endswith(".tex") for name in embedded)  # LaTeX stays a file, not a report entry
    assert "Data flows one way" in page or "data flows one way" in page.lower()


def test_second_run_does_nothing(workdir):
    work, _ = workdir
    out = snakemake(work, "results/tables/main.tex", "-n")
    assert "Nothing to be done" in out, out[-3000:]


def test_changing_one_margin_reruns_only_that_cell(workdir):
    work, _ = workdir
    cfg = yaml.safe_load((work / "e2e.yaml").read_text())
    cfg["grid"]["ablations"]["margin"]["values"] = [0.05, 0.15]
    (work / "e2e.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    counts = job_counts(snakemake(work, "results/tables/main.tex", "-n", "--quiet", "rules"))
    assert counts == {"train": 1, "evaluate_sts": 1, "curves": 1, "report": 1, "total": 4}
    snakemake(work, "results/tables/main.tex")
    margins = pd.read_csv(work / "results" / "tables" / "ablation_margin.csv")
    assert "0.05" in margins.to_csv()
