# Shared helpers: config validation, the grid, paths and wildcard constraints.
import hashlib
import json
from pathlib import Path


import kdmcse
from kdmcse.config import coerce_cli_values, merge_into, validate_config
from kdmcse.data.registry import load_registry
from kdmcse.io import sha256_file
from kdmcse.grid import (
    Cell,
    ablation_cells,
    all_cells,
    caption_spec,
    cell_pairs,
    cell_score_stats,
    cell_teacher,
    feature_spec,
    main_cells,
    parse_threshold,
    run_config,
    scale_cells,
    score_stats_path,
    student_dir,
    train_inputs as cell_train_inputs,
    threshold_label,
    transfer_cells,
)

# `--config` leaves arrive as strings (Snakemake's BaseLoader); re-type them, then fail at DAG build, before
# any job, with one line naming the bad key.
merge_into(config, coerce_cli_values(workflow.config_settings.config))
config.update(validate_config(config))

# The registry is checked as a whole at DAG build too (file names, checksums, sizes), not only when a job runs.
REGISTRY = {key: vars(source) for key, source in load_registry(config["sources"]["registry"]).items()}
SEEDS = config["grid"]["seeds"]


wildcard_constraints:
    artifact=r"[A-Za-z0-9_]+",
    pairs=r"[A-Za-z0-9_-]+",
    teacher=r"[A-Za-z0-9_-]+",
    dataset=r"[a-z0-9+]+",
    backbone=r"[A-Za-z0-9_-]+",
    objective=r"simcse|mcse|kdmcse",
    margin=r"[0-9.]+",
    threshold=r"off|-?[0-9.]+|q[0-9.]+",
    seed=r"\d+",
    batch=r"\d+",


CELL = "{dataset}/{backbone}/{objective}/margin~{margin}_threshold~{threshold}"


def code_version(*parts):
    """Package version plus a hash of the stage's code, so code edits rerun the stage (Snakemake can't see them).

    A part is a subpackage (`train`: every module in it) or a module (`embedding`, `data/senteval`) of kdmcse/.
    """
    root = Path(kdmcse.__file__).parent
    h = hashlib.sha256()
    for part in parts:
        folder = root / part
        files = sorted(folder.rglob("*.py")) if folder.is_dir() else [root / f"{part}.py"]
        missing = [f for f in files if not f.is_file()]
        if missing or not files:
            raise ValueError(f"code_version: no module kdmcse/{part}")
        for f in files:
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
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


def metrics_path(cell, seed, kind):
    return f"results/metrics/{cell.path}/seed~{seed}.{kind}.json"


def metrics_files(cells, kind):
    return [metrics_path(c, s, kind) for c in cells for s in SEEDS]


# --- compute: what each job asks for (config `resources`) and the devices it gets

def job_resources(rule):
    """threads, mem_mb and runtime (minutes) of a rule, from config `resources` (see docs/cluster.md)."""
    return config["resources"][rule]


def on_gpus(count):
    """Command prefix that runs a GPU stage on `count` devices of its own (`python -m kdmcse gpus`, kdmcse/gpus.py).

    Snakemake counts the `gpu` resource but picks no device; this sets CUDA_VISIBLE_DEVICES for local runs and
    leaves the scheduler's choice alone inside a SLURM job.
    """
    return f"python -m kdmcse gpus --count {int(count)} --"


# --- data stage helpers

def download_args(w):
    """Mirror and per-artifact overrides from config.sources, as command-line flags."""
    src = config["sources"]
    args = []
    if src.get("mirror"):
        args += ["--mirror", src["mirror"]]
    over = src.get("overrides", {}).get(w.artifact, {})
    for key in ("path", "url", "sha256"):
        if over.get(key):
            args += [f"--override-{key}", over[key]]
    return " ".join(map(shlex_quote, args))


def extract_args(w):
    """`--max-bytes` for an archive the registry says expands more than the extractor's default bound."""
    limit = artifact(w.artifact).get("max_extracted_bytes")
    return f"--max-bytes {shlex_quote(limit)}" if limit else ""


def shlex_quote(s):
    import shlex

    return shlex.quote(str(s))


def caption_corpus(name):
    """Config of a caption corpus; `<name>-onecap` is corpus <name> with one random caption per image (MCSE)."""
    return caption_spec(config, name)


def captions_inputs(w):
    cap = caption_corpus(w.pairs)
    if cap["format"] == "demo":
        return {}
    if cap["format"] == "shards":
        return {"shards": shard_manifest(w.pairs)}
    return {"annotations": download_path(cap["annotations"]), "images": extracted(cap["images"])}


def images_dir(name):
    cap = caption_corpus(name)
    if cap["format"] == "demo":
        # The demo photos are written by the prepare step itself (they ship inside installed packages).
        return f"resources/images/{name}"
    sub = cap.get("images_subdir", "")
    return f"{extracted(cap['images'])}/{sub}".rstrip("/")


