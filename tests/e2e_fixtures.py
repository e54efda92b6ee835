"""Tiny inputs in the real formats for end-to-end runs: Wiki1M lines, a SentEval tar, a COCO-style image set.

Everything is generated in-process (no network, nothing copied from the real data), small enough that the whole
pipeline runs in a couple of minutes on 2 CPU cores.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

WORDS = (
    "man woman dog cat two people street water red blue green white black young little playing sitting "
    "standing walking running riding near front group boy girl child children ball grass snow car road"
).split()

STS_SUBSETS = {
    "STS12": ["MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"],
    "STS13": ["FNWN", "headlines", "OnWN"],
    "STS14": ["deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"],
    "STS15": ["answers-forums", "answers-students", "belief", "headlines", "images"],
    "STS16": ["answer-answer", "headlines", "plagiarism", "postediting", "question-question"],
}


def sentence(rng: random.Random, n: int | None = None) -> str:
    return "a " + " ".join(rng.choice(WORDS) for _ in range(n or rng.randint(3, 9)))


def pair_with_score(rng: random.Random) -> tuple[str, str, float]:
    """A sentence pair whose gold score follows word overlap, so a model can do better than chance."""
    s1 = sentence(rng)
    words = s1.split()
    keep = rng.randint(0, len(words))
    s2_words = words[:keep] + [rng.choice(WORDS) for _ in range(len(words) - keep)]
    return s1, " ".join(s2_words), round(5.0 * keep / len(words), 2)


def wiki_text(n: int = 96, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    return ("\n".join(sentence(rng) for _ in range(n)) + "\n").encode()


def senteval_tar(pairs_per_file: int = 24, seed: int = 0) -> bytes:
    """The `senteval.tar` layout: every STS subset, STS-B, SICK and the 7 transfer tasks."""
    rng = random.Random(seed)
    files: dict[str, str] = {}
    for year, subsets in STS_SUBSETS.items():
        for sub in subsets:
            rows = [pair_with_score(rng) for _ in range(pairs_per_file)]
            files[f"STS/{year}-en-test/STS.input.{sub}.txt"] = "".join(f"{a}\t{b}\n" for a, b, _ in rows)
            # Blank gold lines mark unscored pairs, as in the real STS15/16 files.
            gold = [("" if i == 0 and year in ("STS15", "STS16") else f"{s}") for i, (_, _, s) in enumerate(rows)]
            files[f"STS/{year}-en-test/STS.gs.{sub}.txt"] = "\n".join(gold) + "\n"
    for split in ("train", "dev", "test"):
        rows = [pair_with_score(rng) for _ in range(pairs_per_file * 2)]
        files[f"STS/STSBenchmark/sts-{split}.csv"] = "".join(
            f"main-captions\tMSRvid\t2012test\t{i:04d}\t{s}\t{a}\t{b}\n" for i, (a, b, s) in enumerate(rows)
        )
    for split in ("train", "trial", "test_annotated"):
        rows = [pair_with_score(rng) for _ in range(pairs_per_file * 2)]
        body = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
        body += "".join(f"{i}\t{a}\t{b}\t{1 + s * 0.8:.1f}\tNEUTRAL\n" for i, (a, b, s) in enumerate(rows))
        files[f"SICK/SICK_{split}.txt"] = body
    files.update(transfer_files(rng))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def transfer_files(rng: random.Random, per_class: int = 24) -> dict[str, str]:
    """The 7 transfer tasks in their file layouts, with labels a bag of words can learn (one cue word each)."""

    def labelled(label: int) -> str:
        return sentence(rng) + (" good" if label else " bad")

    files: dict[str, str] = {}
    for folder, pos, neg in [("MR", "rt-polarity.pos", "rt-polarity.neg"), ("CR", "custrev.pos", "custrev.neg"),
                             ("SUBJ", "subj.objective", "subj.subjective"), ("MPQA", "mpqa.pos", "mpqa.neg")]:
        files[f"{folder}/{pos}"] = "".join(labelled(1) + "\n" for _ in range(per_class))
        files[f"{folder}/{neg}"] = "".join(labelled(0) + "\n" for _ in range(per_class))
    for split, n in (("train", per_class * 2), ("dev", per_class), ("test", per_class)):
        rows = [(labelled(i % 2), i % 2) for i in range(n)]
        files[f"SST/binary/sentiment-{split}"] = "".join(f"{t}\t{y}\n" for t, y in rows)
    coarse = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    for name, n in (("train_5500.label", per_class * 3), ("TREC_10.label", per_class)):
        files[f"TREC/{name}"] = "".join(f"{coarse[i % 6]}:other {sentence(rng)} {coarse[i % 6].lower()}\n" for i in range(n))
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    for name, n in (("msr_paraphrase_train.txt", per_class * 2), ("msr_paraphrase_test.txt", per_class)):
        body = "".join(
            f"{i % 2}\t{i}\t{i + 1}\t{(s := sentence(rng))}\t{s if i % 2 else sentence(rng)}\n" for i in range(n)
        )
        files[f"MRPC/{name}"] = header + body
    return files


def jpeg(seed: int, size: int = 48) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(6):
        x, y = rng.randrange(size - 8), rng.randrange(size - 8)
        img.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + 8, y + 8))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


def coco_archives(n_images: int = 8, captions_per_image: int = 3, seed: int = 0) -> tuple[bytes, bytes]:
    """(annotations_trainval2014.zip, train2014.zip) in the COCO 2014 layout."""
    rng = random.Random(seed)
    images, annotations = [], []
    img_zip = io.BytesIO()
    with zipfile.ZipFile(img_zip, "w") as zf:
        for i in range(1, n_images + 1):
            name = f"COCO_train2014_{i:012d}.jpg"
            zf.writestr(f"train2014/{name}", jpeg(seed * 1000 + i))
            images.append({"id": i, "file_name": name, "width": 48, "height": 48})
            for _ in range(captions_per_image):
                annotations.append({"id": len(annotations) + 1, "image_id": i, "caption": sentence(rng)})
    ann = {"info": {}, "licenses": [], "images": images, "annotations": annotations}
    ann_zip = io.BytesIO()
    with zipfile.ZipFile(ann_zip, "w") as zf:
        zf.writestr("annotations/captions_train2014.json", json.dumps(ann))
    return ann_zip.getvalue(), img_zip.getvalue()


TINY_CLIP = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


# A random-init ResNet-18 stands in for the released MCSE baseline's ResNet-50 (offline, and 4x faster on a CPU).
TINY_IMAGE_FEATURES = {"tinyresnet": {"model": "resnet18", "weights": "none", "batch_size": 8}}


# --- a runnable copy of the workflow on these fixtures (shared by the end-to-end tests of the launchers)

WORKFLOW_PARTS = ("Snakefile", "workflow", "config", "profiles", "envs")


def copy_workflow(work: Path, root: Path) -> None:
    """The files a user's clone runs from (the package itself comes from PYTHONPATH or the installed kdmcse)."""
    for name in WORKFLOW_PARTS:
        src = root / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)


