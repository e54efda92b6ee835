"""End to end through the real `snakemake` CLI: the scale experiment from webdataset shards.

A URL–caption list and its images are served from 127.0.0.1; the `shards` rule runs img2dataset on it (2 shards
of 4 URLs, one of which is dead), `prepare` builds the caption table from the shards, the teacher streams them
into a float16 cache, a tiny KDMCSE student trains on it and on a tiny COCO-layout set, and `report_scale`
writes scale.tex/csv and the plot.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import build_tiny_bert
from e2e_fixtures import TINY_CLIP, coco_archives, senteval_tar, wiki_text
from http_server import FixtureServer
from shard_fixtures import photo_files, url_caption_tsv
from test_e2e import job_counts, snakemake

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
pytest.importorskip("img2dataset")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("e2e-scale")
    for name in ("Snakefile", "workflow", "config", "profiles", "envs"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    student = build_tiny_bert(work / "models" / "tiny-bert")
    clip_cfg = work / "models" / "tiny-clip.json"
    clip_cfg.write_text(json.dumps(TINY_CLIP))
    ann_zip, img_zip = coco_archives()
    photos = photo_files(7, seed=3)
    files = {"/wiki1m_for_simcse.txt": wiki_text(), "/senteval.tar": senteval_tar(),
             "/annotations_trainval2014.zip": ann_zip, "/train2014.zip": img_zip, **photos}
    with FixtureServer(files) as server:
        base = server.url("/").rstrip("/")
        server.files["/cc12m.tsv"] = url_caption_tsv(base, [*photos, "/img/gone.jpg"], seed=3)
        config = {
            "sources": {"mirror": base},
            "captions": {
                "cc1m": {"pairs": 8, "cache_dtype": "float16",
                         "img2dataset": {"image_size": 48, "samples_per_shard": 4, "processes": 1, "threads": 4,
                                         "timeout": 5}},
            },
            "teachers": {"tinyclip": {"model": "kdmcse-tiny-clip", "pretrained": "none",
                                      "model_config": str(clip_cfg), "batch_size": 8}},
            "teacher": "tinyclip",
            "backbones": {"tiny": {"model": str(student), "lr": 1.0e-3, "batch_size": 8}},
            "train": {"max_steps": 4, "eval_steps": 2, "log_every": 2, "proj_dim": 16},
            "grid": {
                "seeds": [0],
                "main": {"datasets": ["wiki+coco"], "backbones": ["tiny"], "objectives": ["kdmcse"],
                         "margin": 0.15, "threshold": "off"},
                "scale": {"datasets": ["wiki+coco", "wiki+cc1m"], "backbone": "tiny", "objective": "kdmcse"},
                "ablations": {},
            },
            "evaluate": {"transfer": "none", "batch_size": 16},
            "report": {"caption_note": "Fixture run: random-init tiny models."},
        }
        (work / "e2e.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        yield work, server


def test_scale_table_from_shards(workdir):
    work, server = workdir
    out = snakemake(work, "results/tables/scale.tex")
    counts = job_counts(out)
    assert counts["shards"] == 1 and counts["teacher"] == 2 and counts["train"] == 2
    assert counts["evaluate_sts"] == 2 and counts["report_scale"] == 1
    served = {p for p, _ in server.requests}
    assert "/cc12m.tsv" in served and {f"/img/{i}.jpg" for i in range(7)} | {"/img/gone.jpg"} <= served

    manifest = json.loads((work / "resources/shards/cc1m.json").read_text())
    assert manifest["totals"]["successes"] == 7 and len(manifest["shards"]) == 2
    table = pq.read_table(work / "results/corpora/captions_cc1m.parquet")
    assert table.num_rows == 7 and set(table.column("image_path").to_pylist()) == {
        "resources/shards/cc1m/00000.tar", "resources/shards/cc1m/00001.tar"}
    cache_meta = json.loads(pq.read_schema(work / "results/teacher/cc1m/tinyclip/images.parquet")
                            .metadata[b"kdmcse.teacher"])
    assert cache_meta["emb_dtype"] == "float16" and cache_meta["n_images"] == 7

    scale = pd.read_csv(work / "results/tables/scale.csv")
    assert scale["dataset"].tolist() == ["wiki+cc1m", "wiki+coco"]  # by number of pairs: 7, then 24
    assert scale["pairs"].tolist() == [7, 24] and scale["images"].tolist() == [7, 8]
    assert scale["Avg_mean"].between(-100, 100).all()
    tex = (work / "results/tables/scale.tex").read_text()
    assert "wiki+cc1m" in tex and "Fixture run: random-init tiny models." in tex
    assert (work / "results/plots/scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the scale target leaves the main tables alone
    assert not (work / "results/tables/main.tex").exists()


def test_second_run_does_nothing(workdir):
    work, _ = workdir
    out = snakemake(work, "results/tables/scale.tex", "-n")
    assert "Nothing to be done" in out, out[-3000:]
