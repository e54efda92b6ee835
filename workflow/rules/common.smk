# Shared helpers: config validation, the grid, paths and wildcard constraints.
import hashlib
import json
from pathlib import Path

import yaml

import kdmcse
from kdmcse.config import coerce_cli_values, merge_into, validate_config
from kdmcse.grid import (
    Cell,
    ablation_cells,
    all_cells,
    main_cells,
    parse_threshold,
    run_config,
    transfer_cells,
)

# `--config` leaves arrive as strings (Snakemake's BaseLoader); re-type them, then fail at DAG build, before
# any job, with one line naming the bad key.
merge_into(config, coerce_cli_values(workflow.config_settings.config))
config.update(validate_config(config))

REGISTRY = yaml.safe_load(Path(config["sources"]["registry"]).read_text(encoding="utf-8"))
SEEDS = config["grid"]["seeds"]


wildcard_constraints:
    artifact=r"[A-Za-z0-9_]+",
    pairs=r"[A-Za-z0-9_-]+",
    teacher=r"[A-Za-z0-9_-]+",
    dataset=r"[a-z0-9+]+",
    backbone=r"[A-Za-z0-9_-]+",
    objective=r"simcse|mcse|kdmcse",
    margin=r"[0-9.]+",
    threshold=r"off|-?[0-9.]+",
    seed=r"\d+",


CELL = "{dataset}/{backbone}/{objective}/margin~{margin}_threshold~{threshold}"


def code_version(*modules):
    """Package version plus a hash of the stage's modules, so code edits rerun the stage (Snakemake can't see them)."""
    root = Path(kdmcse.__file__).parent
    h = hashlib.sha256()
    for m in modules:
        p = root / f"{m}.py"
        if p.exists():
            h.update(p.read_bytes())
    return f"{kdmcse.__version__}+{h.hexdigest()[:12]}"


def artifact(key):
    if key not in REGISTRY:
        raise ValueError(f"artifact {key!r} is not in the source registry {config['sources']['registry']}")
    return REGISTRY[key]


def download_path(key):
    return f"resources/downloads/{key}/{artifact(key)['filename']}"


def extracted(key):
    return f"resources/extracted/{key}"


SENTEVAL = extracted(config["evaluate"]["senteval"])


def cell_of(w):
    return Cell(w.dataset, w.backbone, w.objective, float(w.margin), parse_threshold(w.threshold))


def student_dir(cell, seed):
    return f"results/students/{cell.path}/seed~{seed}"


def metrics_path(cell, seed, kind):
    return f"results/metrics/{cell.path}/seed~{seed}.{kind}.json"


def metrics_files(cells, kind):
    return [metrics_path(c, s, kind) for c in cells for s in SEEDS]
