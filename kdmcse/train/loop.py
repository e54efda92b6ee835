"""Train one student: SimCSE, MCSE or KDMCSE, with the published trainer's mixing, optimiser and selection.

```
python -m kdmcse train --run-config JSON_OR_@FILE --text wiki.parquet
       [--pairs captions.parquet --teacher DIR] [--senteval DIR] --seed N --out DIR
```

What it reproduces (method §1.3–§4.1): text-only and image–caption batches interleaved by a fixed step
(`kdmcse.train.mixing`); each sentence encoded twice in one forward (dropout views); AdamW (eps 1e-6, no weight
decay) over every parameter with a linear decay to 0 and no warm-up; gradient clipping at 1.0; STS-B dev
Spearman every `eval_steps` and at the last step, keeping the strictly best model. A checkpoint every
`checkpoint_steps` lets a killed job resume to the same result. Under torchrun each process encodes a shard of
every batch and the loss is computed on the gathered global batch (`kdmcse.train.distributed`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import random
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from kdmcse.errors import KdmcseError
from kdmcse.io import sha256_file, write_json
from kdmcse.train.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    remove_checkpoint,
    restore_rng_state,
    run_fingerprint,
    save_checkpoint,
)
from kdmcse.train.distributed import (
    DistContext,
    average_gradients,
    barrier,
    gather_objects,
    gather_rows,
    init_distributed,
    shard_rows,
    shard_sizes,
    shutdown_distributed,
)
from kdmcse.train.mixing import MixedBatches, TokenizedTexts, mixing_schedule

log = logging.getLogger(__name__)

OBJECTIVES = ("simcse", "mcse", "kdmcse")
POOLINGS = ("cls_before_pooler", "cls", "avg")
PRECISIONS = ("fp32", "bf16", "fp16")
# key -> (check, what it must be); every key is required (docs/architecture.md §4)
_NUM = (int, float)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, _NUM) and not isinstance(v, bool) and math.isfinite(v)


RUN_CONFIG_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (lambda v: isinstance(v, str) and bool(v), "an HF model id or a local model folder"),
    "objective": (lambda v: v in OBJECTIVES, f"one of {', '.join(OBJECTIVES)}"),
    "lr": (lambda v: _is_num(v) and v > 0, "a number > 0"),
    "batch_size": (lambda v: _is_int(v) and v >= 2, "an integer >= 2 (in-batch negatives need two rows)"),
    "epochs": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "max_steps": (lambda v: v is None or (_is_int(v) and v >= 1), "null (from epochs) or an integer >= 1"),
    "lambda": (lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    "temperature": (lambda v: _is_num(v) and v > 0, "a number > 0"),
    "temperature_vl": (lambda v: _is_num(v) and v > 0, "a number > 0"),
    "margin1": (lambda v: _is_num(v) and 0 <= v <= math.pi, "an angle in radians in [0, pi]"),
    "margin2": (lambda v: _is_num(v) and 0 <= v <= math.pi, "an angle in radians in [0, pi]"),
    "threshold": (lambda v: v is None or _is_num(v), "null (off) or a number"),
    "threshold_space": (lambda v: v in ("raw_dot", "cosine"), "raw_dot or cosine"),
    "inter_reduction": (lambda v: v in ("sum", "mean"), "sum or mean"),
    "proj_dim": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "max_seq_length": (lambda v: _is_int(v) and v >= 3, "an integer >= 3"),
    "eval_steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "pooling": (lambda v: v in POOLINGS, f"one of {', '.join(POOLINGS)}"),
    "precision": (lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    "teacher": (
        lambda v: isinstance(v, dict) and set(v) == {"model", "pretrained"}
        and all(isinstance(x, str) and x for x in v.values()),
        'an object {"model": …, "pretrained": …} naming the CLIP teacher of the cache',
    ),
    "checkpoint_steps": (lambda v: v is None or (_is_int(v) and v >= 1), "null (off) or an integer >= 1"),
}

LOG_EVERY = 50  # steps between loss logs
EVAL_BATCH_SIZE = 128  # SentEval's batch size
# Called with the number of completed steps after each step's evaluation and checkpoint; tests use it to
# simulate a job killed mid-run.
STEP_END_HOOK: Callable[[int], None] | None = None


# ---------------------------------------------------------------- run config and inputs
def load_run_config(arg: str) -> dict[str, Any]:
    """Parse `--run-config`: inline JSON, or `@path` to a JSON file."""
    if arg.startswith("@"):
        path = Path(arg[1:])
        if not path.is_file():
            raise KdmcseError(f"--run-config file {path} does not exist")
        text, where = path.read_text(encoding="utf-8"), str(path)
    else:
        text, where = arg, "--run-config"
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KdmcseError(f"{where} is not valid JSON ({exc}); pass a JSON object or @file.json") from exc
    return validate_run_config(cfg)


def validate_run_config(cfg: Any) -> dict[str, Any]:
    """Check every key of a run config (all required, none unknown); return it unchanged."""
    if not isinstance(cfg, dict):
        raise KdmcseError("the run config must be a JSON object with the keys of docs/architecture.md §4")
    unknown = sorted(set(cfg) - set(RUN_CONFIG_KEYS))
    if unknown:
        raise KdmcseError(f"unknown run config key(s) {', '.join(map(repr, unknown))}; allowed: "
                          f"{', '.join(RUN_CONFIG_KEYS)}")
    missing = [k for k in RUN_CONFIG_KEYS if k not in cfg]
    if missing:
        raise KdmcseError(f"run config lacks key(s) {', '.join(map(repr, missing))}; every key of "
                          "docs/architecture.md §4 is required (use null where a key allows it)")
    for key, (ok, what) in RUN_CONFIG_KEYS.items():
        if not ok(cfg[key]):
            raise KdmcseError(f"run config key '{key}' is {cfg[key]!r}; it must be {what}")
    return cfg



def _read_column_table(path: Path, columns: list[str], what: str) -> Any:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise KdmcseError(f"{what} {path} does not exist; build it with `python -m kdmcse prepare`")
    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        raise KdmcseError(f"{what} {path} is not a readable Parquet file ({exc})") from exc
    lacking = [c for c in columns if c not in names]
    if lacking:
        raise KdmcseError(f"{what} {path} lacks column(s) {', '.join(lacking)}; rebuild it with "
                          "`python -m kdmcse prepare`")
    return pq.read_table(path, columns=columns)


@dataclass
class TrainData:
    text: TokenizedTexts
    pairs: TokenizedTexts | None = None
    image_emb: np.ndarray | None = None  # [N_img, D], memory-mapped
    caption_emb: np.ndarray | None = None  # [N_cap, D], memory-mapped
    pair_caption_row: np.ndarray | None = None  # caption table row -> cache caption row
    pair_image_row: np.ndarray | None = None  # caption table row -> cache image row
    info: dict[str, Any] = field(default_factory=dict)

    def teacher_batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (unnormalised) teacher image and caption embeddings of caption-table rows `rows`."""
        assert self.image_emb is not None and self.caption_emb is not None
        img = np.asarray(self.image_emb[self.pair_image_row[rows]], dtype=np.float32)
        cap = np.asarray(self.caption_emb[self.pair_caption_row[rows]], dtype=np.float32)
        return torch.from_numpy(img), torch.from_numpy(cap)


