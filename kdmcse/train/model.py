"""The student: any Hugging Face encoder plus the small heads of MCSE/KDMCSE (method §2).

- `mlp` (hidden→hidden, tanh) on the CLS vector feeds the text–text loss; it is dropped at evaluation.
- `grounding` (hidden→proj, tanh) on the CLS vector *before* the MLP maps sentences into the grounding space.
- `image_proj` / `text_proj` (teacher_dim→proj, tanh) map frozen teacher features into the same space.

`save_student` writes a plain HF model directory (no conversion step, unlike the published code) that also
loads as a sentence-transformers model giving the evaluation embedding, and the heads in `heads.pt` beside it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdmcse.errors import KdmcseError
from kdmcse.io import apply_umask, atomic_path, make_temp_dir

log = logging.getLogger(__name__)

Pooling = Literal["cls_before_pooler", "cls", "avg"]
POOLINGS: tuple[str, ...] = ("cls_before_pooler", "cls", "avg")
HEADS_FILE = "heads.pt"
HEADS_FORMAT = 1
# Config attributes that hold dropout probabilities across common encoders (BERT/RoBERTa names first).
_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")


class TanhHead(nn.Module):
    """Linear + Tanh; the attribute name `linear` matches sentence-transformers' Dense module."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.activation = nn.Tanh()

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.linear(x))


def init_like_hf(linear: nn.Linear, std: float) -> None:
    """Weights normal(0, std), bias zero: what Hugging Face's `init_weights` (`_init_weights` of BERT/RoBERTa) does
    to every Linear of a model it builds. The released `BertForCL`/`RobertaForCL` create their MLP head (`pooler`)
    inside the pretrained model and call `init_weights()`, so the head starts this way there (method.md §2.1);
    the grounding and teacher projections live outside it and keep PyTorch's default, as here."""
    with torch.no_grad():
        linear.weight.normal_(mean=0.0, std=std)
        linear.bias.zero_()