def fixture_files() -> dict[str, bytes]:
    """What the fixture server serves as the source mirror."""
    ann_zip, img_zip = coco_archives()
    return {"/wiki1m_for_simcse.txt": wiki_text(), "/senteval.tar": senteval_tar(),
            "/annotations_trainval2014.zip": ann_zip, "/train2014.zip": img_zip}


def small_config(work: Path, mirror_url: str, objectives: tuple[str, ...] = ("simcse", "kdmcse")) -> dict:
    """The tiny end-to-end config trimmed to the main table (one cell per objective, no transfer tasks), with
    every job on one thread and small memory and time requests, so that a scheduler with little can run it."""
    from conftest import build_tiny_bert

    student = build_tiny_bert(work / "models" / "tiny-bert")
    clip_cfg = work / "models" / "tiny-clip.json"
    clip_cfg.write_text(json.dumps(TINY_CLIP))
    main = {"dataset": "wiki+tiny", "backbone": "tiny", "objective": "kdmcse"}
    small = {"threads": 1, "mem_mb": 1000, "runtime": 30}
    return {
        "sources": {"mirror": mirror_url.rstrip("/")},
        "captions": {"tiny": {"format": "coco", "annotations": "coco_annotations_2014",
                              "images": "coco_train2014_images", "images_subdir": "train2014"}},
        "datasets": {"wiki+tiny": {"pairs": "tiny"}},
        "teachers": {"tinyclip": {"model": "kdmcse-tiny-clip", "pretrained": "none", "model_config": str(clip_cfg),
                                  "batch_size": 8}},
        "teacher": "tinyclip",
        # the released MCSE baseline's image features, small and random (no torchvision download)
        "image_features": TINY_IMAGE_FEATURES,
        "baselines": {"mcse_features": "tinyresnet"},
        "backbones": {"tiny": {"model": str(student), "lr": 1.0e-3, "batch_size": 8}},
        "train": {"max_steps": 6, "eval_steps": 3, "log_every": 2, "proj_dim": 16},
        "grid": {
            "seeds": [0],
            "main": {"datasets": ["wiki+tiny"], "backbones": ["tiny"], "objectives": list(objectives),
                     "margin": 0.15, "threshold": "off"},
            # each ablation at the main setting only: the same cell, trained once
            "ablations": {"margin": {**main, "values": [0.15]}, "threshold": {**main, "values": ["off"]}},
        },
        "evaluate": {"transfer": "none", "batch_size": 16},
        "resources": {rule: dict(small) for rule in
                      ("teacher", "train", "evaluate_sts", "evaluate_transfer", "extract", "prepare")},
        "report": {"caption_note": "Fixture run: random-init tiny models."},
    }