@dataclass
class Inputs:
    """Validated paths, read before any model is loaded."""

    texts: list[str]
    captions: list[str] | None
    caption_ids: np.ndarray | None
    teacher: Any | None  # an opened TeacherCache
    senteval: Path | None


def check_inputs(cfg: dict[str, Any], text: Path, pairs: Path | None, teacher: Path | None,
                 senteval: Path | None) -> Inputs:
    """Read and cross-check every input; fail with one clear error before any heavy work."""
    texts = _read_column_table(text, ["text"], "--text corpus").column("text").to_pylist()
    if not texts:
        raise KdmcseError(f"--text corpus {text} has no rows")
    if any(t is None for t in texts):
        raise KdmcseError(f"--text corpus {text} has null rows; rebuild it with `python -m kdmcse prepare wiki`")
    captions = caption_ids = cache = None
    if cfg["objective"] == "simcse":
        if pairs is not None or teacher is not None:
            log.info("objective simcse trains on the text corpus only: --pairs/--teacher are ignored")
    else:
        if pairs is None or teacher is None:
            raise KdmcseError(f"objective {cfg['objective']} needs --pairs (captions parquet) and --teacher "
                              "(its teacher cache folder)")
        table = _read_column_table(pairs, ["caption_id", "caption"], "--pairs caption table")
        captions = table.column("caption").to_pylist()
        caption_ids = table.column("caption_id").to_numpy().astype(np.int64)
        if not captions:
            raise KdmcseError(f"--pairs caption table {pairs} has no rows")
        from kdmcse.teacher.cache import open_teacher_cache

        expect = dict(cfg["teacher"], captions_sha256=sha256_file(pairs))
        cache = open_teacher_cache(teacher, expect=expect)
    if senteval is not None:
        dev = senteval / "STS" / "STSBenchmark" / "sts-dev.csv"
        if not dev.is_file():
            raise KdmcseError(f"--senteval {senteval} has no STS/STSBenchmark/sts-dev.csv; pass the folder that "
                              "holds SentEval's STS/ (the extracted senteval.tar), or omit --senteval")
    return Inputs(texts, captions, caption_ids, cache, senteval)


