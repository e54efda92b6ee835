"""`python -m kdmcse mteb`: MTEB tasks scored with the project's sentence embedding, as one metrics JSON.

    python -m kdmcse mteb --model DIR --pooling cls_before_pooler --tasks STS12,STSBenchmark,… \
        [--senteval resources/senteval] --out FILE.json [--cell key=value …] [--batch-size 128] [--device auto]

MTEB (the `mteb` package, extra `[mteb]`) runs each task through its own evaluator (for STS: cosine similarity
of the two embeddings, Spearman against the gold scores) with the student encoded exactly as the evaluate stage
encodes it (`kdmcse.evaluate.encoder.load_encoder`, same pooling). Hub tasks download their data from the
Hugging Face Hub; when it cannot be reached (offline) the task is skipped with one log line and recorded as
skipped. `SentEvalSTSB` is a local task: STS-B test from the SentEval files, so it needs no network and gives the
evaluate stage's STS-B number.

Output: {"cell", "model", "pooling", "mteb_version", "mteb": {TASK: {"main_score": ×100, "scores": {split:
{subset: {metric: value}}}} or {"skipped": REASON}}}.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np

from kdmcse.errors import KdmcseError
from kdmcse.io import write_json

log = logging.getLogger(__name__)

LOCAL_TASKS = ("SentEvalSTSB",)


def _require_mteb():
    try:
        import mteb
    except ImportError as exc:
        raise KdmcseError("the mteb package is not installed; install the extra: pip install -e '.[mteb]'") from exc
    return mteb


def senteval_stsb_task(senteval_dir: str | Path):
    """An MTEB STS task over SentEval's STS-B test split (the files the evaluate stage reads)."""
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.sts import AbsTaskSTS
    from mteb.abstasks.task_metadata import TaskMetadata

    from kdmcse.data.senteval import read_stsb

    class SentEvalSTSB(AbsTaskSTS):
        min_score = 0
        max_score = 5
        metadata = TaskMetadata(
            name="SentEvalSTSB",
            dataset={"path": "local/senteval-stsb", "revision": "local"},
            description="STS-B test split read from the SentEval data folder (SimCSE's senteval.tar).",
            reference="https://github.com/facebookresearch/SentEval",
            type="STS", category="t2t", modalities=["text"], eval_splits=["test"], eval_langs=["eng-Latn"],
            main_score="cosine_spearman", date=("2017-01-01", "2017-12-31"), domains=["News", "Written"],
            task_subtypes=[], license="not specified", annotations_creators="human-annotated", dialect=[],
            sample_creation="found", bibtex_citation="",
        )

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            if self.data_loaded:
                return
            pairs = read_stsb(senteval_dir, "test")
            self.dataset = DatasetDict({"test": Dataset.from_dict(
                {"sentence1": pairs.s1, "sentence2": pairs.s2, "score": [float(g) for g in pairs.gold]})})
            self.data_loaded = True

    return SentEvalSTSB()


def project_model(encoder, name: str):
    """The project's `SentenceEncoder` behind MTEB's encoder interface (texts in, one row per text out)."""
    from mteb.models.abs_encoder import AbsEncoder

    class ProjectEncoder(AbsEncoder):
        def __init__(self) -> None:
            self.model = encoder
            self.name = name

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
            texts = [t for batch in inputs for t in batch["text"]]
            # float64, as the evaluate stage computes cosines (kdmcse.embedding.cosine): MTEB's float32 cosines
            # can reorder near-tied pairs and move Spearman
            return encoder.encode(texts).astype(np.float64)

    return ProjectEncoder()


def resolve_tasks(names: list[str], senteval: str | Path | None) -> list:
    """Task objects in the given order; Hub tasks keep their English subsets only."""
    mteb = _require_mteb()
    tasks = []
    for name in names:
        if name == "SentEvalSTSB":
            if senteval is None:
                raise KdmcseError("task SentEvalSTSB reads the SentEval files: pass --senteval DIR")
            tasks.append(senteval_stsb_task(senteval))
            continue
        try:
            found = mteb.get_tasks(tasks=[name], languages=["eng"], exclusive_language_filter=True)
        except (KeyError, ValueError) as exc:
            raise KdmcseError(f"unknown MTEB task {name!r} in --tasks (evaluate.mteb_tasks): {exc}") from exc
        if not found:
            raise KdmcseError(f"MTEB task {name!r} has no English subset; remove it from evaluate.mteb_tasks")
        tasks.append(found[0])
    return tasks


def run_task(task, model, batch_size: int) -> dict:
    """Scores of one task, or {"skipped": reason} when its data cannot be fetched (offline)."""
    name = task.metadata.name
    try:
        task.load_data()
    except Exception as exc:  # datasets/huggingface_hub raise many types for "no network"; name it and go on
        reason = f"its data could not be loaded from the Hugging Face Hub ({type(exc).__name__})"
        log.warning("skipping MTEB task %s: %s", name, reason)
        return {"skipped": reason}
    scores = {split: task.evaluate(model, split, encode_kwargs={"batch_size": batch_size})
              for split in task.metadata.eval_splits}
    mains = [s["main_score"] for per_split in scores.values() for s in per_split.values()]
    main = 100.0 * sum(mains) / len(mains)
    log.info("MTEB %s: %s x100 = %.4f", name, task.metadata.main_score, main)
    return {"main_score": main, "main_metric": task.metadata.main_score, "scores": scores}


def build_parser() -> argparse.ArgumentParser:
    from kdmcse.embedding import POOLINGS

    p = argparse.ArgumentParser(prog="python -m kdmcse mteb", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="HF model folder, trained student folder, or hub id")
    p.add_argument("--pooling", default="cls_before_pooler", choices=POOLINGS)
    p.add_argument("--tasks", required=True, help="comma-separated MTEB task names (and/or SentEvalSTSB)")
    p.add_argument("--senteval", default=None, help="SentEval data folder (for the local task SentEvalSTSB)")
    p.add_argument("--out", required=True, help="metrics JSON to write")
    p.add_argument("--cell", nargs="*", action="extend", default=[], metavar="KEY=VALUE")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return p


def main(argv: list[str] | None = None) -> int:
    from kdmcse.embedding import resolve_device
    from kdmcse.evaluate.cli import parse_cell
    from kdmcse.evaluate.encoder import load_encoder, resolve_model_dir

    args = build_parser().parse_args(argv)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not names:
        raise KdmcseError("--tasks is empty; name at least one MTEB task, e.g. --tasks STSBenchmark")
    cell = parse_cell(args.cell)
    if args.senteval is not None and not Path(args.senteval).is_dir():
        raise KdmcseError(f"--senteval {args.senteval}: no such folder; pass the SentEval data folder")
    mteb = _require_mteb()
    tasks = resolve_tasks(names, args.senteval)  # unknown names fail here, before the model loads
    resolve_model_dir(args.model)
    encoder = load_encoder(args.model, args.pooling, args.batch_size, resolve_device(args.device))
    model = project_model(encoder, str(args.model))
    results = {task.metadata.name: run_task(task, model, args.batch_size) for task in tasks}
    write_json(args.out, {"cell": cell, "model": str(args.model), "pooling": args.pooling,
                          "mteb_version": mteb.__version__, "mteb": results})
    log.info("wrote %s", args.out)
    return 0
