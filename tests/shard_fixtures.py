"""Tiny CC12M-style inputs: JPEGs served from 127.0.0.1 and a `url<TAB>caption` list pointing at them."""

from __future__ import annotations

import io
import random

from PIL import Image

from e2e_fixtures import sentence


def photo(seed: int) -> bytes:
    """A small JPEG of its own size and aspect ratio (so img2dataset's keep_ratio resize and CLIP's crop matter)."""
    rng = random.Random(seed)
    w, h = rng.randint(40, 96), rng.randint(40, 96)
    img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(8):
        x, y = rng.randrange(w - 8), rng.randrange(h - 8)
        img.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + 8, y + 8))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


def photo_files(n: int, seed: int = 0) -> dict[str, bytes]:
    """Server paths -> JPEG bytes: /img/0.jpg … /img/{n-1}.jpg."""
    return {f"/img/{i}.jpg": photo(seed * 1000 + i) for i in range(n)}


def url_caption_tsv(base_url: str, paths: list[str], seed: int = 0) -> bytes:
    """The CC12M TSV layout (no header): one `url<TAB>caption` line per path, in order."""
    rng = random.Random(seed)
    return "".join(f"{base_url}{p}\t{sentence(rng)}\n" for p in paths).encode()