class StudentModel(nn.Module):
    """Encoder + heads. `forward` returns (h, z): the CLS vector before and after the MLP."""

    def __init__(self, encoder: nn.Module, *, proj_dim: int = 256, teacher_dim: int | None = 768,
                 head_init: str = "torch") -> None:
        super().__init__()
        self.encoder = encoder
        hidden = int(encoder.config.hidden_size)
        self.hidden_size, self.proj_dim, self.teacher_dim = hidden, int(proj_dim), teacher_dim
        self.mlp = TanhHead(hidden, hidden)
        self.grounding = TanhHead(hidden, self.proj_dim)
        self.image_proj = TanhHead(teacher_dim, self.proj_dim) if teacher_dim is not None else None
        self.text_proj = TanhHead(teacher_dim, self.proj_dim) if teacher_dim is not None else None
        # The encoder's own pooler (BERT/RoBERTa) is never used by the losses; freezing it keeps it out of the
        # optimiser and out of DDP's unused-parameter check. Its weights are replaced by `mlp` on save.
        pooler = getattr(encoder, "pooler", None)
        if isinstance(pooler, nn.Module):
            pooler.requires_grad_(False)
        if head_init == "hf":
            init_like_hf(self.mlp.linear, float(getattr(encoder.config, "initializer_range", 0.02)))
        elif head_init != "torch":
            raise KdmcseError(f"head_init must be 'hf' or 'torch', got {head_init!r}")

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        proj_dim: int = 256,
        teacher_dim: int | None = 768,
        dropout: float | None = None,
        head_init: str = "torch",
    ) -> "StudentModel":
        """Load the encoder through `AutoModel` (local dir or cached HF id) and add freshly initialised heads.

        `dropout`, when given, overrides the encoder's hidden and attention dropout probabilities. `head_init`
        "hf" initialises the MLP head as the released model's (`init_like_hf`), "torch" leaves nn.Linear's default.
        """
        from transformers import AutoConfig, AutoModel

        name = str(name_or_path)
        try:
            config = AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as exc:
            raise KdmcseError(
                f"cannot load encoder config from {name!r}: give a local HF model directory or a model id "
                f"already in the Hugging Face cache ({exc})"
            ) from exc
        if dropout is not None:
            changed = [k for k in _DROPOUT_KEYS if hasattr(config, k)]
            if not changed:
                raise KdmcseError(f"dropout override: {name!r} ({config.model_type}) has no known dropout setting")
            for k in changed:
                setattr(config, k, float(dropout))
        encoder = AutoModel.from_pretrained(name, config=config, **float32_load_kwargs())
        return cls(encoder, proj_dim=proj_dim, teacher_dim=teacher_dim, head_init=head_init)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        kwargs: dict[str, Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        h = self.encoder(**kwargs).last_hidden_state[:, 0]
        return h, self.mlp(h)

    def ground(self, h: Tensor) -> Tensor:
        """Sentence CLS vector (before the MLP) → L2-normalised point in the grounding space."""
        return F.normalize(self.grounding(h), dim=-1)

    def project_image(self, emb: Tensor) -> Tensor:
        return F.normalize(self._head("image_proj")(emb.to(self.grounding.linear.weight.dtype)), dim=-1)

    def project_text(self, emb: Tensor) -> Tensor:
        return F.normalize(self._head("text_proj")(emb.to(self.grounding.linear.weight.dtype)), dim=-1)

    def _head(self, name: str) -> nn.Module:
        head = getattr(self, name)
        if head is None:
            raise ValueError(f"{name} is absent: build the StudentModel with teacher_dim set")
        return head

    def embed(self, input_ids: Tensor, attention_mask: Tensor, pooling: Pooling = "cls_before_pooler") -> Tensor:
        """The sentence embedding used for evaluation (no normalisation)."""
        if pooling not in POOLINGS:
            raise KdmcseError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if pooling == "cls_before_pooler":
            return hidden[:, 0]
        if pooling == "cls":
            return self.mlp(hidden[:, 0])
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def heads_state(self) -> dict[str, Any]:
        """Everything `heads.pt` holds: head state dicts and the dimensions to rebuild them."""
        return {
            "format": HEADS_FORMAT,
            "hidden_size": self.hidden_size,
            "proj_dim": self.proj_dim,
            "teacher_dim": self.teacher_dim,
            **{
                name: (None if getattr(self, name) is None else getattr(self, name).state_dict())
                for name in ("mlp", "grounding", "image_proj", "text_proj")
            },
        }


def float32_load_kwargs() -> dict[str, torch.dtype]:
    """`from_pretrained` arguments that load the weights as float32 whatever dtype the checkpoint was saved in.

    transformers 5 loads a checkpoint in its stored dtype by default (`dtype="auto"`): a model saved in half
    precision would silently train and be evaluated in it. The argument is `dtype` since transformers 4.56
    and `torch_dtype` before (where float32 was the default anyway).
    """
    import transformers

    major, minor = (int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": torch.float32}


def load_tokenizer(name_or_path: str | os.PathLike[str]):
    """The encoder's tokenizer via `AutoTokenizer` (local dir or cached HF id)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as exc:
        raise KdmcseError(
            f"cannot load a tokenizer from {str(name_or_path)!r}: give a local HF model directory with tokenizer "
            f"files or a model id already in the Hugging Face cache ({exc})"
        ) from exc


def _max_seq_length(encoder: nn.Module, tokenizer: Any) -> int:
    """Longest input the encoder takes (evaluation does not truncate at 32 as training does)."""
    tok_max = int(getattr(tokenizer, "model_max_length", 0) or 0)
    if 0 < tok_max < 100_000:
        return tok_max
    cfg = encoder.config
    n = int(getattr(cfg, "max_position_embeddings", 512))
    # RoBERTa-style position ids start after the padding index.
    if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        n -= int(getattr(cfg, "pad_token_id", 1) or 1) + 1
    return n


def _write_sentence_transformers_files(model: StudentModel, tokenizer: Any, out: Path, pooling: Pooling) -> None:
    """modules.json & co. so `SentenceTransformer(out)` reproduces `model.embed(…, pooling)`.

    The legacy module names and pooling flags are used on purpose: every sentence-transformers release reads them.
    """
    import safetensors.torch

    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    hidden = model.hidden_size
    pool_cfg = {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": pooling in ("cls_before_pooler", "cls"),
        "pooling_mode_mean_tokens": pooling == "avg",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pool_cfg, indent=2) + "\n", encoding="utf-8")
    if pooling == "cls":
        # CLS after the MLP: the MLP becomes a Dense module with a tanh activation.
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
        dense = out / "2_Dense"
        dense.mkdir()
        dense_cfg = {"in_features": hidden, "out_features": hidden, "bias": True,
                     "activation_function": "torch.nn.modules.activation.Tanh"}
        (dense / "config.json").write_text(json.dumps(dense_cfg, indent=2) + "\n", encoding="utf-8")
        lin = model.mlp.linear
        safetensors.torch.save_file(
            {"linear.weight": lin.weight.detach().cpu().contiguous(), "linear.bias": lin.bias.detach().cpu().contiguous()},
            str(dense / "model.safetensors"),
        )
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
    st_cfg = {"max_seq_length": _max_seq_length(model.encoder, tokenizer), "do_lower_case": False}
    (out / "sentence_bert_config.json").write_text(json.dumps(st_cfg, indent=2) + "\n", encoding="utf-8")
    (out / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"}, indent=2) + "\n",
        encoding="utf-8",
    )


def _copy_mlp_into_encoder_pooler(model: StudentModel) -> None:
    """Make the HF pooler equal the trained MLP, as the published conversion script ends up doing.

    Then `AutoModel(...).pooler_output` is the `cls` embedding; `cls_before_pooler` is unaffected.
    """
    dense = getattr(getattr(model.encoder, "pooler", None), "dense", None)
    if isinstance(dense, nn.Linear) and dense.weight.shape == model.mlp.linear.weight.shape:
        with torch.no_grad():
            dense.weight.copy_(model.mlp.linear.weight)
            dense.bias.copy_(model.mlp.linear.bias)


def default_heads_path(model_dir: str | os.PathLike[str]) -> Path:
    """`heads.pt` sits beside the model directory: <run>/model/ and <run>/heads.pt."""
    return Path(model_dir).parent / HEADS_FILE


def save_student(
    model: StudentModel,
    tokenizer: Any,
    out_dir: str | os.PathLike[str],
    *,
    pooling: Pooling = "cls_before_pooler",
    heads_path: str | os.PathLike[str] | None = None,
) -> Path:
    """Write `out_dir` (a plain HF model dir that is also a sentence-transformers dir) and the heads file.

    The heads go to `heads_path`, by default `<out_dir>/../heads.pt`. The directory is built in a temp folder
    beside `out_dir` and renamed into place, so `out_dir` is never half-written. Returns `out_dir`.
    """
    if pooling not in POOLINGS:
        raise KdmcseError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    heads_file = Path(heads_path) if heads_path is not None else default_heads_path(out)
    # left by a save that was killed before its rename (a student has one writer, so none is in use)
    for stale in [*out.parent.glob(f".{out.name}.*.tmp"), *out.parent.glob(f".{out.name}.*.old")]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = make_temp_dir(out.parent, prefix=f".{out.name}.", suffix=".tmp")  # the umask's mode, not 0700
    try:
        _copy_mlp_into_encoder_pooler(model)
        model.encoder.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _write_sentence_transformers_files(model, tokenizer, tmp, pooling)
        with atomic_path(heads_file, suffix=".pt.tmp") as heads_tmp, open(heads_tmp, "wb") as f:
            # torch.save names the records inside its zip after the *file name* it is given (here a random temp
            # name); given a file object it uses a fixed one, so the same heads always give the same bytes
            torch.save({**model.heads_state(), "pooling": pooling}, f)
        apply_umask(tmp)  # the weights file arrives 0600 from its writer's temp file
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved student to %s (heads: %s)", out, heads_file)
    return out


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename `src` onto `dst`; an existing `dst` is moved aside first and removed afterwards."""
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.replace(dst, old / dst.name)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_student(
    model_dir: str | os.PathLike[str],
    *,
    heads_path: str | os.PathLike[str] | None = None,
    map_location: str | torch.device = "cpu",
) -> StudentModel:
    """Restore encoder and heads written by :func:`save_student` (tokenizer: `load_tokenizer(model_dir)`)."""
    from transformers import AutoModel

    model_dir = Path(model_dir)
    heads_file = Path(heads_path) if heads_path is not None else default_heads_path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise KdmcseError(f"{model_dir} is not a saved student: config.json missing (re-run training)")
    if not heads_file.is_file():
        raise KdmcseError(f"heads file {heads_file} missing: pass heads_path= or re-run training")
    heads = torch.load(heads_file, map_location=map_location, weights_only=True)
    if heads.get("format") != HEADS_FORMAT:
        raise KdmcseError(f"{heads_file}: unknown heads format {heads.get('format')!r} (expected {HEADS_FORMAT})")
    encoder = AutoModel.from_pretrained(str(model_dir), **float32_load_kwargs())
    if int(encoder.config.hidden_size) != heads["hidden_size"]:
        raise KdmcseError(f"{heads_file} is for hidden size {heads['hidden_size']}, the encoder in {model_dir} "
                          f"has {encoder.config.hidden_size}: the two files come from different runs")
    model = StudentModel(encoder, proj_dim=heads["proj_dim"], teacher_dim=heads["teacher_dim"])
    for name in ("mlp", "grounding", "image_proj", "text_proj"):
        if getattr(model, name) is not None:
            getattr(model, name).load_state_dict(heads[name])
    return model


__all__ = [
    "POOLINGS",
    "StudentModel",
    "TanhHead",
    "default_heads_path",
    "float32_load_kwargs",
    "load_student",
    "load_tokenizer",
    "save_student",
]
