"""Teacher stage: encode every image and caption of a caption table with an open_clip model (method.md §1.2).

    python -m kdmcse teacher --captions results/corpora/captions_<name>.parquet --out-dir DIR
           --model ViT-L-14 --pretrained openai [--model-config JSON] [--batch-size 256] [--workers 4]
           [--precision fp32|bf16|fp16] [--skip-bad-images] [--device auto] [--chunk-size N] [--work-dir DIR]

Embeddings are the projected CLIP features *before* L2 normalisation, like the features the paper trained on.
Images go through CLIP's deterministic eval transform, decoded by DataLoader worker processes so the model never
waits; each image is encoded once however many captions it has. Captions are tokenized by open_clip (truncated to
the context length), sorted by length within a chunk and encoded with the padding beyond the longest caption of the
batch cut off (exact for causal CLIP text towers, and much faster than 77 tokens).

The work is split into chunks; every finished chunk is saved atomically in a work folder (default `<out-dir>.work`,
outside the output so a workflow manager that wipes a failed job's outputs keeps it), so a killed job restarts from
its last finished chunk and gives the same output. The work folder is removed after a successful run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset

from kdmcse.errors import KdmcseError
from kdmcse.io import atomic_path, read_json, sha256_file, write_json
from kdmcse.teacher.cache import write_teacher_cache

log = logging.getLogger(__name__)

CAPTION_COLUMNS = {"image_id": "string", "image_path": "string", "caption_id": "int64", "caption": "string"}
WORK_FORMAT = 1
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------------------------- caption table


@dataclass
class CaptionTable:
    """The caption table, plus its unique images in order of first appearance."""

    path: Path
    sha256: str
    caption_ids: np.ndarray  # [N_cap] int64
    captions: list[str]
    caption_image_ids: list[str]
    image_ids: list[str]  # unique, order of first appearance
    image_paths: list[str]



def load_caption_table(path: str | os.PathLike[str]) -> CaptionTable:
    """Read and validate a caption table (architecture.md §2); any problem is one `KdmcseError`."""
    path = Path(path)
    if not path.is_file():
        raise KdmcseError(f"caption table {path} does not exist; build it with `python -m kdmcse prepare captions`")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise KdmcseError(f"caption table {path} is not a readable Parquet file ({exc})") from exc
    for name, kind in CAPTION_COLUMNS.items():
        if name not in table.column_names:
            raise KdmcseError(f"caption table {path} has no '{name}' column (expected columns {list(CAPTION_COLUMNS)})")
        typ = table.schema.field(name).type
        ok = pa.types.is_integer(typ) if kind == "int64" else (pa.types.is_string(typ) or pa.types.is_large_string(typ))
        if not ok:
            raise KdmcseError(f"caption table {path}: column '{name}' is {typ}, expected {kind}")
        if table.column(name).null_count:
            raise KdmcseError(f"caption table {path}: column '{name}' has {table.column(name).null_count} null value(s)")
    if table.num_rows == 0:
        raise KdmcseError(f"caption table {path} has no rows")
    caption_ids = table.column("caption_id").to_numpy().astype(np.int64)
    if len(np.unique(caption_ids)) != len(caption_ids):
        raise KdmcseError(f"caption table {path}: caption_id values are not unique")
    caption_image_ids = table.column("image_id").to_pylist()
    paths = table.column("image_path").to_pylist()
    first_path: dict[str, str] = {}
    for image_id, image_path in zip(caption_image_ids, paths):
        seen = first_path.setdefault(image_id, image_path)
        if seen != image_path:
            raise KdmcseError(
                f"caption table {path}: image_id {image_id!r} has two image paths ({seen!r}, {image_path!r}); "
                "each image_id must name one file"
            )
    return CaptionTable(
        path=path,
        sha256=sha256_file(path),
        caption_ids=caption_ids,
        captions=table.column("caption").to_pylist(),
        caption_image_ids=caption_image_ids,
        image_ids=list(first_path),
        image_paths=list(first_path.values()),
    )


# ------------------------------------------------------------------------------------------------------ model


@dataclass
class Teacher:
    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    device: torch.device
    autocast_dtype: torch.dtype | None
    meta: dict[str, Any] = field(default_factory=dict)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise KdmcseError(f"--device {device} was asked for but CUDA is not available; use --device cpu or auto")
    return torch.device(device)


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _register_model_config(model: str, config_path: Path) -> dict[str, Any]:
    """Make a custom open_clip model config known under the name `model` (open_clip keys configs by file stem)."""
    import open_clip

    try:
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KdmcseError(f"--model-config {config_path} is not a readable JSON file ({exc})") from exc
    cfg = cfg.get("model_cfg", cfg)  # also accept an open_clip_config.json ({"model_cfg": …, "preprocess_cfg": …})
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise KdmcseError(f"--model-config {config_path} lacks open_clip model keys {missing}")
    folder = Path(tempfile.mkdtemp(prefix="kdmcse-openclip-cfg-"))
    (folder / f"{model}.json").write_text(json.dumps(cfg), encoding="utf-8")
    open_clip.add_model_config(folder)
    return cfg


def identify_pretrained_tag(model: str, file_sha256: str) -> str | None:
    """The open_clip tag whose published checkpoint has this sha256, if its URL carries the hash.

    OpenAI's URLs hold the file's full sha256, open_clip's own releases a prefix of it. Knowing the tag of a
    local file keeps the metadata comparable with `--pretrained openai` and gets QuickGELU right offline.
    """
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    for tag in list_pretrained_tags_by_model(model):
        url = get_pretrained_cfg(model, tag).get("url", "")
        if "openaipublic" in url and url.split("/")[-2] == file_sha256:
            return tag
        if "mlfoundations" in url:
            prefix = os.path.splitext(os.path.basename(url))[0].split("-")[-1]
            if len(prefix) >= 8 and file_sha256.startswith(prefix):
                return tag
    return None


def load_teacher(
    model: str,
    pretrained: str,
    *,
    model_config: str | os.PathLike[str] | None = None,
    device: str = "auto",
    precision: str = "fp32",
) -> Teacher:
    """Build the open_clip model, its eval transform and tokenizer; `pretrained` is a tag, a local file or 'none'."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    dev = resolve_device(device)
    if precision not in PRECISIONS:
        raise KdmcseError(f"--precision {precision!r} is not one of {list(PRECISIONS)}")
    if precision != "fp32" and dev.type != "cuda":
        raise KdmcseError(f"--precision {precision} is autocast on a GPU only; use --precision fp32 on {dev.type}")
    meta: dict[str, Any] = {}
    if model_config is not None:
        cfg = _register_model_config(model, Path(model_config))
        meta["model_config"] = cfg
        meta["model_config_sha256"] = sha256_file(model_config)
    elif model not in open_clip.list_models():
        raise KdmcseError(f"--model {model!r} is not an open_clip architecture (see open_clip.list_models()), "
                          "or pass --model-config with a custom architecture")

    random_init = pretrained.lower() in {"none", ""}
    tag_cfg = {} if random_init or os.path.isfile(pretrained) else get_pretrained_cfg(model, pretrained)
    known_tag = None  # the tag a local checkpoint file turns out to be
    if random_init:
        source, weights = "none", None
        log.warning(
            "WARNING: --pretrained none: the teacher %s has RANDOM weights. Its embeddings carry no knowledge; "
            "use this only for tests and smoke runs, never for results.", model
        )
    elif os.path.isfile(pretrained):
        source, weights = "file", pretrained
        meta["pretrained_file"] = os.path.abspath(pretrained)
        meta["pretrained_sha256"] = sha256_file(pretrained)
        known_tag = identify_pretrained_tag(model, meta["pretrained_sha256"])
        if known_tag:
            log.info("checkpoint %s is the published '%s' weights of %s", pretrained, known_tag, model)
            tag_cfg = get_pretrained_cfg(model, known_tag)
        else:
            log.warning("checkpoint %s is not a published open_clip checkpoint of %s (sha256 %s); if it holds "
                        "OpenAI weights, name a '-quickgelu' architecture", pretrained, model,
                        meta["pretrained_sha256"][:12])
    elif tag_cfg:
        source, weights = "tag", pretrained
    else:
        raise KdmcseError(
            f"--pretrained {pretrained!r} is neither a known open_clip tag for {model} "
            f"({open_clip.list_pretrained_tags_by_model(model)}), a local checkpoint file, nor 'none'"
        )
    # OpenAI's weights were trained with QuickGELU; open_clip only warns on a mismatch, which silently changes
    # every embedding. Follow the tag (for a local file: the tag recognised from its checksum).
    quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    # open_clip applies a tag's own preprocessing only when given the tag; do the same for a recognised file
    preprocess_overrides = {} if source != "file" else {
        f"image_{k}": tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg
    }
    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(
            model, pretrained=weights, device=dev, force_quick_gelu=quick_gelu, **preprocess_overrides
        )
    except RuntimeError as exc:
        hint = (" This machine may be offline: download the checkpoint elsewhere and pass its path as --pretrained."
                if source == "tag" else "")
        raise KdmcseError(f"could not load open_clip model {model} with pretrained={pretrained!r}: {exc}.{hint}") from exc
    clip.eval()
    # open_clip 3 stores the preprocessing config on the model; keep a readable description in the metadata
    preprocess_cfg = dict(getattr(clip.visual, "preprocess_cfg", {}) or {})
    if source == "file":  # record the tag of a recognised checkpoint, so caches compare equal to `--pretrained TAG`
        recorded = known_tag or os.path.basename(pretrained)
    else:
        recorded = pretrained
    meta.update(
        model=model,
        pretrained=recorded,
        pretrained_source=source,
        random_init=random_init,
        quick_gelu=quick_gelu or bool(getattr(clip, "quick_gelu", False)),
        normalised=False,
        precision=precision,
        autocast=precision != "fp32",
        device_type=dev.type,
        preprocessing={"transform": repr(preprocess), "config": {k: _jsonable(v) for k, v in preprocess_cfg.items()}},
        tokenizer={"context_length": int(getattr(clip, "context_length", 77)), "truncate": True},
        versions={
            "torch": torch.__version__,
            "open_clip": _package_version("open_clip_torch"),
            "kdmcse": _package_version("kdmcse"),
            "pillow": _package_version("pillow"),
        },
    )
    return Teacher(clip, preprocess, open_clip.get_tokenizer(model), dev, PRECISIONS[precision], meta)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


