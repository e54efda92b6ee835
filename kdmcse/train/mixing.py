"""Interleaving text-only and image–caption batches (method §1.3), with resumable shuffled loaders.

The original trainer cycles two shuffled DataLoaders forever and decides per step which one to draw from:
step `s` of an "epoch" (reset every `n_text + n_pair` steps) is paired iff `s % paired_sample_step == 0`.
The schedule is kept as pure functions so its counts can be checked against the paper's numbers, and the
loaders are index generators whose whole state is (seed, pass, offset), so a resumed run draws exactly the
batches an uninterrupted one would have drawn.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from kdmcse.errors import KdmcseError

if TYPE_CHECKING:  # torch is imported lazily so the schedule maths stays importable without it
    import torch


@dataclass(frozen=True)
class MixSchedule:
    """How many steps a run takes and which of them draw a paired (image–caption) batch."""

    n_text: int  # text-only batches per pass over the wiki corpus
    n_pair: int  # paired batches per pass over the captions (0: text only, e.g. SimCSE)
    paired_step: int  # every `paired_step`-th step of an epoch is paired (0 when n_pair == 0)
    steps_per_epoch: int
    paired_per_epoch: int
    total_steps: int

    def is_paired(self, step: int) -> bool:
        """Whether global (0-based) optimisation step `step` draws a paired batch."""
        if self.n_pair == 0:
            return False
        return (step % self.steps_per_epoch) % self.paired_step == 0

    def paired_steps_until(self, end: int) -> int:
        """Number of paired steps among global steps 0..end-1."""
        if self.n_pair == 0 or end <= 0:
            return 0
        full, rest = divmod(end, self.steps_per_epoch)
        return full * self.paired_per_epoch + math.ceil(rest / self.paired_step)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def num_batches(n_rows: int, batch_size: int) -> int:
    """Batches in one pass of a loader without drop_last."""
    return math.ceil(n_rows / batch_size)


def mixing_schedule(
    n_text_rows: int,
    n_pair_rows: int,
    batch_size: int,
    epochs: int,
    max_steps: int | None = None,
) -> MixSchedule:
    """The step schedule of §1.3 for `epochs` epochs, or `max_steps` steps when given (it replaces epochs).

    `n_pair_rows = 0` gives a text-only schedule (every step is a wiki batch).
    """
    if batch_size < 1:
        raise KdmcseError(f"run config 'batch_size' must be >= 1, got {batch_size}")
    if n_text_rows < 1:
        raise KdmcseError("the text corpus (--text) has no rows; a text-only batch cannot be drawn")
    n_text = num_batches(n_text_rows, batch_size)
    n_pair = num_batches(n_pair_rows, batch_size)
    if n_pair > n_text:
        raise KdmcseError(
            f"the caption set gives more batches per pass ({n_pair}) than the text corpus ({n_text}) at "
            f"batch_size {batch_size}; the interleave step n_text // n_pair would be 0. Use a larger text "
            "corpus (--text) or fewer captions (prepare captions --max-images / --one-caption-per-image)."
        )
    paired_step = n_text // n_pair if n_pair else 0
    steps_per_epoch = n_text + n_pair
    paired_per_epoch = math.ceil(steps_per_epoch / paired_step) if n_pair else 0
    if max_steps is not None:
        if max_steps < 1:
            raise KdmcseError(f"run config 'max_steps' must be null or >= 1, got {max_steps}")
        total = int(max_steps)
    else:
        if epochs < 1:
            raise KdmcseError(f"run config 'epochs' must be >= 1, got {epochs}")
        total = int(epochs) * steps_per_epoch
    return MixSchedule(n_text, n_pair, paired_step, steps_per_epoch, paired_per_epoch, total)


class CyclingBatches:
    """Shuffled batches of row indices, cycled forever and reshuffled on each pass (no drop_last).

    Pass `p` uses the permutation drawn from `np.random.default_rng([seed, p])`, so the position
    (`pass_index`, `offset`) is the whole state: no generator object has to be pickled to resume.
    """

    def __init__(self, n_rows: int, batch_size: int, seed: int) -> None:
        if n_rows < 1:
            raise KdmcseError("cannot draw batches from an empty table")
        self.n_rows = int(n_rows)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.pass_index = 0
        self.offset = 0  # batches already drawn in the current pass
        self._perm: np.ndarray | None = None

    @property
    def batches_per_pass(self) -> int:
        return num_batches(self.n_rows, self.batch_size)

    def _permutation(self) -> np.ndarray:
        if self._perm is None:
            self._perm = np.random.default_rng([self.seed, self.pass_index]).permutation(self.n_rows)
        return self._perm

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self.offset >= self.batches_per_pass:
            self.pass_index += 1
            self.offset = 0
            self._perm = None
        start = self.offset * self.batch_size
        batch = self._permutation()[start : start + self.batch_size]
        self.offset += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"n_rows": self.n_rows, "batch_size": self.batch_size, "seed": self.seed,
                "pass_index": self.pass_index, "offset": self.offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = (self.n_rows, self.batch_size, self.seed)
        theirs = (state["n_rows"], state["batch_size"], state["seed"])
        if mine != theirs:
            raise KdmcseError(
                f"checkpoint loader state (rows, batch, seed) = {theirs} does not match this run's {mine}; "
                "the checkpoint comes from different data: delete the checkpoint/ folder to start over"
            )
        self.pass_index = int(state["pass_index"])
        self.offset = int(state["offset"])
        self._perm = None


class MixedBatches:
    """Yields (is_paired, row indices) per global step, drawing from the text or the pair loader (§1.3)."""

    def __init__(self, schedule: MixSchedule, n_text_rows: int, n_pair_rows: int, batch_size: int,
                 seed: int) -> None:
        self.schedule = schedule
        # distinct streams for the two loaders, both derived from the run seed
        self.text = CyclingBatches(n_text_rows, batch_size, seed * 2 + 0)
        self.pairs = CyclingBatches(n_pair_rows, batch_size, seed * 2 + 1) if schedule.n_pair else None
        self.step = 0

    def __iter__(self) -> Iterator[tuple[bool, np.ndarray]]:
        return self

    def __next__(self) -> tuple[bool, np.ndarray]:
        paired = self.schedule.is_paired(self.step)
        self.step += 1
        if paired:
            assert self.pairs is not None
            return True, next(self.pairs)
        return False, next(self.text)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "text": self.text.state_dict(),
                "pairs": self.pairs.state_dict() if self.pairs is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.text.load_state_dict(state["text"])
        if self.pairs is not None:
            if state.get("pairs") is None:
                raise KdmcseError("checkpoint has no caption loader state but this run uses captions; "
                                  "delete the checkpoint/ folder to start over")
            self.pairs.load_state_dict(state["pairs"])


class TokenizedTexts:
    """A corpus tokenised once up front: token ids of all rows in one flat int32 array plus offsets.

    A flat array keeps a million short sentences at ~130 MB instead of millions of Python ints.
    """

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, pad_id: int) -> None:
        self.ids = ids
        self.offsets = offsets
        self.pad_id = int(pad_id)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def from_texts(cls, tokenizer: Any, texts: list[str], max_length: int, chunk: int = 20000,
                   desc: str = "tokenise", show_progress: bool = True) -> "TokenizedTexts":
        from tqdm.auto import tqdm

        pieces: list[np.ndarray] = []
        lengths = np.zeros(len(texts), dtype=np.int64)
        for start in tqdm(range(0, len(texts), chunk), desc=desc, unit="chunk", leave=False,
                          disable=not show_progress):
            enc = tokenizer(texts[start : start + chunk], truncation=True, max_length=max_length,
                            padding=False, return_attention_mask=False, return_token_type_ids=False)
            for i, row in enumerate(enc["input_ids"]):
                lengths[start + i] = len(row)
                pieces.append(np.asarray(row, dtype=np.int32))
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return cls(ids, offsets, pad)

    def row(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def collate(self, rows: np.ndarray) -> dict[str, "torch.Tensor"]:
        """Pad `rows` to the longest and duplicate each one: (2·bs, len), row-major [s0, s0, s1, s1, …].

        The two copies of a sentence pass through the encoder in one forward and differ only by dropout.
        """
        import torch

        rows = np.asarray(rows, dtype=np.int64)
        starts = self.offsets[rows]
        lens = self.offsets[rows + 1] - starts
        width = int(lens.max()) if len(rows) else 0
        cols = np.arange(width)
        mask = cols[None, :] < lens[:, None]
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        input_ids[mask] = self.ids[(starts[:, None] + cols[None, :])[mask]]
        input_ids = np.repeat(input_ids, 2, axis=0)
        attention = np.repeat(mask, 2, axis=0).astype(np.int64)
        return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention)}
