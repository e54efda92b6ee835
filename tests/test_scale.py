"""The scale experiment: its table and plot, its Snakemake plan, and the documented 1M-pair schedule."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdmcse.__main__ import main as kdmcse_main
from kdmcse.config import ConfigError, load_config, validate_config
from kdmcse.grid import scale_cells
from kdmcse.train.mixing import mixing_schedule
from test_dag import plan

ROOT = Path(__file__).resolve().parents[1]


def write_metrics(path: Path, dataset: str, seed: int, avg: float) -> Path:
    cell = {"dataset": dataset, "backbone": "bert", "objective": "kdmcse", "margin": 0.15, "threshold": "off",
            "seed": seed}
    sts = {f"STS1{k}": {"all": avg} for k in range(2, 7)}
    sts.update(STSBenchmark={"spearman": avg}, SICKRelatedness={"spearman": avg}, avg=avg)
    path.write_text(json.dumps({"cell": cell, "sts": sts}))
    return path


def write_captions(path: Path, n_images: int, per_image: int) -> Path:
    ids = [f"i{i}" for i in range(n_images) for _ in range(per_image)]
    pq.write_table(pa.table({"image_id": ids, "image_path": ids, "caption_id": pa.array(range(len(ids)), pa.int64()),
                             "caption": ids}), path)
    return path


def test_scale_table_orders_datasets_by_pairs_and_plots_avg_against_them(tmp_path):
    metrics = [write_metrics(tmp_path / f"{d}-{s}.json", d, s, avg)
               for d, avgs in {"wiki+big": (80.0, 82.0), "wiki+small": (70.0, 71.0)}.items()
               for s, avg in enumerate(avgs)]
    big = write_captions(tmp_path / "big.parquet", 30, 1)
    small = write_captions(tmp_path / "small.parquet", 4, 5)
    argv = ["report", "scale", "--metrics", *map(str, metrics), "--corpus", f"wiki+big={big}",
            f"wiki+small={small}", "--tables", str(tmp_path / "t"), "--plots", str(tmp_path / "p"),
            "--caption-note", "NOTE"]
    assert kdmcse_main(argv) == 0
    table = pd.read_csv(tmp_path / "t" / "scale.csv")
    assert table["dataset"].tolist() == ["wiki+small", "wiki+big"]  # 20 pairs, then 30
    assert table["pairs"].tolist() == [20, 30] and table["images"].tolist() == [4, 30]
    assert table["Avg_mean"].tolist() == [70.5, 81.0] and table["Avg_n"].tolist() == [2, 2]
    tex = (tmp_path / "t" / "scale.tex").read_text()
    assert "NOTE" in tex and r"\textbf{81.00}" in tex
    assert (tmp_path / "p" / "scale.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "t" / "main.tex").exists()  # `report scale` writes its own files only


def test_scale_table_needs_the_size_of_every_dataset(tmp_path, capsys):
    m = write_metrics(tmp_path / "m.json", "wiki+big", 0, 80.0)
    rc = kdmcse_main(["report", "scale", "--metrics", str(m), "--tables", str(tmp_path), "--plots", str(tmp_path)])
    assert rc == 2 and "wiki+big" in capsys.readouterr().err and not (tmp_path / "scale.tex").exists()


def test_scale_cells_are_the_main_setting_per_dataset():
    cfg = validate_config(load_config([ROOT / "config" / "config.yaml"]))
    cells = scale_cells(cfg)
    assert [c.dataset for c in cells] == ["wiki+flickr", "wiki+coco", "wiki+cc1m"]
    assert {(c.backbone, c.objective, c.margin, c.threshold) for c in cells} == {("bert", "kdmcse", 0.15, None)}


def test_scale_dataset_without_pairs_is_a_config_error():
    cfg = load_config([ROOT / "config" / "config.yaml"])
    cfg["grid"]["scale"]["datasets"] = ["wiki+flickr", "wiki"]
    cfg["datasets"]["wiki"] = {"pairs": None}
    with pytest.raises(ConfigError, match=r"grid.scale.datasets\[1\]"):
        validate_config(cfg)


def test_scale_target_plan():
    counts = plan(target="results/tables/scale.tex")
    assert counts == {
        "download": 7,  # wiki1m, senteval, flickr images + captions, coco images + annotations, the CC12M TSV
        "extract": 3,
        "shards": 1,  # img2dataset on the first 1M rows of the TSV
        "prepare_wiki": 1,
        "prepare_captions": 3,
        "teacher": 3,
        "train": 3 * 5,  # KDMCSE BERT at the main setting on three caption sets, 5 seeds
        "evaluate_sts": 3 * 5,
        "report_scale": 1,
        "total": 7 + 3 + 1 + 1 + 3 + 3 + 15 + 15 + 1,
    }


def test_shards_from_a_folder_need_no_download():
    counts = plan("--config", 'captions={"cc1m": {"shards_dir": "/data/cc1m-shards"}}',
                  target="resources/shards/cc1m.json")
    assert counts == {"shards": 1, "total": 1}


def test_documented_1m_schedule_matches_the_code():
    text = (ROOT / "docs" / "method.md").read_text(encoding="utf-8")
    section = text.split("### 1.6")[1].split("\n## ")[0]
    rows = re.findall(r"^\| ([\d,]+)[^|]*\|([^\n]+)\|$", section, re.M)
    assert len(rows) == 5
    for pairs, rest in rows:
        documented = [int(v.replace(",", "")) for v in rest.split("|")]
        s = mixing_schedule(1_000_000, int(pairs.replace(",", "")), 64, 3)
        assert documented == [s.n_pair, s.paired_step, s.steps_per_epoch, s.paired_per_epoch, s.total_steps], pairs
