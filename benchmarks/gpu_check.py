"""One command that measures what a GPU run of the pipeline costs, and projects the paper's grid from it.

    python benchmarks/gpu_check.py [--out FILE.md] [--device auto]     # on a GPU: a few minutes, no downloads
    python benchmarks/gpu_check.py --quick                             # the same code on CPU at tiny sizes

Everything is random-init and built in-process (nothing is downloaded): bert-base and roberta-base from their
configs, a ViT-L-14 open_clip teacher, synthetic sentences, JPEGs and an STS suite with the real pair counts.
It runs the project's own code paths:
- training: `kdmcse.train.loop.train_step` (batch, two dropout views, KDMCSE heads and losses, backward, clip,
  AdamW, schedule) at the paper's batch sizes (bert 64, roberta 128), text-only and paired steps, under fp32,
  tf32 and bf16; loss values queued on the device and read every `log_every` steps as the loop does, one sync at
  the end of the timed steps. One extra row reads the losses after every step, as the code did before;
- teacher: `kdmcse.teacher.run.run_teacher` (decode workers, batches, fp16 `auto` on CUDA) against the released
  extraction's loop (decode, preprocess and encode one image per forward, then its captions);
- evaluation: `kdmcse.evaluate.cli.run_evaluation` (STS12-16, STS-B, SICK-R, alignment/uniformity) of one
  student, and the STS-B dev score that model selection computes every `eval_steps`;
- projections: hours of one paper run and of the whole default grid (`config/config.yaml`: every cell and seed,
  plus the two teacher caches; the transfer tasks are not included), per precision, from the numbers above.
`--quick` uses tiny models and sizes on CPU: it checks that the script works (a test runs it), its numbers are
not estimates of anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars of the stages would bury the table
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_teacher's JPEG generator

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kdmcse.config import load_config, validate_config  # noqa: E402
from kdmcse.grid import all_cells  # noqa: E402
from kdmcse.train.distributed import DistContext  # noqa: E402
from kdmcse.train.inputs import TrainData  # noqa: E402
from kdmcse.train.losses import LossSettings  # noqa: E402
from kdmcse.train.mixing import TokenizedTexts, mixing_schedule  # noqa: E402
from kdmcse.train.precision import autocast_for, make_scaler, tf32_mode  # noqa: E402
from kdmcse.train.step_values import StepValues  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "tf32", "bf16")
# Corpus sizes of the paper's data (docs/method.md §1): Wiki1M, all Flickr30k and COCO train2014 captions.
WIKI_ROWS = 1_000_000
CAPTION_SETS = {"flickr": (31_783, 158_915), "coco": (82_783, 414_113)}  # (images, captions)
# STS test pairs per subset (SentEval's files), STS-B dev for selection.
STS_PAIRS = {
    "STS12": {"MSRpar": 750, "MSRvid": 750, "SMTeuroparl": 459, "surprise.OnWN": 750, "surprise.SMTnews": 399},
    "STS13": {"FNWN": 189, "headlines": 750, "OnWN": 561},
    "STS14": {"deft-forum": 450, "deft-news": 300, "headlines": 750, "images": 750, "OnWN": 750, "tweet-news": 750},
    "STS15": {"answers-forums": 375, "answers-students": 750, "belief": 375, "headlines": 750, "images": 750},
    "STS16": {"answer-answer": 254, "headlines": 249, "plagiarism": 230, "postediting": 244,
              "question-question": 209},
}
STSB_TEST, STSB_DEV, SICK_TEST = 1379, 1500, 4927
WORDS = ("the a of and to in is was for on that with as by it at from man woman dog cat two people street water "
         "red blue green white black young little playing sitting standing walking running riding near front "
         "group boy girl child children ball grass snow car road house city river music game team year").split()

FULL = SimpleNamespace(
    name="full", steps=20, warmup=5, backbones={"bert": ("bert-base", 64), "roberta": ("roberta-base", 128)},
    teacher="ViT-L-14", teacher_config=None, images=8192, jpeg_files=256, loop_images=128, captions_per_image=5,
    teacher_batch=256, sts_scale=1.0,
)
QUICK = SimpleNamespace(
    name="quick", steps=2, warmup=1, backbones={"bert": ("tiny-bert", 8), "roberta": ("tiny-roberta", 8)},
    teacher="gpu-check-tiny-clip", images=12, jpeg_files=6, loop_images=3, captions_per_image=2, teacher_batch=4,
    sts_scale=0.01,
    teacher_config={"embed_dim": 24,
                    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
                    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}},
)


# ---------------------------------------------------------------- models and data, built in-process
def encoder_config(name: str):
    from transformers import BertConfig, RobertaConfig

    roberta = dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                   eos_token_id=2, layer_norm_eps=1e-5)
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=2000)
    return {"bert-base": lambda: BertConfig(), "roberta-base": lambda: RobertaConfig(**roberta),
            "tiny-bert": lambda: BertConfig(**tiny), "tiny-roberta": lambda: RobertaConfig(**{**roberta, **tiny})}[name]()


def build_student(name: str, device: torch.device):
    from transformers import AutoModel

    from kdmcse.train.model import StudentModel

    torch.manual_seed(0)
    student = StudentModel(AutoModel.from_config(encoder_config(name)), proj_dim=256, teacher_dim=768)
    return student.to(device).train()


def token_corpus(n: int, vocab: int, lengths: tuple[int, int], cls_sep_pad: tuple[int, int, int],
                 rng: np.random.Generator) -> TokenizedTexts:
    """Random token ids with [CLS] … [SEP], lengths uniform in `lengths` (the cap of 32 for most Wiki1M rows)."""
    cls, sep, pad = cls_sep_pad
    lens = rng.integers(lengths[0], lengths[1] + 1, size=n)
    rows = [np.concatenate([[cls], rng.integers(vocab // 2, vocab, size=k - 2), [sep]]).astype(np.int32)
            for k in lens]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    return TokenizedTexts(np.concatenate(rows), offsets, pad)


def train_data(name: str, batch: int, rng: np.random.Generator) -> TrainData:
    cfg = encoder_config(name)
    ids = (101, 102, 0) if cfg.model_type == "bert" else (0, 2, 1)
    n = 32 * batch
    return TrainData(
        text=token_corpus(n, cfg.vocab_size, (16, 32), ids, rng),  # wiki sentences, truncated at 32 tokens
        pairs=token_corpus(n, cfg.vocab_size, (10, 24), ids, rng),  # captions are shorter
        image_emb=(rng.standard_normal((n, 768)) * 3).astype(np.float32),
        caption_emb=(rng.standard_normal((n, 768)) * 3).astype(np.float32),
        pair_caption_row=np.arange(n), pair_image_row=np.arange(n),
    )


def precisions_for(device: torch.device) -> tuple[str, ...]:
    """fp32, tf32 and bf16 where the device has bfloat16 (every CPU; CUDA from Ampere on)."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return PRECISIONS[:2]
    return PRECISIONS


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- training steps
def time_train_steps(student, data: TrainData, batch: int, precision: str, paired: bool, device: torch.device,
                     size: SimpleNamespace, read_every_step: bool = False) -> dict:
    """ms per step, real (non-padding) tokens/s and peak GPU memory of `train_step` as the loop runs it."""
    from kdmcse.train.loop import train_step
    from kdmcse.train.step import linear_decay, make_optimizer

    params = list(student.parameters())
    optimizer = make_optimizer(params, 3e-5)
    run = SimpleNamespace(
        data=data, ctx=DistContext(), device=device, student=student, params=params, optimizer=optimizer,
        settings=LossSettings(objective="kdmcse", lam=0.01), autocast=autocast_for(precision, device),
        scaler=make_scaler(precision, device),
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, linear_decay(100_000)),
    )
    corpus = data.pairs if paired else data.text
    rng = np.random.default_rng(1)
    batches = [rng.choice(len(corpus), size=batch, replace=False) for _ in range(size.warmup + size.steps)]
    tokens = 2 * sum(int((corpus.offsets[b + 1] - corpus.offsets[b]).sum()) for b in batches[size.warmup:])
    values = StepValues()
    with tf32_mode(precision, device):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for i, rows in enumerate(batches):
            if i == size.warmup:
                values.take()
                sync(device)
                t0 = time.perf_counter()
            values.add(i + 1, paired, train_step(run, paired, rows))
            if read_every_step:
                values.read()  # what the loop did before: one device->host copy per step
            elif (i + 1) % 50 == 0:
                values.take()  # log_every = 50
        values.take()
        sync(device)
        seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"ms": 1e3 * seconds / size.steps, "tokens_s": tokens / seconds, "peak_gib": peak}


