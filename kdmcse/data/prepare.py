"""Corpora: the Wiki1M sentence table and the image–caption tables (method §1.1, §1.2).

`python -m kdmcse prepare wiki --input TXT --out results/corpora/wiki.parquet [--max-lines N]`
`python -m kdmcse prepare captions --dataset {flickr,coco,demo} [--input FILE] --images-dir DIR --out PARQUET
[--one-caption-per-image] [--seed S] [--max-images N]`
`python -m kdmcse prepare captions --dataset shards --input SHARD_MANIFEST --out PARQUET [--max-images N]`
(webdataset tar shards, read in place: see `kdmcse.data.shards`)

Paper data by default: every caption of every image. Flickr captions that are not strings or are longer
than 300 characters are dropped, as the paper's feature script did; COCO has no filter.
`--one-caption-per-image` gives MCSE's variant (one caption per image, drawn with `--seed`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from kdmcse.errors import KdmcseError
from kdmcse.io import atomic_path

log = logging.getLogger(__name__)

MAX_FLICKR_CAPTION_CHARS = 300  # the paper's feature script skipped longer captions

CAPTIONS_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("image_path", pa.string()),
    ("caption_id", pa.int64()),
    ("caption", pa.string()),
])


@dataclass
class CaptionRow:
    image_id: str
    file_name: str  # relative to the images folder
    caption: object  # raw value; non-strings are filtered for Flickr


# ----------------------------------------------------------------------------- wiki


def prepare_wiki(input_path: str | os.PathLike[str], out: str | os.PathLike[str],
                 max_lines: int | None = None) -> int:
    """Write one row per input line (`line.strip()`, order kept, nothing filtered); return the row count."""
    input_path = Path(input_path)
    if not input_path.is_file():
        raise KdmcseError(f"wiki input {input_path} not found; run `python -m kdmcse download --source wiki1m` "
                          "or pass the file with --input")
    if max_lines is not None and max_lines < 1:
        raise KdmcseError(f"--max-lines must be >= 1, got {max_lines}")
    texts: list[str] = []
    # Iterate the file in text mode like the original loader (universal newlines), then strip each line.
    with open(input_path, encoding="utf-8") as f:
        try:
            for line in tqdm(f, desc="wiki", unit=" lines", mininterval=1.0, leave=False):
                if max_lines is not None and len(texts) >= max_lines:
                    break
                texts.append(line.strip())
        except UnicodeDecodeError as exc:
            raise KdmcseError(f"wiki input {input_path}: line {_first_non_utf8_line(input_path)} is not UTF-8 "
                              f"({exc.reason}); fix or re-download the file") from exc
    if not texts:
        raise KdmcseError(f"wiki input {input_path} is empty")
    if not any(texts):
        raise KdmcseError(f"wiki input {input_path}: all {len(texts)} line(s) read are blank; pass the sentence file "
                          "(one sentence per line)")
    table = pa.table({"text": pa.array(texts, type=pa.string())})
    with atomic_path(out, suffix=".parquet.tmp") as tmp:
        pq.write_table(table, tmp)
    log.info("wrote %d sentences to %s", len(texts), out)
    return len(texts)


def _first_non_utf8_line(path: Path) -> int:
    """1-based number of the first line that is not UTF-8 (the decoder's offsets count from its read block)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return n
    return 0


# ----------------------------------------------------------------------------- flickr layouts


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise KdmcseError(f"{path} is not UTF-8 text ({exc}); pass the captions file itself") from exc


def detect_flickr_layout(path: Path) -> str:
    """'nlphuji' (CSV with raw, filename), 'kaggle' (image,caption or image_name| comment), or 'token'."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        first = f.readline().rstrip("\r\n")
    if re.match(r"^[^\t#]+\.\w+#\d+\t", first):
        return "token"
    header = [h.strip().lower() for h in next(csv.reader([first]))]
    if {"raw", "filename"} <= set(header):
        return "nlphuji"
    if {"image", "caption"} <= set(header):
        return "kaggle"
    if {"image_name", "comment"} <= {h.strip().lower() for h in first.split("|")}:
        return "kaggle_pipe"
    raise KdmcseError(
        f"{path}: unrecognised Flickr30k captions layout (first line {first[:80]!r}). Expected the nlphuji CSV "
        "(columns raw, filename, ...), Kaggle captions.txt (image,caption) or results_20130124.token "
        "(img.jpg#k<TAB>caption)"
    )


def _read_csv(path: Path, **kwargs):
    import pandas as pd

    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise KdmcseError(f"{path} is not a readable captions CSV ({str(exc).strip().splitlines()[0]}); "
                          "re-download it or pass the original file") from exc


def _read_nlphuji(path: Path) -> list[CaptionRow]:
    df = _read_csv(path, dtype=str, keep_default_na=False)
    rows: list[CaptionRow] = []
    for i, (raw, filename) in enumerate(zip(df["raw"], df["filename"])):
        try:
            caps = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise KdmcseError(f"{path}: row {i + 2} column 'raw' is not a JSON list of captions: {exc}") from exc
        if not isinstance(caps, list):
            raise KdmcseError(f"{path}: row {i + 2} column 'raw' must be a JSON list, got {type(caps).__name__}")
        rows.extend(CaptionRow(Path(filename).stem, filename, c) for c in caps)
    return rows


def _read_kaggle(path: Path, pipe: bool) -> list[CaptionRow]:
    # pandas' default NaN handling is kept on purpose: the paper read captions.txt the same way and then
    # dropped the NaN captions, so an empty caption field is dropped here too.
    if pipe:
        df = _read_csv(path, sep="|", skipinitialspace=True, dtype={"image_name": str})
        df.columns = [c.strip().lower() for c in df.columns]
        images, captions = df["image_name"], df["comment"]
    else:
        df = _read_csv(path, dtype={"image": str})
        df.columns = [c.strip().lower() for c in df.columns]
        images, captions = df["image"], df["caption"]
    return [CaptionRow(Path(str(img).strip()).stem, str(img).strip(), cap) for img, cap in zip(images, captions)]


def _read_token(path: Path) -> list[CaptionRow]:
    rows: list[CaptionRow] = []
    for n, line in enumerate(_read_text(path).split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        key, sep, caption = line.partition("\t")
        if not sep or "#" not in key:
            raise KdmcseError(f"{path}: line {n} is not 'image.jpg#k<TAB>caption': {line[:80]!r}")
        file_name = key.rsplit("#", 1)[0]
        rows.append(CaptionRow(Path(file_name).stem, file_name, caption))
    return rows


def read_flickr(path: Path) -> list[CaptionRow]:
    """Every caption of every image, in file order, then the paper's filter (non-strings, > 300 chars)."""
    layout = detect_flickr_layout(path)
    rows = {"nlphuji": _read_nlphuji, "token": _read_token}.get(layout)
    got = rows(path) if rows else _read_kaggle(path, pipe=layout == "kaggle_pipe")
    kept = [r for r in got if isinstance(r.caption, str) and len(r.caption) <= MAX_FLICKR_CAPTION_CHARS]
    n_nan = sum(not isinstance(r.caption, str) for r in got)
    log.info("flickr (%s layout): %d captions of %d images read; dropped %d non-string and %d over %d chars",
             layout, len(got), len({r.image_id for r in got}), n_nan, len(got) - len(kept) - n_nan,
             MAX_FLICKR_CAPTION_CHARS)
    return kept


# ----------------------------------------------------------------------------- coco


def _load_coco_json(path: Path) -> dict:
    where = str(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith("captions_train2014.json")]
                if not names:
                    raise KdmcseError(f"{path} holds no captions_train2014.json; pass annotations_trainval2014.zip "
                                      "or the JSON itself")
                where = f"{path} ({names[0]})"
                with zf.open(names[0]) as f:
                    return json.load(io.TextIOWrapper(f, encoding="utf-8"))
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KdmcseError(f"{where} is not valid JSON ({exc}); pass captions_train2014.json or the annotations "
                          "zip, downloaded again") from exc
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise KdmcseError(f"{path} cannot be read ({exc}); download it again") from exc


def _coco_field(path: Path, what: str, item: object, field: str, kinds: tuple[type, ...]) -> object:
    """`item[field]`, which must exist and be of one of `kinds`; else one line naming the entry."""
    value = item.get(field) if isinstance(item, dict) else None
    if not isinstance(value, kinds) or isinstance(value, bool):
        got = "missing" if not isinstance(item, dict) or field not in item else f"{type(value).__name__} {value!r}"
        raise KdmcseError(f"{path}: {what} has no valid '{field}' ({got}); this is not a COCO captions file as "
                          "released (annotations/captions_train2014.json)")
    return value


def read_coco(path: Path) -> list[CaptionRow]:
    """All captions of all images, in the annotations' file order (no filter, as in the paper)."""
    data = _load_coco_json(path)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise KdmcseError(f"{path}: not a COCO captions file (needs 'images' and 'annotations')")
    for key in ("images", "annotations"):
        if not isinstance(data[key], list):
            raise KdmcseError(f"{path}: '{key}' must be a list, got {type(data[key]).__name__}")
    files: dict[object, str] = {}
    for i, img in enumerate(data["images"]):
        image_id = _coco_field(path, f"images[{i}]", img, "id", (int, str))
        files[image_id] = str(_coco_field(path, f"image {image_id}", img, "file_name", (str,)))
    rows: list[CaptionRow] = []
    for i, ann in enumerate(data["annotations"]):
        what = f"annotation {ann.get('id', f'#{i}')}" if isinstance(ann, dict) else f"annotations[{i}]"
        image_id = _coco_field(path, what, ann, "image_id", (int, str))
        caption = _coco_field(path, what, ann, "caption", (str,))
        if image_id not in files:
            raise KdmcseError(f"{path}: {what} refers to unknown image_id {image_id}")
        rows.append(CaptionRow(str(image_id), files[image_id], caption))
    log.info("coco: %d captions of %d images read", len(rows), len({r.image_id for r in rows}))
    return rows


# ----------------------------------------------------------------------------- shared steps


def _first_images(rows: list[CaptionRow], n: int) -> list[CaptionRow]:
    keep: dict[str, None] = {}
    for r in rows:
        if len(keep) >= n and r.image_id not in keep:
            continue
        keep.setdefault(r.image_id, None)
    return [r for r in rows if r.image_id in keep]


def _one_caption_per_image(rows: list[CaptionRow], seed: int) -> list[CaptionRow]:
    by_image: dict[str, list[CaptionRow]] = {}
    for r in rows:
        by_image.setdefault(r.image_id, []).append(r)
    rng = np.random.default_rng(seed)
    return [caps[int(rng.integers(len(caps)))] for caps in by_image.values()]


def _check_images(rows: list[CaptionRow], images_dir: Path) -> None:
    if not images_dir.is_dir():
        raise KdmcseError(f"images folder {images_dir} not found; extract the images archive there "
                          "(python -m kdmcse extract --archive … --dest DIR --strip-components 1)")
    present = {e.name for e in os.scandir(images_dir)}
    wanted = dict.fromkeys(r.file_name for r in rows)
    missing = [f for f in wanted if f not in present and not (images_dir / f).is_file()]
    if missing:
        subdirs = [e.name for e in os.scandir(images_dir) if e.is_dir()]
        hint = (f" The folder holds sub-folder(s) {subdirs[:3]}: point --images-dir at the one with the images, "
                "or extract with --strip-components 1." if subdirs else "")
        raise KdmcseError(
            f"{len(missing)} of {len(wanted)} listed images are missing from {images_dir}, e.g. "
            f"{', '.join(missing[:5])}.{hint}"
        )


def write_captions(rows: list[CaptionRow], images_dir: Path, out: str | os.PathLike[str]) -> int:
    """Write the captions table (schema CAPTIONS_SCHEMA); caption_id is 0..N-1 in row order."""
    table = pa.table({
        "image_id": pa.array([r.image_id for r in rows], type=pa.string()),
        "image_path": pa.array([str(images_dir / r.file_name) for r in rows], type=pa.string()),
        "caption_id": pa.array(np.arange(len(rows), dtype=np.int64)),
        "caption": pa.array([str(r.caption) for r in rows], type=pa.string()),
    }, schema=CAPTIONS_SCHEMA)
    with atomic_path(out, suffix=".parquet.tmp") as tmp:
        pq.write_table(table, tmp)
    log.info("wrote %d captions of %d images to %s", len(rows), len({r.image_id for r in rows}), out)
    return len(rows)


def prepare_captions(dataset: str, input_path: str | os.PathLike[str] | None, images_dir: str | os.PathLike[str],
                     out: str | os.PathLike[str], *, one_caption_per_image: bool = False, seed: int = 0,
                     max_images: int | None = None) -> int:
    """Build `captions_<name>.parquet`; return its row count. See the module docstring for the rules."""
    images_dir = Path(images_dir)
    if max_images is not None and max_images < 1:
        raise KdmcseError(f"--max-images must be >= 1, got {max_images}")
    if dataset == "demo":
        from kdmcse.data.demo_images import write_demo_images

        photos = write_demo_images(images_dir)
        rows = [CaptionRow(image_id, file_name, c) for image_id, file_name, caps in photos for c in caps]
    elif dataset in ("flickr", "coco"):
        if input_path is None:
            raise KdmcseError(f"prepare captions --dataset {dataset} needs --input (the captions file)")
        input_path = Path(input_path)
        if not input_path.is_file():
            raise KdmcseError(f"captions input {input_path} not found; download it first "
                              f"(python -m kdmcse download --source "
                              f"{'flickr30k_captions' if dataset == 'flickr' else 'coco_annotations_2014'})")
        rows = read_flickr(input_path) if dataset == "flickr" else read_coco(input_path)
    else:
        raise KdmcseError(f"unknown --dataset {dataset!r}; choose flickr, coco or demo")
    if max_images is not None:
        rows = _first_images(rows, max_images)
    if one_caption_per_image:
        rows = _one_caption_per_image(rows, seed)
    if not rows:
        raise KdmcseError(f"no captions left for --dataset {dataset} from {input_path}")
    _check_images(rows, images_dir)
    return write_captions(rows, images_dir, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kdmcse prepare", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    w = sub.add_parser("wiki", help="Wiki1M text -> parquet with one column 'text'")
    w.add_argument("--input", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--max-lines", type=int, help="keep only the first N lines")
    c = sub.add_parser("captions", help="image-caption pairs -> parquet (image_id, image_path, caption_id, caption)")
    c.add_argument("--dataset", required=True, choices=["flickr", "coco", "demo", "shards"])
    c.add_argument("--input", help="captions file (flickr: nlphuji CSV, captions.txt or .token; "
                                   "coco: captions_train2014.json or the annotations zip; demo: not needed)")
    c.add_argument("--images-dir", help="folder holding the image files (demo: written there; shards: not used)")
    c.add_argument("--out", required=True)
    c.add_argument("--one-caption-per-image", action="store_true", help="MCSE's variant: one random caption each")
    c.add_argument("--seed", type=int, default=0, help="seed for --one-caption-per-image")
    c.add_argument("--max-images", type=int, help="keep only the first N images (file order)")
    c.add_argument("--workers", type=int, default=4, help="shards: shards read in parallel")
    args = ap.parse_args(argv)
    if args.what == "wiki":
        prepare_wiki(args.input, args.out, args.max_lines)
    elif args.dataset == "shards":
        from kdmcse.data.shards import prepare_shard_captions

        if args.input is None:
            raise KdmcseError("prepare captions --dataset shards needs --input (the shard manifest)")
        prepare_shard_captions(args.input, args.out, max_images=args.max_images, workers=args.workers)
    elif args.images_dir is None:
        raise KdmcseError(f"prepare captions --dataset {args.dataset} needs --images-dir")
    else:
        prepare_captions(args.dataset, args.input, args.images_dir, args.out,
                         one_caption_per_image=args.one_caption_per_image, seed=args.seed,
                         max_images=args.max_images)
    return 0
