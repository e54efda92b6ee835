"""Load the frozen CLIP teacher: an open_clip architecture with a published tag, a local checkpoint (recognised by
its sha256 where it is a published one) or random weights for tests; with its eval transform and tokenizer.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from kdmcse.errors import KdmcseError
from kdmcse.io import sha256_file

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_CHOICES = ("auto", *PRECISIONS)  # auto: fp16 on CUDA, fp32 elsewhere
RANDOM_INIT_SEED = 0  # torch seed of `--pretrained none` weights


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


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> fp16 autocast on CUDA, as the released feature extraction ran CLIP (OpenAI's `clip.load` keeps
    the weights in half precision on a GPU), and fp32 on CPU, where half-precision kernels are slow."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    return precision


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
    precision: str = "auto",
) -> Teacher:
    """Build the open_clip model, its eval transform and tokenizer; `pretrained` is a tag, a local file or 'none'.

    The metadata records the precision actually used (`auto` resolved for the device).
    """
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    dev = resolve_device(device)
    if precision not in PRECISION_CHOICES:
        raise KdmcseError(f"--precision {precision!r} is not one of {list(PRECISION_CHOICES)}")
    precision = resolve_precision(precision, dev)
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
        # a random init is seeded, so that two runs of a test config give the same cache (and students)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            # float32 weights whatever the checkpoint stores; the compute precision is autocast (`precision`)
            clip, _, preprocess = open_clip.create_model_and_transforms(
                model, pretrained=weights, precision="fp32", device=dev, force_quick_gelu=quick_gelu,
                **preprocess_overrides
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