def trace_python(bin_dir: Path, trace: Path) -> None:
    """Put a `python` first on PATH that runs this interpreter and appends one line per run to `trace`:
    start, end, pid, CUDA_VISIBLE_DEVICES and the arguments. The rules start every stage as `python -m kdmcse …`,
    so the trace shows which devices each job ran on, and when, without any help from the code under test."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "python"
    shim.write_text(
        "#!/bin/bash\n"
        'start=$(date +%s.%N)\n'
        f'{sys.executable} "$@"\n'
        "rc=$?\n"
        f'printf "%s\\t%s\\t%s\\t%s\\t%s\\n" "$start" "$(date +%s.%N)" "$$" '
        f'"${{CUDA_VISIBLE_DEVICES-<unset>}}" "$*" >> {trace}\n'
        "exit $rc\n"
    )
    shim.chmod(0o755)


@dataclass(frozen=True)
class Run:
    """One traced stage process."""

    start: float
    end: float
    devices: tuple[str, ...] | None  # None: CUDA_VISIBLE_DEVICES unset
    args: str

    @property
    def stage(self) -> str:
        """`gpus` for the launcher, else the stage the process runs (a torchrun launcher runs `train`)."""
        words = self.args.split()
        module = words[words.index("-m") + 1] if "-m" in words else "?"
        if module == "torch.distributed.run":
            return "train"
        return words[words.index("-m") + 2] if module == "kdmcse" else module


def read_trace(trace: Path) -> list[Run]:
    runs = []
    for line in trace.read_text().splitlines():
        start, end, _pid, cvd, args = line.split("\t", 4)
        devices = None if cvd == "<unset>" else tuple(d for d in cvd.split(",") if d)
        runs.append(Run(float(start), float(end), devices, args))
    return runs


def gpu_stage_runs(trace: Path) -> list[Run]:
    """The stage processes of GPU jobs (teacher, train, evaluate), not the `kdmcse gpus` launchers around them nor
    the CPU job `kdmcse teacher scores` (the score statistics of a cache)."""
    return [r for r in read_trace(trace) if r.stage in ("teacher", "train", "evaluate")
            and "-m kdmcse teacher scores" not in r.args]


def overlapping(runs: list[Run]) -> list[tuple[Run, Run]]:
    return [(a, b) for i, a in enumerate(runs) for b in runs[i + 1:] if a.start < b.end and b.start < a.end]
