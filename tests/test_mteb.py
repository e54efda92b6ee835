"""MTEB through the project's embedding: the local SentEval STS-B task gives the evaluate stage's STS-B score;
Hub tasks are skipped with one line when offline; the MTEB table reads the files."""

from __future__ import annotations

import io
import json
import tarfile

import pandas as pd
import pytest

pytest.importorskip("mteb")

from e2e_fixtures import senteval_tar  # noqa: E402

from kdmcse.errors import KdmcseError  # noqa: E402
from kdmcse.evaluate.cli import main as evaluate_main  # noqa: E402
from kdmcse.evaluate.mteb_run import main as mteb_main  # noqa: E402
from kdmcse.report.mteb_table import main as table_main  # noqa: E402


@pytest.fixture(scope="module")
def senteval_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("senteval")
    with tarfile.open(fileobj=io.BytesIO(senteval_tar())) as tar:
        tar.extractall(root, filter="data")
    return root


def test_local_stsb_task_equals_the_project_score(tiny_bert_dir, senteval_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ours = tmp_path / "sts.json"
    assert evaluate_main(["--model", str(tiny_bert_dir), "--tasks", "sts", "--data", str(senteval_dir),
                          "--out", str(ours), "--device", "cpu"]) == 0
    out = tmp_path / "seed~0.mteb.json"
    assert mteb_main(["--model", str(tiny_bert_dir), "--tasks", "SentEvalSTSB,STS12", "--senteval",
                      str(senteval_dir), "--out", str(out), "--device", "cpu", "--cell", "objective=kdmcse",
                      "seed=0"]) == 0
    result = json.loads(out.read_text())["mteb"]
    expected = json.loads(ours.read_text())["sts"]["STSBenchmark"]["spearman"]
    assert result["SentEvalSTSB"]["main_score"] == pytest.approx(expected, abs=1e-6)
    # STS12 lives on the Hub: offline it is skipped, in one log line that says why
    assert "skipped" in result["STS12"]
    lines = [r.getMessage() for r in caplog.records if "STS12" in r.getMessage() and "skipping" in r.getMessage()]
    assert len(lines) == 1 and "Hugging Face Hub" in lines[0]

    tables = tmp_path / "tables"
    assert table_main(["--metrics", str(out), "--tables", str(tables)]) == 0
    frame = pd.read_csv(tables / "mteb.csv")
    assert frame.loc[0, "SentEvalSTSB"] == pytest.approx(expected, abs=1e-6)
    assert pd.isna(frame.loc[0, "STS12"]) and pd.isna(frame.loc[0, "Avg"])  # skipped, so no average
    assert "<table" in (tables / "mteb.html").read_text() and "tabular" in (tables / "mteb.tex").read_text()


def test_unknown_task_fails_before_the_model_loads(tmp_path):
    with pytest.raises(KdmcseError, match="NoSuchTask"):
        mteb_main(["--model", str(tmp_path / "none"), "--tasks", "NoSuchTask", "--out", str(tmp_path / "x.json")])
    with pytest.raises(KdmcseError, match="--senteval"):
        mteb_main(["--model", str(tmp_path / "none"), "--tasks", "SentEvalSTSB", "--out", str(tmp_path / "x.json")])