def data_info(inputs: Inputs) -> dict[str, Any]:
    """What identifies the training data (part of the checkpoint fingerprint and of run_meta.json)."""
    info: dict[str, Any] = {"text_rows": len(inputs.texts)}
    if inputs.captions is not None:
        info.update(pair_rows=len(inputs.captions), teacher_dim=inputs.teacher.dim,
                    teacher_content_sha256=inputs.teacher.meta.get("content_sha256"))
    return info


def build_data(inputs: Inputs, tokenizer: Any, max_length: int, show_progress: bool = True) -> TrainData:
    """Tokenise each corpus once and map caption rows to teacher-cache rows."""
    data = TrainData(text=TokenizedTexts.from_texts(tokenizer, inputs.texts, max_length, desc="tokenise text",
                                                          show_progress=show_progress))
    data.info = data_info(inputs)
    if inputs.captions is not None:
        cache = inputs.teacher
        data.pairs = TokenizedTexts.from_texts(tokenizer, inputs.captions, max_length,
                                                desc="tokenise captions", show_progress=show_progress)
        order = np.argsort(cache.caption_ids, kind="stable")
        pos = np.searchsorted(cache.caption_ids, inputs.caption_ids, sorter=order)
        pos = np.minimum(pos, len(order) - 1)
        rows = order[pos]
        found = cache.caption_ids[rows] == inputs.caption_ids
        if not found.all():
            missing = inputs.caption_ids[~found][:3].tolist()
            raise KdmcseError(f"teacher cache {cache.path} has no embedding for caption_id(s) {missing}; "
                              "rebuild it from this caption table")
        data.image_emb, data.caption_emb = cache.image_emb, cache.caption_emb
        data.pair_caption_row = rows
        data.pair_image_row = cache.caption_image_row[rows]
    return data


# ---------------------------------------------------------------- one step
@dataclass
class StepBatch:
    paired: bool
    rows: np.ndarray  # this process's shard of the global batch (row indices)
    sizes: list[int]  # shard sizes of every process
    tokens: dict[str, torch.Tensor]
    image_emb: torch.Tensor | None = None  # teacher features of the *global* batch (raw)
    caption_emb: torch.Tensor | None = None


def make_batch(data: TrainData, paired: bool, global_rows: np.ndarray, ctx: DistContext,
               device: torch.device) -> StepBatch:
    local = shard_rows(global_rows, ctx)
    corpus = data.pairs if paired else data.text
    assert corpus is not None
    tokens = {k: v.to(device, non_blocking=True) for k, v in corpus.collate(local).items()}
    batch = StepBatch(paired, local, shard_sizes(len(global_rows), ctx.world_size), tokens)
    if paired:
        # every process knows the global batch, so it reads the teacher rows itself instead of gathering them
        img, cap = data.teacher_batch(global_rows)
        batch.image_emb, batch.caption_emb = img.to(device), cap.to(device)
    return batch


def encode_cls(student: Any, batch: StepBatch, autocast: Any) -> torch.Tensor:
    """CLS vectors before the MLP (`h`) of this process's 2·n rows, as float32 (autocast covers the encoder)."""
    with autocast():
        out = student.encoder(input_ids=batch.tokens["input_ids"], attention_mask=batch.tokens["attention_mask"])
    return out.last_hidden_state[:, 0].float()


