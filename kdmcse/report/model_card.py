"""`python -m kdmcse report card`: the model card (`README.md` with Hugging Face metadata) of one student.

    python -m kdmcse report card --run-meta results/students/<cell>/seed~N/run_meta.json \
        --metrics results/metrics/<cell>/seed~N.sts.json --facts JSON --out results/students/<cell>/seed~N/model/README.md

The card is written into the model folder so that `huggingface_hub.upload_folder` publishes the folder as it is.
It is a function of its inputs: the training run (`run_meta.json`: the exact run config), the student's STS
metrics and the `--facts` the workflow resolves from the config (base model, its licence, teacher, training
data with their licences).

`--facts` keys: `name` (the cell and seed, e.g. "wiki+flickr/bert/kdmcse/margin~0.15_threshold~off seed 0"),
`base_model` (a hub id, or null for a local folder), `base_model_source` (what the config named),
`license` (an HF licence id, e.g. apache-2.0, or null), `teacher` (text), `datasets`
(list of {name, hub_id or null, licence, url or null}), `pooling`, `note` (or "").
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from kdmcse.errors import KdmcseError
from kdmcse.evaluate.metrics_io import read_metrics
from kdmcse.io import read_json
from kdmcse.report.render import write_text

log = logging.getLogger(__name__)

STS_COLUMNS = (("STS12", "all"), ("STS13", "all"), ("STS14", "all"), ("STS15", "all"), ("STS16", "all"),
               ("STSBenchmark", "spearman"), ("SICKRelatedness", "spearman"))
_SHORT = {"STSBenchmark": "STS-B", "SICKRelatedness": "SICK-R"}
_FACT_KEYS = ("name", "base_model", "base_model_source", "license", "teacher", "datasets", "pooling")


def card_metadata(facts: dict) -> dict:
    """The YAML header: what the Hub reads (base model, licence, datasets, library, task, tags)."""
    meta: dict = {"language": ["en"], "license": facts["license"] or "unknown",
                  "library_name": "sentence-transformers", "pipeline_tag": "sentence-similarity",
                  "tags": ["sentence-transformers", "feature-extraction", "sentence-similarity", "kdmcse",
                           "knowledge-distillation"]}
    if facts["base_model"]:
        meta["base_model"] = facts["base_model"]
    hub_datasets = [d["hub_id"] for d in facts["datasets"] if d.get("hub_id")]
    if hub_datasets:
        meta["datasets"] = hub_datasets
    return meta


def _scored(sts: dict) -> list[tuple[str, str]]:
    """The (task, key) columns the metrics hold: a card states what was measured, never a placeholder."""
    return [(task, key) for task, key in STS_COLUMNS if isinstance(sts.get(task), dict)]


def sts_table(sts: dict) -> str:
    scored = _scored(sts)
    names = [_SHORT.get(task, task) for task, _ in scored] + ["Avg"]
    values = [sts[task][key] for task, key in scored] + [sts["avg"]]
    return ("| " + " | ".join(names) + " |\n|" + "---:|" * len(names) + "\n| "
            + " | ".join(f"{v:.2f}" for v in values) + " |")


def sts_explanation(sts: dict) -> str:
    """What the numbers are; says so when Avg covers fewer than the seven tasks the paper averages."""
    scored = [_SHORT.get(task, task) for task, _ in _scored(sts)]
    text = ("Spearman correlation ×100 between the cosine similarity of the embeddings and the gold scores (SentEval "
            "test sets")
    if len(scored) == len(STS_COLUMNS):
        return (text + "; STS12–16 use SentEval's \"all\" aggregation, Avg averages the seven tasks rounded to two "
                "decimals).")
    return (text + f"). Only {', '.join(scored)} were scored (`evaluate.sts_tasks`), so Avg averages those "
            "and does not compare with the seven-task average papers report.")


def render_card(facts: dict, run_meta: dict, sts: dict) -> str:
    import yaml

    cfg = run_meta["run_config"]
    base = facts["base_model"] or facts["base_model_source"]
    data_lines = "\n".join(
        f"- {d['name']}" + (f" ([{d['hub_id']}](https://huggingface.co/datasets/{d['hub_id']}))" if d.get("hub_id")
                            else (f" (<{d['url']}>)" if d.get("url") else ""))
        + f": {d['licence']}" for d in facts["datasets"])
    pooling = facts["pooling"]
    pooling_text = {"cls_before_pooler": "the last layer's [CLS] hidden state (no pooler)",
                    "cls": "the [CLS] hidden state through the pooler (the training MLP)",
                    "avg": "the mean of the last hidden states"}.get(pooling, pooling)
    note = f"\n> {facts['note']}\n" if facts.get("note") else ""
    header = yaml.safe_dump(card_metadata(facts), sort_keys=False, allow_unicode=True)
    return f"""---
{header}---

