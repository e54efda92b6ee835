"""The §1.3 interleave schedule, the resumable loaders and the collator."""

from __future__ import annotations

import numpy as np
import pytest

from kdmcse.errors import KdmcseError
from kdmcse.train.mixing import CyclingBatches, MixedBatches, TokenizedTexts, mixing_schedule


@pytest.mark.parametrize(
    "n_pairs, step, per_epoch, paired, total",
    [(158_915, 6, 18_109, 3_019, 54_327), (414_113, 2, 22_096, 11_048, 66_288), (29_783, 33, 16_091, 488, 48_273)],
)
def test_schedule_matches_the_worked_numbers(n_pairs, step, per_epoch, paired, total):
    s = mixing_schedule(1_000_000, n_pairs, 64, epochs=3)
    assert s.n_text == 15_625
    assert (s.paired_step, s.steps_per_epoch, s.paired_per_epoch, s.total_steps) == (step, per_epoch, paired, total)
    # the closed form agrees with counting step by step over one epoch
    assert sum(s.is_paired(i) for i in range(s.steps_per_epoch)) == paired
    assert s.paired_steps_until(s.total_steps) == 3 * paired


def test_paired_flag_resets_each_epoch():
    s = mixing_schedule(10, 3, 1, epochs=2)  # n_text 10, n_pair 3, step 3, 13 steps per epoch
    flags = [s.is_paired(i) for i in range(s.total_steps)]
    one_epoch = [i % 3 == 0 for i in range(13)]
    assert flags == one_epoch + one_epoch
    assert s.paired_steps_until(14) == 5 + 1


def test_text_only_schedule_and_max_steps():
    s = mixing_schedule(100, 0, 8, epochs=2)
    assert (s.n_pair, s.steps_per_epoch, s.total_steps) == (0, 13, 26)
    assert not any(s.is_paired(i) for i in range(30))
    assert mixing_schedule(100, 0, 8, epochs=2, max_steps=5).total_steps == 5


def test_more_pair_batches_than_text_batches_is_a_clear_error():
    with pytest.raises(KdmcseError, match="more batches per pass"):
        mixing_schedule(100, 300, 10, epochs=1)


def test_cycling_batches_cover_each_pass_and_reshuffle():
    it = CyclingBatches(10, 4, seed=3)
    passes = [[next(it) for _ in range(3)] for _ in range(2)]
    for batches in passes:
        assert [len(b) for b in batches] == [4, 4, 2]  # no drop_last
        assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    assert not np.array_equal(np.concatenate(passes[0]), np.concatenate(passes[1]))


def test_loader_state_resumes_the_same_stream():
    s = mixing_schedule(23, 7, 3, epochs=3)
    a = MixedBatches(s, 23, 7, 3, seed=5)
    stream = [next(a) for _ in range(40)]
    b = MixedBatches(s, 23, 7, 3, seed=5)
    for _ in range(17):
        next(b)
    c = MixedBatches(s, 23, 7, 3, seed=5)
    c.load_state_dict(b.state_dict())
    rest = [next(c) for _ in range(23)]
    assert [p for p, _ in rest] == [p for p, _ in stream[17:]]
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(rest, stream[17:]))
    other = MixedBatches(s, 24, 7, 3, seed=5)
    with pytest.raises(KdmcseError, match="checkpoint"):
        other.load_state_dict(b.state_dict())


def test_collator_pads_to_longest_and_duplicates_rows(tiny_bert_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    texts = ["a dog", "two people walking near the red car on the road", "the cat"]
    corpus = TokenizedTexts.from_texts(tok, texts, max_length=8)
    assert len(corpus) == 3
    assert len(corpus.row(1)) == 8  # truncated to max_length, [SEP] kept
    batch = corpus.collate(np.array([2, 0]))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    ref = tok([texts[2], texts[0]], padding="longest")
    assert ids.shape == (4, len(ref["input_ids"][0]))
    assert ids[0].tolist() == ids[1].tolist() == ref["input_ids"][0]
    assert ids[2].tolist() == ids[3].tolist() == ref["input_ids"][1]
    assert mask[2].tolist() == ref["attention_mask"][1]
