"""Teacher stage: embeddings equal direct open_clip calls, resume after a kill, bad images, CLI errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from kdmcse.__main__ import main as kdmcse_main
from kdmcse.errors import KdmcseError
from kdmcse.io import sha256_file
from kdmcse.teacher import captions as C
from kdmcse.teacher import model as M
from kdmcse.teacher import run as T
from kdmcse.teacher import work as W
from kdmcse.teacher.cache import open_teacher_cache, text_sha256

open_clip = pytest.importorskip("open_clip")

TINY_MODEL = "kdmcse-tiny-clip"
TINY_CFG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
CAPTIONS = [
    "a dog runs on the grass",
    "two people sitting near the water",
    "a red car",
    "a child playing with a blue ball in the snow while a man watches from the street",
    "cat",
    "a woman riding a bicycle down a long road next to green fields",
    "three boys",
]


@pytest.fixture()
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_clip.json"
    path.write_text(json.dumps(TINY_CFG))
    return path


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Small JPEGs of different sizes and aspect ratios, so resize and centre crop both matter."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(30, 70)), int(rng.integers(30, 90))
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        path = folder / f"img{i:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def make_caption_table(path: Path, images: list[Path], captions_per_image: int = 3, root: Path | None = None) -> Path:
    rows = {"image_id": [], "image_path": [], "caption_id": [], "caption": []}
    k = 0
    for i, img in enumerate(images):
        for j in range(captions_per_image):
            rows["image_id"].append(img.stem)
            rows["image_path"].append(str(img.relative_to(root)) if root else str(img))
            rows["caption_id"].append(k)
            rows["caption"].append(f"{CAPTIONS[(i + j) % len(CAPTIONS)]} {i} {j}")
            k += 1
    table = pa.table({**rows, "caption_id": pa.array(rows["caption_id"], type=pa.int64())})
    pq.write_table(table, path)
    return path


@pytest.fixture()
def dataset(tmp_path: Path) -> tuple[Path, list[Path]]:
    images = make_images(tmp_path / "imgs", 7)
    return make_caption_table(tmp_path / "captions.parquet", images), images


def run(captions: Path, out: Path, cfg: Path, **kw):
    kw.setdefault("workers", 0)
    return T.run_teacher(captions, out, model=TINY_MODEL, pretrained="none", model_config=cfg, device="cpu", **kw)


def reference_embeddings(cfg: Path, images: list[Path], captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Direct `encode_image`/`encode_text` calls, one item at a time, with the seed the stage used."""
    from PIL import Image

    folder = cfg.parent / "reference_cfg"
    folder.mkdir(exist_ok=True)
    (folder / f"{TINY_MODEL}.json").write_text(cfg.read_text())
    open_clip.add_model_config(folder)
    torch.manual_seed(M.RANDOM_INIT_SEED)  # the stage seeds a random init with this
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=None)
    model.eval()
    with torch.inference_mode():
        img = [model.encode_image(preprocess(Image.open(p)).unsqueeze(0)) for p in images]
        txt = [model.encode_text(open_clip.tokenize([c])) for c in captions] or [torch.zeros(0, 24)]
    return torch.cat(img).numpy(), torch.cat(txt).numpy()


