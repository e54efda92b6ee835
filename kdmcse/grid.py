"""The experiment grid: which students to train, where they live, and the run config each one gets.

A *cell* is one training setting (dataset, backbone, objective, margin, threshold); every cell is trained
once per seed. The main table is a cross product at the main setting; each ablation varies one axis around
it. Objectives can force settings (SimCSE trains on Wikipedia only with margin 0), so cells from different
groups may coincide; they are trained once.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdmcse.errors import KdmcseError
from kdmcse.io import sha256_file

OBJECTIVES = ("simcse", "mcse", "kdmcse")
# A threshold given as a quantile of the teacher's negative scores: "q0.99" masks the top 1 % of negatives.
QUANTILE_RE = re.compile(r"^q(0?\.[0-9]+|0|1(\.0*)?)$")
# What each baseline choice forces on its cells (config key `baselines`); the released code's choice is the default.
BASELINE_FORCES = {("simcse", "wiki"): {"dataset": "wiki", "margin": 0.0}}
ONE_CAPTION_SUFFIX = "-onecap"  # caption corpus <name>-onecap: corpus <name> with one random caption per image


def fmt_number(x: float) -> str:
    """Short, stable path label for a number: 0.15 -> '0.15', 0.0 -> '0', 0.125 -> '0.125'."""
    return f"{float(x):g}"


@dataclass(frozen=True, order=True)
class Cell:
    dataset: str
    backbone: str
    objective: str
    margin: float
    threshold: float | str | None  # None = threshold filtering off; "q0.99" = a quantile of the negative scores

    @property
    def margin_label(self) -> str:
        return fmt_number(self.margin)

    @property
    def threshold_label(self) -> str:
        return threshold_label(self.threshold)

    @property
    def path(self) -> str:
        """Relative folder of the cell: `<dataset>/<backbone>/<objective>/margin~M_threshold~T`."""
        return f"{self.dataset}/{self.backbone}/{self.objective}/margin~{self.margin_label}_threshold~{self.threshold_label}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "backbone": self.backbone,
            "objective": self.objective,
            "margin": self.margin,
            "threshold": self.threshold_label,
        }


def is_quantile(value: Any) -> bool:
    """Whether a threshold is a quantile of the negative-score distribution ("q0.99")."""
    return isinstance(value, str) and bool(QUANTILE_RE.match(value))


def quantile_level(value: str) -> float:
    """"q0.99" -> 0.99."""
    return float(value[1:])


def parse_threshold(value: Any) -> float | str | None:
    """"off"/None -> None; "q0.99" -> "q0.99" (normalised); a number (or its text) -> float."""
    if value in ("off", None):
        return None
    if isinstance(value, str) and value.startswith("q"):
        if not is_quantile(value):
            raise KdmcseError(f"threshold {value!r}: a quantile is q followed by a level in [0, 1], e.g. q0.99")
        return "q" + fmt_number(quantile_level(value))
    return float(value)


def threshold_label(value: float | str | None) -> str:
    """Path label of a threshold: off, 0.9 or q0.99."""
    if value is None:
        return "off"
    return value if isinstance(value, str) else fmt_number(value)


def make_cell(cfg: dict[str, Any], dataset: str, backbone: str, objective: str, margin: Any, threshold: Any) -> Cell:
    """Build a cell, applying what the objective forces (config keys `baselines` and `objectives.<name>`)."""
    choice = cfg.get("baselines", {}).get(objective)
    forced = {**BASELINE_FORCES.get((objective, choice), {}), **cfg.get("objectives", {}).get(objective, {})}
    return Cell(
        dataset=forced.get("dataset", dataset),
        backbone=backbone,
        objective=objective,
        margin=float(forced.get("margin", margin)),
        threshold=parse_threshold(forced.get("threshold", threshold)),
    )


def _unique(cells: list[Cell]) -> list[Cell]:
    return list(dict.fromkeys(cells))


def main_cells(cfg: dict[str, Any]) -> list[Cell]:
    m = cfg["grid"]["main"]
    return _unique(
        [
            make_cell(cfg, d, b, o, m["margin"], m["threshold"])
            for d in m["datasets"]
            for b in m["backbones"]
            for o in m["objectives"]
        ]
    )


def ablation_cells(cfg: dict[str, Any], axis: str) -> list[Cell]:
    """Cells of one ablation: the main setting with `axis` (margin or threshold) varied."""
    abl = cfg["grid"].get("ablations", {}).get(axis)
    if not abl:
        return []
    main = cfg["grid"]["main"]
    cells = []
    for value in abl["values"]:
        margin = value if axis == "margin" else main["margin"]
        threshold = value if axis == "threshold" else main["threshold"]
        cells.append(make_cell(cfg, abl["dataset"], abl["backbone"], abl["objective"], margin, threshold))
    return _unique(cells)


def scale_cells(cfg: dict[str, Any]) -> list[Cell]:
    """Cells of the scale experiment (`grid.scale`): one configuration at the main setting, per dataset."""
    scale = cfg["grid"].get("scale")
    if not scale:
        return []
    main = cfg["grid"]["main"]
    return _unique([make_cell(cfg, d, scale["backbone"], scale["objective"], main["margin"], main["threshold"])
                    for d in scale["datasets"]])


def all_cells(cfg: dict[str, Any]) -> list[Cell]:
    return _unique(main_cells(cfg) + ablation_cells(cfg, "margin") + ablation_cells(cfg, "threshold"))


def transfer_cells(cfg: dict[str, Any]) -> list[Cell]:
    which = cfg.get("evaluate", {}).get("transfer", "main")
    return {"main": main_cells, "all": all_cells}.get(which, lambda _: [])(cfg)


def resolve_model(name: str) -> str:
    """Map `pkg://package/sub/path` to a folder inside an installed Python package; other names pass through.

    This lets an offline config point at a model shipped in a PyPI package without hard-coding site-packages.
    """
    if not name.startswith("pkg://"):
        return name
    package, _, sub = name[len("pkg://") :].partition("/")
    try:
        mod = importlib.import_module(package)
    except ImportError as exc:
        raise KdmcseError(f"model {name!r}: Python package {package!r} is not installed (pip install it)") from exc
    folder = Path(mod.__file__).resolve().parent / sub
    if not folder.is_dir():
        raise KdmcseError(f"model {name!r}: folder {folder} does not exist in package {package!r}")
    return str(folder)


def released_mcse(cfg: dict[str, Any], cell: Cell) -> bool:
    """MCSE as MCSE released it: image features of `baselines.mcse_features`, one random caption per image."""
    return cell.objective == "mcse" and cfg.get("baselines", {}).get("mcse", "released") == "released"


def caption_spec(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """The config of caption corpus `name`; `<base>-onecap` is corpus `base` with one random caption per image."""
    captions = cfg.get("captions", {})
    if name in captions:
        return captions[name]
    base = name.removesuffix(ONE_CAPTION_SUFFIX)
    if name.endswith(ONE_CAPTION_SUFFIX) and base in captions:
        return {**captions[base], "one_caption_per_image": True}
    raise KdmcseError(f"caption corpus {name!r} is not defined under config key 'captions'")


def cell_pairs(cfg: dict[str, Any], cell: Cell) -> str | None:
    """The caption corpus a cell trains on (None: text only). SimCSE reads only the captions' text."""
    pairs = cfg["datasets"][cell.dataset]["pairs"]
    if pairs is None or not released_mcse(cfg, cell) or caption_spec(cfg, pairs).get("one_caption_per_image"):
        return pairs
    return pairs + ONE_CAPTION_SUFFIX


