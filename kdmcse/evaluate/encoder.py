"""Load a saved student (or any Hugging Face encoder) as a `kdmcse.embedding.SentenceEncoder`.

A student output folder resolves to its `model/`; pooling `cls` picks up the training MLP from the `heads.pt`
beside it (method.md §2.3).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from kdmcse.embedding import POOLINGS, SentenceEncoder, resolve_device
from kdmcse.errors import KdmcseError
from kdmcse.train.model import float32_load_kwargs

log = logging.getLogger(__name__)


def _find_heads(model_dir: Path) -> Path | None:
    for cand in (model_dir / "heads.pt", model_dir.parent / "heads.pt"):
        if cand.is_file():
            return cand
    return None


def load_mlp_head(heads_path: Path, hidden: int) -> torch.nn.Module | None:
    """The training MLP (`Linear(h, h) + Tanh`) from a student's heads.pt, or None if it holds none."""
    obj = torch.load(heads_path, map_location="cpu", weights_only=True)
    # kdmcse.train.model.save_student writes {"mlp": TanhHead state dict ({"linear.weight", "linear.bias"}), …}
    state = obj.get("mlp") if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        return None
    flat = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    weights = [k for k, v in flat.items() if k.endswith("weight") and tuple(v.shape) == (hidden, hidden)]
    if len(weights) != 1:
        return None
    key = weights[0]
    linear = torch.nn.Linear(hidden, hidden)
    linear.weight.data.copy_(flat[key])
    bias = flat.get(key[: -len("weight")] + "bias")
    if bias is not None:
        linear.bias.data.copy_(bias)
    return torch.nn.Sequential(linear, torch.nn.Tanh())


def resolve_model_dir(model: str | Path) -> Path | str:
    """A local model folder (a student output folder resolves to its `model/`), or a hub id as given."""
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
            return path / "model"
        if not (path / "config.json").is_file():
            raise KdmcseError(f"{path} is not a Hugging Face model folder (no config.json); pass a model directory")
        return path
    if path.exists() or str(model).startswith((".", "/")) or str(model).count("/") > 1:
        raise KdmcseError(f"model {model!r} not found; pass a local model directory or a hub id")
    return str(model)


def load_encoder(
    model_dir_or_id: str | Path,
    pooling: str = "cls_before_pooler",
    batch_size: int = 128,
    device: str | torch.device | None = "auto",
) -> SentenceEncoder:
    """Load any HF encoder folder or hub id (or a trained student folder) as a `SentenceEncoder`."""
    from transformers import AutoModel, AutoTokenizer

    if pooling not in POOLINGS:
        raise KdmcseError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    where = resolve_model_dir(model_dir_or_id)
    dev = resolve_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(where))
        model = AutoModel.from_pretrained(str(where), **float32_load_kwargs())
    except OSError as exc:
        raise KdmcseError(f"cannot load model {model_dir_or_id!r}: {exc}") from exc
    mlp = None
    if pooling == "cls" and isinstance(where, Path):
        heads = _find_heads(where)
        if heads is not None:
            mlp = load_mlp_head(heads, model.config.hidden_size)
            if mlp is None:
                log.warning("%s holds no MLP head; pooling 'cls' uses the model's pooler output", heads)
    return SentenceEncoder(model, tokenizer, pooling=pooling, batch_size=batch_size, device=dev, mlp=mlp)
