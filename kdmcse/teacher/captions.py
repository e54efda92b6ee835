"""Caption side of the teacher: open_clip tokenisation (truncated to the context length) in a worker, then the
text tower on length-sorted batches with the padding beyond the longest caption cut off where that is exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kdmcse.teacher import work
from kdmcse.teacher.model import Teacher
from kdmcse.teacher.table import CaptionTable


def _trimmable_text_tower(model: torch.nn.Module, tokenizer: Any) -> bool:
    """True when cutting padding columns cannot change the text embedding.

    That holds for open_clip's `CLIP` text tower with a causal mask (tokens never attend to later padding),
    pooling on the EOT/EOS/first token, and a tokenizer that pads with 0 after the text.
    """
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    return (
        type(model) is CLIP
        and isinstance(tokenizer, SimpleTokenizer)
        and getattr(model, "attn_mask", None) is not None
        and model.text_pool_type in {"argmax", "eos", "first"}
    )


def encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`CLIP.encode_text` on tokens whose padding columns were cut (same maths, fewer positions)."""
    from open_clip.transformer import text_global_pool

    n_ctx = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:n_ctx].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:n_ctx, :n_ctx])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return x


def token_lengths(tokens: torch.Tensor) -> torch.Tensor:
    """Index after the last non-padding token of each row."""
    nonpad = (tokens != 0).int()
    return tokens.shape[1] - nonpad.flip(1).argmax(dim=1)


def encode_captions_batched(teacher: Teacher, tokens: torch.Tensor, batch_size: int) -> np.ndarray:
    """Encode tokenized captions, shortest first, with padding cut per batch where that is exact; rows in input order."""
    trim = _trimmable_text_tower(teacher.model, teacher.tokenizer)
    lengths = token_lengths(tokens)
    order = torch.argsort(lengths, stable=True)
    parts = []
    cuda = teacher.device.type == "cuda"
    with torch.inference_mode(), teacher.autocast():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = tokens[idx]
            if trim:
                batch = batch[:, : int(lengths[idx].max())]
            # pinned + non_blocking on a GPU; the embeddings stay there until the whole chunk is encoded
            batch = batch.pin_memory().to(teacher.device, non_blocking=True) if cuda else batch
            if trim:
                emb = encode_text_trimmed(teacher.model, batch)
            else:
                emb = teacher.model.encode_text(batch, normalize=False)
            parts.append(emb.float())
    out = np.empty((len(tokens), parts[0].shape[1]), dtype=np.float32)
    out[order.numpy()] = torch.cat(parts).cpu().numpy()
    return out


class CaptionChunks(Dataset):
    """One item = one chunk of captions tokenized (in a worker, overlapping the encoding of the previous chunk)."""

    def __init__(self, captions: Sequence[str], chunks: Sequence[int], chunk_size: int, tokenizer: Any):
        self.captions, self.chunks, self.chunk_size, self.tokenizer = captions, list(chunks), chunk_size, tokenizer

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        c = self.chunks[i]
        return c, self.tokenizer(list(self.captions[c * self.chunk_size : (c + 1) * self.chunk_size]))


def encode_captions(
    teacher: Teacher, table: CaptionTable, work_dir: Path, *, batch_size: int, workers: int, chunk_size: int
) -> np.ndarray:
    """Embeddings [N_cap, D] of every caption, in table order."""
    n = len(table.captions)
    keys = [table.caption_ids[c * chunk_size : (c + 1) * chunk_size] for c in range(work.n_chunks(n, chunk_size))]
    done = {c: work.load_chunk(work_dir, "captions", c, k) for c, k in enumerate(keys)}
    pending = [c for c, d in done.items() if d is None]
    if pending:
        dataset = CaptionChunks(table.captions, pending, chunk_size, teacher.tokenizer)
        loader = DataLoader(dataset, batch_size=None, num_workers=min(workers, 1), prefetch_factor=2 if workers else None)
        total = sum(len(keys[c]) for c in pending)
        with work.tqdm_bar(total, "captions") as bar:
            for c, tokens in loader:
                emb_c = encode_captions_batched(teacher, tokens, batch_size)
                work.save_chunk(work_dir, "captions", c, keys=keys[c], emb=emb_c)
                done[c] = {"emb": emb_c}
                bar.update(len(tokens))
    return np.concatenate([done[c]["emb"] for c in range(len(keys))])