def test_cache_rows_equal_direct_open_clip_calls(dataset, tiny_config, tmp_path, caplog):
    captions, images = dataset
    caplog.set_level(logging.WARNING)
    meta = run(captions, tmp_path / "out", tiny_config, batch_size=4, chunk_size=5)
    assert any("RANDOM weights" in r.getMessage() for r in caplog.records)  # the loud warning for --pretrained none

    table = pq.read_table(captions).to_pydict()
    ref_img, ref_txt = reference_embeddings(tiny_config, images, table["caption"])

    cache = open_teacher_cache(tmp_path / "out", expect={"model": TINY_MODEL, "pretrained": "none", "dim": 24})
    assert cache.image_emb.shape == (7, 24) and cache.caption_emb.shape == (21, 24)
    np.testing.assert_allclose(cache.image_emb, ref_img, atol=1e-5, rtol=0)
    np.testing.assert_allclose(cache.caption_emb, ref_txt, atol=1e-5, rtol=0)
    # each caption points at its own image's row; embeddings are unnormalised
    assert [cache.image_ids[r] for r in cache.caption_image_row] == table["image_id"]
    np.testing.assert_array_equal(cache.caption_ids, table["caption_id"])
    assert not np.allclose(np.linalg.norm(cache.caption_emb, axis=1), 1.0)

    # the Parquet tables hold the same rows as the memory-mapped siblings
    img_pq = pq.read_table(tmp_path / "out" / "images.parquet")
    cap_pq = pq.read_table(tmp_path / "out" / "captions.parquet")
    assert img_pq.schema.field("emb").type == pa.list_(pa.float32(), 24)
    np.testing.assert_array_equal(np.stack(img_pq.column("emb").to_numpy(zero_copy_only=False)), cache.image_emb)
    np.testing.assert_array_equal(np.stack(cap_pq.column("emb").to_numpy(zero_copy_only=False)), cache.caption_emb)
    assert cap_pq.column("text_sha256").to_pylist() == [text_sha256(c) for c in table["caption"]]

    # metadata round trip
    assert cache.meta["random_init"] is True and cache.meta["pretrained"] == "none"
    assert cache.meta["normalised"] is False and cache.meta["precision"] == "fp32"
    assert cache.meta["captions_sha256"] == sha256_file(captions)
    assert cache.meta["versions"]["open_clip"] == open_clip.__version__
    assert cache.meta["versions"]["torch"] == torch.__version__
    assert cache.meta["model_config"] == TINY_CFG
    assert cache.meta["n_images"] == 7 and cache.meta["n_captions"] == 21 and cache.meta["skipped_images"] == []
    assert "Resize" in cache.meta["preprocessing"]["transform"]
    assert meta["content_sha256"] == cache.meta["content_sha256"]
    assert not (tmp_path / "out.work").exists()  # the work folder goes once the output is complete


def test_workers_and_batching_do_not_change_results(dataset, tiny_config, tmp_path):
    captions, _ = dataset
    torch.manual_seed(0)
    run(captions, tmp_path / "a", tiny_config, batch_size=2, chunk_size=3, workers=0)
    torch.manual_seed(0)
    run(captions, tmp_path / "b", tiny_config, batch_size=16, chunk_size=100, workers=2)
    a, b = open_teacher_cache(tmp_path / "a"), open_teacher_cache(tmp_path / "b")
    np.testing.assert_allclose(a.image_emb, b.image_emb, atol=1e-5, rtol=0)
    np.testing.assert_allclose(a.caption_emb, b.caption_emb, atol=1e-5, rtol=0)


def test_trimmed_text_encoder_matches_full_context(tiny_config):
    torch.manual_seed(3)
    teacher = T.load_teacher(TINY_MODEL, "none", model_config=tiny_config, device="cpu")
    assert C._trimmable_text_tower(teacher.model, teacher.tokenizer)
    tokens = teacher.tokenizer(CAPTIONS)
    with torch.inference_mode():
        full = teacher.model.encode_text(tokens).numpy()
    fast = C.encode_captions_batched(teacher, tokens, batch_size=3)
    np.testing.assert_allclose(fast, full, atol=1e-5, rtol=0)
    assert int(C.token_lengths(tokens).max()) < 77  # the padding really was cut


def test_resume_after_kill_reuses_finished_chunks(dataset, tiny_config, tmp_path, monkeypatch):
    captions, _ = dataset
    torch.manual_seed(7)
    run(captions, tmp_path / "ref", tiny_config, batch_size=2, chunk_size=3)

    saved: list[tuple[str, int]] = []
    real_save = W.save_chunk
    kill = {"armed": True}

    def save_then_die(work_dir, kind, index, **arrays):
        real_save(work_dir, kind, index, **arrays)
        saved.append((kind, index))
        if kill.pop("armed", False):
            raise KeyboardInterrupt("simulated kill after the first chunk")

    monkeypatch.setattr(W, "save_chunk", save_then_die)
    torch.manual_seed(7)
    with pytest.raises(KeyboardInterrupt):
        run(captions, tmp_path / "out", tiny_config, batch_size=2, chunk_size=3)
    assert not (tmp_path / "out" / "images.parquet").exists()
    assert (tmp_path / "out.work" / "images-00000.npz").is_file()

    saved.clear()
    torch.manual_seed(7)
    run(captions, tmp_path / "out", tiny_config, batch_size=2, chunk_size=3)
    # 7 images in chunks of 3 -> 3 chunks, 21 captions -> 7 chunks; the finished image chunk 0 is not redone
    assert ("images", 0) not in saved
    assert sorted(saved) == [("captions", i) for i in range(7)] + [("images", 1), ("images", 2)]
    ref, out = open_teacher_cache(tmp_path / "ref"), open_teacher_cache(tmp_path / "out")
    np.testing.assert_array_equal(out.image_emb, ref.image_emb)
    np.testing.assert_array_equal(out.caption_emb, ref.caption_emb)
    assert out.meta == ref.meta