# ----------------------------------------------------------------------------------------------- encoding


def _trimmable_text_tower(model: torch.nn.Module, tokenizer: Any) -> bool:
    """True when cutting padding columns cannot change the text embedding.

    That holds for open_clip's `CLIP` text tower with a causal mask (tokens never attend to later padding),
    pooling on the EOT/EOS/first token, and a tokenizer that pads with 0 after the text.
    """
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    return (
        type(model) is CLIP
        and isinstance(tokenizer, SimpleTokenizer)
        and getattr(model, "attn_mask", None) is not None
        and model.text_pool_type in {"argmax", "eos", "first"}
    )


def encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`CLIP.encode_text` on tokens whose padding columns were cut (same maths, fewer positions)."""
    from open_clip.transformer import text_global_pool

    n_ctx = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:n_ctx].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:n_ctx, :n_ctx])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return x


def token_lengths(tokens: torch.Tensor) -> torch.Tensor:
    """Index after the last non-padding token of each row."""
    nonpad = (tokens != 0).int()
    return tokens.shape[1] - nonpad.flip(1).argmax(dim=1)


def encode_captions_batched(teacher: Teacher, tokens: torch.Tensor, batch_size: int) -> np.ndarray:
    """Encode tokenized captions, shortest first, with padding cut per batch where that is exact; rows in input order."""
    trim = _trimmable_text_tower(teacher.model, teacher.tokenizer)
    lengths = token_lengths(tokens)
    order = torch.argsort(lengths, stable=True)
    parts = []
    with torch.inference_mode(), teacher.autocast():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = tokens[idx]
            if trim:
                batch = batch[:, : int(lengths[idx].max())]
                emb = encode_text_trimmed(teacher.model, batch.to(teacher.device))
            else:
                emb = teacher.model.encode_text(batch.to(teacher.device), normalize=False)
            parts.append(emb.float().cpu().numpy())
    out = np.empty((len(tokens), parts[0].shape[1]), dtype=np.float32)
    out[order.numpy()] = np.concatenate(parts)
    return out


class ImageFiles(Dataset):
    """Decode + CLIP eval transform, run in DataLoader workers; an unreadable file yields a zero tensor and an error."""

    def __init__(self, paths: Sequence[str], preprocess: Callable[[Any], torch.Tensor], input_shape: tuple[int, ...]):
        self.paths = list(paths)
        self.preprocess = preprocess
        self.input_shape = input_shape

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str]:
        from PIL import Image

        try:
            with Image.open(self.paths[i]) as img:
                img.load()  # decode now, so a truncated JPEG fails here and not inside the transform
                return i, self.preprocess(img), ""
        except Exception as exc:  # any decoder failure marks the image as bad; the caller decides what to do
            return i, torch.zeros(self.input_shape), f"{type(exc).__name__}: {exc}"


class CaptionChunks(Dataset):
    """One item = one chunk of captions tokenized (in a worker, overlapping the encoding of the previous chunk)."""

    def __init__(self, captions: Sequence[str], chunks: Sequence[int], chunk_size: int, tokenizer: Any):
        self.captions, self.chunks, self.chunk_size, self.tokenizer = captions, list(chunks), chunk_size, tokenizer

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        c = self.chunks[i]
        return c, self.tokenizer(list(self.captions[c * self.chunk_size : (c + 1) * self.chunk_size]))


def _chunk_batches(n: int, chunks: Sequence[int], chunk_size: int, batch_size: int, first: int = 4) -> list[list[int]]:
    """Batches of indices that never straddle a chunk boundary, for the given chunks only.

    The very first batch is small (`first` items) so the model starts after a few decodes instead of a full
    batch of them; batch composition does not change any embedding.
    """
    batches = []
    for c in chunks:
        stop = min((c + 1) * chunk_size, n)
        start = c * chunk_size
        if not batches and first < batch_size:
            batches.append(list(range(start, min(start + first, stop))))
            start += first
        for b in range(start, stop, batch_size):
            batches.append(list(range(b, min(b + batch_size, stop))))
    return batches


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_threads(workers: int) -> int:
    """Torch threads for a CPU run: every core the job may use.

    JPEG decoding is light next to a ViT forward, so the workers overlap with compute without needing a core
    of their own: on an idle 2-core machine, 2 threads ran ViT-B-32 at 0.90x the bare forward against 0.50x
    with one core left to the decoder. On a machine shared with other jobs, oversubscription stalls every
    parallel region; pass `--threads` (e.g. cores minus workers) there. `workers` is kept for that choice.
    """
    del workers
    return max(1, available_cpus())


# ------------------------------------------------------------------------------------------------ work folder


def save_chunk(work_dir: Path, kind: str, index: int, **arrays: np.ndarray) -> None:
    """Persist one finished chunk atomically (a kill mid-write leaves no file under the final name)."""
    with atomic_path(work_dir / f"{kind}-{index:05d}.npz", suffix=".npz.tmp") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_chunk(work_dir: Path, kind: str, index: int, keys: np.ndarray) -> dict[str, np.ndarray] | None:
    """A finished chunk, or None if absent or not for these keys (then it is recomputed)."""
    path = work_dir / f"{kind}-{index:05d}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError):
        log.warning("ignoring unreadable chunk file %s", path)
        return None
    if not np.array_equal(data.get("keys"), keys):
        log.warning("ignoring chunk file %s: it was made for other rows", path)
        return None
    return data


def prepare_work_dir(work_dir: Path, job: dict[str, Any]) -> None:
    """Reuse the chunks of an interrupted run of the same job; throw away those of another job."""
    job_file = work_dir / "job.json"
    if job_file.is_file():
        try:
            same = read_json(job_file) == job
        except ValueError:
            same = False
        if same:
            done = len(list(work_dir.glob("*.npz")))
            log.info("resuming from %s (%d finished chunk(s))", work_dir, done)
            return
        log.warning("work folder %s belongs to another job (other inputs or settings): starting afresh", work_dir)
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    write_json(job_file, job)


# ------------------------------------------------------------------------------------------------------ stage


def _n_chunks(n: int, chunk_size: int) -> int:
    return (n + chunk_size - 1) // chunk_size


def encode_images(
    teacher: Teacher, table: CaptionTable, work_dir: Path, *, batch_size: int, workers: int, chunk_size: int
) -> tuple[np.ndarray, list[str]]:
    """Embeddings [N_img, D] of the unique images (zeros for bad ones) and one error string per image ('' = ok)."""
    n = len(table.image_ids)
    keys = [np.array(table.image_ids[c * chunk_size : (c + 1) * chunk_size]) for c in range(_n_chunks(n, chunk_size))]
    done = {c: load_chunk(work_dir, "images", c, k) for c, k in enumerate(keys)}
    pending = [c for c, d in done.items() if d is None]
    if pending:
        input_shape = (3, *_image_size(teacher.model))
        dataset = ImageFiles(table.image_paths, teacher.preprocess, input_shape)
        loader = DataLoader(
            dataset,
            batch_sampler=_chunk_batches(n, pending, chunk_size, batch_size),
            num_workers=workers,
            pin_memory=teacher.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
        )
        buf: dict[int, list] = {}
        total = sum(len(k) for c, k in enumerate(keys) if c in pending)
        with torch.inference_mode(), tqdm_bar(total, "images") as bar:
            for idx, pixels, errors in loader:
                with teacher.autocast():
                    emb = teacher.model.encode_image(pixels.to(teacher.device, non_blocking=True), normalize=False)
                c = int(idx[0]) // chunk_size
                buf.setdefault(c, []).append((idx.numpy(), emb.float().cpu().numpy(), list(errors)))
                bar.update(len(idx))
                if sum(len(b[0]) for b in buf[c]) == len(keys[c]):
                    parts = buf.pop(c)
                    errs = np.array([e for p in parts for e in p[2]], dtype=str)
                    emb_c = np.concatenate([p[1] for p in parts])
                    emb_c[errs != ""] = 0.0  # a bad image's zero tensor still has an embedding; don't keep it
                    save_chunk(work_dir, "images", c, keys=keys[c], emb=emb_c, errors=errs)
                    done[c] = {"emb": emb_c, "errors": errs}
    emb = np.concatenate([done[c]["emb"] for c in range(len(keys))])
    errors = [str(e) for c in range(len(keys)) for e in done[c]["errors"]]
    return emb, errors


def encode_captions(
    teacher: Teacher, table: CaptionTable, work_dir: Path, *, batch_size: int, workers: int, chunk_size: int
) -> np.ndarray:
    """Embeddings [N_cap, D] of every caption, in table order."""
    n = len(table.captions)
    keys = [table.caption_ids[c * chunk_size : (c + 1) * chunk_size] for c in range(_n_chunks(n, chunk_size))]
    done = {c: load_chunk(work_dir, "captions", c, k) for c, k in enumerate(keys)}
    pending = [c for c, d in done.items() if d is None]
    if pending:
        dataset = CaptionChunks(table.captions, pending, chunk_size, teacher.tokenizer)
        loader = DataLoader(dataset, batch_size=None, num_workers=min(workers, 1), prefetch_factor=2 if workers else None)
        total = sum(len(keys[c]) for c in pending)
        with tqdm_bar(total, "captions") as bar:
            for c, tokens in loader:
                emb_c = encode_captions_batched(teacher, tokens, batch_size)
                save_chunk(work_dir, "captions", c, keys=keys[c], emb=emb_c)
                done[c] = {"emb": emb_c}
                bar.update(len(tokens))
    return np.concatenate([done[c]["emb"] for c in range(len(keys))])


def _image_size(model: torch.nn.Module) -> tuple[int, int]:
    size = getattr(model.visual, "image_size", 224)
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


@contextlib.contextmanager
def tqdm_bar(total: int, unit: str) -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit=unit, desc=f"teacher {unit}", dynamic_ncols=True, mininterval=2.0)
    try:
        yield bar
    finally:
        bar.close()


def run_teacher(
    captions: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    model: str = "ViT-L-14",
    pretrained: str = "openai",
    model_config: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    workers: int = 4,
    precision: str = "fp32",
    skip_bad_images: bool = False,
    device: str = "auto",
    chunk_size: int = 8192,
    work_dir: str | os.PathLike[str] | None = None,
    threads: int = 0,
) -> dict[str, Any]:
    """Build the teacher cache in `out_dir`; returns its metadata plus timings (`seconds`).

    `threads` = torch threads on CPU (0 = the cores the decode workers leave free); the caller's setting is restored.
    """
    if batch_size < 1 or chunk_size < 1 or workers < 0 or threads < 0:
        raise KdmcseError("--batch-size and --chunk-size must be ≥ 1, --workers and --threads ≥ 0")
    previous_threads = torch.get_num_threads()
    try:
        return _run_teacher(captions, out_dir, model=model, pretrained=pretrained, model_config=model_config,
                            batch_size=batch_size, workers=workers, precision=precision,
                            skip_bad_images=skip_bad_images, device=device, chunk_size=chunk_size,
                            work_dir=work_dir, threads=threads)
    finally:
        torch.set_num_threads(previous_threads)


def _run_teacher(captions, out_dir, *, model, pretrained, model_config, batch_size, workers, precision,
                 skip_bad_images, device, chunk_size, work_dir, threads) -> dict[str, Any]:
    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir is not None else out_dir.with_name(out_dir.name + ".work")
    table = load_caption_table(captions)

    # Missing files fail before the model is even loaded; unreadable ones are found while decoding.
    missing = [i for i, p in enumerate(table.image_paths) if not os.path.isfile(p)]
    if missing and not skip_bad_images:
        for i in missing[:20]:
            log.error("image file not found: %s (image_id %s)", table.image_paths[i], table.image_ids[i])
        raise KdmcseError(
            f"{len(missing)} image file(s) listed in {table.path} do not exist, e.g. {table.image_paths[missing[0]]!r} "
            "(paths are relative to the working directory); fix the paths or pass --skip-bad-images to drop them"
        )

    teacher = load_teacher(model, pretrained, model_config=model_config, device=device, precision=precision)
    job = {
        "work_format": WORK_FORMAT,
        "captions_sha256": table.sha256,
        "model": model,
        "pretrained": pretrained,
        "pretrained_sha256": teacher.meta.get("pretrained_sha256"),
        "model_config_sha256": teacher.meta.get("model_config_sha256"),
        "precision": precision,
        "device_type": teacher.device.type,
        "chunk_size": chunk_size,
    }
    prepare_work_dir(work_dir, job)
    if teacher.device.type == "cpu":
        torch.set_num_threads(threads or cpu_threads(workers))
    log.info("encoding %d images and %d captions with %s/%s on %s (%s, batch %d, %d workers, %d torch threads)",
             len(table.image_ids), len(table.captions), model, pretrained, teacher.device, precision,
             batch_size, workers, torch.get_num_threads())

    t0 = time.perf_counter()
    image_emb, errors = encode_images(
        teacher, table, work_dir, batch_size=batch_size, workers=workers, chunk_size=chunk_size
    )
    t1 = time.perf_counter()
    bad = [i for i, e in enumerate(errors) if e]
    if bad:
        for i in bad:
            log.error("unreadable image %s (image_id %s): %s", table.image_paths[i], table.image_ids[i], errors[i])
        if not skip_bad_images:
            raise KdmcseError(
                f"{len(bad)} image(s) could not be read, e.g. {table.image_paths[bad[0]]!r} ({errors[bad[0]]}); "
                "replace them or pass --skip-bad-images to drop them and their captions "
                f"(finished chunks are kept in {work_dir})"
            )
    caption_emb = encode_captions(
        teacher, table, work_dir, batch_size=batch_size, workers=workers, chunk_size=chunk_size
    )
    t2 = time.perf_counter()

    bad_ids = {table.image_ids[i] for i in bad}
    keep_img = np.array([not e for e in errors], dtype=bool)
    keep_cap = np.array([i not in bad_ids for i in table.caption_image_ids], dtype=bool)
    if not keep_img.any():
        raise KdmcseError(f"no image of {table.path} could be read; nothing to write")
    skipped = [{"image_id": table.image_ids[i], "image_path": table.image_paths[i], "error": errors[i]} for i in bad]
    if skipped:
        log.warning("--skip-bad-images: dropped %d image(s) and %d caption(s)", len(bad), int((~keep_cap).sum()))
    meta = dict(teacher.meta)
    meta.update(
        captions_sha256=table.sha256,
        captions_file=str(table.path),
        n_images_source=len(table.image_ids),
        n_captions_source=len(table.captions),
        skipped_images=skipped,
        n_skipped_captions=int((~keep_cap).sum()),
    )
    written = write_teacher_cache(
        out_dir,
        image_ids=[i for i, k in zip(table.image_ids, keep_img) if k],
        image_emb=image_emb[keep_img],
        caption_ids=table.caption_ids[keep_cap],
        caption_image_ids=[i for i, k in zip(table.caption_image_ids, keep_cap) if k],
        caption_texts=[t for t, k in zip(table.captions, keep_cap) if k],
        caption_emb=caption_emb[keep_cap],
        meta=meta,
    )
    shutil.rmtree(work_dir, ignore_errors=True)
    log.info("wrote %s: %d images (%.1f s), %d captions (%.1f s), dim %d",
             out_dir, written["n_images"], t1 - t0, written["n_captions"], t2 - t1, written["dim"])
    return {**written, "seconds": {"images": t1 - t0, "captions": t2 - t1}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdmcse teacher", description=__doc__.split("\n\n")[0])
    p.add_argument("--captions", required=True, help="caption table Parquet (image_id, image_path, caption_id, caption)")
    p.add_argument("--out-dir", required=True, help="cache folder to write")
    p.add_argument("--model", default="ViT-L-14", help="open_clip architecture name (default: ViT-L-14, the paper's)")
    p.add_argument("--pretrained", default="openai",
                   help="open_clip pretrained tag, a local checkpoint file, or 'none' for random weights (tests only)")
    p.add_argument("--model-config", default=None, help="custom open_clip model-config JSON registered as --model")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=4, help="DataLoader processes decoding images")
    p.add_argument("--precision", choices=list(PRECISIONS), default="fp32", help="bf16/fp16 = autocast, GPU only")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="drop unreadable images and their captions (recorded in the metadata) instead of failing")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--chunk-size", type=int, default=8192, help="rows per resumable chunk")
    p.add_argument("--work-dir", default=None, help="where finished chunks are kept (default: <out-dir>.work)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads on CPU (default 0: the cores left free by the decode workers)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_teacher(
        args.captions,
        args.out_dir,
        model=args.model,
        pretrained=args.pretrained,
        model_config=args.model_config,
        batch_size=args.batch_size,
        workers=args.workers,
        precision=args.precision,
        skip_bad_images=args.skip_bad_images,
        device=args.device,
        chunk_size=args.chunk_size,
        work_dir=args.work_dir,
        threads=args.threads,
    )
    return 0
