"""`teacher_skip_bad_images`: the captions of unreadable images are left out by the teacher *and* by training,
and both say how many."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from kdmcse.errors import KdmcseError
from kdmcse.io import sha256_file
from kdmcse.teacher.cache import open_teacher_cache, write_teacher_cache
from kdmcse.train import loop as train_mod

pytest.importorskip("open_clip")

from test_teacher import TINY_CFG, TINY_MODEL, make_caption_table, make_images  # noqa: E402
from test_train import cli, run_config, sentences  # noqa: E402


@pytest.fixture()
def skipped_cache(tmp_path: Path) -> dict[str, Path]:
    """A caption table of 6 images x 3 captions, one image corrupt, and the teacher cache built skipping it."""
    from kdmcse.teacher.run import run_teacher

    images = make_images(tmp_path / "imgs", 6)
    images[3].write_bytes(images[3].read_bytes()[:40])  # a JPEG header with no image data
    pairs = make_caption_table(tmp_path / "captions.parquet", images)
    cfg = tmp_path / "tiny_clip.json"
    cfg.write_text(json.dumps(TINY_CFG))
    teacher = tmp_path / "teacher"
    run_teacher(pairs, teacher, model=TINY_MODEL, pretrained="none", model_config=cfg, device="cpu", workers=0,
                skip_bad_images=True)
    text = tmp_path / "wiki.parquet"
    pd.DataFrame({"text": sentences(60, 0)}).to_parquet(text)
    return {"text": text, "pairs": pairs, "teacher": teacher, "config": cfg}


@pytest.mark.parametrize("objective", ["mcse", "kdmcse"])
def test_training_leaves_out_the_skipped_captions(skipped_cache, tiny_bert_dir, tmp_path, caplog, objective):
    cache = open_teacher_cache(skipped_cache["teacher"])
    assert cache.meta["n_skipped_captions"] == 3 and len(cache.caption_ids) == 15
    cfg = run_config(tiny_bert_dir, objective=objective, teacher={"model": TINY_MODEL, "pretrained": "none"},
                     max_steps=4, checkpoint_minutes=None)
    cfg["teacher"]["model_config_sha256"] = sha256_file(skipped_cache["config"])
    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    assert train_mod.main(cli(cfg, skipped_cache, out, senteval=False)) == 0
    meta = json.loads((out / "run_meta.json").read_text())
    assert meta["inputs"]["pair_rows"] == 15 and meta["inputs"]["pairs_skipped"] == 3
    assert any("1 unreadable image" in r.getMessage() and "3 caption" in r.getMessage()
               and "15 of 18" in r.getMessage() for r in caplog.records), caplog.text


def test_a_caption_missing_without_a_record_is_still_refused(tiny_bert_dir, tmp_path):
    """Only captions the teacher recorded as skipped may be missing; any other gap means a stale cache."""
    from test_train import DIM, TEACHER, write_fixture_data

    d = write_fixture_data(tmp_path / "d")
    table = pq.read_table(d["pairs"]).to_pydict()
    keep = [i for i in range(len(table["caption_id"])) if i != 4]
    rng = np.random.default_rng(0)
    write_teacher_cache(d["teacher"], image_ids=sorted(set(table["image_id"])),
                        image_emb=rng.normal(size=(len(set(table["image_id"])), DIM)).astype(np.float32),
                        caption_ids=np.array(table["caption_id"])[keep],
                        caption_image_ids=[table["image_id"][i] for i in keep],
                        caption_texts=[table["caption"][i] for i in keep],
                        caption_emb=rng.normal(size=(len(keep), DIM)).astype(np.float32),
                        meta=dict(TEACHER, captions_sha256=sha256_file(d["pairs"])))
    with pytest.raises(KdmcseError, match=r"no embedding for 1 caption.*\[4\]"):
        train_mod.main(cli(run_config(tiny_bert_dir), d, tmp_path / "run"))
