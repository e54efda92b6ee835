"""`python -m kdmcse evaluate`: STS (+ alignment/uniformity) and transfer metrics of one encoder, as JSON and CSV.

    python -m kdmcse evaluate --model DIR_OR_ID --pooling cls_before_pooler --tasks sts,transfer \
        --data resources/senteval --out FILE.json [--csv FILE.csv] [--cell key=value …] [--batch-size 128] \
        [--sts-tasks STS12,…,SICKRelatedness] [--device auto]

The JSON layout is docs/architecture.md §5; the CSV is the same content flattened into one row (cell keys as
their own columns, then `model`, `pooling` and dotted metric paths such as `sts.STS12.all`).
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from kdmcse.data.senteval import check_files, sts_files, transfer_files
from kdmcse.embedding import POOLINGS, resolve_device
from kdmcse.errors import KdmcseError
from kdmcse.evaluate.encoder import load_encoder, resolve_model_dir
from kdmcse.evaluate.sts import STS_TASKS, check_sts_tasks
from kdmcse.io import atomic_path, read_json, write_json
from kdmcse.train.host import cell_label

log = logging.getLogger(__name__)

TASK_FAMILIES = ("sts", "transfer")
RESERVED_COLUMNS = {"model", "pooling"}


def parse_tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASK_FAMILIES]
    if not tasks or bad:
        raise KdmcseError(f"--tasks {text!r}: use sts, transfer or sts,transfer")
    return [t for t in TASK_FAMILIES if t in tasks]


def _parse_value(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_cell(pairs: list[str]) -> dict:
    """`key=value` pairs -> dict, numbers parsed as numbers, everything else kept verbatim."""
    cell: dict = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise KdmcseError(f"--cell {item!r}: expected key=value, e.g. --cell seed=0 objective=kdmcse")
        if key in RESERVED_COLUMNS or "." in key:
            raise KdmcseError(f"--cell key {key!r} is reserved or contains '.'; choose another name")
        cell[key] = _parse_value(value)
    return cell


def flatten(obj: dict, prefix: str = "") -> dict:
    """Nested dicts -> dotted keys; a list (such as `sts.tasks`) becomes one comma-joined cell."""
    flat: dict = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, list):
            flat[name] = ",".join(map(str, value))
        else:
            flat[name] = value
    return flat


def csv_row(metrics: dict) -> dict:
    row = dict(metrics["cell"])
    row["model"] = metrics["model"]
    row["pooling"] = metrics["pooling"]
    for family in ("sts", "align_uniform", "transfer"):
        if family in metrics:
            row.update(flatten(metrics[family], family + "."))
    return row


def write_csv(path: str | Path, row: dict) -> None:
    with atomic_path(path, suffix=".csv.tmp") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            writer.writeheader()
            writer.writerow(row)


def run_evaluation(encoder, data_dir: str | Path, tasks: list[str], sts_tasks: Sequence[str] = STS_TASKS) -> dict:
    """The metric blocks (`sts`, `align_uniform`, `transfer`) for the requested task families."""
    from kdmcse.evaluate.geometry import align_uniform
    from kdmcse.evaluate.sts import evaluate_sts

    out: dict = {}
    if "sts" in tasks:
        t0 = time.perf_counter()
        out["sts"], suite, emb = evaluate_sts(encoder, data_dir, sts_tasks)
        out["align_uniform"] = align_uniform(suite, emb)
        log.info("STS done in %.1f s: avg %.2f", time.perf_counter() - t0, out["sts"]["avg"])
    if "transfer" in tasks:
        from kdmcse.evaluate.transfer import evaluate_transfer  # heavy classifier code, only when asked for

        t0 = time.perf_counter()
        out["transfer"] = evaluate_transfer(encoder, data_dir)
        log.info("transfer done in %.1f s: avg %.2f", time.perf_counter() - t0, out["transfer"]["avg"])
    return out


def training_summary(path: str | Path) -> dict:
    """What a metrics file carries from the student's run_meta.json: the settled threshold and the mask rates."""
    try:
        meta = read_json(path)
    except (OSError, ValueError) as exc:
        raise KdmcseError(f"--run-meta {path} is not a readable JSON file ({exc}); pass the student's run_meta.json") from exc
    if not isinstance(meta, dict) or "run_config" not in meta:
        raise KdmcseError(f"--run-meta {path} is not a run_meta.json written by `python -m kdmcse train`")
    return {"threshold": meta.get("threshold"), "mask_rate": meta.get("mask_rate"),
            "paired_steps": meta.get("paired_steps"), "total_steps": meta.get("total_steps")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdmcse evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="HF model folder, trained student folder, or hub id")
    p.add_argument("--pooling", default="cls_before_pooler", choices=POOLINGS)
    p.add_argument("--tasks", default="sts", help="sts, transfer or sts,transfer")
    p.add_argument("--data", required=True, help="SentEval data folder (holds STS/, SICK/, MR/, …)")
    p.add_argument("--out", required=True, help="metrics JSON to write")
    p.add_argument("--csv", default=None, help="also write the metrics as a one-row CSV")
    p.add_argument("--cell", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="experiment cell copied verbatim into the metrics (numbers parsed as numbers)")
    p.add_argument("--run-meta", default=None, metavar="JSON",
                   help="the student's run_meta.json: its threshold and measured mask rates go into the metrics")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--sts-tasks", default=",".join(STS_TASKS),
                   help="comma-separated STS tasks to score (default: all seven); Avg is then over these only")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # validate everything cheap before the model is loaded
    tasks = parse_tasks(args.tasks)
    sts_tasks = check_sts_tasks([t.strip() for t in args.sts_tasks.split(",") if t.strip()])
    cell = parse_cell(args.cell)
    if args.batch_size < 1:
        raise KdmcseError(f"--batch-size must be positive, got {args.batch_size}")
    data = Path(args.data)
    if not data.is_dir():
        raise KdmcseError(f"--data {data}: no such folder; pass the SentEval data folder (holds STS/, SICK/, MR/, …)")
    needed = (sts_files(data) if "sts" in tasks else []) + (transfer_files(data) if "transfer" in tasks else [])
    check_files(needed)
    resolve_model_dir(args.model)
    training = training_summary(args.run_meta) if args.run_meta else None
    device = resolve_device(args.device)

    # the log's opening line, as a training job's: what runs, on what
    job = (cell_label(args.cell) or "(no cell)") + (f", seed {cell['seed']}" if "seed" in cell else "")
    scored = ",".join(tasks) + ("" if "sts" not in tasks or len(sts_tasks) == len(STS_TASKS)
                                else f" (STS: {','.join(sts_tasks)})")
    log.info("evaluate %s | model %s | device %s | tasks %s | pooling %s, batch %d", job, args.model, device,
             scored, args.pooling, args.batch_size)
    encoder = load_encoder(args.model, args.pooling, args.batch_size, device)
    metrics = {"cell": cell, "model": str(args.model), "pooling": args.pooling}
    if training is not None:
        metrics["training"] = training
    metrics.update(run_evaluation(encoder, data, tasks, sts_tasks))
    if args.csv:  # the JSON last: it is the stage's main output
        write_csv(args.csv, csv_row(metrics))
    write_json(args.out, metrics)
    log.info("wrote %s%s", args.out, f" and {args.csv}" if args.csv else "")
    return 0