def prepare_captions_args(w, input):
    cap = caption_corpus(w.pairs)
    if cap["format"] == "shards":
        args = ["--dataset", "shards", "--input", input.shards]
    else:
        args = ["--dataset", cap["format"], "--images-dir", images_dir(w.pairs)]
    if cap["format"] not in ("demo", "shards"):
        args += ["--input", input.annotations]
    if cap.get("one_caption_per_image"):
        args += ["--one-caption-per-image", "--seed", str(cap.get("seed", 0))]
    if cap.get("max_images"):
        args += ["--max-images", str(cap["max_images"])]
    return " ".join(map(shlex_quote, args))


# --- shard stage helpers (webdataset shards of image-caption pairs)

def shard_manifest(name):
    return f"resources/shards/{name}.json"


def ready_shards(name):
    """A folder of shards made elsewhere: captions.<name>.shards_dir, else <mirror>/shards/<name> if it exists."""
    cap = caption_corpus(name)
    if cap.get("shards_dir"):
        return cap["shards_dir"]
    mirror = config["sources"].get("mirror")
    if mirror and "://" not in mirror:
        folder = Path(mirror) / "shards" / name
        if folder.is_dir() and any(folder.glob("*.tar")):
            return str(folder)
    return None


def shards_inputs(w):
    cap = caption_corpus(w.pairs)
    if cap["format"] != "shards":
        raise ValueError(f"caption corpus {w.pairs!r} has format {cap['format']!r}, not shards")
    return {} if ready_shards(w.pairs) else {"tsv": download_path(cap["annotations"])}


def shards_args(w, input):
    folder = ready_shards(w.pairs)
    if folder:
        return f"--from {shlex_quote(folder)}"
    cap = caption_corpus(w.pairs)
    settings = cap.get("img2dataset", {})
    args = ["--tsv", input.tsv, "--out-dir", f"resources/shards/{w.pairs}", "--pairs", cap.get("pairs", 1000000)]
    for key in ("image_size", "resize_mode", "samples_per_shard", "processes", "threads", "timeout", "retries"):
        if key in settings:
            args += [f"--{key.replace('_', '-')}", settings[key]]
    return " ".join(map(shlex_quote, args))


def shard_processes(w):
    return int(caption_corpus(w.pairs).get("img2dataset", {}).get("processes", 4))


# --- teacher stage helpers

def teacher_spec(name):
    """A CLIP teacher (config `teachers`) or an image-feature extractor (config `image_features`), with its kind."""
    return feature_spec(config, name)


def teacher_model_config_sha256(name):
    path = teacher_spec(name).get("model_config")
    return sha256_file(path) if path else ""


def teacher_inputs(w):
    inputs = {"captions": f"results/corpora/captions_{w.pairs}.parquet"}
    cap = caption_corpus(w.pairs)
    if cap["format"] == "shards":
        inputs["shards"] = shard_manifest(w.pairs)
    elif cap["format"] != "demo":
        inputs["images"] = extracted(cap["images"])
    return inputs


def teacher_args(w):
    t = teacher_spec(w.teacher)
    if t["kind"] == "image":  # a torchvision ResNet: images only (the released MCSE baseline's features)
        args = ["--kind", "image", "--model", t["model"], "--pretrained", t["weights"],
                "--precision", t.get("precision", "fp32"), "--batch-size", str(t.get("batch_size", 64))]
        return " ".join(map(shlex_quote, args))
    args = ["--model", t["model"], "--pretrained", t["pretrained"], "--precision", t.get("precision", "auto")]
    args += ["--batch-size", str(t.get("batch_size", 256))]
    if t.get("model_config"):
        args += ["--model-config", t["model_config"]]
    if config["teacher_skip_bad_images"]:
        args += ["--skip-bad-images"]
    dtype = caption_corpus(w.pairs).get("cache_dtype", "float32")
    if dtype != "float32":  # only then, so the flags (a rerun trigger) of float32 caches stay as they were
        args += ["--cache-dtype", dtype]
    return " ".join(map(shlex_quote, args))


# --- train stage helpers

def score_stats_cells():
    """Score-statistics file -> the KDMCSE cells that train from that cache at that batch size."""
    out = {}
    for cell in all_cells(config):
        path = cell_score_stats(config, cell)
        if path:
            out.setdefault(path, []).append(cell)
    return out


def score_plot_thresholds(w):
    """The distinct thresholds of the cells that train from these statistics (off left out)."""
    cells = score_stats_cells().get(score_stats_path(w.pairs, w.teacher, w.batch), [])
    labels = sorted({c.threshold_label for c in cells if c.threshold is not None})
    return " ".join(shlex_quote(t) for t in labels)


