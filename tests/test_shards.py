"""Webdataset shards: img2dataset fetching from 127.0.0.1, caption tables that name shard and member, the
streaming teacher (same embeddings as loose files, resume per shard, stale shards), and float16 caches."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from http_server import FixtureServer
from shard_fixtures import photo_files, url_caption_tsv
from kdmcse.__main__ import main as kdmcse_main
from kdmcse.data.shards import SHARDS_META_KEY, prepare_shard_captions, split_member
from kdmcse.errors import KdmcseError
from kdmcse.io import read_json, sha256_file
from kdmcse.teacher import run as T
from kdmcse.teacher import work as W
from kdmcse.teacher.cache import open_teacher_cache, write_teacher_cache
from kdmcse.teacher.shards import CHUNK_KIND

pytest.importorskip("img2dataset")

TINY_MODEL = "kdmcse-tiny-clip"
TINY_CFG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
N_OK = 7  # images the server has; the list also names one it does not have, and one past --pairs


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory):
    """img2dataset's shards of 8 listed URLs (7 answer, 1 is a 404), 4 per shard, fetched from 127.0.0.1."""
    root = tmp_path_factory.mktemp("shards")
    files = photo_files(N_OK)
    with FixtureServer(files) as server:
        paths = [*files, "/img/missing.jpg", "/img/past-pairs.jpg"]
        tsv = root / "cc12m.tsv"
        tsv.write_bytes(url_caption_tsv(server.url("").rstrip("/"), paths))
        manifest = root / "tiny.json"
        rc = kdmcse_main(["shards", "--manifest", str(manifest), "--tsv", str(tsv), "--out-dir", str(root / "tiny"),
                          "--pairs", "8", "--samples-per-shard", "4", "--processes", "1", "--threads", "4",
                          "--image-size", "48", "--timeout", "5"])
        assert rc == 0
        requested = {p for p, _ in server.requests}
    return root, manifest, requested, files


def test_img2dataset_fetches_the_first_pairs_into_webdataset_shards(fetched):
    root, manifest_path, requested, files = fetched
    assert requested == set(files) | {"/img/missing.jpg"}  # the 9th row is past --pairs 8: never fetched
    manifest = read_json(manifest_path)
    assert manifest["source"] == "img2dataset" and manifest["pairs_requested"] == 8
    assert [s["tar"] for s in manifest["shards"]] == ["00000.tar", "00001.tar"]
    assert manifest["totals"] == {"count": 8, "successes": N_OK, "failed_to_download": 1, "failed_to_resize": 0}
    for name in ("00000.tar", "00000.parquet", "00000_stats.json", "00001.tar", "00001.parquet"):
        assert (root / "tiny" / name).is_file(), name
    with tarfile.open(root / "tiny" / "00000.tar") as tar:
        exts = {}
        for m in tar.getmembers():
            key, ext = split_member(m.name)
            exts.setdefault(key, set()).add(ext)
    # one sample per answering URL of the first shard, each with its image, caption and img2dataset's JSON
    assert len(exts) in (3, 4) and all(e == {"jpg", "txt", "json"} for e in exts.values())
    assert not (root / "tiny.urls.parquet").exists()  # the URL list of a finished job is removed


def test_rerun_of_a_finished_job_downloads_nothing(fetched, tmp_path):
    root, manifest_path, _, files = fetched
    with FixtureServer({}) as server:  # every URL would now fail
        tsv = tmp_path / "same.tsv"
        tsv.write_bytes((root / "cc12m.tsv").read_bytes())
        before = sha256_file(root / "tiny" / "00000.tar")
        kdmcse_main(["shards", "--manifest", str(tmp_path / "m.json"), "--tsv", str(tsv), "--out-dir",
                     str(root / "tiny"), "--pairs", "8", "--samples-per-shard", "4", "--processes", "1",
                     "--threads", "4", "--image-size", "48"])
        assert server.requests == []
    assert sha256_file(root / "tiny" / "00000.tar") == before
    assert read_json(tmp_path / "m.json")["totals"]["successes"] == N_OK