def cell_teacher(cfg: dict[str, Any], cell: Cell) -> str | None:
    """Alias of the feature cache a cell distils from: a CLIP teacher, or an image-feature extractor (MCSE)."""
    if cell.objective == "simcse":
        return None
    if released_mcse(cfg, cell):
        return cfg["baselines"].get("mcse_features", "resnet50")
    return cfg["teacher"]


def feature_spec(cfg: dict[str, Any], alias: str) -> dict[str, Any]:
    """Config of a feature cache alias: a `teachers` entry (CLIP) or an `image_features` entry."""
    if alias in cfg.get("image_features", {}):
        return {"kind": "image", **cfg["image_features"][alias]}
    if alias in cfg["teachers"]:
        return {"kind": "clip", **cfg["teachers"][alias]}
    raise KdmcseError(f"feature extractor {alias!r} is under neither 'teachers' nor 'image_features'")


def run_config(cfg: dict[str, Any], cell: Cell) -> dict[str, Any]:
    """The complete, self-contained training config of one cell (see docs/architecture.md §4)."""
    tr, bb = cfg["train"], cfg["backbones"][cell.backbone]
    teacher = feature_spec(cfg, cell_teacher(cfg, cell) or cfg["teacher"])
    pretrained = teacher["pretrained"] if teacher["kind"] == "clip" else teacher["weights"]
    identity = {"model": teacher["model"], "pretrained": pretrained}
    if teacher.get("model_config"):
        # a custom architecture is known by its config (the cache records the same hash); only present then, so
        # the run configs of every other teacher stay as they were
        identity["model_config_sha256"] = sha256_file(teacher["model_config"])
    margin1 = cell.margin if tr["margin1"] == "tied" else float(tr["margin1"])
    return {
        "model": resolve_model(bb["model"]),
        "objective": cell.objective,
        "lr": float(bb["lr"]),
        "batch_size": int(bb["batch_size"]),
        "epochs": int(tr["epochs"]),
        "max_steps": tr["max_steps"],
        "lambda": float(tr["lambda"]),
        "temperature": float(tr["temperature"]),
        "temperature_vl": float(tr["temperature_vl"]),
        "margin1": float(margin1),
        "margin2": float(cell.margin),
        "threshold": cell.threshold,
        "threshold_space": tr["threshold_space"],
        "threshold_check": tr["threshold_check"],
        "inter_reduction": tr["inter_reduction"],
        "proj_dim": int(tr["proj_dim"]),
        "max_seq_length": int(tr["max_seq_length"]),
        "eval_steps": int(tr["eval_steps"]),
        "checkpoint_minutes": None if tr["checkpoint_minutes"] is None else float(tr["checkpoint_minutes"]),
        "log_every": int(tr["log_every"]),
        "pooling": tr["pooling"],
        "precision": tr["precision"],
        "head_init": tr["head_init"],
        "teacher": identity,
    }


