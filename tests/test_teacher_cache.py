"""Teacher cache reader/writer: round trip, memory mapping, and refusal of mismatched or broken caches."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from kdmcse.errors import KdmcseError
from kdmcse.teacher.cache import (
    META_KEY,
    open_teacher_cache,
    read_cache_meta,
    text_sha256,
    write_teacher_cache,
)

META = {"model": "ViT-L-14", "pretrained": "openai", "captions_sha256": "ab" * 32, "precision": "fp32"}


def write_fixture(out: Path, seed: int = 0, dim: int = 8, meta: dict | None = None) -> dict:
    rng = np.random.default_rng(seed)
    image_ids = ["1000", "2000", "3000"]
    data = dict(
        image_ids=image_ids,
        image_emb=rng.normal(size=(3, dim)).astype(np.float32) * 10,
        caption_ids=np.array([4, 0, 2, 1, 3], dtype=np.int64),
        caption_image_ids=["2000", "1000", "2000", "3000", "1000"],
        caption_texts=["a dog", "a cat", "two dogs", "a car", "the cat sleeps"],
        caption_emb=rng.normal(size=(5, dim)).astype(np.float32) * 10,
    )
    write_teacher_cache(out, meta=meta or META, **data)
    return data


def test_round_trip_memory_maps_embeddings(tmp_path):
    data = write_fixture(tmp_path / "c")
    cache = open_teacher_cache(tmp_path / "c", expect={**META, "dim": 8})
    assert isinstance(cache.image_emb, np.memmap) and isinstance(cache.caption_emb, np.memmap)
    assert cache.image_emb.dtype == np.float32 and not cache.image_emb.flags.writeable
    np.testing.assert_array_equal(cache.image_emb, data["image_emb"])
    np.testing.assert_array_equal(cache.caption_emb, data["caption_emb"])
    np.testing.assert_array_equal(cache.caption_ids, data["caption_ids"])
    assert cache.caption_ids.dtype == np.int64 and cache.caption_image_row.dtype == np.int64
    np.testing.assert_array_equal(cache.caption_image_row, [1, 0, 1, 2, 0])
    assert cache.dim == 8 and cache.image_ids == data["image_ids"]
    # the caller's metadata comes back, with the facts the writer adds
    for key, value in META.items():
        assert cache.meta[key] == value
    assert cache.meta["n_images"] == 3 and cache.meta["n_captions"] == 5 and cache.meta["dim"] == 8
    assert cache.meta["normalised"] is False
    assert read_cache_meta(tmp_path / "c") == cache.meta
    captions = pq.read_table(tmp_path / "c" / "captions.parquet")
    assert captions.column("text_sha256").to_pylist() == [text_sha256(t) for t in data["caption_texts"]]
    assert captions.schema.field("emb").type == pa.list_(pa.float32(), 8)


@pytest.mark.parametrize(
    "expect, word",
    [
        ({"model": "ViT-B-32"}, "model"),
        ({"pretrained": "laion2b_s34b_b79k"}, "pretrained"),
        ({"dim": 512}, "dim"),
        ({"captions_sha256": "cd" * 32}, "captions_sha256"),
        ({"no_such_key": 1}, "no_such_key"),
    ],
)
def test_refuses_a_cache_that_does_not_match_expect(tmp_path, expect, word):
    write_fixture(tmp_path / "c")
    with pytest.raises(KdmcseError, match=word):
        open_teacher_cache(tmp_path / "c", expect=expect)


def test_none_in_expect_is_not_checked(tmp_path):
    write_fixture(tmp_path / "c")
    assert open_teacher_cache(tmp_path / "c", expect={"model": "ViT-L-14", "captions_sha256": None}).dim == 8


@pytest.mark.parametrize("name", ["images.parquet", "captions.parquet", "image_emb.npy", "caption_emb.npy"])
def test_refuses_a_cache_with_a_missing_file(tmp_path, name):
    write_fixture(tmp_path / "c")
    (tmp_path / "c" / name).unlink()
    with pytest.raises(KdmcseError, match=name):
        open_teacher_cache(tmp_path / "c")


def test_refuses_missing_folder(tmp_path):
    with pytest.raises(KdmcseError, match="does not exist"):
        open_teacher_cache(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["caption_emb.npy", "captions.parquet"])
def test_refuses_a_truncated_file(tmp_path, name):
    write_fixture(tmp_path / "c")
    path = tmp_path / "c" / name
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(KdmcseError, match="rebuild"):
        open_teacher_cache(tmp_path / "c")


@pytest.mark.parametrize("name", ["image_emb.npy", "caption_emb.npy", "captions.parquet"])
def test_refuses_files_mixed_from_two_runs(tmp_path, name):
    write_fixture(tmp_path / "c", seed=0)
    write_fixture(tmp_path / "other", seed=1)  # same shapes, other numbers
    shutil.copy(tmp_path / "other" / name, tmp_path / "c" / name)
    with pytest.raises(KdmcseError, match="different runs|does not belong"):
        open_teacher_cache(tmp_path / "c")


def test_refuses_a_caption_without_an_image_row(tmp_path):
    write_fixture(tmp_path / "c")
    path = tmp_path / "c" / "captions.parquet"
    table = pq.read_table(path)
    ids = pc.if_else(pc.equal(table.column("image_id"), "3000"), "9999", table.column("image_id"))
    table = table.set_column(table.schema.get_field_index("image_id"), "image_id", ids)
    pq.write_table(table, path)  # keeps the schema metadata, so only the row check can catch it
    with pytest.raises(KdmcseError, match="no image row.*9999"):
        open_teacher_cache(tmp_path / "c")


def test_refuses_parquet_written_by_something_else(tmp_path):
    write_fixture(tmp_path / "c")
    path = tmp_path / "c" / "images.parquet"
    pq.write_table(pq.read_table(path).replace_schema_metadata({}), path)
    with pytest.raises(KdmcseError, match=META_KEY.decode()):
        open_teacher_cache(tmp_path / "c")


def test_writer_refuses_inconsistent_inputs_before_writing(tmp_path):
    ok = dict(
        image_ids=["a", "b"], image_emb=np.zeros((2, 4)), caption_ids=np.array([0, 1]),
        caption_image_ids=["a", "b"], caption_texts=["x", "y"], caption_emb=np.zeros((2, 4)), meta={},
    )
    bad_cases = {
        "no image row": {**ok, "caption_image_ids": ["a", "zzz"]},
        "not unique": {**ok, "caption_ids": np.array([1, 1])},
        "same embedding dimension": {**ok, "caption_emb": np.zeros((2, 5))},
        "differ in length": {**ok, "caption_texts": ["x"]},
        "meta says dim": {**ok, "meta": {"dim": 768}},
    }
    for message, kwargs in bad_cases.items():
        with pytest.raises(KdmcseError, match=message):
            write_teacher_cache(tmp_path / "c", **kwargs)
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------- non-finite rows
@pytest.mark.parametrize("which", ["image_emb", "caption_emb"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_writer_refuses_non_finite_rows(tmp_path, which, value):
    rng = np.random.default_rng(0)
    data = dict(image_ids=["a", "b"], image_emb=rng.normal(size=(2, 4)).astype(np.float32),
                caption_ids=np.array([0, 1, 2]), caption_image_ids=["a", "b", "b"], caption_texts=["x", "y", "z"],
                caption_emb=rng.normal(size=(3, 4)).astype(np.float32))
    data[which][1, 2] = value
    with pytest.raises(KdmcseError, match=r"row 1 .*not finite"):
        write_teacher_cache(tmp_path / "c", meta=META, **data)
    assert not (tmp_path / "c").exists() or list((tmp_path / "c").iterdir()) == []


@pytest.mark.parametrize("name,row", [("caption_emb.npy", 2), ("image_emb.npy", 1)])
def test_reader_finds_a_non_finite_row_anywhere(tmp_path, name, row):
    # A middle row: the fingerprint (shape, first and last rows) cannot see it; only a pass over every row can.
    write_fixture(tmp_path / "c")
    emb = np.load(tmp_path / "c" / name, mmap_mode="r+")
    emb[row, 3] = np.nan
    emb.flush()
    del emb
    with pytest.raises(KdmcseError, match=rf"{name}.* row {row} .*not finite"):
        open_teacher_cache(tmp_path / "c")


def test_large_cache_is_checked_in_blocks(tmp_path, monkeypatch):
    from kdmcse.teacher import cache as C

    monkeypatch.setattr(C, "FINITE_BLOCK_ROWS", 2)  # several blocks even for the fixture
    write_fixture(tmp_path / "c")
    emb = np.load(tmp_path / "c" / "caption_emb.npy", mmap_mode="r+")
    emb[3, 0] = -np.inf
    emb.flush()
    del emb
    with pytest.raises(KdmcseError, match="row 3"):
        open_teacher_cache(tmp_path / "c")
