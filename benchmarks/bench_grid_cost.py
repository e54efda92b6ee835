"""What the paper grid costs: training steps, GPU-hours and disk, per group of students and in total.

    python benchmarks/bench_grid_cost.py [--measure-steps 2] [--device auto] [--anchor-hours 5.5]

- Steps are exact: the grid of config/config.yaml, each cell's run config and the interleave schedule of the
  training code (`kdmcse.train.mixing.mixing_schedule`) at the full corpus sizes (method.md §1.3).
- Disk is measured where it can be: random-init bert-base and roberta-base students (the real architectures)
  are saved the way training saves them and their folders weighed; the teacher cache is rows x 768 float32, twice
  (Parquet plus the memory-mapped copy); downloads are the sizes in docs/data.md.
- GPU time is anchored on the one published timing, the paper's "~5–6 h per run on one A6000" for a bert-base
  student on wiki+flickr (54,327 steps at batch 64): seconds per step = anchor / steps. Other backbones scale by
  the cost of their step relative to bert-base's, which the script measures side by side on the device it runs
  on (`--measure-steps`, CPU by default here; on a GPU the ratio is that GPU's); without a measurement the ratio
  is the token ratio. The teacher and the evaluation are converted at the same effective FLOP rate the anchor
  implies (forward FLOPs = 2 x parameters x tokens), so they are estimates, not measurements.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WIKI_ROWS = 1_000_000
PAIR_ROWS = {"flickr": 158_915, "coco": 414_113}  # every caption of every image (method.md §1.1)
IMAGES = {"flickr": 31_783, "coco": 82_783}
SEQ = 32  # training truncation; two dropout views per sentence
ANCHOR = {"backbone": "bert", "dataset": "wiki+flickr", "steps": 54_327}
EVAL_SENTENCES = {"sts": 52_000, "transfer": 150_000}  # STS12-16 + STS-B + SICK pairs x2; the 7 transfer tasks
EVAL_TOKENS = 40  # mean tokens per evaluation sentence (no truncation at evaluation)
VIT_L14 = {"image_params": 303.97e6, "image_tokens": 257, "text_params": 123.65e6, "text_tokens": 77}
DOWNLOADS_GB = {"wiki1m": 0.12, "senteval": 0.015, "flickr30k_images": 4.4, "flickr30k_captions": 0.013,
                "coco_train2014_images": 13.5, "coco_annotations_2014": 0.25}  # docs/data.md
EXTRACTED_GB = {"senteval": 0.015, "flickr30k_images": 4.4, "coco_train2014_images": 13.5}


def architectures():
    from transformers import BertConfig, RobertaConfig

    return {"bert-base-uncased": BertConfig(),  # the defaults are bert-base
            "roberta-base": RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                                          layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)}


def student_sizes(tmp: Path) -> dict[str, dict[str, float]]:
    """Parameters and on-disk bytes of each student backbone, saved as training saves it (safetensors, fp32)."""
    import torch
    from transformers import AutoModel

    out = {}
    for name, cfg in architectures().items():
        torch.manual_seed(0)
        model = AutoModel.from_config(cfg)
        folder = tmp / name
        model.save_pretrained(folder)
        params = sum(p.numel() for p in model.parameters())
        out[name] = {"params": params, "bytes": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())}
    return out


def measured_steps(steps: int, device: str) -> tuple[float | None, float | None, str]:
    """A roberta-base step at batch 128 over a bert-base step at batch 64 (forward, backward, AdamW), and the
    bert-base step's seconds on this device."""
    if steps <= 0:
        return None, None, "not measured"
    import torch
    from transformers import AutoModel

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    best = {}
    for (name, cfg), batch in zip(architectures().items(), (64, 128)):
        torch.manual_seed(0)
        model = AutoModel.from_config(cfg).to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        ids = torch.randint(5, 1000, (2 * batch, SEQ), device=dev)  # two views per sentence
        times = []
        for i in range(steps + 1):  # the first step warms up and is dropped
            t0 = time.perf_counter()
            loss = model(input_ids=ids).last_hidden_state[:, 0].pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i:
                times.append(time.perf_counter() - t0)
        best[name] = min(times)  # a shared machine: the least disturbed step
        del model, opt
    ratio = best["roberta-base"] / best["bert-base-uncased"]
    detail = ", ".join(f"{k} {v:.2f} s" for k, v in best.items())
    return ratio, best["bert-base-uncased"], f"measured on {dev} ({torch.get_num_threads()} threads): {detail}"