# ---------------------------------------------------------------- where a student's inputs and outputs live
# The rules (workflow/rules/common.smk) and `python -m kdmcse config --cell` both take the paths from here.
CELL_PATH = re.compile(r"^(?P<dataset>[a-z0-9+]+)/(?P<backbone>[A-Za-z0-9_-]+)/(?P<objective>simcse|mcse|kdmcse)/"
                       r"margin~(?P<margin>[0-9.]+)_threshold~(?P<threshold>off|q?-?[0-9.]+)$")


def student_dir(cell: Cell, seed: int | str) -> str:
    return f"results/students/{cell.path}/seed~{seed}"


def score_stats_path(pairs: str, teacher: str, batch_size: int) -> str:
    """Where the score statistics of a teacher cache at a training batch size live (`teacher_scores` rule)."""
    return f"results/teacher/{pairs}/{teacher}/scores/batch~{int(batch_size)}.json"


def cell_score_stats(cfg: dict[str, Any], cell: Cell) -> str | None:
    """The score statistics a KDMCSE cell's threshold is calibrated on (None for the other objectives)."""
    pairs = cell_pairs(cfg, cell)
    if cell.objective != "kdmcse" or not pairs:
        return None
    return score_stats_path(pairs, cell_teacher(cfg, cell), cfg["backbones"][cell.backbone]["batch_size"])


def train_inputs(cfg: dict[str, Any], cell: Cell) -> dict[str, str]:
    """The files `train` reads for `cell`: text corpus and SentEval folder; the caption table (SimCSE reads
    its text: baselines.simcse released), the feature cache of the cell's teacher (its captions.parquet) and,
    for a thresholded cell, the score statistics its threshold is resolved on."""
    inputs = {"text": "results/corpora/wiki.parquet", "senteval": f"resources/extracted/{cfg['evaluate']['senteval']}"}
    pairs, teacher = cell_pairs(cfg, cell), cell_teacher(cfg, cell)
    if pairs:
        inputs["pairs"] = f"results/corpora/captions_{pairs}.parquet"
    if pairs and teacher:
        inputs["teacher"] = f"results/teacher/{pairs}/{teacher}/captions.parquet"
    stats = cell_score_stats(cfg, cell)
    if cell.threshold is not None and stats:
        inputs["score_stats"] = stats
    return inputs


def find_cell(cfg: dict[str, Any], text: str) -> Cell:
    """The grid cell named by its results path (`wiki+flickr/bert/kdmcse/margin~0.15_threshold~off`)."""
    cells = {c.path: c for c in all_cells(cfg) + scale_cells(cfg)}
    if text.strip("/") in cells:
        return cells[text.strip("/")]
    hint = "; cells of this config: " + ", ".join(list(cells)[:6]) + (", …" if len(cells) > 6 else "")
    if not CELL_PATH.match(text.strip("/")):
        raise KdmcseError(f"--cell {text!r} is not a cell path of the form DATASET/BACKBONE/OBJECTIVE/"
                          f"margin~M_threshold~T (as under results/students/){hint}")
    raise KdmcseError(f"--cell {text!r} is not in the grid of these config files{hint}")


def train_command(cfg: dict[str, Any], cell: Cell, seed: int) -> str:
    """The `python -m kdmcse train` command the train rule runs for (cell, seed), without launcher or log."""
    inputs = train_inputs(cfg, cell)
    args = ["python", "-m", "kdmcse", "train", "--run-config", json.dumps(run_config(cfg, cell), sort_keys=True),
            "--text", inputs["text"]]
    if "pairs" in inputs:
        args += ["--pairs", inputs["pairs"]]
    if "teacher" in inputs:
        args += ["--teacher", str(Path(inputs["teacher"]).parent)]
    if "score_stats" in inputs:
        args += ["--score-stats", inputs["score_stats"]]
    args += ["--senteval", inputs["senteval"], "--seed", str(seed), "--out", student_dir(cell, seed),
             "--cell", *(f"{k}={v}" for k, v in {**cell.as_dict(), "seed": seed}.items())]  # as the rules pass it
    return shlex.join(args)