def test_caption_table_names_shard_and_member_for_every_image(fetched, tmp_path):
    root, manifest, _, _ = fetched
    out = tmp_path / "captions.parquet"
    assert kdmcse_main(["prepare", "captions", "--dataset", "shards", "--input", str(manifest), "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert table.column_names == ["image_id", "image_path", "caption_id", "caption", "member"]
    assert table.num_rows == N_OK and table.column("caption_id").to_pylist() == list(range(N_OK))
    shard_meta = json.loads(table.schema.metadata[SHARDS_META_KEY])
    for row in table.to_pylist():
        assert row["member"] == f"{row['image_id']}.jpg"
        with tarfile.open(row["image_path"]) as tar:  # the member is in that shard, its caption is the .txt's
            assert tar.getmember(row["member"]).size > 0
            assert tar.extractfile(f"{row['image_id']}.txt").read().decode() == row["caption"]
        assert shard_meta[row["image_path"]]["sha256"] == sha256_file(row["image_path"])
    assert table.column("image_id").to_pylist() == sorted(table.column("image_id").to_pylist())


def _copy_without(src: Path, dst: Path, drop: str) -> None:
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin.getmembers():
            if m.name != drop:
                tout.addfile(m, tin.extractfile(m))


def test_a_listed_member_missing_from_its_shard_fails_naming_it(fetched, tmp_path):
    root, _, _, _ = fetched
    folder = tmp_path / "broken"
    shutil.copytree(root / "tiny", folder)
    with tarfile.open(root / "tiny" / "00001.tar") as tar:
        victim = sorted(m.name for m in tar.getmembers() if m.name.endswith(".jpg"))[0]
    _copy_without(root / "tiny" / "00001.tar", folder / "00001.tar", victim)
    manifest = tmp_path / "broken.json"
    assert kdmcse_main(["shards", "--manifest", str(manifest), "--from", str(folder)]) == 0
    with pytest.raises(KdmcseError, match=rf"{split_member(victim)[0]}.*no image member"):
        prepare_shard_captions(manifest, tmp_path / "c.parquet")
    assert not (tmp_path / "c.parquet").exists()


def test_shards_made_elsewhere_are_used_in_place(fetched, tmp_path, capsys):
    root, _, _, _ = fetched
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    for name in ("00000.tar", "00001.tar"):  # tars only: no img2dataset parquet beside them
        shutil.copy(root / "tiny" / name, folder / name)
    manifest = tmp_path / "m.json"
    assert kdmcse_main(["shards", "--manifest", str(manifest), "--from", str(folder)]) == 0
    assert read_json(manifest)["folder"] == str(folder)
    assert prepare_shard_captions(manifest, tmp_path / "c.parquet", max_images=5) == 5
    paths = pq.read_table(tmp_path / "c.parquet").column("image_path").to_pylist()
    assert set(paths) <= {str(folder / "00000.tar"), str(folder / "00001.tar")}
    (tmp_path / "nothing").mkdir()
    assert kdmcse_main(["shards", "--manifest", str(tmp_path / "n.json"), "--from", str(tmp_path / "nothing")]) == 2
    assert "holds no *.tar files" in capsys.readouterr().err and not (tmp_path / "n.json").exists()


# ----------------------------------------------------------------------------- streaming teacher


@pytest.fixture()
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_clip.json"
    path.write_text(json.dumps(TINY_CFG))
    return path


@pytest.fixture()
def shard_table(fetched, tmp_path) -> Path:
    _, manifest, _, _ = fetched
    out = tmp_path / "captions.parquet"
    prepare_shard_captions(manifest, out)
    return out


def teacher(captions: Path, out: Path, cfg: Path, **kw):
    kw.setdefault("workers", 0)
    return T.run_teacher(captions, out, model=TINY_MODEL, pretrained="none", model_config=cfg, device="cpu", **kw)


def loose_copy(table_path: Path, folder: Path) -> Path:
    """The same images as loose files (the shard members' bytes), in a caption table of the loose layout."""
    table = pq.read_table(table_path)
    folder.mkdir(parents=True)
    paths = []
    for row in table.to_pylist():
        with tarfile.open(row["image_path"]) as tar:
            target = folder / row["member"]
            target.write_bytes(tar.extractfile(row["member"]).read())
        paths.append(str(target))
    loose = table.drop_columns(["member"]).set_column(1, "image_path", [paths]).replace_schema_metadata(None)
    pq.write_table(loose, folder.parent / "loose.parquet")
    return folder.parent / "loose.parquet"


def test_streaming_teacher_equals_the_teacher_on_the_same_images_as_loose_files(shard_table, tiny_config, tmp_path):
    loose = loose_copy(shard_table, tmp_path / "loose")
    teacher(shard_table, tmp_path / "from_shards", tiny_config, batch_size=3, workers=2)
    teacher(loose, tmp_path / "from_files", tiny_config, batch_size=3, workers=2)
    a, b = open_teacher_cache(tmp_path / "from_shards"), open_teacher_cache(tmp_path / "from_files")
    assert a.image_ids == b.image_ids and len(a.image_ids) == N_OK
    np.testing.assert_allclose(a.image_emb, b.image_emb, atol=1e-5, rtol=0)
    np.testing.assert_allclose(a.caption_emb, b.caption_emb, atol=1e-5, rtol=0)
    assert np.abs(a.image_emb).sum() > 0  # real embeddings, not the zeros of unreadable images


def test_streaming_teacher_resumes_per_shard_with_the_same_output(shard_table, tiny_config, tmp_path, monkeypatch):
    teacher(shard_table, tmp_path / "ref", tiny_config, batch_size=2, chunk_size=4)
    saved: list[tuple[str, int]] = []
    real_save = W.save_chunk
    kill = {"armed": True}

    def save_then_die(work_dir, kind, index, **arrays):
        real_save(work_dir, kind, index, **arrays)
        saved.append((kind, index))
        if kind == CHUNK_KIND and kill.pop("armed", False):
            raise KeyboardInterrupt("simulated kill after the first shard")

    monkeypatch.setattr(W, "save_chunk", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        teacher(shard_table, tmp_path / "out", tiny_config, batch_size=2, chunk_size=4)
    assert saved == [(CHUNK_KIND, 0)] and not (tmp_path / "out" / "images.parquet").exists()
    saved.clear()
    teacher(shard_table, tmp_path / "out", tiny_config, batch_size=2, chunk_size=4)
    assert (CHUNK_KIND, 0) not in saved and (CHUNK_KIND, 1) in saved  # shard 0 was not streamed again
    ref, out = open_teacher_cache(tmp_path / "ref"), open_teacher_cache(tmp_path / "out")
    np.testing.assert_array_equal(out.image_emb, ref.image_emb)
    np.testing.assert_array_equal(out.caption_emb, ref.caption_emb)
    assert out.meta == ref.meta


def test_a_shard_that_changed_since_prepare_stops_the_teacher(fetched, tiny_config, tmp_path):
    root, _, _, _ = fetched
    folder = tmp_path / "copy"
    shutil.copytree(root / "tiny", folder)
    manifest = tmp_path / "m.json"
    kdmcse_main(["shards", "--manifest", str(manifest), "--from", str(folder)])
    table = tmp_path / "c.parquet"
    prepare_shard_captions(manifest, table)
    with tarfile.open(folder / "00001.tar", "a") as tar:  # e.g. a re-download appended a sample
        info = tarfile.TarInfo("zzzz.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"new"))
    with pytest.raises(KdmcseError, match="00001.tar changed since the caption table"):
        teacher(table, tmp_path / "out", tiny_config, batch_size=4)


# ----------------------------------------------------------------------------- float16 cache


def _cache_inputs(n: int = 5, d: int = 8):
    rng = np.random.default_rng(0)
    return dict(image_ids=[f"i{k}" for k in range(n)], image_emb=rng.normal(size=(n, d)).astype(np.float32) * 4,
                caption_ids=np.arange(n), caption_image_ids=[f"i{k}" for k in range(n)],
                caption_texts=[f"t{k}" for k in range(n)], caption_emb=rng.normal(size=(n, d)).astype(np.float32),
                meta={"model": "m"})


def test_float16_cache_is_memory_mapped_at_half_the_size(tmp_path):
    inputs = _cache_inputs()
    write_teacher_cache(tmp_path / "f32", **inputs)
    meta = write_teacher_cache(tmp_path / "f16", **inputs, dtype="float16")
    assert meta["emb_dtype"] == "float16"
    c16, c32 = open_teacher_cache(tmp_path / "f16"), open_teacher_cache(tmp_path / "f32")
    assert isinstance(c16.image_emb, np.memmap) and c16.image_emb.dtype == np.float16
    assert c32.image_emb.dtype == np.float32 and "emb_dtype" in c32.meta
    np.testing.assert_array_equal(c16.image_emb, inputs["image_emb"].astype(np.float16))
    np.testing.assert_allclose(c16.caption_emb.astype(np.float32), c32.caption_emb, rtol=1e-3, atol=1e-3)
    assert pq.read_schema(tmp_path / "f16" / "images.parquet").field("emb").type.value_type == "halffloat"
    body = lambda p: p.stat().st_size - 128  # noqa: E731 - .npy header
    assert body(tmp_path / "f16" / "image_emb.npy") * 2 == body(tmp_path / "f32" / "image_emb.npy")


def test_training_casts_float16_teacher_rows_to_float32(tmp_path):
    from kdmcse.train.inputs import TrainData

    inputs = _cache_inputs()
    write_teacher_cache(tmp_path / "c", **inputs, dtype="float16")
    cache = open_teacher_cache(tmp_path / "c")
    data = TrainData(text=None, image_emb=cache.image_emb, caption_emb=cache.caption_emb,
                     pair_caption_row=np.arange(5), pair_image_row=cache.caption_image_row)
    img, cap = data.teacher_batch(np.array([3, 1]))
    assert img.dtype == torch.float32 and cap.dtype == torch.float32
    np.testing.assert_array_equal(img.numpy(), inputs["image_emb"][[3, 1]].astype(np.float16).astype(np.float32))


def test_float16_refuses_embeddings_that_would_overflow(tmp_path):
    inputs = _cache_inputs()
    inputs["image_emb"][2, 3] = 1e6
    with pytest.raises(KdmcseError, match="overflow float16"):
        write_teacher_cache(tmp_path / "c", **inputs, dtype="float16")
    assert not (tmp_path / "c" / "images.parquet").exists()


# ----------------------------------------------------------------------------- bad input, before any download


def test_a_malformed_url_list_line_is_named(tmp_path):
    from kdmcse.data.fetch_shards import read_url_list

    tsv = tmp_path / "list.tsv"
    tsv.write_text("url\tcaption\nhttp://a/1.jpg\ta dog\nno tab on this line\n")
    with pytest.raises(KdmcseError, match=r"list.tsv:3: expected `url<TAB>caption`"):
        read_url_list(tsv, 10)
    assert read_url_list(tsv, 1) == (["http://a/1.jpg"], ["a dog"])  # header skipped, stops at --pairs


def test_missing_img2dataset_is_one_clear_error(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "img2dataset" else real(name, *a))
    tsv = tmp_path / "list.tsv"
    tsv.write_text("http://a/1.jpg\ta dog\n")
    rc = kdmcse_main(["shards", "--manifest", str(tmp_path / "m.json"), "--tsv", str(tsv), "--out-dir",
                      str(tmp_path / "out")])
    assert rc == 2 and "pip install 'kdmcse[cc1m]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.json").exists()