# {facts['name']}
{note}
A sentence encoder trained with the **{cfg['objective']}** objective of KDMCSE (Nguyen et al., *Knowledge
Distillation Multimodal Sentence Embeddings with Adaptive Angular margin Contrastive Learning*, NAACL 2024),
starting from `{base}`. The teacher, {facts['teacher']}, is frozen; only the student is published here.

- **Base model:** `{base}` (licence: {facts['license'] or 'unknown'})
- **Teacher:** {facts['teacher']}
- **Objective:** {cfg['objective']}, margin {cfg['margin2']}, threshold {cfg['threshold'] if cfg['threshold'] is not None else 'off'}, seed {run_meta['seed']}
- **Sentence embedding:** {pooling_text} (pooling `{pooling}`)
- **Selection:** {run_meta.get('selection', '')}, STS-B dev Spearman ×100 {run_meta.get('best_dev_spearman')} at step {run_meta.get('best_step')} of {run_meta.get('total_steps')}

## Training data

{data_lines}

## STS results

{sts_explanation(sts)}

{sts_table(sts)}

## How to load

With sentence-transformers (the folder holds its pooling configuration):

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("PATH_OR_HUB_ID")
embeddings = model.encode(["A man is playing a guitar.", "Someone plays an instrument."])
```

With transformers alone:

```python
import torch
from transformers import AutoModel, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("PATH_OR_HUB_ID")
model = AutoModel.from_pretrained("PATH_OR_HUB_ID").eval()
batch = tokenizer(["A man is playing a guitar."], padding=True, return_tensors="pt")
with torch.no_grad():
    out = model(**batch)
embedding = out.last_hidden_state[:, 0]  # pooling {pooling}
```

## Training configuration

The exact run config of this student (`python -m kdmcse train --run-config …`), seed {run_meta['seed']}:

```json
{json.dumps(cfg, indent=2, sort_keys=True)}
```
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdmcse report card", description=__doc__.splitlines()[0])
    p.add_argument("--run-meta", required=True, type=Path, help="the student's run_meta.json (train stage)")
    p.add_argument("--metrics", required=True, type=Path, help="the student's STS metrics JSON (evaluate stage)")
    p.add_argument("--facts", required=True, help="JSON object of facts from the config (see the module doc)")
    p.add_argument("--out", required=True, type=Path, help="README.md to write (inside the model folder)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        facts = json.loads(args.facts)
    except json.JSONDecodeError as exc:
        raise KdmcseError(f"--facts is not valid JSON ({exc}); pass a JSON object") from exc
    missing = [k for k in _FACT_KEYS if not isinstance(facts, dict) or k not in facts]
    if missing:
        raise KdmcseError(f"--facts lacks {', '.join(missing)}; pass every key listed in `report card --help`")
    if not args.run_meta.is_file():
        raise KdmcseError(f"--run-meta {args.run_meta}: no such file; train the student first")
    run_meta = read_json(args.run_meta)
    if "run_config" not in run_meta:
        raise KdmcseError(f"{args.run_meta} holds no run_config; is it a student's run_meta.json?")
    read_metrics(args.metrics, require="sts")  # checks the file: one clear error, before anything is written
    write_text(args.out, render_card(facts, run_meta, read_json(args.metrics)["sts"]))
    log.info("wrote %s", args.out)
    return 0
