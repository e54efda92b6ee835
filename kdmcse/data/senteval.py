"""Readers for the SentEval evaluation data (`data/downstream` layout of SimCSE's `senteval.tar`).

Each reader returns sentences exactly as SentEval's batcher sees them: the line is split on whitespace and the
tokens are joined by single spaces. Files are read with the encodings SentEval uses (latin-1 for MR/CR/SUBJ/MPQA
and TREC, UTF-8 elsewhere; MRPC's BOM sits in its dropped header line). Rows are kept in file order; SentEval's
own reordering (sorting STS pairs by length for batching) is done where it matters, in `kdmcse.evaluate.geometry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdmcse.errors import KdmcseError

STS_SUBSETS: dict[str, tuple[str, ...]] = {
    "STS12": ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"),
    # STS13 ships without its SMT subset (licence)
    "STS13": ("FNWN", "headlines", "OnWN"),
    "STS14": ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"),
    "STS15": ("answers-forums", "answers-students", "belief", "headlines", "images"),
    "STS16": ("answer-answer", "headlines", "plagiarism", "postediting", "question-question"),
}
STSB_FILES = {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"}
SICK_FILES = {"train": "SICK_train.txt", "dev": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}
BINARY_FILES: dict[str, tuple[str, str, str]] = {
    # task -> (folder, file labelled 1, file labelled 0), as SentEval's BinaryClassifierEval(pos, neg)
    "MR": ("MR", "rt-polarity.pos", "rt-polarity.neg"),
    "CR": ("CR", "custrev.pos", "custrev.neg"),
    "SUBJ": ("SUBJ", "subj.objective", "subj.subjective"),
    "MPQA": ("MPQA", "mpqa.pos", "mpqa.neg"),
}
SST2_FILES = {"train": "sentiment-train", "dev": "sentiment-dev", "test": "sentiment-test"}
TREC_FILES = {"train": "train_5500.label", "test": "TREC_10.label"}
TREC_LABELS = {"ABBR": 0, "DESC": 1, "ENTY": 2, "HUM": 3, "LOC": 4, "NUM": 5}
MRPC_FILES = {"train": "msr_paraphrase_train.txt", "test": "msr_paraphrase_test.txt"}

HOW_TO_GET = (
    "download SentEval's data (senteval.tar, the `data/downstream` folder that SimCSE distributes) and extract it, "
    "e.g. with `python -m kdmcse download --source senteval …` and `python -m kdmcse extract …`, then pass the "
    "folder that holds STS/, SICK/, MR/, … as the SentEval data directory"
)


@dataclass
class StsPairs:
    s1: list[str]
    s2: list[str]
    gold: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.gold)


def _tokens(text: str) -> str:
    """SentEval splits every sentence on whitespace and its batcher joins the tokens with single spaces."""
    return " ".join(text.split())


def _require(path: Path) -> Path:
    if not path.is_file():
        raise KdmcseError(f"SentEval data file missing: {path}; {HOW_TO_GET}")
    return path


def _lines(path: Path, encoding: str = "utf-8") -> list[str]:
    return _require(path).read_text(encoding=encoding).splitlines()


def _check_split(split: str, allowed: dict[str, str], what: str) -> str:
    if split not in allowed:
        raise KdmcseError(f"unknown {what} split {split!r}; use one of {', '.join(allowed)}")
    return allowed[split]


# ---------------------------------------------------------------- STS
def sts_year_files(root: str | Path, year: str) -> list[Path]:
    if year not in STS_SUBSETS:
        raise KdmcseError(f"unknown STS task {year!r}; use one of {', '.join(STS_SUBSETS)}")
    folder = Path(root) / "STS" / f"{year}-en-test"
    return [folder / f"STS.{kind}.{name}.txt" for name in STS_SUBSETS[year] for kind in ("input", "gs")]


def read_sts_year(root: str | Path, year: str) -> dict[str, StsPairs]:
    """Subset name -> pairs of one STS12–16 task, in file order; pairs whose gold line is blank are dropped."""
    folder = Path(root) / "STS" / f"{year}-en-test"
    sts_year_files(root, year)  # validates the year
    out: dict[str, StsPairs] = {}
    for name in STS_SUBSETS[year]:
        inp = folder / f"STS.input.{name}.txt"
        pairs = [line.split("\t") for line in _lines(inp)]
        gold_lines = _lines(folder / f"STS.gs.{name}.txt")
        if len(gold_lines) != len(pairs):
            raise KdmcseError(f"{inp}: {len(pairs)} sentence pairs but {len(gold_lines)} gold lines; re-extract the data")
        s1, s2, gold = [], [], []
        for lineno, (pair, g) in enumerate(zip(pairs, gold_lines), 1):
            if g.strip() == "":  # unscored pair (STS15/16)
                continue
            if len(pair) < 2:
                raise KdmcseError(f"{inp}:{lineno}: expected two tab-separated sentences")
            s1.append(_tokens(pair[0]))
            s2.append(_tokens(pair[1]))
            gold.append(float(g))
        out[name] = StsPairs(s1, s2, np.asarray(gold, dtype=np.float64))
    return out


def read_stsb(root: str | Path, split: str) -> StsPairs:
    """STS Benchmark split (train|dev|test): tab-separated, no header; score col 4, sentences cols 5 and 6."""
    path = Path(root) / "STS" / "STSBenchmark" / _check_split(split, STSB_FILES, "STS-B")
    s1, s2, gold = [], [], []
    for lineno, line in enumerate(_lines(path), 1):
        cols = line.strip().split("\t")
        if len(cols) < 7:
            raise KdmcseError(f"{path}:{lineno}: expected 7 tab-separated columns, found {len(cols)}")
        gold.append(float(cols[4]))
        s1.append(_tokens(cols[5]))
        s2.append(_tokens(cols[6]))
    return StsPairs(s1, s2, np.asarray(gold, dtype=np.float64))


def read_sick(root: str | Path, split: str) -> StsPairs:
    """SICK relatedness split (train|dev|test; dev is SICK_trial): header line, sentences cols 1, 2, score col 3."""
    path = Path(root) / "SICK" / _check_split(split, SICK_FILES, "SICK")
    s1, s2, gold = [], [], []
    for lineno, line in enumerate(_lines(path)[1:], 2):
        cols = line.strip().split("\t")
        if len(cols) < 4:
            raise KdmcseError(f"{path}:{lineno}: expected at least 4 tab-separated columns, found {len(cols)}")
        s1.append(_tokens(cols[1]))
        s2.append(_tokens(cols[2]))
        gold.append(float(cols[3]))
    return StsPairs(s1, s2, np.asarray(gold, dtype=np.float64))


# ---------------------------------------------------------------- transfer tasks
def read_binary(root: str | Path, task: str) -> tuple[list[str], np.ndarray]:
    """MR|CR|SUBJ|MPQA: sentences of the positive file (label 1) then of the negative file (label 0), latin-1."""
    if task not in BINARY_FILES:
        raise KdmcseError(f"unknown binary task {task!r}; use one of {', '.join(BINARY_FILES)}")
    folder, pos_name, neg_name = BINARY_FILES[task]
    pos = [_tokens(x) for x in _lines(Path(root) / folder / pos_name, "latin-1")]
    neg = [_tokens(x) for x in _lines(Path(root) / folder / neg_name, "latin-1")]
    labels = np.asarray([1] * len(pos) + [0] * len(neg), dtype=np.int64)
    return pos + neg, labels


def read_sst2(root: str | Path) -> dict[str, tuple[list[str], np.ndarray]]:
    """SST2 train|dev|test: `sentence<TAB>label` per line."""
    out = {}
    for split, name in SST2_FILES.items():
        path = Path(root) / "SST" / "binary" / name
        sents, labels = [], []
        for lineno, line in enumerate(_lines(path), 1):
            cols = line.strip().split("\t")
            if len(cols) < 2:
                raise KdmcseError(f"{path}:{lineno}: expected `sentence<TAB>label`")
            sents.append(_tokens(cols[0]))
            labels.append(int(cols[1]))
        out[split] = (sents, np.asarray(labels, dtype=np.int64))
    return out


def read_trec(root: str | Path) -> dict[str, tuple[list[str], np.ndarray]]:
    """TREC train|test: `COARSE:fine question…` (latin-1); label before ':', the fine label token is dropped."""
    out = {}
    for split, name in TREC_FILES.items():
        path = Path(root) / "TREC" / name
        sents, labels = [], []
        for lineno, line in enumerate(_lines(path, "latin-1"), 1):
            target, sep, rest = line.strip().partition(":")
            if not sep or target not in TREC_LABELS:
                raise KdmcseError(f"{path}:{lineno}: expected `COARSE:fine question`, coarse in {sorted(TREC_LABELS)}")
            question = rest.split(" ", 1)[1] if " " in rest else ""
            sents.append(_tokens(question))
            labels.append(TREC_LABELS[target])
        out[split] = (sents, np.asarray(labels, dtype=np.int64))
    return out


def read_mrpc(root: str | Path) -> dict[str, tuple[list[str], list[str], np.ndarray]]:
    """MRPC train|test: UTF-8 with BOM, header line; label col 0, sentences cols 3 and 4."""
    out = {}
    for split, name in MRPC_FILES.items():
        path = Path(root) / "MRPC" / name
        a, b, labels = [], [], []
        for lineno, line in enumerate(_lines(path, "utf-8-sig")[1:], 2):
            cols = line.strip().split("\t")
            if len(cols) < 5:
                raise KdmcseError(f"{path}:{lineno}: expected 5 tab-separated columns, found {len(cols)}")
            labels.append(int(cols[0]))
            a.append(_tokens(cols[3]))
            b.append(_tokens(cols[4]))
        out[split] = (a, b, np.asarray(labels, dtype=np.int64))
    return out


# ---------------------------------------------------------------- up-front checks
def sts_files(root: str | Path) -> list[Path]:
    """Every file the STS evaluation reads (STS12–16, STS-B, SICK)."""
    root = Path(root)
    files = [p for year in STS_SUBSETS for p in sts_year_files(root, year)]
    files += [root / "STS" / "STSBenchmark" / f for f in STSB_FILES.values()]
    files += [root / "SICK" / f for f in SICK_FILES.values()]
    return files


def transfer_files(root: str | Path) -> list[Path]:
    """Every file the transfer evaluation reads (MR, CR, SUBJ, MPQA, SST2, TREC, MRPC)."""
    root = Path(root)
    files = [root / folder / f for folder, *names in BINARY_FILES.values() for f in names]
    files += [root / "SST" / "binary" / f for f in SST2_FILES.values()]
    files += [root / "TREC" / f for f in TREC_FILES.values()]
    files += [root / "MRPC" / f for f in MRPC_FILES.values()]
    return files


def check_files(paths: list[Path]) -> None:
    """Fail with one message listing what is missing, before any model is loaded."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise KdmcseError(f"SentEval data file missing: {shown}; {HOW_TO_GET}")
