"""SentenceEncoder: same vectors as one-sentence-at-a-time encoding, dedupe, order, train/eval state, pooling."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from kdmcse.embedding import SentenceEncoder
from kdmcse.errors import KdmcseError
from kdmcse.evaluate.encoder import load_encoder

SENTENCES = [
    "a man is playing with a red ball .",
    "two dogs",
    "the little girl is sitting on the grass near the water , and a boy is running in the street .",
    "two dogs",
    "a woman",
    "a man is playing with a red ball .",
]


@pytest.fixture()
def model_and_tokenizer(tiny_bert_dir: Path):
    return AutoModel.from_pretrained(tiny_bert_dir), AutoTokenizer.from_pretrained(tiny_bert_dir)


def one_by_one(model, tokenizer, sentences: list[str], pooling: str) -> np.ndarray:
    """Reference: each sentence alone (no padding at all), eval mode."""
    model.eval()
    rows = []
    with torch.no_grad():
        for s in sentences:
            batch = tokenizer([s], return_tensors="pt")
            out = model(**batch)
            h = out.last_hidden_state
            rows.append({"cls_before_pooler": h[0, 0], "avg": h[0].mean(0), "cls": out.pooler_output[0]}[pooling])
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("pooling", ["cls_before_pooler", "avg", "cls"])
def test_matches_unbatched_encoding_in_input_order(model_and_tokenizer, pooling: str) -> None:
    model, tok = model_and_tokenizer
    enc = SentenceEncoder(model, tok, pooling=pooling, batch_size=2, show_progress=False)
    got = enc.encode(SENTENCES)
    assert got.dtype == np.float32 and got.shape == (len(SENTENCES), model.config.hidden_size)
    np.testing.assert_allclose(got, one_by_one(model, tok, SENTENCES, pooling), atol=2e-5, rtol=1e-4)


def test_each_distinct_sentence_is_encoded_once(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    rows_seen = []
    handle = model.register_forward_hook(lambda m, args, kwargs, out: rows_seen.append(kwargs["input_ids"].shape[0]),
                                         with_kwargs=True)
    try:
        got = SentenceEncoder(model, tok, batch_size=128, show_progress=False).encode(SENTENCES)
    finally:
        handle.remove()
    assert sum(rows_seen) == len(set(SENTENCES)) == 4
    np.testing.assert_array_equal(got[0], got[5])
    np.testing.assert_array_equal(got[1], got[3])
    assert not np.allclose(got[0], got[1])


def test_batches_are_length_sorted(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    widths = []
    handle = model.register_forward_hook(lambda m, args, kwargs, out: widths.append(kwargs["input_ids"].shape[1]),
                                         with_kwargs=True)
    try:
        SentenceEncoder(model, tok, batch_size=1, show_progress=False).encode(SENTENCES)
    finally:
        handle.remove()
    lengths = sorted({len(x) for x in tok(list(set(SENTENCES)))["input_ids"]}, reverse=True)
    assert widths == sorted(widths, reverse=True) and widths[0] == lengths[0] and widths[-1] == lengths[-1]


def test_runs_in_eval_mode_and_restores_training_state(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    enc = SentenceEncoder(model, tok, show_progress=False)
    model.eval()
    reference = enc.encode(SENTENCES)
    model.train()
    model.embeddings.dropout.eval()  # a mixed state must come back as it was
    again = enc.encode(SENTENCES)
    np.testing.assert_array_equal(again, reference)  # no dropout during encoding
    assert model.training and model.encoder.training and not model.embeddings.dropout.training
    assert not any(p.grad is not None for p in model.parameters())


def test_truncates_only_past_the_position_limit_with_a_warning(model_and_tokenizer, caplog) -> None:
    model, tok = model_and_tokenizer  # 128 positions
    long = " ".join(["dog"] * 300)
    with caplog.at_level(logging.WARNING, logger="kdmcse.embedding"):
        got = SentenceEncoder(model, tok, show_progress=False).encode([long, "a dog"])
    assert got.shape == (2, model.config.hidden_size) and np.isfinite(got).all()
    assert "1 sentence(s) exceed the model's 128 positions" in caplog.text


def test_cls_uses_the_training_mlp_when_given(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Tanh())
    got = SentenceEncoder(model, tok, pooling="cls", mlp=mlp, show_progress=False).encode(SENTENCES[:3])
    cls = SentenceEncoder(model, tok, show_progress=False).encode(SENTENCES[:3])
    with torch.no_grad():
        expected = mlp(torch.from_numpy(cls)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_load_encoder_reads_a_student_folder_with_heads(tmp_path: Path, tiny_bert_dir: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_bert_dir, run / "model")
    torch.manual_seed(1)
    linear = torch.nn.Linear(32, 32)
    torch.save({"format": 1, "hidden_size": 32, "mlp": {"linear.weight": linear.weight.detach(),
                                                       "linear.bias": linear.bias.detach()}}, run / "heads.pt")
    enc = load_encoder(run, pooling="cls", batch_size=4, device="cpu")
    assert enc.mlp is not None
    base = load_encoder(run / "model", pooling="cls_before_pooler", device="cpu")
    enc.show_progress = base.show_progress = False
    with torch.no_grad():
        expected = torch.tanh(linear(torch.from_numpy(base.encode(["a dog"])))).numpy()
    np.testing.assert_allclose(enc.encode(["a dog"]), expected, atol=1e-5)


def test_bad_arguments(model_and_tokenizer, tmp_path: Path) -> None:
    model, tok = model_and_tokenizer
    with pytest.raises(KdmcseError, match="pooling"):
        SentenceEncoder(model, tok, pooling="max")
    with pytest.raises(KdmcseError, match="empty"):
        SentenceEncoder(model, tok).encode([])
    with pytest.raises(KdmcseError, match="config.json"):
        load_encoder(tmp_path, device="cpu")
    with pytest.raises(KdmcseError, match="not found"):
        load_encoder(tmp_path / "no" / "such" / "model", device="cpu")
