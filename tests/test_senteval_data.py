"""SentEval readers on tiny files in the real formats, and the canonical sizes on the real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kdmcse.data import senteval as sd
from kdmcse.errors import KdmcseError

WORDS = "a man woman dog cat is are playing sitting on the red blue grass street two people near water".split()


def _sentence(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(2, 9))))


def write_senteval_tree(root: Path, pairs_per_subset: int = 4, seed: int = 0) -> Path:
    """A complete tiny SentEval `data/downstream` tree in the released formats (quirks included).

    STS15/16 gold files hold a blank line (an unscored pair), STS-B has no header, SICK and MRPC have one,
    MRPC starts with a UTF-8 BOM, MR/CR/SUBJ/MPQA/TREC are latin-1 with a non-ASCII character.
    """
    rng = np.random.default_rng(seed)
    for year, subsets in sd.STS_SUBSETS.items():
        folder = root / "STS" / f"{year}-en-test"
        folder.mkdir(parents=True)
        for name in subsets:
            lines = [f"{_sentence(rng)}\t{_sentence(rng)}" for _ in range(pairs_per_subset)]
            gold = [f"{rng.uniform(0, 5):.2f}" for _ in lines]
            if year in ("STS15", "STS16"):
                lines.append(f"{_sentence(rng)}\t{_sentence(rng)}")
                gold.append("")  # unscored pair: SentEval drops it
            (folder / f"STS.input.{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
            (folder / f"STS.gs.{name}.txt").write_text("\n".join(gold) + "\n", encoding="utf-8")
    stsb = root / "STS" / "STSBenchmark"
    stsb.mkdir(parents=True)
    for split, fname in sd.STSB_FILES.items():
        rows = [f"main-captions\tMSRvid\t2012test\t{i:04d}\t{rng.uniform(0, 5):.3f}\t{_sentence(rng)}\t{_sentence(rng)}"
                for i in range(pairs_per_subset + 2)]
        (stsb / fname).write_text("\n".join(rows) + "\n", encoding="utf-8")
    sick = root / "SICK"
    sick.mkdir()
    for split, fname in sd.SICK_FILES.items():
        rows = ["pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"]
        rows += [f"{i}\t{_sentence(rng).capitalize()}\t{_sentence(rng)}\t{rng.uniform(1, 5):.1f}\tNEUTRAL"
                 for i in range(pairs_per_subset + 1)]
        (sick / fname).write_text("\n".join(rows) + "\n", encoding="utf-8")
    for folder, pos, neg in sd.BINARY_FILES.values():
        (root / folder).mkdir()
        (root / folder / pos).write_bytes("caf\u00e9  is good\nnice one\nvery good\n".encode("latin-1"))
        (root / folder / neg).write_bytes("bad\tone\nnot good\n".encode("latin-1"))
    sst = root / "SST" / "binary"
    sst.mkdir(parents=True)
    for fname in sd.SST2_FILES.values():
        sst.joinpath(fname).write_text("it 's a charming  journey . \t1\nbleak and desperate \t0\n", encoding="utf-8")
    trec = root / "TREC"
    trec.mkdir()
    for fname in sd.TREC_FILES.values():
        trec.joinpath(fname).write_bytes(
            "DESC:manner How did serfdom develop ?\nHUM:ind Who was Pel\u00e9 ?\nNUM:date When  was it ?\n".encode("latin-1"))
    mrpc = root / "MRPC"
    mrpc.mkdir()
    for fname in sd.MRPC_FILES.values():
        text = ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                "1\t702876\t702977\tAmrozi accused his brother .\tReferring to him , Amrozi accused his brother .\n"
                "0\t2108705\t2108831\tYucaipa owned Dominick 's .\tYucaipa bought Dominick 's in 1995 .\n")
        mrpc.joinpath(fname).write_text(text, encoding="utf-8")
    return root


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    return write_senteval_tree(tmp_path / "senteval")


def test_sts_year_drops_blank_gold_lines_and_keeps_file_order(tree: Path) -> None:
    data = sd.read_sts_year(tree, "STS16")
    assert list(data) == list(sd.STS_SUBSETS["STS16"])
    folder = tree / "STS" / "STS16-en-test"
    for name, pairs in data.items():
        lines = (folder / f"STS.input.{name}.txt").read_text().splitlines()
        gold = (folder / f"STS.gs.{name}.txt").read_text().splitlines()
        kept = [(line, g) for line, g in zip(lines, gold) if g]
        assert len(pairs) == len(kept) == len(lines) - 1
        assert pairs.s1 == [line.split("\t")[0] for line, _ in kept]
        assert pairs.gold.dtype == np.float64
        np.testing.assert_allclose(pairs.gold, [float(g) for _, g in kept])


def test_sts_year_rejects_gold_count_mismatch(tree: Path) -> None:
    gs = tree / "STS" / "STS12-en-test" / "STS.gs.MSRpar.txt"
    gs.write_text(gs.read_text() + "3.0\n")
    with pytest.raises(KdmcseError, match="gold lines"):
        sd.read_sts_year(tree, "STS12")


def test_stsb_has_no_header_and_reads_columns_4_5_6(tree: Path) -> None:
    path = tree / "STS" / "STSBenchmark" / "sts-dev.csv"
    path.write_text("main-news\tx\t2012\t0001\t4.250\tA  man plays .\tA man is playing .\n", encoding="utf-8")
    pairs = sd.read_stsb(tree, "dev")
    assert pairs.s1 == ["A man plays ."] and pairs.s2 == ["A man is playing ."]
    assert pairs.gold.tolist() == [4.25]


def test_sick_skips_header_and_trial_is_dev(tree: Path) -> None:
    dev = sd.read_sick(tree, "dev")
    lines = (tree / "SICK" / "SICK_trial.txt").read_text().splitlines()
    assert len(dev) == len(lines) - 1
    assert dev.s1[0] == lines[1].split("\t")[1]
    assert dev.gold[0] == float(lines[1].split("\t")[3])
    with pytest.raises(KdmcseError, match="trial|train|dev"):
        sd.read_sick(tree, "trial")


def test_binary_tasks_are_latin1_positive_first(tree: Path) -> None:
    sents, labels = sd.read_binary(tree, "SUBJ")
    # SentEval labels subj.objective 1 and subj.subjective 0; whitespace runs collapse to one space
    assert sents == ["caf\u00e9 is good", "nice one", "very good", "bad one", "not good"]
    assert labels.tolist() == [1, 1, 1, 0, 0] and labels.dtype == np.int64


def test_sst2_trec_mrpc_formats(tree: Path) -> None:
    sst = sd.read_sst2(tree)
    assert set(sst) == {"train", "dev", "test"}
    assert sst["dev"][0] == ["it 's a charming journey .", "bleak and desperate"]
    assert sst["dev"][1].tolist() == [1, 0]
    trec = sd.read_trec(tree)
    assert trec["train"][0] == ["How did serfdom develop ?", "Who was Pel\u00e9 ?", "When was it ?"]
    assert trec["test"][1].tolist() == [sd.TREC_LABELS["DESC"], sd.TREC_LABELS["HUM"], sd.TREC_LABELS["NUM"]]
    mrpc = sd.read_mrpc(tree)
    a, b, y = mrpc["train"]
    assert a == ["Amrozi accused his brother .", "Yucaipa owned Dominick 's ."]
    assert b[1] == "Yucaipa bought Dominick 's in 1995 ."
    assert y.tolist() == [1, 0]


def test_missing_file_names_the_file_and_how_to_get_it(tree: Path) -> None:
    (tree / "MRPC" / "msr_paraphrase_test.txt").unlink()
    with pytest.raises(KdmcseError, match=r"msr_paraphrase_test\.txt.*senteval\.tar"):
        sd.read_mrpc(tree)
    with pytest.raises(KdmcseError, match=r"msr_paraphrase_test\.txt"):
        sd.check_files(sd.transfer_files(tree))
    sd.check_files(sd.sts_files(tree))  # the STS files are all there


def test_unknown_task_or_split(tree: Path) -> None:
    with pytest.raises(KdmcseError, match="STS17"):
        sd.read_sts_year(tree, "STS17")
    with pytest.raises(KdmcseError, match="valid"):
        sd.read_stsb(tree, "valid")
    with pytest.raises(KdmcseError, match="SST"):
        sd.read_binary(tree, "SST")


@pytest.mark.mirror
def test_canonical_sizes_on_the_real_data(real_root: Path) -> None:
    expected_sts = {"STS12": 3108, "STS13": 1500, "STS14": 3750, "STS15": 3000, "STS16": 1186}
    for year, n in expected_sts.items():
        assert sum(len(p) for p in sd.read_sts_year(real_root, year).values()) == n, year
    assert [len(sd.read_stsb(real_root, s)) for s in ("train", "dev", "test")] == [5749, 1500, 1379]
    assert [len(sd.read_sick(real_root, s)) for s in ("train", "dev", "test")] == [4500, 500, 4927]
    sizes = {t: len(sd.read_binary(real_root, t)[0]) for t in sd.BINARY_FILES}
    assert sizes == {"MR": 10662, "CR": 3775, "SUBJ": 10000, "MPQA": 10606}
    assert {k: len(v[0]) for k, v in sd.read_sst2(real_root).items()} == {"train": 67349, "dev": 872, "test": 1821}
    trec = sd.read_trec(real_root)
    assert {k: len(v[0]) for k, v in trec.items()} == {"train": 5452, "test": 500}
    assert set(trec["train"][1].tolist()) == set(range(6))
    mrpc = sd.read_mrpc(real_root)
    assert {k: len(v[0]) for k, v in mrpc.items()} == {"train": 4076, "test": 1725}
    assert set(mrpc["test"][2].tolist()) == {0, 1}
    # sentences as the batcher sees them: no tabs, no doubled spaces, no BOM
    for s in sd.read_stsb(real_root, "test").s1 + mrpc["train"][0]:
        assert s == " ".join(s.split()) and "\ufeff" not in s