def test_work_folder_of_another_job_is_discarded(dataset, tiny_config, tmp_path):
    captions, _ = dataset
    work = tmp_path / "out.work"
    work.mkdir()
    (work / "job.json").write_text(json.dumps({"captions_sha256": "something else"}))
    np.savez(work / "images-00000.npz", keys=np.array(["img000"]), emb=np.ones((1, 24)), errors=np.array([""]))
    run(captions, tmp_path / "out", tiny_config, chunk_size=3)
    assert not np.any(open_teacher_cache(tmp_path / "out").image_emb == 1.0)


def corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])  # a JPEG header with no image data


def test_corrupt_jpeg_fails_naming_the_file(dataset, tiny_config, tmp_path, caplog):
    captions, images = dataset
    corrupt(images[2])
    caplog.set_level(logging.ERROR)
    with pytest.raises(KdmcseError, match="img002.jpg"):
        run(captions, tmp_path / "out", tiny_config, chunk_size=3)
    assert any("img002.jpg" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "out" / "images.parquet").exists()


def test_skip_bad_images_drops_them_from_both_tables(dataset, tiny_config, tmp_path):
    captions, images = dataset
    corrupt(images[2])
    images[5].unlink()  # a missing file is just as unreadable
    torch.manual_seed(5)
    run(captions, tmp_path / "out", tiny_config, chunk_size=3, skip_bad_images=True)
    cache = open_teacher_cache(tmp_path / "out")
    assert cache.image_ids == ["img000", "img001", "img003", "img004", "img006"]
    table = pq.read_table(captions).to_pydict()
    kept = [cid for cid, iid in zip(table["caption_id"], table["image_id"]) if iid not in {"img002", "img005"}]
    np.testing.assert_array_equal(cache.caption_ids, kept)
    assert cache.caption_emb.shape == (15, 24)
    skipped = {s["image_id"]: s for s in cache.meta["skipped_images"]}
    assert set(skipped) == {"img002", "img005"} and skipped["img002"]["error"]
    assert cache.meta["n_skipped_captions"] == 6 and cache.meta["n_images_source"] == 7

    # the kept rows equal those of a clean run on the same (seeded) model
    keep = [p for p in images if p.stem not in {"img002", "img005"}]
    ref_img, _ = reference_embeddings(tiny_config, keep, [])
    np.testing.assert_allclose(cache.image_emb, ref_img, atol=1e-5, rtol=0)


def test_missing_image_fails_before_loading_the_model(dataset, tiny_config, tmp_path, monkeypatch):
    captions, images = dataset
    images[4].unlink()
    monkeypatch.setattr(T, "load_teacher", lambda *a, **k: pytest.fail("model loaded before input checks"))
    with pytest.raises(KdmcseError, match="img004.jpg"):
        run(captions, tmp_path / "out", tiny_config)


def test_bad_caption_table_is_one_clear_error(tmp_path, tiny_config):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"image_id": ["a"], "caption_id": [0], "caption": ["x"]}), bad)
    with pytest.raises(KdmcseError, match="image_path"):
        run(bad, tmp_path / "out", tiny_config)
    dup = tmp_path / "dup.parquet"
    pq.write_table(pa.table({"image_id": ["a", "a"], "image_path": ["p", "p"], "caption_id": [1, 1],
                             "caption": ["x", "y"]}), dup)
    with pytest.raises(KdmcseError, match="caption_id"):
        run(dup, tmp_path / "out", tiny_config)


