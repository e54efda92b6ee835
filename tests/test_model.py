"""Student model: shapes, dropout views, and the saved directory as plain HF / sentence-transformers model."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from kdmcse.errors import KdmcseError
from kdmcse.train.model import StudentModel, default_heads_path, load_student, load_tokenizer, save_student

SENTENCES = ["a man is playing with a dog", "two children", "the red car near the street is very good"]


def _batch(tokenizer, sentences=SENTENCES):
    return tokenizer(sentences, padding="longest", truncation=True, max_length=32, return_tensors="pt")


@pytest.fixture()
def student(tiny_bert_dir: Path) -> StudentModel:
    torch.manual_seed(0)
    return StudentModel.from_pretrained(tiny_bert_dir, proj_dim=8, teacher_dim=12)


def test_forward_and_head_shapes(student, tiny_bert_dir):
    tok = load_tokenizer(tiny_bert_dir)
    b = _batch(tok)
    h, z = student(b["input_ids"], b["attention_mask"])
    assert h.shape == z.shape == (3, 32)
    p = student.ground(h)
    assert p.shape == (3, 8)
    torch.testing.assert_close(p.norm(dim=-1), torch.ones(3))
    emb = torch.randn(3, 12) * 10
    for proj in (student.project_image(emb), student.project_text(emb)):
        assert proj.shape == (3, 8)
        torch.testing.assert_close(proj.norm(dim=-1), torch.ones(3))
    # A separate projection per modality.
    assert not torch.allclose(student.project_image(emb), student.project_text(emb))
    # The grounding head reads the CLS vector before the MLP.
    torch.testing.assert_close(p, torch.nn.functional.normalize(torch.tanh(student.grounding.linear(h)), dim=-1))


def test_without_teacher_the_projections_are_absent(tiny_bert_dir):
    m = StudentModel.from_pretrained(tiny_bert_dir, proj_dim=8, teacher_dim=None)
    assert m.image_proj is None and m.text_proj is None
    with pytest.raises(ValueError, match="teacher_dim"):
        m.project_image(torch.zeros(1, 12))


def test_dropout_views_differ_in_train_mode_and_match_in_eval(student, tiny_bert_dir):
    b = _batch(load_tokenizer(tiny_bert_dir))
    # Both views in one forward pass, as the training collator does: [s0, s0, s1, s1, …].
    ids = b["input_ids"].repeat_interleave(2, dim=0)
    mask = b["attention_mask"].repeat_interleave(2, dim=0)
    student.train()
    _, z = student(ids, mask)
    assert not torch.allclose(z[0::2], z[1::2])
    student.eval()
    with torch.no_grad():
        _, z = student(ids, mask)
    torch.testing.assert_close(z[0::2], z[1::2])


def test_dropout_override(tiny_bert_dir):
    m = StudentModel.from_pretrained(tiny_bert_dir, teacher_dim=None, dropout=0.0)
    assert m.encoder.config.hidden_dropout_prob == 0.0 and m.encoder.config.attention_probs_dropout_prob == 0.0
    b = _batch(load_tokenizer(tiny_bert_dir))
    m.train()
    _, z1 = m(b["input_ids"], b["attention_mask"])
    _, z2 = m(b["input_ids"], b["attention_mask"])
    torch.testing.assert_close(z1, z2)


def test_embed_poolings(student, tiny_bert_dir):
    b = _batch(load_tokenizer(tiny_bert_dir))
    student.eval()
    with torch.no_grad():
        hidden = student.encoder(**b).last_hidden_state
        h, z = student(b["input_ids"], b["attention_mask"])
        torch.testing.assert_close(student.embed(b["input_ids"], b["attention_mask"], "cls_before_pooler"), h)
        torch.testing.assert_close(student.embed(b["input_ids"], b["attention_mask"], "cls"), z)
        avg = student.embed(b["input_ids"], b["attention_mask"], "avg")
    n1 = int(b["attention_mask"][1].sum())
    assert n1 < b["input_ids"].shape[1]  # the short sentence is padded: padding must not count
    torch.testing.assert_close(avg[1], hidden[1, :n1].mean(0))
    with pytest.raises(KdmcseError, match="pooling"):
        student.embed(b["input_ids"], b["attention_mask"], "max")


def test_encoder_pooler_is_frozen_and_heads_are_trainable(student):
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert not any(n.startswith("encoder.pooler") for n in trainable)
    for head in ("mlp", "grounding", "image_proj", "text_proj"):
        assert f"{head}.linear.weight" in trainable


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(KdmcseError, match="cannot load encoder config"):
        StudentModel.from_pretrained(tmp_path / "nope")
    with pytest.raises(KdmcseError, match="tokenizer"):
        load_tokenizer(tmp_path / "nope")


@pytest.mark.parametrize("pooling", ["cls_before_pooler", "avg", "cls"])
def test_saved_dir_loads_in_hf_and_sentence_transformers(student, tiny_bert_dir, tmp_path, pooling):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    tok = load_tokenizer(tiny_bert_dir)
    out = save_student(student, tok, tmp_path / "run" / "model", pooling=pooling)
    assert out == tmp_path / "run" / "model"
    assert (out / "model.safetensors").is_file() and (tmp_path / "run" / "heads.pt").is_file()
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temp leftovers
    pool_cfg = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pool_cfg["pooling_mode_cls_token"] is (pooling != "avg")
    assert pool_cfg["pooling_mode_mean_tokens"] is (pooling == "avg")

    student.eval()
    b = _batch(tok)
    with torch.no_grad():
        ours = student.embed(b["input_ids"], b["attention_mask"], pooling)
        hf = AutoModel.from_pretrained(out).eval()
        hf_out = hf(**_batch(AutoTokenizer.from_pretrained(out)))
    if pooling == "cls_before_pooler":
        torch.testing.assert_close(hf_out.last_hidden_state[:, 0], ours)
    if pooling == "cls":  # the HF pooler now is the trained MLP, as after the published conversion
        torch.testing.assert_close(hf_out.pooler_output, ours)

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the files must not rely on deprecated formats
        st = SentenceTransformer(str(out), device="cpu")
    got = st.encode(SENTENCES, convert_to_tensor=True, batch_size=2)
    torch.testing.assert_close(got.cpu(), ours, rtol=1e-5, atol=1e-5)


def test_save_is_atomic_and_replaces_an_existing_dir(student, tiny_bert_dir, tmp_path, monkeypatch):
    tok = load_tokenizer(tiny_bert_dir)
    out = tmp_path / "model"
    save_student(student, tok, out)
    (out / "stale.txt").write_text("old")
    save_student(student, tok, out)
    assert not (out / "stale.txt").exists()

    import kdmcse.train.model as km

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(km, "_write_sentence_transformers_files", boom)
    (out / "marker.txt").write_text("kept")
    with pytest.raises(RuntimeError, match="disk full"):
        save_student(student, tok, out)
    assert (out / "marker.txt").read_text() == "kept"  # the previous save is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heads.pt", "model"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_folder_has_the_modes_of_the_umask(student, tiny_bert_dir, tmp_path, umask):
    """Every file of the model folder (the weights included, which their writer makes 0600) is readable as the
    umask allows, so the folder can be shared or uploaded as it is."""
    import os

    tok = load_tokenizer(tiny_bert_dir)
    old = os.umask(umask)
    try:
        out = save_student(student, tok, tmp_path / "model")
    finally:
        os.umask(old)
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert modes["model.safetensors"] == 0o666 & ~umask
    assert {m for p, m in modes.items() if (out / p).is_file()} == {0o666 & ~umask}, modes
    assert {m for p, m in modes.items() if (out / p).is_dir()} == {0o777 & ~umask}, modes


def test_heads_round_trip(student, tiny_bert_dir, tmp_path):
    tok = load_tokenizer(tiny_bert_dir)
    with torch.no_grad():  # make the heads differ from a fresh init
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_student(student, tok, tmp_path / "model")
    assert default_heads_path(tmp_path / "model") == tmp_path / "heads.pt"
    back = load_student(tmp_path / "model")
    assert (back.hidden_size, back.proj_dim, back.teacher_dim) == (32, 8, 12)
    ours, theirs = student.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        torch.testing.assert_close(theirs[k], ours[k], msg=k)

    # Heads elsewhere, and a mismatched heads file is refused.
    save_student(student, tok, tmp_path / "m2", heads_path=tmp_path / "h" / "custom.pt")
    assert load_student(tmp_path / "m2", heads_path=tmp_path / "h" / "custom.pt").teacher_dim == 12
    with pytest.raises(KdmcseError, match="heads file"):
        load_student(tmp_path / "m2", heads_path=tmp_path / "absent.pt")


def test_saved_student_without_teacher_heads_round_trips(tiny_bert_dir, tmp_path):
    m = StudentModel.from_pretrained(tiny_bert_dir, proj_dim=8, teacher_dim=None)
    save_student(m, load_tokenizer(tiny_bert_dir), tmp_path / "model")
    back = load_student(tmp_path / "model")
    assert back.image_proj is None and back.text_proj is None
    torch.testing.assert_close(back.grounding.linear.weight, m.grounding.linear.weight)


def _tiny_roberta_dir(out: Path) -> Path:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    out.mkdir(parents=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES * 3, vocab_size=300, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(out))
    merges = [tuple(ln.split(" ")) for ln in (out / "merges.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    tok = RobertaTokenizer(vocab=bpe.get_vocab(), merges=merges)
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=40, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    RobertaModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_roberta_backbone(tmp_path):
    src = _tiny_roberta_dir(tmp_path / "roberta")
    tok = load_tokenizer(src)
    m = StudentModel.from_pretrained(src, proj_dim=4, teacher_dim=6)
    assert m.encoder.config.model_type == "roberta"
    b = _batch(tok)
    assert "token_type_ids" not in b or b["token_type_ids"].abs().sum() == 0
    h, z = m(b["input_ids"], b["attention_mask"])
    assert h.shape == z.shape == (3, 16)
    out = save_student(m, tok, tmp_path / "run" / "model")
    sb = json.loads((out / "sentence_bert_config.json").read_text())
    assert sb["max_seq_length"] == 40 - 2  # positions start after the padding index
    from sentence_transformers import SentenceTransformer

    m.eval()
    with torch.no_grad():
        ours = m.embed(b["input_ids"], b["attention_mask"])
    got = SentenceTransformer(str(out), device="cpu").encode(SENTENCES, convert_to_tensor=True)
    torch.testing.assert_close(got.cpu(), ours, rtol=1e-5, atol=1e-5)


def test_half_precision_checkpoint_loads_and_trains_in_float32(tiny_bert_dir, tmp_path):
    """transformers 5 loads a model in its stored dtype by default: a half-precision save must not stay half."""
    from transformers import AutoModel

    from kdmcse.evaluate.encoder import load_encoder

    half = tmp_path / "half"
    AutoModel.from_pretrained(tiny_bert_dir).to(torch.float16).save_pretrained(half)
    load_tokenizer(tiny_bert_dir).save_pretrained(half)
    student = StudentModel.from_pretrained(half, proj_dim=8, teacher_dim=12)
    assert {p.dtype for p in student.parameters()} == {torch.float32}
    assert {p.dtype for p in load_encoder(half, device="cpu").model.parameters()} == {torch.float32}
    out = tmp_path / "run" / "model"
    save_student(student, load_tokenizer(half), out)
    assert {p.dtype for p in load_student(out).parameters()} == {torch.float32}


def test_head_init_hf_is_normal_002_with_zero_bias_and_torch_is_nn_linear_default(tiny_bert_dir):
    # hf: what Hugging Face's init_weights does to the released model's MLP head (it lives inside BertForCL)
    torch.manual_seed(0)
    hf = StudentModel.from_pretrained(tiny_bert_dir, proj_dim=8, teacher_dim=12, head_init="hf")
    torch.manual_seed(0)
    default = StudentModel.from_pretrained(tiny_bert_dir, proj_dim=8, teacher_dim=12, head_init="torch")
    w, b = hf.mlp.linear.weight, hf.mlp.linear.bias
    assert torch.count_nonzero(b) == 0
    assert w.std().item() == pytest.approx(hf.encoder.config.initializer_range, rel=0.15)
    bound = 1 / hf.mlp.linear.in_features ** 0.5  # nn.Linear: uniform(-1/sqrt(in), 1/sqrt(in)), bias too
    assert default.mlp.linear.weight.abs().max() <= bound and torch.count_nonzero(default.mlp.linear.bias) > 0
    assert default.mlp.linear.weight.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.15)
    # the grounding and teacher projections sit outside the HF model in the released code: default init in both
    for name in ("grounding", "image_proj", "text_proj"):
        for key, value in getattr(hf, name).state_dict().items():
            assert torch.equal(value, getattr(default, name).state_dict()[key]), f"{name}.{key}"


def test_unknown_head_init_is_refused(tiny_bert_dir):
    with pytest.raises(KdmcseError, match="head_init"):
        StudentModel.from_pretrained(tiny_bert_dir, proj_dim=8, teacher_dim=None, head_init="xavier")