def losses_from_cls(student: Any, h: torch.Tensor, batch: StepBatch, settings: Any,
                    ctx: DistContext) -> dict[str, torch.Tensor]:
    """Heads and losses from the CLS vectors; the global batch is gathered so every rank gets the same loss."""
    from kdmcse.train.losses import objective_loss

    n = h.shape[0] // 2
    z = student.mlp(h)
    # rows are [s0, s0, s1, s1, …]: view 1 is the even rows, view 2 the odd ones
    hv, zv = h.view(n, 2, -1), z.view(n, 2, -1)
    z1, z2 = gather_rows(zv[:, 0], ctx, batch.sizes), gather_rows(zv[:, 1], ctx, batch.sizes)
    if not batch.paired:
        return objective_loss(settings, z1=z1, z2=z2)
    p = student.ground(hv.reshape(2 * n, -1)).view(n, 2, -1)
    p1, p2 = gather_rows(p[:, 0], ctx, batch.sizes), gather_rows(p[:, 1], ctx, batch.sizes)
    return objective_loss(
        settings, z1=z1, z2=z2, p1=p1, p2=p2,
        image_proj=student.project_image(batch.image_emb), text_proj=student.project_text(batch.caption_emb),
        image_emb=batch.image_emb, text_emb=batch.caption_emb,
    )


def step_losses(student: Any, batch: StepBatch, settings: Any, ctx: DistContext,
                autocast: Any) -> dict[str, torch.Tensor]:
    """Forward both dropout views in one pass and return the loss parts of the global batch.

    Same as `StudentModel.forward` (h = CLS before the MLP, z = mlp(h)), split in two so the benchmark can time
    the encoder apart from the heads.
    """
    return losses_from_cls(student, encode_cls(student, batch, autocast), batch, settings, ctx)


# ---------------------------------------------------------------- training
def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices), as transformers.set_seed does."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def check_shardable(batch_size: int, n_text: int, n_pair: int, world_size: int) -> None:
    """Every process needs at least one row of every batch, the last partial ones included."""
    if world_size <= 1:
        return
    if world_size > batch_size:
        raise KdmcseError(f"run config batch_size {batch_size} is smaller than the {world_size} processes")
    for rows, what in ((n_text, "text corpus"), (n_pair, "caption table")):
        last = rows % batch_size
        if last and last < world_size:
            raise KdmcseError(f"the last batch of the {what} ({rows} rows) has {last} row(s), fewer than the "
                              f"{world_size} processes; pick a batch_size that leaves at least {world_size}")


def make_optimizer(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """AdamW as the published trainer sets it (eps 1e-6, no weight decay, every parameter).

    The fused kernel where torch has one: on CPU it is ~7x faster than the default for-each kernel, which
    otherwise costs ~10 % of a mid-size step (the 30k-row embedding matrix alone is millions of parameters).
    """
    kwargs = dict(lr=lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, **kwargs)


def linear_decay(total_steps: int) -> Callable[[int], float]:
    """LR factor: linear from 1 to 0 over `total_steps`, no warm-up (transformers' `linear` with 0 warm-up)."""
    return lambda step: max(0.0, float(total_steps - step) / float(max(1, total_steps)))


def pick_device(ctx: DistContext) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", ctx.local_rank)
    return torch.device("cpu")


def autocast_for(precision: str, device: torch.device) -> Callable[[], Any]:
    if precision == "fp32":
        return nullcontext
    if device.type != "cuda":
        raise KdmcseError(f"run config precision {precision!r} needs a CUDA device; this run is on {device}: "
                          "use precision fp32")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast("cuda", dtype=dtype)


def _state_to_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _versions() -> dict[str, str]:
    import transformers

    import kdmcse

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "kdmcse": kdmcse.__version__, "numpy": np.__version__}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _write_outputs(out: Path, student: Any, tokenizer: Any, pooling: str, meta: dict[str, Any]) -> None:
    """model/ and heads.pt (save_student writes both atomically), then run_meta.json, the completion marker."""
    from kdmcse.train.model import save_student

    save_student(student, tokenizer, out / "model", pooling=pooling)
    write_json(out / "run_meta.json", meta)