def train_inputs(w):
    # kdmcse.grid holds the paths, so that `python -m kdmcse config --cell` prints the same command
    return cell_train_inputs(config, cell_of(w))


def train_launcher():
    """Plain python on one device; torchrun (single node, DDP) over the job's devices when it has several.

    torchrun starts inside the allocation, so its workers see exactly the job's GPUs (LOCAL_RANK r = the r-th);
    run as `python -m torch.distributed.run`, it is the interpreter of every other stage (the conda env's).
    """
    n = config["train"]["gpus_per_job"]
    python = "python" if n == 1 else f"python -m torch.distributed.run --standalone --nproc_per_node={n}"
    return f"{on_gpus(n)} {python}"


def train_pair_args(w, input):
    args = []
    if "pairs" in input.keys():
        args += ["--pairs", input.pairs]
    if "teacher" in input.keys():
        args += ["--teacher", str(Path(input.teacher).parent)]
    if "score_stats" in input.keys():
        args += ["--score-stats", input.score_stats]
    return " ".join(map(shlex_quote, args))


# --- train and evaluate stage helpers

def cell_args(w):
    # `--cell` of train and evaluate: named in the log's opening line and in the metrics
    cell = cell_of(w)
    pairs = {**cell.as_dict(), "seed": w.seed}
    return " ".join(shlex_quote(f"{k}={v}") for k, v in pairs.items())


EVAL_CODE = code_version("evaluate", "embedding", "data/senteval")


# --- report stage helpers: what `snakemake --report` shows

# Captions (workflow/report/<name>.rst) of what `snakemake --report` shows: each table as its HTML rendering
# (the .tex and .csv stay plain outputs) and each plot as its PNG. A new plot is one more entry in
# PLOT_CAPTIONS and one report_plot() output.
TABLE_CAPTIONS = {t: f"../report/{t}.rst" for t in ("main", "transfer", "ablation_margin", "ablation_threshold", "significance")}
PLOT_CAPTIONS = {
    "align_uniform": "../report/align_uniform.rst",
    "ablation_margin": "../report/ablation_plots.rst",
    "ablation_threshold": "../report/ablation_plots.rst",
}


def report_table(name):
    return report(f"results/tables/{name}.html", caption=TABLE_CAPTIONS[name], category="Tables")


def report_plot(name, caption=None):
    return report(f"results/plots/{name}.png", caption=caption or PLOT_CAPTIONS[name], category="Plots")


# --- model cards (rule model_card)

def _hub_dataset(urls):
    """`org/name` of the first Hugging Face dataset URL among an artifact's urls, else None."""
    import re

    for url in urls or []:
        m = re.match(r"https://huggingface\.co/datasets/([^/]+/[^/]+)/", url)
        if m:
            return m.group(1)
    return None


def _card_dataset(name, key):
    a = artifact(key)
    urls = a.get("urls") or []
    return {"name": name, "hub_id": _hub_dataset(urls), "licence": a.get("licence") or "not stated",
            "url": urls[0] if urls else None}


def _hub_model_id(model):
    """The hub id a config's backbone names, or None for a local folder or a pkg:// model."""
    import re

    if "://" in model or model.startswith((".", "~")) or Path(model).is_absolute() or Path(model).exists():
        return None
    return model if re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?", model) else None


def card_facts(w):
    """What the model card says beyond the run config and metrics: base model, licences, teacher, data."""
    cell = cell_of(w)
    backbone = config["backbones"][cell.backbone]
    teacher = teacher_spec(config["teacher"])
    datasets = [_card_dataset("Wiki1M (SimCSE's English Wikipedia sentences)", config["wiki"]["source"])]
    pairs = config["datasets"][cell.dataset]["pairs"]
    if cell.objective != "simcse" and pairs:
        cap = caption_corpus(pairs)
        for role in ("annotations", "images"):
            if cap.get(role) in REGISTRY:
                datasets.append(_card_dataset(f"{pairs} {role}", cap[role]))
        if cap["format"] == "demo":
            datasets.append({"name": "demo photos (shipped in scikit-image and matplotlib) with this project's "
                             "captions", "hub_id": None, "licence": "those of the two packages", "url": None})
    pretrained = f" ({teacher['pretrained']} weights)" if teacher.get("pretrained") not in (None, "", "none") else " (random init)"
    facts = {
        "name": f"kdmcse {cell.path} seed {w.seed}",
        "base_model": _hub_model_id(backbone["model"]),
        "base_model_source": backbone["model"],
        "license": backbone.get("license"),
        "teacher": f"open_clip {teacher['model']}{pretrained}",
        "datasets": datasets,
        "pooling": config["train"]["pooling"],
        "note": config["report"]["caption_note"] or "",
    }
    return json.dumps(facts, sort_keys=True)