def bench_training(size: SimpleNamespace, device: torch.device) -> list[dict]:
    rows = []
    for backbone, (name, batch) in size.backbones.items():
        student = build_student(name, device)
        data = train_data(name, batch, np.random.default_rng(0))
        for precision in precisions_for(device):
            for paired in (False, True):
                r = time_train_steps(student, data, batch, precision, paired, device, size)
                rows.append({"backbone": backbone, "model": name, "batch": batch, "precision": precision,
                             "step": "paired" if paired else "text", **r})
        if backbone == "bert":  # the per-step host read the loop used to do, side by side with the default
            r = time_train_steps(student, data, batch, "tf32", False, device, size, read_every_step=True)
            rows.append({"backbone": backbone, "model": name, "batch": batch, "precision": "tf32, read every step",
                         "step": "text", **r})
        del student
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------- teacher
def caption_table(folder: Path, size: SimpleNamespace) -> Path:
    """`size.images` image ids over `size.jpeg_files` photo-sized JPEGs (each id is decoded on its own, like a
    distinct file), `size.captions_per_image` captions each: enough images that the decode workers' start-up
    does not dominate, without writing thousands of files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench_teacher import make_data

    files = pq.read_table(make_data(folder, size.jpeg_files, size.captions_per_image)).to_pydict()
    per_file = size.captions_per_image
    rows: dict[str, list] = {"image_id": [], "image_path": [], "caption_id": [], "caption": []}
    for i in range(size.images):
        src = (i % size.jpeg_files) * per_file
        for j in range(per_file):
            rows["image_id"].append(f"img{i:06d}")
            rows["image_path"].append(files["image_path"][src + j])
            rows["caption_id"].append(i * per_file + j)
            rows["caption"].append(files["caption"][src + j])
    out = folder / "captions_many.parquet"
    pq.write_table(pa.table({**rows, "caption_id": pa.array(rows["caption_id"], type=pa.int64())}), out)
    return out


def bench_teacher(size: SimpleNamespace, device: torch.device, work: Path) -> dict:
    """images/s and captions/s of the stage and of the released one-image-per-forward loop."""
    from PIL import Image

    from kdmcse.teacher import run as T

    work.mkdir(parents=True, exist_ok=True)
    model_config = None
    if size.teacher_config is not None:
        model_config = work / f"{size.teacher}.json"
        model_config.write_text(json.dumps(size.teacher_config))
    table_path = caption_table(work / "images", size)
    dev = "cuda" if device.type == "cuda" else "cpu"
    meta = T.run_teacher(table_path, work / "cache", model=size.teacher, pretrained="none", model_config=model_config,
                         device=dev, batch_size=size.teacher_batch, workers=-1, precision="auto",
                         threads=0 if device.type == "cuda" else 1)
    stage = {"images_s": meta["n_images"] / meta["seconds"]["images"],
             "captions_s": meta["n_captions"] / meta["seconds"]["captions"]}

    teacher = T.load_teacher(size.teacher, "none", model_config=model_config, device=dev, precision="auto")
    table = T.load_caption_table(table_path)
    by_image: dict[str, list[str]] = {}
    for image_id, caption in zip(table.caption_image_ids, table.captions):
        by_image.setdefault(image_id, []).append(caption)
    todo = list(zip(table.image_ids, table.image_paths))[: size.loop_images + 1]
    t_img = t_txt = 0.0
    n_cap = 0
    with torch.inference_mode(), teacher.autocast():
        for k, (image_id, path) in enumerate(todo):  # the first one warms up and is not counted
            t0 = time.perf_counter()
            pixels = teacher.preprocess(Image.open(path).convert("RGB")).unsqueeze(0).to(teacher.device)
            teacher.model.encode_image(pixels).float().cpu()  # the released code kept each feature on the host
            t1 = time.perf_counter()
            teacher.model.encode_text(teacher.tokenizer(by_image[image_id]).to(teacher.device)).float().cpu()
            t2 = time.perf_counter()
            if k:
                t_img, t_txt, n_cap = t_img + t1 - t0, t_txt + t2 - t1, n_cap + len(by_image[image_id])
    loop = {"images_s": size.loop_images / t_img, "captions_s": n_cap / t_txt}
    return {"stage": stage, "loop": loop, "precision": meta["precision"], "n_images": meta["n_images"],
            "n_captions": meta["n_captions"]}


# ---------------------------------------------------------------- evaluation
def _sentence(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(5, 30))))


def write_sts_data(root: Path, scale: float, rng: np.random.Generator) -> None:
    """A SentEval STS folder with the real files and pair counts (times `scale`) and synthetic sentences."""
    def n(k: int) -> int:
        return max(3, round(k * scale))

    for year, subsets in STS_PAIRS.items():
        folder = root / "STS" / f"{year}-en-test"
        folder.mkdir(parents=True)
        for sub, k in subsets.items():
            pairs = [(_sentence(rng), _sentence(rng)) for _ in range(n(k))]
            (folder / f"STS.input.{sub}.txt").write_text("".join(f"{a}\t{b}\n" for a, b in pairs))
            (folder / f"STS.gs.{sub}.txt").write_text("".join(f"{rng.uniform(0, 5):.2f}\n" for _ in pairs))
    stsb = root / "STS" / "STSBenchmark"
    stsb.mkdir(parents=True)
    for split, k in (("test", STSB_TEST), ("dev", STSB_DEV)):
        (stsb / f"sts-{split}.csv").write_text("".join(
            f"main-captions\tMSRvid\t2012test\t{i:04d}\t{rng.uniform(0, 5):.2f}\t{_sentence(rng)}\t{_sentence(rng)}\n"
            for i in range(n(k))))
    (root / "SICK").mkdir()
    (root / "SICK" / "SICK_test_annotated.txt").write_text(
        "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n" + "".join(
            f"{i}\t{_sentence(rng)}\t{_sentence(rng)}\t{rng.uniform(1, 5):.1f}\tNEUTRAL\n" for i in range(n(SICK_TEST))))


def save_bert_student(name: str, folder: Path) -> Path:
    """A random-init BERT student folder with a WordPiece tokenizer over the synthetic vocabulary."""
    from transformers import AutoModel, BertTokenizerFast

    chars = [chr(c) for c in range(33, 127)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars] + WORDS
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    AutoModel.from_config(encoder_config(name)).save_pretrained(folder)
    BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    return folder


def bench_evaluation(size: SimpleNamespace, device: torch.device, work: Path) -> dict:
    from kdmcse.evaluate.cli import run_evaluation
    from kdmcse.evaluate.encoder import load_encoder
    from kdmcse.train.selection import stsb_dev_spearman

    root = work / "senteval"
    write_sts_data(root, size.sts_scale, np.random.default_rng(0))
    model = save_bert_student(size.backbones["bert"][0], work / "student")
    t0 = time.perf_counter()
    enc = load_encoder(model, device=device)
    enc.show_progress = False
    enc.encode(["warm up"] * 4)
    t1 = time.perf_counter()
    run_evaluation(enc, root, ["sts"])
    t2 = time.perf_counter()
    stsb_dev_spearman(enc, root)
    t3 = time.perf_counter()
    return {"load_s": t1 - t0, "sts_s": t2 - t1, "dev_s": t3 - t2}


# ---------------------------------------------------------------- projections
def project(train_rows: list[dict], teacher: dict, evaluation: dict) -> dict[str, dict[str, float]]:
    """Hours of one paper run and of the whole default grid, per precision, from the measured rates."""
    cfg = validate_config(load_config([ROOT / "config" / "config.yaml"]))
    tr = cfg["train"]
    ms = {(r["backbone"], r["precision"], r["step"]): r["ms"] for r in train_rows}
    out: dict[str, dict[str, float]] = {}
    for precision in dict.fromkeys(r["precision"] for r in train_rows if r["precision"] in PRECISIONS):
        def run_hours(dataset: str, backbone: str, objective: str) -> float:
            pairs = cfg["datasets"][dataset]["pairs"]
            n_pair = CAPTION_SETS[cfg["captions"][pairs]["format"]][1] if pairs and objective != "simcse" else 0
            sched = mixing_schedule(WIKI_ROWS, n_pair, cfg["backbones"][backbone]["batch_size"], tr["epochs"],
                                    tr["max_steps"])
            paired = sched.paired_steps_until(sched.total_steps)
            evals = -(-sched.total_steps // tr["eval_steps"])  # every eval_steps and at the last step
            seconds = ((sched.total_steps - paired) * ms[(backbone, precision, "text")]
                       + paired * ms[(backbone, precision, "paired")]) / 1e3
            return (seconds + evals * evaluation["dev_s"] + evaluation["sts_s"]) / 3600

        grid = sum(run_hours(c.dataset, c.backbone, c.objective) for c in all_cells(cfg)) * len(cfg["grid"]["seeds"])
        teachers = sum(n_img / teacher["stage"]["images_s"] + n_cap / teacher["stage"]["captions_s"]
                       for n_img, n_cap in CAPTION_SETS.values()) / 3600
        out[precision] = {"paper_run": run_hours("wiki+flickr", "bert", "kdmcse"), "grid": grid + teachers,
                          "students": len(all_cells(cfg)) * len(cfg["grid"]["seeds"])}
    return out


# ---------------------------------------------------------------- the table
def machine(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return (f"{p.name} ({p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}), "
                f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _num(value: float) -> str:
    """Three significant digits, so the fastest row of a quick run never prints as 0.0."""
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"


def render(size, device, train_rows, teacher, evaluation, projection, seconds) -> str:
    import transformers

    lines = [f"gpu_check ({size.name}): {machine(device)}; torch {torch.__version__}, transformers "
             f"{transformers.__version__}, python {platform.python_version()}; random-init models; {seconds:.0f} s",
             ""]
    if size.name == "quick":
        lines += ["Tiny models on CPU: this checks the script; the numbers estimate nothing.", ""]
    lines += ["| backbone | batch | precision | step | ms/step | tokens/s | peak GiB |", "|---|---|---|---|---|---|---|"]
    for r in train_rows:
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
        lines.append(f"| {r['model']} | {r['batch']} | {r['precision']} | {r['step']} | {r['ms']:.1f} | "
                     f"{r['tokens_s']:,.0f} | {peak} |")
    s, lp = teacher["stage"], teacher["loop"]
    lines += ["", f"| teacher ({size.teacher}, {teacher['precision']}) | images/s | captions/s |", "|---|---|---|",
              f"| stage: {teacher['n_images']} images ({size.jpeg_files} JPEGs 500x375), batch {size.teacher_batch}, "
              f"decode workers | "
              f"{s['images_s']:,.1f} | {s['captions_s']:,.1f} |",
              f"| released loop: one image per forward ({size.loop_images} images) | {lp['images_s']:,.1f} | "
              f"{lp['captions_s']:,.1f} |",
              f"| stage / released loop | {s['images_s'] / lp['images_s']:.1f}x | "
              f"{s['captions_s'] / lp['captions_s']:.1f}x |"]
    lines += ["", "| evaluation of one student (bert) | ms |", "|---|---|",
              f"| STS12-16, STS-B, SICK-R + alignment/uniformity | {_num(1e3 * evaluation['sts_s'])} |",
              f"| STS-B dev (model selection, every eval_steps) | {_num(1e3 * evaluation['dev_s'])} |"]
    precisions = list(projection)
    n = projection[precisions[0]]["students"]
    lines += ["", "| projected hours | " + " | ".join(precisions) + " |", "|---|" + "---|" * len(precisions),
              "| one paper run (wiki+flickr, bert, kdmcse) | "
              + " | ".join(_num(projection[p]['paper_run']) for p in precisions) + " |",
              f"| whole grid ({n} students + 2 teacher caches; no transfer tasks) | "
              + " | ".join(_num(projection[p]['grid']) for p in precisions) + " |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models on CPU (a test runs this)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cuda or cpu; --quick forces cpu")
    p.add_argument("--out", type=Path, help="also write the table (Markdown) to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the random-init teacher warnings are expected here
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    size = QUICK if args.quick else FULL
    if args.quick or args.device == "cpu":
        device = torch.device("cpu")
    else:
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else args.device)
    if device.type == "cpu" and not args.quick:
        print("warning: no GPU; the full sizes on CPU take hours. Use --quick to check the script.", file=sys.stderr)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        train_rows = bench_training(size, device)
        teacher = bench_teacher(size, device, work / "teacher")
        evaluation = bench_evaluation(size, device, work / "eval")
    projection = project(train_rows, teacher, evaluation)
    table = render(size, device, train_rows, teacher, evaluation, projection, time.perf_counter() - started)
    print(table, end="")
    if args.out is not None:
        args.out.write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