def train(
    run_config: dict[str, Any],
    *,
    text: Path,
    out: Path,
    seed: int,
    pairs: Path | None = None,
    teacher: Path | None = None,
    senteval: Path | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train one student and write `out/` (see module doc). Returns the run metadata."""
    from tqdm.auto import tqdm

    from kdmcse.train.losses import LossSettings
    from kdmcse.train.model import StudentModel, load_tokenizer

    cfg = validate_run_config(run_config)
    settings = LossSettings.from_run_config(cfg)
    inputs = check_inputs(cfg, text, pairs, teacher, senteval)
    ctx = init_distributed()
    try:
        device = pick_device(ctx)
        autocast = autocast_for(cfg["precision"], device)
        started = time.time()

        # everything that can refuse the run comes before the model and the tokeniser are loaded
        n_text, n_pair = len(inputs.texts), len(inputs.captions) if inputs.captions is not None else 0
        check_shardable(cfg["batch_size"], n_text, n_pair, ctx.world_size)
        schedule = mixing_schedule(n_text, n_pair, cfg["batch_size"], cfg["epochs"], cfg["max_steps"])
        total = schedule.total_steps
        fingerprint = run_fingerprint(cfg, seed, data_info(inputs), ctx.world_size)
        ckpt_dir = out / "checkpoint"
        state = load_checkpoint(ckpt_dir, fingerprint)

        set_seed(seed)  # before model init: the heads' random init depends on it
        tokenizer = load_tokenizer(cfg["model"])
        teacher_dim = inputs.teacher.dim if inputs.teacher is not None else None
        student = StudentModel.from_pretrained(cfg["model"], proj_dim=cfg["proj_dim"], teacher_dim=teacher_dim)
        student.to(device)
        student.train()

        data = build_data(inputs, tokenizer, cfg["max_seq_length"], show_progress=show_progress and ctx.is_main)
        batches = MixedBatches(schedule, n_text, n_pair, cfg["batch_size"], seed)
        params = list(student.parameters())
        optimizer = make_optimizer(params, cfg["lr"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_decay(total))
        scaler = torch.amp.GradScaler("cuda", enabled=cfg["precision"] == "fp16")
        set_seed(seed + ctx.rank)  # again after loaders/optimiser, as the published trainer does
        log.info("schedule: %s", schedule)

        history: list[dict[str, Any]] = []
        best: dict[str, Any] = {"score": None, "step": None, "state": None}
        start_step = 0
        if state is not None:
            student.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            batches.load_state_dict(state["loaders"])
            restore_rng_state(state["rng"][ctx.rank])
            history, best, start_step = state["history"], state["best"], int(state["step"])
            if ctx.is_main and best["state"] is None and best["score"] is not None:
                raise KdmcseError(f"checkpoint {ckpt_dir} lacks the best model; delete it to start over")
            del state

        def evaluate(done: int) -> None:
            score = None
            if ctx.is_main and inputs.senteval is not None:
                from kdmcse.evaluate.encoder import SentenceEncoder
                from kdmcse.evaluate.sts import stsb_dev_spearman

                # `cls` selection must use the training MLP: the encoder's own pooler only receives it on save.
                enc = SentenceEncoder(student.encoder, tokenizer, pooling=cfg["pooling"],
                                      batch_size=EVAL_BATCH_SIZE, show_progress=False,
                                      mlp=student.mlp if cfg["pooling"] == "cls" else None)
                score = float(stsb_dev_spearman(enc, inputs.senteval))
                history.append({"step": done, "stsb_dev_spearman": score})
                if not math.isfinite(score):
                    log.warning("step %d: STS-B dev spearman is %s (constant embeddings?)", done, score)
                # strictly greater keeps the earlier model; a NaN score never wins over a real one
                if best["score"] is None or (math.isfinite(score) and not score <= best["score"]):
                    best.update(score=score, step=done, state=_state_to_cpu(student))
                log.info("step %d: STS-B dev spearman %.2f (best %.2f at step %s)", done, score,
                         best["score"], best["step"])
            barrier(ctx)

        def checkpoint(done: int) -> None:
            rng = gather_objects(capture_rng_state(), ctx)
            if ctx.is_main:
                save_checkpoint(ckpt_dir, {
                    "step": done, "model": _state_to_cpu(student), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                    "loaders": batches.state_dict(), "rng": rng, "history": history, "best": best,
                }, fingerprint)
            barrier(ctx)

        # loss parts summed since the last log, with their own counts (image/text exist on paired steps only)
        running: dict[str, float] = defaultdict(float)
        running_n: dict[str, int] = defaultdict(int)
        paired_done = schedule.paired_steps_until(start_step)
        bar = tqdm(total=total, initial=start_step, desc="train", unit="step",
                   disable=not (show_progress and ctx.is_main))
        for step in range(start_step, total):
            paired, global_rows = next(batches)
            batch = make_batch(data, paired, global_rows, ctx, device)
            losses = step_losses(student, batch, settings, ctx, autocast)
            # one device sync per step for all parts (they are logged and checked for NaN/inf)
            values = dict(zip(losses, torch.stack([v.detach().float() for v in losses.values()]).tolist()))
            if not all(math.isfinite(v) for v in values.values()):
                parts = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
                raise KdmcseError(
                    f"non-finite loss at step {step + 1} ({'paired' if paired else 'text-only'} batch): {parts}. "
                    f"The last good checkpoint (if any) is kept in {ckpt_dir}; lower lr or use precision fp32"
                )
            scaler.scale(losses["total"]).backward()
            average_gradients(params, ctx)
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            # zero (not None) as torch 1.x did in the published trainer: AdamW keeps moving the heads on
            # text-only steps from their momentum, exactly as there
            optimizer.zero_grad(set_to_none=False)

            done = step + 1
            paired_done += int(paired)
            for k, v in values.items():
                running[k] += v
                running_n[k] += 1
            bar.update(1)
            if done % LOG_EVERY == 0 or done == total:
                means = {k: v / running_n[k] for k, v in running.items()}
                bar.set_postfix({k: f"{v:.4f}" for k, v in means.items()}, refresh=False)
                log.info("step %d/%d lr %.3g %s", done, total, scheduler.get_last_lr()[0],
                         " ".join(f"{k}={v:.4f}" for k, v in means.items()))
                running.clear()
                running_n.clear()
            if done % cfg["eval_steps"] == 0 or done == total:
                evaluate(done)
            if cfg["checkpoint_steps"] and done % cfg["checkpoint_steps"] == 0 and done < total:
                checkpoint(done)
            if STEP_END_HOOK is not None:
                STEP_END_HOOK(done)
        bar.close()

        meta: dict[str, Any] = {}
        if ctx.is_main:
            if best["state"] is not None:
                student.load_state_dict(best["state"])
                selection = "best STS-B dev spearman (strictly greater)"
            else:
                selection = "none (no --senteval): final model"
            meta = {
                "run_config": cfg, "seed": seed,
                "inputs": {"text": str(text), "pairs": str(pairs) if data.pairs is not None else None,
                           "teacher": str(teacher) if data.pairs is not None else None,
                           "senteval": str(senteval) if senteval is not None else None, **data.info},
                "versions": _versions(), "device": _device_name(device), "world_size": ctx.world_size,
                "schedule": schedule.to_dict(), "total_steps": total, "paired_steps": paired_done,
                "selection": selection, "best_dev_spearman": best["score"], "best_step": best["step"],
                "dev_history": history, "resumed_from_step": start_step or None,
                "wall_time_s": round(time.time() - started, 3),
            }
            _write_outputs(out, student, tokenizer, cfg["pooling"], meta)
            remove_checkpoint(ckpt_dir)
        barrier(ctx)
        return meta
    finally:
        shutdown_distributed(ctx)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdmcse train", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-config", required=True, help="run config as JSON, or @file.json")
    p.add_argument("--text", required=True, type=Path, help="wiki.parquet (column text)")
    p.add_argument("--pairs", type=Path, help="captions_<name>.parquet (mcse/kdmcse)")
    p.add_argument("--teacher", type=Path, help="teacher cache folder of those captions (mcse/kdmcse)")
    p.add_argument("--senteval", type=Path, help="SentEval data folder (holds STS/); enables dev selection")
    p.add_argument("--seed", required=True, type=int)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars (logging only)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_run_config(args.run_config)
    train(cfg, text=args.text, out=args.out, seed=args.seed, pairs=args.pairs, teacher=args.teacher,
          senteval=args.senteval, show_progress=not args.no_progress)
    return 0
