"""`python -m kdmcse evaluate`: metrics JSON + one-row CSV, cell parsing, checks before the model loads."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from test_senteval_data import write_senteval_tree

from kdmcse.errors import KdmcseError
from kdmcse.evaluate import cli as evaluate
from kdmcse.evaluate.sts import STS_TASKS, STS_YEARS


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_senteval_tree(tmp_path_factory.mktemp("se") / "senteval")


def test_sts_metrics_json_and_csv(tmp_path: Path, tiny_bert_dir: Path, data_dir: Path) -> None:
    out, table = tmp_path / "m" / "metrics.json", tmp_path / "m" / "metrics.csv"
    rc = evaluate.main(["--model", str(tiny_bert_dir), "--pooling", "avg", "--tasks", "sts", "--data", str(data_dir),
                        "--out", str(out), "--csv", str(table), "--cell", "dataset=wiki+flickr", "seed=0",
                        "margin=0.15", "threshold=off", "--batch-size", "8", "--device", "cpu"])
    assert rc == 0
    m = json.loads(out.read_text())
    assert m["cell"] == {"dataset": "wiki+flickr", "seed": 0, "margin": 0.15, "threshold": "off"}
    assert m["model"] == str(tiny_bert_dir) and m["pooling"] == "avg"
    assert set(m) == {"cell", "model", "pooling", "sts", "align_uniform"}
    assert set(m["sts"]) == set(STS_TASKS) | {"tasks", "avg"}
    assert m["sts"]["tasks"] == list(STS_TASKS)
    for year in STS_YEARS:
        assert set(m["sts"][year]) == {"all", "wmean", "mean", "n", "subsets"}
    assert set(m["sts"]["STSBenchmark"]) == {"spearman", "n"}
    assert set(m["align_uniform"]) == {"mcse_batch", "stsb_full"}
    assert set(m["align_uniform"]["mcse_batch"]) == set(STS_TASKS) | {"avg"}
    with table.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1
    row = rows[0]
    assert row["dataset"] == "wiki+flickr" and row["seed"] == "0" and row["threshold"] == "off"
    assert float(row["sts.STS12.all"]) == pytest.approx(m["sts"]["STS12"]["all"])
    assert float(row["align_uniform.stsb_full.uniform"]) == pytest.approx(m["align_uniform"]["stsb_full"]["uniform"])
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_an_sts_task_subset_scores_those_tasks_as_a_full_run_does(tmp_path: Path, tiny_bert_dir: Path,
                                                                   data_dir: Path) -> None:
    common = ["--model", str(tiny_bert_dir), "--pooling", "avg", "--tasks", "sts", "--data", str(data_dir),
              "--cell", "seed=0", "--batch-size", "8", "--device", "cpu"]
    full, part = tmp_path / "full.json", tmp_path / "part.json"
    assert evaluate.main(common + ["--out", str(full)]) == 0
    assert evaluate.main(common + ["--out", str(part), "--csv", str(tmp_path / "part.csv"),
                                   "--sts-tasks", "SICKRelatedness,STSBenchmark"]) == 0
    f, p = json.loads(full.read_text()), json.loads(part.read_text())
    assert p["sts"]["tasks"] == ["STSBenchmark", "SICKRelatedness"]  # canonical order, whatever the order given
    assert set(p["sts"]) == {"STSBenchmark", "SICKRelatedness", "tasks", "avg"}
    for task in ("STSBenchmark", "SICKRelatedness"):
        assert p["sts"][task]["spearman"] == pytest.approx(f["sts"][task]["spearman"], abs=1e-9)
    two = [round(f["sts"][t]["spearman"], 2) for t in ("STSBenchmark", "SICKRelatedness")]
    assert p["sts"]["avg"] == pytest.approx(round(sum(two) / 2, 2))
    assert p["sts"]["avg"] != f["sts"]["avg"]
    assert set(p["align_uniform"]["mcse_batch"]) == {"STSBenchmark", "SICKRelatedness", "avg"}
    assert p["align_uniform"]["stsb_full"] == pytest.approx(f["align_uniform"]["stsb_full"])
    with (tmp_path / "part.csv").open(newline="") as fh:
        assert next(csv.DictReader(fh))["sts.tasks"] == "STSBenchmark,SICKRelatedness"


@pytest.mark.parametrize("given", ["STS17", "STSBenchmark,STSBenchmark", ","])
def test_bad_sts_tasks_fail_before_the_model_loads(tmp_path: Path, data_dir: Path, given: str) -> None:
    with pytest.raises(KdmcseError, match="STS tasks .*choose from STS12"):
        evaluate.main(["--model", str(tmp_path / "no-model"), "--tasks", "sts", "--data", str(data_dir),
                       "--out", str(tmp_path / "m.json"), "--sts-tasks", given])


def test_transfer_family_calls_the_transfer_evaluator(tmp_path: Path, tiny_bert_dir: Path, data_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_transfer(encoder, data, tasks=None, seed=1111):
        calls.append((Path(data), encoder.encode(["a dog"]).shape))
        return {"MR": {"acc": 80.0}, "MRPC": {"acc": 70.0, "f1": 75.0}, "avg": 75.0}

    monkeypatch.setitem(sys.modules, "kdmcse.evaluate.transfer", types.SimpleNamespace(evaluate_transfer=fake_transfer))
    out = tmp_path / "t.json"
    evaluate.main(["--model", str(tiny_bert_dir), "--tasks", "transfer", "--data", str(data_dir), "--out", str(out),
                   "--device", "cpu"])
    m = json.loads(out.read_text())
    assert calls == [(data_dir, (1, 32))]
    assert set(m) == {"cell", "model", "pooling", "transfer"} and m["transfer"]["MRPC"]["f1"] == 75.0
    assert m["pooling"] == "cls_before_pooler" and m["cell"] == {}


def test_inputs_are_checked_before_the_model_is_loaded(tmp_path: Path, data_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loading(*args, **kwargs):
        raise AssertionError("the model must not be loaded when the inputs are bad")

    monkeypatch.setattr(evaluate, "load_encoder", no_loading)
    base = ["--model", "some/hub-id", "--data", str(data_dir), "--out", str(tmp_path / "x.json")]
    with pytest.raises(KdmcseError, match="--tasks"):
        evaluate.main(base + ["--tasks", "sts,glue"])
    with pytest.raises(KdmcseError, match="key=value"):
        evaluate.main(base + ["--cell", "seed"])
    with pytest.raises(KdmcseError, match="reserved"):
        evaluate.main(base + ["--cell", "model=x"])
    with pytest.raises(KdmcseError, match="batch-size"):
        evaluate.main(base + ["--batch-size", "0"])
    with pytest.raises(KdmcseError, match="no such folder"):
        evaluate.main(["--model", "m", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x.json")])
    with pytest.raises(KdmcseError, match="not found"):
        evaluate.main(["--model", str(tmp_path / "no" / "model"), "--data", str(data_dir),
                       "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_missing_data_file_fails_with_exit_2_and_no_output(tmp_path: Path) -> None:
    data = write_senteval_tree(tmp_path / "se")
    (data / "SICK" / "SICK_test_annotated.txt").unlink()
    out = tmp_path / "x.json"
    proc = subprocess.run([sys.executable, "-m", "kdmcse", "evaluate", "--model", "some/hub-id", "--tasks", "sts",
                           "--data", str(data), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "error: SentEval data file missing" in proc.stderr and "SICK_test_annotated.txt" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_parse_cell_numbers_and_strings() -> None:
    assert evaluate.parse_cell(["seed=3", "lr=3.0e-5", "threshold=off", "note=a=b"]) == {
        "seed": 3, "lr": 3.0e-5, "threshold": "off", "note": "a=b"}
