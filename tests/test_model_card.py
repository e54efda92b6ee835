"""The model card of a student: Hugging Face metadata the Hub reads, the STS table, the run config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdmcse.errors import KdmcseError
from kdmcse.report.model_card import main as card_main

STS = {f"STS1{i}": {"all": 60.0 + i, "wmean": 0.0, "mean": 0.0, "n": 10, "subsets": {}} for i in range(2, 7)}
STS.update({"STSBenchmark": {"spearman": 71.234, "n": 10}, "SICKRelatedness": {"spearman": 68.5, "n": 10},
            "avg": 66.39})
FACTS = {
    "name": "kdmcse wiki+flickr/bert/kdmcse/margin~0.15_threshold~off seed 0",
    "base_model": "bert-base-uncased", "base_model_source": "bert-base-uncased", "license": "apache-2.0",
    "teacher": "open_clip ViT-L-14 (openai weights)", "pooling": "cls_before_pooler", "note": "",
    "datasets": [
        {"name": "Wiki1M", "hub_id": "princeton-nlp/datasets-for-simcse", "licence": "CC BY-SA 3.0", "url": None},
        {"name": "flickr images", "hub_id": None, "licence": "Flickr terms", "url": "https://example.org/f.zip"},
    ],
}


def _write_inputs(tmp_path: Path) -> tuple[Path, Path]:
    meta = tmp_path / "run_meta.json"
    meta.write_text(json.dumps({"run_config": {"objective": "kdmcse", "margin2": 0.15, "threshold": None,
                                               "lr": 3e-5, "model": "bert-base-uncased"},
                                "seed": 0, "selection": "best STS-B dev spearman", "best_dev_spearman": 80.1,
                                "best_step": 250, "total_steps": 500}))
    metrics = tmp_path / "seed~0.sts.json"
    metrics.write_text(json.dumps({"cell": {"objective": "kdmcse", "seed": 0}, "model": "m",
                                   "pooling": "cls_before_pooler", "sts": STS}))
    return meta, metrics


def test_card_parses_as_hub_metadata(tmp_path):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard import metadata_load

    meta, metrics = _write_inputs(tmp_path)
    out = tmp_path / "model" / "README.md"
    assert card_main(["--run-meta", str(meta), "--metrics", str(metrics), "--facts", json.dumps(FACTS),
                      "--out", str(out)]) == 0
    data = metadata_load(out)
    assert data["base_model"] == "bert-base-uncased" and data["license"] == "apache-2.0"
    assert data["datasets"] == ["princeton-nlp/datasets-for-simcse"]  # only hub ids go into the metadata
    assert data["pipeline_tag"] == "sentence-similarity" and data["library_name"] == "sentence-transformers"
    card = ModelCard.load(out)
    assert card.data.base_model == "bert-base-uncased"
    text = card.text
    assert "| 62.00 | 63.00 | 64.00 | 65.00 | 66.00 | 71.23 | 68.50 | 66.39 |" in text  # this student's STS row
    assert "open_clip ViT-L-14" in text and "Flickr terms" in text  # teacher and data licences
    assert '"margin2": 0.15' in text and "SentenceTransformer(" in text  # the run config and how to load it
    from kdmcse.io import current_umask

    # readable as the umask allows (not mkstemp's 0600)
    assert out.stat().st_mode & 0o044 == 0o044 & ~current_umask()


def test_local_base_model_stays_out_of_the_metadata(tmp_path):
    from huggingface_hub.repocard import metadata_load

    meta, metrics = _write_inputs(tmp_path)
    facts = {**FACTS, "base_model": None, "base_model_source": "models/tiny-bert", "license": None}
    out = tmp_path / "README.md"
    card_main(["--run-meta", str(meta), "--metrics", str(metrics), "--facts", json.dumps(facts), "--out", str(out)])
    data = metadata_load(out)
    assert "base_model" not in data and data["license"] == "unknown"  # the Hub rejects a base_model it lacks
    assert "models/tiny-bert" in out.read_text()


def test_bad_facts_fail_before_writing(tmp_path):
    meta, metrics = _write_inputs(tmp_path)
    out = tmp_path / "README.md"
    with pytest.raises(KdmcseError, match="lacks teacher"):
        card_main(["--run-meta", str(meta), "--metrics", str(metrics),
                   "--facts", json.dumps({k: v for k, v in FACTS.items() if k != "teacher"}), "--out", str(out)])
    with pytest.raises(KdmcseError, match="does not exist"):
        card_main(["--run-meta", str(meta), "--metrics", str(tmp_path / "none.json"), "--facts", json.dumps(FACTS),
                   "--out", str(out)])
    assert not out.exists()


def test_a_task_subset_card_shows_only_the_scored_tasks_and_says_so(tmp_path):
    meta, metrics = _write_inputs(tmp_path)
    doc = json.loads(metrics.read_text())
    doc["sts"] = {"STSBenchmark": {"spearman": 71.234, "n": 10}, "SICKRelatedness": {"spearman": 68.5, "n": 10},
                  "tasks": ["STSBenchmark", "SICKRelatedness"], "avg": 69.87}
    metrics.write_text(json.dumps(doc))
    out = tmp_path / "README.md"
    assert card_main(["--run-meta", str(meta), "--metrics", str(metrics), "--facts", json.dumps(FACTS),
                      "--out", str(out)]) == 0
    text = out.read_text()
    assert "| STS-B | SICK-R | Avg |" in text and "| 71.23 | 68.50 | 69.87 |" in text
    assert "STS12" not in text.split("## STS results")[1].split("## How to load")[0]
    assert "Only STS-B, SICK-R were scored" in text and "does not compare" in text