def test_cli_runs_with_relative_image_paths(tmp_path, tiny_config, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    images = make_images(tmp_path / "photos", 3)
    captions = make_caption_table(tmp_path / "caps.parquet", images, 2, root=tmp_path)
    argv = ["teacher", "--captions", "caps.parquet", "--out-dir", "cache", "--model", TINY_MODEL,
            "--pretrained", "none", "--model-config", str(tiny_config), "--device", "cpu", "--workers", "0",
            "--batch-size", "2"]
    assert kdmcse_main(argv) == 0
    cache = open_teacher_cache(tmp_path / "cache", expect={"captions_sha256": sha256_file(captions)})
    assert cache.caption_emb.shape == (6, 24)

    assert kdmcse_main(argv[:-4] + ["--precision", "fp16", "--device", "cpu"]) == 2
    assert "GPU only" in capsys.readouterr().err
    assert kdmcse_main(["teacher", "--captions", "caps.parquet", "--out-dir", "c2", "--model", "ViT-B-32",
                        "--pretrained", "no-such-tag", "--device", "cpu"]) == 2
    assert "no-such-tag" in capsys.readouterr().err


def test_openai_tag_gets_quick_gelu(monkeypatch):
    # OpenAI's weights were trained with QuickGELU; open_clip only warns on a mismatch, so the stage must ask.
    seen = {}

    def fake_create(model, **kwargs):
        seen.update(kwargs, model=model)
        raise RuntimeError("offline")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake_create)
    with pytest.raises(KdmcseError, match="offline.*--pretrained"):
        T.load_teacher("ViT-L-14", "openai", device="cpu")
    assert seen["model"] == "ViT-L-14" and seen["pretrained"] == "openai" and seen["force_quick_gelu"] is True
    seen.clear()
    with pytest.raises(KdmcseError):
        T.load_teacher("ViT-B-32", "laion2b_s34b_b79k", device="cpu")
    assert seen["force_quick_gelu"] is False


def test_local_checkpoint_is_recognised_by_its_checksum(tmp_path, tiny_config, monkeypatch):
    # The published OpenAI ViT-L-14 file is named by its sha256 in open_clip's registry; a copy on an offline
    # cluster must count as `--pretrained openai` (metadata, QuickGELU).
    assert M.identify_pretrained_tag(
        "ViT-L-14", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836") == "openai"
    assert M.identify_pretrained_tag("ViT-L-14", "0" * 64) is None

    torch.manual_seed(11)
    teacher = T.load_teacher(TINY_MODEL, "none", model_config=tiny_config, device="cpu")
    ckpt = tmp_path / "weights.pt"
    torch.save(teacher.model.state_dict(), ckpt)
    loaded = T.load_teacher(TINY_MODEL, str(ckpt), model_config=tiny_config, device="cpu")
    assert loaded.meta["pretrained"] == "weights.pt" and loaded.meta["pretrained_source"] == "file"
    assert loaded.meta["pretrained_sha256"] == sha256_file(ckpt) and loaded.meta["random_init"] is False
    for a, b in zip(teacher.model.state_dict().values(), loaded.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the weights really came from the file

    monkeypatch.setattr(M, "identify_pretrained_tag", lambda model, sha: "openai")
    assert T.load_teacher(TINY_MODEL, str(ckpt), model_config=tiny_config, device="cpu").meta["pretrained"] == "openai"


def test_random_init_is_seeded_and_leaves_the_global_rng_alone(tiny_config):
    # Two runs of a test config must give the same cache; the caller's RNG stream must not shift.
    before = torch.get_rng_state()
    a = T.load_teacher(TINY_MODEL, "none", model_config=tiny_config, device="cpu").model.state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(12345)  # a different global state must not change the weights
    b = T.load_teacher(TINY_MODEL, "none", model_config=tiny_config, device="cpu").model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gpu_defaults_fp16_and_decode_workers_from_the_threads(monkeypatch):
    """Resolved without a GPU: `auto` is fp16 on CUDA (the released extraction's half precision), fp32 on CPU."""
    assert M.resolve_precision("auto", torch.device("cuda", 0)) == "fp16"
    assert M.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert M.resolve_precision("bf16", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(T, "available_cpus", lambda: 16)
    # one worker per thread of the job but the one feeding the GPU; never more than the cores it has
    assert T.decode_workers(8, "cuda") == 7 and T.decode_workers(0, "cuda") == 15 and T.decode_workers(64, "cuda") == 15
    assert T.decode_workers(4, "cpu") == 4 and T.decode_workers(1, "cuda") == 1
    args = T.build_parser().parse_args(["--captions", "c", "--out-dir", "o"])
    assert (args.workers, args.precision, args.threads) == (-1, "auto", 0)


def test_default_workers_follow_the_threads_on_cpu(dataset, tiny_config, tmp_path, caplog):
    captions, _ = dataset
    caplog.set_level(logging.INFO, logger="kdmcse.teacher.run")
    run(captions, tmp_path / "a", tiny_config, workers=-1, threads=1, batch_size=4)
    assert "(fp32, batch 4, 1 workers, 1 torch threads)" in caplog.text
    run(captions, tmp_path / "b", tiny_config, workers=0, batch_size=4)
    a = open_teacher_cache(tmp_path / "a", expect={})
    b = open_teacher_cache(tmp_path / "b", expect={})
    np.testing.assert_array_equal(a.image_emb, b.image_emb)