def grid_students():
    from kdmcse.config import load_config, validate_config
    from kdmcse.grid import all_cells, run_config
    from kdmcse.train.mixing import mixing_schedule

    cfg = validate_config(load_config([ROOT / "config" / "config.yaml"]))
    rows = []
    for cell in all_cells(cfg):
        rc = run_config(cfg, cell)
        pairs = cfg["datasets"][cell.dataset]["pairs"] if cell.objective != "simcse" else None
        sched = mixing_schedule(WIKI_ROWS, PAIR_ROWS[pairs] if pairs else 0, rc["batch_size"], rc["epochs"],
                                rc["max_steps"])
        for seed in cfg["grid"]["seeds"]:
            rows.append({"cell": cell, "seed": seed, "backbone": cell.backbone, "model": rc["model"],
                         "dataset": cell.dataset, "batch": rc["batch_size"], "steps": sched.total_steps})
    return cfg, rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--measure-steps", type=int, default=2, help="timed steps per backbone (0 = use the token ratio)")
    p.add_argument("--device", default="auto")
    p.add_argument("--anchor-hours", type=float, default=5.5, help="the paper's hours per bert-base student")
    args = p.parse_args(argv)

    cfg, students = grid_students()
    sec_per_step = {"bert": args.anchor_hours * 3600 / ANCHOR["steps"]}
    ratio, bert_step, how = measured_steps(args.measure_steps, args.device)
    token_ratio = 128 / 64
    sec_per_step["roberta"] = sec_per_step["bert"] * (ratio if ratio is not None else token_ratio)
    with tempfile.TemporaryDirectory() as tmp:
        sizes = student_sizes(Path(tmp))
    bert_params = sizes["bert-base-uncased"]["params"]
    # effective FLOP rate the anchor implies: training = 6 x params x tokens per step
    rate = 6 * bert_params * 2 * 64 * SEQ / sec_per_step["bert"]

    print(f"anchor: {args.anchor_hours} h per bert-base student on wiki+flickr ({ANCHOR['steps']:,} steps) = "
          f"{sec_per_step['bert']:.3f} s/step; implied effective rate {rate / 1e12:.1f} TFLOP/s")
    print(f"roberta-base@128 / bert-base@64 step time: "
          f"{ratio if ratio is not None else token_ratio:.2f} ({how}; token ratio {token_ratio:.1f})")
    print()
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for s in students:
        groups[(s["backbone"], s["dataset"])].append(s)
    # this device: the measured bert-base step (the bare step: no data loading, no dev evaluation)
    here = {"bert": bert_step, "roberta": bert_step * ratio} if bert_step else None
    print("GPU-hours at the paper's anchor (A6000, fp32)" + ("; 'here' = the bare measured steps on this device"
                                                              if here else ""))
    print(f"{'students':<24}{'count':>7}{'steps each':>14}{'GPU-h each':>12}{'GPU-h':>9}"
          + (f"{'here h':>10}" if here else ""))
    total_h = total_here = 0.0
    for (backbone, dataset), rows in sorted(groups.items()):
        steps = statistics.mean(r["steps"] for r in rows)
        each = steps * sec_per_step[backbone] / 3600
        total_h += each * len(rows)
        line = f"{backbone + ' ' + dataset:<24}{len(rows):>7}{steps:>14,.0f}{each:>12.1f}{each * len(rows):>9.0f}"
        if here:
            total_here += steps * here[backbone] * len(rows) / 3600
            line += f"{steps * here[backbone] * len(rows) / 3600:>10.0f}"
        print(line)
    print(f"{'training, all students':<24}{len(students):>7}{'':>14}{'':>12}{total_h:>9.0f}"
          + (f"{total_here:>10.0f}" if here else ""))

    teachers = {}
    for pairs in sorted({cfg["datasets"][s["dataset"]]["pairs"] for s in students} - {None}):
        flops = 2 * (IMAGES[pairs] * VIT_L14["image_params"] * VIT_L14["image_tokens"]
                     + PAIR_ROWS[pairs] * VIT_L14["text_params"] * VIT_L14["text_tokens"])
        teachers[pairs] = flops / rate / 3600
    transfer = _transfer_cells(cfg)
    evals = {"sts": len(students), "transfer": sum(1 for s in students if s["cell"] in transfer)}
    eval_h = {k: n * 2 * bert_params * EVAL_SENTENCES[k] * EVAL_TOKENS / rate / 3600 for k, n in evals.items()}
    for pairs, h in teachers.items():
        print(f"{'teacher ViT-L/14 ' + pairs:<24}{1:>7}{'':>14}{h:>12.2f}{h:>9.1f}")
    for k, h in eval_h.items():
        print(f"{'evaluate ' + k:<24}{evals[k]:>7}{'':>14}{h / max(evals[k], 1):>12.3f}{h:>9.1f}")
    grand = total_h + sum(teachers.values()) + sum(eval_h.values())
    print(f"{'whole grid':<24}{'':>7}{'':>14}{'':>12}{grand:>9.0f}")
    print()

    gb = 1e9
    per_student = {name: s["bytes"] / gb for name, s in sizes.items()}
    model_gb = {s["backbone"]: per_student[s["model"]] for s in students}
    students_gb = sum(model_gb[s["backbone"]] for s in students)
    # checkpoint/: weights, AdamW's two moments, the best-on-dev weights (4 x fp32 weights); the old copy lives
    # until the new one is in place, and training removes it at the end
    peak_ckpt = {b: 2 * 4 * v for b, v in model_gb.items()}
    teacher_gb = {p: 2 * (PAIR_ROWS[p] + IMAGES[p]) * 768 * 4 / gb for p in teachers}
    disk = [("downloads (docs/data.md)", sum(DOWNLOADS_GB.values())),
            ("extracted archives", sum(EXTRACTED_GB.values())),
            ("corpora (Parquet, at most the text size)", DOWNLOADS_GB["wiki1m"] + DOWNLOADS_GB["coco_annotations_2014"]),
            *[(f"teacher cache {p} (captions + images, x2)", g) for p, g in teacher_gb.items()],
            (f"students ({len(students)} model folders)", students_gb)]
    print(f"{'disk':<46}{'GB':>8}")
    for what, g in disk:
        print(f"{what:<46}{g:>8.1f}")
    print(f"{'total kept':<46}{sum(g for _, g in disk):>8.1f}")
    for b, g in sorted(peak_ckpt.items()):
        print(f"{'+ while a ' + b + ' student trains (checkpoint/)':<46}{g:>8.1f}")
    for name, s in sizes.items():
        print(f"  {name}: {s['params'] / 1e6:.1f} M parameters, {s['bytes'] / gb:.3f} GB saved (measured)")
    return 0


def _transfer_cells(cfg):
    from kdmcse.grid import transfer_cells

    return transfer_cells(cfg)


if __name__ == "__main__":
    sys.exit(main())
