"""Config validation: each class of mistake gets one line that names the key, before any job runs."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdmcse.config import ConfigError, coerce_cli_values, load_config, merge_into, validate_config
from kdmcse.grid import ablation_cells, all_cells, main_cells, run_config, transfer_cells

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base() -> dict:
    return load_config([ROOT / "config" / "config.yaml"])


@pytest.fixture(autouse=True)
def _in_the_project(monkeypatch):
    # relative paths in the config (the registry, local models) are read from the working directory, as under
    # Snakemake, which runs in the project root
    monkeypatch.chdir(ROOT)


def with_overlay(base: dict, text: str) -> dict:
    return merge_into(copy.deepcopy(base), yaml.safe_load(text))


def error_of(cfg: dict) -> str:
    with pytest.raises(ConfigError) as exc:
        validate_config(cfg)
    msg = str(exc.value)
    assert "\n" not in msg, "errors must be one line"
    return msg


def test_default_config_is_valid_and_filled(base):
    cfg = validate_config(base)
    assert cfg["train"]["inter_reduction"] == "sum"  # released code's behaviour is the default
    assert cfg["train"]["threshold_space"] == "cosine"
    assert cfg["evaluate"]["transfer"] == "main"
    assert cfg["backbones"]["bert"]["lr"] == pytest.approx(3.0e-5)
    assert cfg["backbones"]["roberta"] == {"model": "roberta-base", "lr": 1.0e-5, "batch_size": 128, "license": "mit"}


@pytest.mark.parametrize(
    ("overlay", "key", "words"),
    [
        ("train: {epochs: three}", "train.epochs", "integer"),
        ("train: {epochz: 3}", "epochz", "unknown config key"),
        ("grid: {main: {margin: -0.1}}", "grid.main.margin", "range"),
        ("grid: {ablations: {margin: {values: [0.1, 2.0]}}}", "grid.ablations.margin.values[1]", "range"),
        ("grid: {ablations: {threshold: {values: ['off', 1.5]}}}", "grid.ablations.threshold.values[1]", "[-1, 1]"),
        ("grid: {main: {threshold: 'maybe'}}", "grid.main.threshold", "off"),
        ("grid: {main: {backbones: [bert, bart]}}", "grid.main.backbones[1]", "unknown backbone alias 'bart'"),
        ("grid: {main: {objectives: [simcse, infonce]}}", "grid.main.objectives[1]", "infonce"),
        ("grid: {seeds: []}", "grid.seeds", "empty"),
        ("backbones: {bert: {lr: 3e-5}}", "backbones.bert.lr", "3.0e-5"),
        ("grid: {main: {threshold: off}}", "grid.main.threshold", '"off" in quotes'),
        ("teacher: vitb16", "teacher", "unknown teacher"),
        ("train: {inter_reduction: median}", "train.inter_reduction", "sum, mean"),
        ("datasets: {wiki+cc: {pairs: cc12m}}", "datasets.wiki+cc.pairs", "unknown caption corpus"),
        ("evaluate: {sts_tasks: [STSBenchmark, STS17]}", "evaluate.sts_tasks[1]", "is not one of STS12"),
        ("evaluate: {sts_tasks: [SICKRelatedness, SICKRelatedness]}", "evaluate.sts_tasks", "repeats a value"),
        ("evaluate: {sts_tasks: []}", "evaluate.sts_tasks", "empty"),
    ],
)
def test_invalid_config_names_the_key(base, overlay, key, words):
    msg = error_of(with_overlay(base, overlay))
    assert f"'{key}'" in msg or key in msg, msg
    assert words in msg, msg


def test_raw_dot_threshold_may_exceed_one(base):
    cfg = with_overlay(base, "train: {threshold_space: raw_dot}\ngrid: {ablations: {threshold: {values: ['off', 21.5]}}}")
    assert validate_config(cfg)["grid"]["ablations"]["threshold"]["values"][1] == 21.5


def test_cli_values_are_retyped_but_text_stays_text():
    got = coerce_cli_values({"grid": {"seeds": ["0", "1"], "main": {"margin": "0.15", "threshold": "off"}}, "x": "true"})
    assert got == {"grid": {"seeds": [0, 1], "main": {"margin": 0.15, "threshold": "off"}}, "x": True}


def test_grid_counts_and_paths(base):
    cfg = validate_config(base)
    main = main_cells(cfg)
    # The released SimCSE reads the caption corpus's text, so it has one cell per dataset and backbone.
    assert len(main) == 4 + 4 + 4
    assert {c.path for c in main if c.objective == "simcse"} == {
        f"wiki+{d}/{b}/simcse/margin~0.15_threshold~off" for d in ("flickr", "coco") for b in ("bert", "roberta")
    }
    margins = ablation_cells(cfg, "margin")
    assert [c.margin_label for c in margins] == ["0.05", "0.1", "0.125", "0.15", "0.2"]
    thresholds = ablation_cells(cfg, "threshold")
    assert [c.threshold_label for c in thresholds] == ["off", "q0.995", "q0.99", "q0.95", "q0.9"]
    # The ablations share their main-setting cell with the main table: 12 + 4 + 4 distinct cells.
    assert len(all_cells(cfg)) == 20
    assert len(transfer_cells(cfg)) == 12


def test_wiki_only_simcse_is_forced_onto_wiki_with_margin_0(base):
    cfg = validate_config(with_overlay(base, "baselines: {simcse: wiki}"))
    main = main_cells(cfg)
    assert len(main) == 2 + 4 + 4
    assert {c.path for c in main if c.objective == "simcse"} == {
        "wiki/bert/simcse/margin~0_threshold~off",
        "wiki/roberta/simcse/margin~0_threshold~off",
    }
    simcse = run_config(cfg, next(c for c in main if c.path == "wiki/roberta/simcse/margin~0_threshold~off"))
    assert (simcse["margin1"], simcse["margin2"], simcse["threshold"]) == (0.0, 0.0, None)


def test_run_config_ties_margins_and_forces_objective_settings(base):
    cfg = validate_config(base)
    cells = {c.path: c for c in all_cells(cfg)}
    kd = run_config(cfg, cells["wiki+flickr/bert/kdmcse/margin~0.15_threshold~q0.99"])
    assert (kd["margin1"], kd["margin2"], kd["threshold"]) == (0.15, 0.15, "q0.99")
    assert kd["teacher"] == {"model": "ViT-L-14", "pretrained": "openai"}
    assert kd["head_init"] == "hf" and kd["threshold_check"] == "warn"
    simcse = run_config(cfg, cells["wiki+flickr/roberta/simcse/margin~0.15_threshold~off"])
    assert (simcse["margin1"], simcse["margin2"], simcse["threshold"]) == (0.15, 0.15, None)
    assert simcse["lr"] == 1.0e-5 and simcse["batch_size"] == 128
    fixed = run_config(validate_config(with_overlay(base, "train: {margin1: 0.1}")), cells["wiki+flickr/bert/kdmcse/margin~0.2_threshold~off"])
    assert (fixed["margin1"], fixed["margin2"]) == (0.1, 0.2)
    assert math.isclose(fixed["lambda"], 0.01)


def test_schema_documents_every_key():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    missing = []

    def walk(node: dict, path: str) -> None:
        for name, sub in (node.get("properties") or {}).items():
            if "$ref" not in sub and "description" not in sub:
                missing.append(f"{path}{name}")
            walk(sub, f"{path}{name}.")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}*.")

    walk(schema, "")
    assert not missing, f"schema keys without a description: {missing}"


def test_every_default_config_key_is_in_the_schema(base):
    # validate_config refuses unknown keys; this pins that config.yaml and the schema agree.
    validate_config(base)
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert set(base) <= set(schema["properties"])


def test_snakemake_reports_the_key_before_any_job(tmp_path):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("backbones:\n  bert: {model: bert-base-uncased, lr: 3e-5, batch_size: 64}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(overlay)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "backbones.bert.lr" in proc.stdout + proc.stderr
    assert "Job stats" not in proc.stdout + proc.stderr


def test_config_readme_is_generated_from_the_schema():
    from kdmcse.config_cli import CONFIG_README_HEAD, schema_docs

    readme = (ROOT / "config" / "README.md").read_text()
    assert readme == CONFIG_README_HEAD + schema_docs(), "regenerate: python -m kdmcse config --docs > config/README.md"
    assert "`train.inter_reduction`" in readme and "`sum`" in readme


# ---------------------------------------------------------------- holes found by probing
@pytest.mark.parametrize(
    ("overlay", "key"),
    [
        ("backbones: {bert: {lr: .nan}}", "backbones.bert.lr"),
        ("backbones: {bert: {lr: .inf}}", "backbones.bert.lr"),
        ("train: {lambda: .nan}", "train.lambda"),
        ("train: {temperature: .nan}", "train.temperature"),
        ("train: {temperature_vl: .inf}", "train.temperature_vl"),
        ("train: {margin1: .nan}", "train.margin1"),
        ("grid: {main: {margin: .nan}}", "grid.main.margin"),
        ("grid: {ablations: {margin: {values: [0.1, .nan]}}}", "grid.ablations.margin.values[1]"),
        ("objectives: {kdmcse: {margin: .nan}}", "objectives.kdmcse.margin"),
    ],
)
def test_nan_and_inf_are_refused(base, overlay, key):
    msg = error_of(with_overlay(base, overlay))
    assert f"'{key}'" in msg and "finite" in msg, msg


@pytest.mark.parametrize(
    ("overlay", "key"),
    [
        ("evaluate: {senteval: senteval_v2}", "evaluate.senteval"),
        ("wiki: {source: wikipedia}", "wiki.source"),
        ("captions: {flickr: {annotations: flickr_captionz}}", "captions.flickr.annotations"),
        ("captions: {coco: {images: coco_val2014_images}}", "captions.coco.images"),
        ("sources: {overrides: {wiki2m: {url: 'http://example.org/w.txt'}}}", "sources.overrides.wiki2m"),
    ],
)
def test_artifact_keys_must_be_in_the_registry(base, overlay, key):
    msg = error_of(with_overlay(base, overlay))
    assert f"'{key}'" in msg and "config/sources.yaml" in msg and "known:" in msg, msg


def test_missing_registry_file_is_named(base):
    msg = error_of(with_overlay(base, "sources: {registry: config/nope.yaml}"))
    assert "'sources.registry'" in msg and "config/nope.yaml" in msg


@pytest.mark.parametrize("name", ["bad name", "a/b", "x$(id)", "flickr.v2"])
def test_caption_corpus_names_have_a_pattern(base, name):
    cfg = copy.deepcopy(base)
    cfg["captions"][name] = {"format": "demo"}
    msg = error_of(cfg)
    assert "captions" in msg and name in msg, msg


@pytest.mark.parametrize(
    ("overlay", "key", "path"),
    [
        ("backbones: {bert: {model: ./models/no-such-bert}}", "backbones.bert.model", "models/no-such-bert"),
        ("backbones: {bert: {model: /no/such/model/dir}}", "backbones.bert.model", "/no/such/model/dir"),
        ("backbones: {bert: {model: 'pkg://json/no-such-folder'}}", "backbones.bert.model", "no-such-folder"),
        ("sources: {mirror: /no/such/mirror}", "sources.mirror", "/no/such/mirror"),
        ("sources: {overrides: {wiki1m: {path: /no/such/wiki.txt}}}", "sources.overrides.wiki1m.path",
         "/no/such/wiki.txt"),
        ("teachers: {vitl14: {pretrained: /no/such/ViT-L-14.pt}}", "teachers.vitl14.pretrained",
         "/no/such/ViT-L-14.pt"),
        ("teachers: {vitl14: {model_config: /no/such/tiny.json}}", "teachers.vitl14.model_config",
         "/no/such/tiny.json"),
    ],
)
def test_local_paths_that_do_not_exist_are_refused(base, overlay, key, path):
    msg = error_of(with_overlay(base, overlay))
    assert f"'{key}'" in msg and path in msg and "does not exist" in msg, msg


def test_hub_ids_and_tags_are_not_mistaken_for_paths(base, tmp_path):
    cfg = with_overlay(base, f"backbones: {{bert: {{model: google/bert_uncased_L-4_H-256_A-4}}}}\n"
                             f"sources: {{mirror: {tmp_path}}}")
    validate_config(cfg)  # an org/name id and an existing mirror folder pass


def test_unused_entries_are_not_checked_for_paths(base):
    cfg = with_overlay(base, "teachers: {spare: {model: ViT-B-32, pretrained: /no/such/spare.pt}}")
    validate_config(cfg)  # no student distils from 'spare'


@pytest.mark.parametrize(
    ("overlay", "key"),
    [
        ("{baselines: {simcse: wiki}, grid: {ablations: {margin: {objective: simcse}}}}", "grid.ablations.margin"),
        ("grid: {ablations: {margin: {objective: mcse}}}", "grid.ablations.margin"),
        ("grid: {ablations: {threshold: {objective: simcse}}}", "grid.ablations.threshold"),
    ],
)
def test_ablation_that_collapses_to_one_cell_is_refused(base, overlay, key):
    msg = error_of(with_overlay(base, overlay))
    assert f"'{key}" in msg and "1 cell" in msg and ("objectives." in msg or "baselines.simcse: wiki" in msg), msg


def test_repeated_ablation_value_is_refused(base):
    msg = error_of(with_overlay(base, "grid: {ablations: {margin: {values: [0.1, 0.15, 0.1]}}}"))
    assert "grid.ablations.margin.values" in msg


def test_snakemake_refuses_a_missing_local_model_at_dag_build(tmp_path):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("backbones:\n  bert: {model: ./models/no-such-bert, lr: 3.0e-5, batch_size: 64}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(overlay)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "backbones.bert.model" in out and "does not exist" in out, out[-2000:]
