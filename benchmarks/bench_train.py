"""Where a training step's time goes: data, encoder forward/backward, heads + losses, optimiser.

    python benchmarks/bench_train.py [--steps 8] [--device auto] [--configs mid,base]

Random-init BERTs (no downloads): `mid` (h128, 4 layers, the paper's batch of 64, whose step takes ~50–200 ms on
2 CPU cores) and `base` (the bert-base architecture with a small batch). Each step runs the training code's own pieces
(`kdmcse.train.loop.make_batch`, `encode_cls`, `losses_from_cls`) on the KDMCSE objective, text-only and paired
steps timed separately. The encoder backward is separated from the heads' by cutting the graph at the CLS
vectors. Goal: everything but the encoder forward/backward at most 5 % of the step at the mid size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from kdmcse.train import step as T
from kdmcse.train.distributed import DistContext
from kdmcse.train.inputs import TrainData
from kdmcse.train.losses import LossSettings
from kdmcse.train.mixing import TokenizedTexts

CONFIGS = {
    # name: (hidden, layers, heads, batch)
    # the paper's batch of 64 sentences (128 rows with the two views); h128 x 4 layers keeps the CPU step in
    # the 50-200 ms range a bert-base step takes on a modern GPU
    "mid": (128, 4, 2, 64),
    "base": (768, 12, 12, 4),
}
WORDS = ("the a of and to in is was for on that with as by it at from man woman dog cat two people street water "
         "red blue green white black young little playing sitting standing walking running riding near front "
         "group boy girl child children ball grass snow car road").split()


def build_model(out: Path, hidden: int, layers: int, heads: int) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    chars = [chr(c) for c in range(33, 127)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars] + WORDS
    (out / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab=str(out / "vocab.txt"), do_lower_case=True)
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=4 * hidden)  # bert-base proportions; the real vocabulary size
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def sentences(n: int, rng: np.random.Generator) -> list[str]:
    # wiki-like lengths: most sentences reach the 32-token cap
    return [" ".join(rng.choice(WORDS, size=rng.integers(12, 40))) for _ in range(n)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(name: str, steps: int, device: torch.device) -> list[dict]:
    from kdmcse.train.model import StudentModel, load_tokenizer

    hidden, layers, heads, bs = CONFIGS[name]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp), hidden, layers, heads)
        tok = load_tokenizer(model_dir)
        student = StudentModel.from_pretrained(model_dir, proj_dim=256, teacher_dim=768).to(device).train()
    n = 64 * bs
    data = TrainData(text=TokenizedTexts.from_texts(tok, sentences(n, rng), 32),
                       pairs=TokenizedTexts.from_texts(tok, sentences(n, rng), 32),
                       image_emb=rng.normal(size=(n, 768)).astype(np.float32) * 5,
                       caption_emb=rng.normal(size=(n, 768)).astype(np.float32) * 5,
                       pair_caption_row=np.arange(n), pair_image_row=np.arange(n))
    settings = LossSettings(objective="kdmcse", lam=0.01)
    params = list(student.parameters())
    opt = T.make_optimizer(params, 3e-5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, T.linear_decay(10_000))
    ctx, rows = DistContext(), []
    for paired in (False, True):
        times: dict[str, list[float]] = {k: [] for k in ("data", "enc_fwd", "heads_loss", "enc_bwd", "optim")}
        for i in range(steps + 1):  # the first step warms up and is dropped
            t0 = time.perf_counter()
            batch = T.make_batch(data, paired, rng.choice(n, size=bs, replace=False), ctx, device)
            sync(device)
            t1 = time.perf_counter()
            h = T.encode_cls(student, batch, nullcontext)
            sync(device)
            t2 = time.perf_counter()
            h_leaf = h.detach().requires_grad_(True)
            loss = T.losses_from_cls(student, h_leaf, batch, settings, ctx)["total"]
            loss.backward()
            float(loss.detach())  # each part is timed apart, so each ends with a sync
            sync(device)
            t3 = time.perf_counter()
            h.backward(h_leaf.grad)
            sync(device)
            t4 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=False)
            sync(device)
            t5 = time.perf_counter()
            if i:
                for k, a, b in (("data", t0, t1), ("enc_fwd", t1, t2), ("heads_loss", t2, t3),
                                ("enc_bwd", t3, t4), ("optim", t4, t5)):
                    times[k].append(b - a)
        # the machine may be shared: report the fastest step (least disturbed), and the median total beside it
        totals = [sum(t) for t in zip(*times.values())]
        fastest = int(np.argmin(totals))
        med = {k: v[fastest] * 1e3 for k, v in times.items()}
        total = sum(med.values())
        rows.append({"config": f"{name} h{hidden} L{layers} bs{bs}", "step": "paired" if paired else "text",
                     "total_ms": total, "median_total_ms": statistics.median(totals) * 1e3, **{f"{k}_ms": v for k, v in med.items()},
                     "outside_encoder_pct": 100 * (total - med["enc_fwd"] - med["enc_bwd"]) / total})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps per step type (mid)")
    p.add_argument("--base-steps", type=int, default=3, help="timed steps per step type (bert-base)")
    p.add_argument("--device", default="auto")
    p.add_argument("--configs", default="mid,base")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    rows = []
    for name in args.configs.split(","):
        rows += bench(name, args.base_steps if name == "base" else args.steps, device)
    cols = ["median_total_ms", "total_ms", "data_ms", "enc_fwd_ms", "enc_bwd_ms", "heads_loss_ms", "optim_ms", "outside_encoder_pct"]
    print(f"device: {device} ({torch.get_num_threads()} threads); parts of the fastest timed step, "
          f"seq len <= 32, objective kdmcse")
    print(f"{'config':<22} {'step':<7}" + "".join(f"{c:>20}" for c in cols))
    for r in rows:
        print(f"{r['config']:<22} {r['step']:<7}" + "".join(f"{r[c]:>20.2f}" for c in cols))
    # Over a run the step types mix by the interleave schedule (method §1.3): Flickr30k gives one paired step
    # in 6, COCO one in 2.
    by_config: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_config.setdefault(r["config"], {})[r["step"]] = r
    for config, steps in by_config.items():
        if {"text", "paired"} <= set(steps):
            for data, every in (("wiki+flickr", 6), ("wiki+coco", 2)):
                w_total = (every - 1) * steps["text"]["total_ms"] + steps["paired"]["total_ms"]
                w_enc = sum((every - 1 if k == "text" else 1) * (steps[k]["enc_fwd_ms"] + steps[k]["enc_bwd_ms"])
                            for k in ("text", "paired"))
                print(f"{config:<22} {data}: outside the encoder {100 * (w_total - w_enc) / w_total:.2f} % "
                      f"of the time over the schedule (1 paired step in {every})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
