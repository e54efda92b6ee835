"""Corpora: wiki table, the three Flickr30k layouts, COCO (JSON or zip), filters, MCSE variant, demo set."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from kdmcse.data.archive import extract
from kdmcse.data.demo_images import PHOTOS
from kdmcse.data.prepare import detect_flickr_layout, main, prepare_captions, prepare_wiki
from kdmcse.errors import KdmcseError

# Three Flickr-style images with their captions; one caption is NaN-like (empty) and one is too long.
LONG = "A " + "very " * 70 + "long caption ."  # > 300 characters
FLICKR = {
    "1000092795.jpg": ["Two young guys with shaggy hair look at their hands .", "Two friends enjoy time outside ."],
    "10002456.jpg": ["Several men in hard hats are operating a giant pulley system .", LONG],
    "1000268201.jpg": ["A child in a pink dress is climbing up a set of stairs .", "A little girl climbing stairs ."],
}


def _jpeg(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="JPEG")
    return buf.getvalue()


def _images(folder: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        (folder / n).write_bytes(_jpeg((40 * i, 100, 200)))
    return folder


def _nlphuji_csv(path: Path, data=FLICKR) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["raw", "sentids", "split", "filename", "img_id"])
        sid = 0
        for i, (fn, caps) in enumerate(data.items()):
            w.writerow([json.dumps(caps), json.dumps([str(sid + k) for k in range(len(caps))]), "train", fn, str(i)])
            sid += len(caps)
    return path


def _read(path: Path):
    t = pq.read_table(path)
    return t, t.to_pydict()


def test_wiki_keeps_order_and_strips(tmp_path):
    src = tmp_path / "wiki.txt"
    src.write_text("  First sentence .\nSecond one\t\n\n   \nLast line without newline", encoding="utf-8")
    out = tmp_path / "c" / "wiki.parquet"
    assert main(["wiki", "--input", str(src), "--out", str(out)]) == 0
    t, d = _read(out)
    assert t.column_names == ["text"] and str(t.schema.field("text").type) == "string"
    assert d["text"] == ["First sentence .", "Second one", "", "", "Last line without newline"]
    assert prepare_wiki(src, tmp_path / "w2.parquet", max_lines=2) == 2


def test_wiki_missing_input(tmp_path):
    with pytest.raises(KdmcseError, match="download --source wiki1m"):
        prepare_wiki(tmp_path / "nope.txt", tmp_path / "w.parquet")
    assert not (tmp_path / "w.parquet").exists()


def test_flickr_nlphuji_from_zip(tmp_path):
    # The real distribution: an images zip holding flickr30k-images/<id>.jpg plus the CSV.
    z = tmp_path / "flickr30k-images.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i, fn in enumerate(FLICKR):
            zf.writestr(f"flickr30k-images/{fn}", _jpeg((i, i, i)))
    images = extract(z, tmp_path / "images", strip_components=1)
    csv_path = _nlphuji_csv(tmp_path / "flickr_annotations_30k.csv")
    assert detect_flickr_layout(csv_path) == "nlphuji"
    out = tmp_path / "captions_flickr.parquet"
    assert main(["captions", "--dataset", "flickr", "--input", str(csv_path), "--images-dir", str(images),
                 "--out", str(out)]) == 0
    t, d = _read(out)
    assert t.column_names == ["image_id", "image_path", "caption_id", "caption"]
    assert [str(f.type) for f in t.schema] == ["string", "string", "int64", "string"]
    # all captions of all images, file order, the > 300-character caption dropped
    assert d["caption"] == [c for caps in FLICKR.values() for c in caps if c != LONG]
    assert d["image_id"] == ["1000092795", "1000092795", "10002456", "1000268201", "1000268201"]
    assert d["caption_id"] == [0, 1, 2, 3, 4]
    assert d["image_path"][2] == str(images / "10002456.jpg")


def test_flickr_kaggle_captions_txt_drops_nan_and_long(tmp_path):
    images = _images(tmp_path / "img", FLICKR)
    txt = tmp_path / "captions.txt"
    with open(txt, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for fn, caps in FLICKR.items():
            for c in caps:
                w.writerow([fn, c])
        w.writerow(["10002456.jpg", ""])  # pandas reads an empty field as NaN: dropped like the paper did
        w.writerow(["10002456.jpg", "Workers look down from up above on a piece of equipment , with commas ."])
    assert detect_flickr_layout(txt) == "kaggle"
    out = tmp_path / "k.parquet"
    assert prepare_captions("flickr", txt, images, out) == 6
    _, d = _read(out)
    assert LONG not in d["caption"] and all(isinstance(c, str) and c for c in d["caption"])
    assert d["caption"][-1].endswith("with commas .")


def test_flickr_token_layout(tmp_path):
    images = _images(tmp_path / "img", FLICKR)
    tok = tmp_path / "results_20130124.token"
    lines = [f"{fn}#{k}\t{c}" for fn, caps in FLICKR.items() for k, c in enumerate(caps)]
    tok.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert detect_flickr_layout(tok) == "token"
    out = tmp_path / "t.parquet"
    assert prepare_captions("flickr", tok, images, out) == 5
    _, d = _read(out)
    assert d["image_id"][0] == "1000092795" and d["caption"][0] == FLICKR["1000092795.jpg"][0]


def test_unknown_layout(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("foo,bar\n1,2\n")
    with pytest.raises(KdmcseError, match="unrecognised Flickr30k captions layout"):
        prepare_captions("flickr", bad, tmp_path, tmp_path / "o.parquet")


def test_one_caption_per_image_is_seeded(tmp_path):
    images = _images(tmp_path / "img", FLICKR)
    csv_path = _nlphuji_csv(tmp_path / "a.csv")
    picks = []
    for seed in (0, 0, 1, 2, 3, 4):
        out = tmp_path / f"o{seed}.parquet"
        assert prepare_captions("flickr", csv_path, images, out, one_caption_per_image=True, seed=seed) == 3
        _, d = _read(out)
        assert d["image_id"] == ["1000092795", "10002456", "1000268201"] and d["caption_id"] == [0, 1, 2]
        picks.append(tuple(d["caption"]))
    assert picks[0] == picks[1]  # same seed, same captions
    assert len(set(picks)) > 1  # seeds differ somewhere


def test_max_images(tmp_path):
    images = _images(tmp_path / "img", FLICKR)
    out = tmp_path / "m.parquet"
    assert prepare_captions("flickr", _nlphuji_csv(tmp_path / "a.csv"), images, out, max_images=1) == 2
    assert set(_read(out)[1]["image_id"]) == {"1000092795"}


def test_missing_images_named(tmp_path):
    images = _images(tmp_path / "img", ["1000092795.jpg"])
    out = tmp_path / "x.parquet"
    with pytest.raises(KdmcseError, match=r"2 of 3 listed images are missing .*10002456\.jpg"):
        prepare_captions("flickr", _nlphuji_csv(tmp_path / "a.csv"), images, out)
    assert not out.exists()
    with pytest.raises(KdmcseError, match="images folder .* not found"):
        prepare_captions("flickr", _nlphuji_csv(tmp_path / "a.csv"), tmp_path / "nope", out)


def test_missing_images_hint_about_subfolder(tmp_path):
    _images(tmp_path / "img" / "flickr30k-images", FLICKR)
    with pytest.raises(KdmcseError, match="strip-components 1"):
        prepare_captions("flickr", _nlphuji_csv(tmp_path / "a.csv"), tmp_path / "img", tmp_path / "x.parquet")


def _coco_json() -> dict:
    return {
        "info": {}, "licenses": [],
        "images": [{"id": 57870, "file_name": "COCO_train2014_000000057870.jpg"},
                   {"id": 384029, "file_name": "COCO_train2014_000000384029.jpg"}],
        "annotations": [
            {"image_id": 57870, "id": 787980, "caption": "A restaurant has modern wooden tables and chairs."},
            {"image_id": 384029, "id": 796, "caption": "A man preparing desserts in a kitchen covered in frosting."},
            {"image_id": 57870, "id": 789366, "caption": "A long restaurant table with rattan rounded back chairs."},
            {"image_id": 57870, "id": 1, "caption": "x" * 400},  # COCO has no length filter
        ],
    }


@pytest.mark.parametrize("packed", [False, True])
def test_coco_json_or_annotations_zip(tmp_path, packed):
    data = _coco_json()
    if packed:
        src = tmp_path / "annotations_trainval2014.zip"
        with zipfile.ZipFile(src, "w") as zf:
            zf.writestr("annotations/captions_val2014.json", json.dumps({"images": [], "annotations": []}))
            zf.writestr("annotations/captions_train2014.json", json.dumps(data))
    else:
        src = tmp_path / "captions_train2014.json"
        src.write_text(json.dumps(data))
    z = tmp_path / "train2014.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for img in data["images"]:
            zf.writestr(f"train2014/{img['file_name']}", _jpeg((1, 2, 3)))
    images = extract(z, tmp_path / "train2014", strip_components=1)
    out = tmp_path / "captions_coco.parquet"
    assert prepare_captions("coco", src, images, out) == 4
    _, d = _read(out)
    assert d["image_id"] == ["57870", "384029", "57870", "57870"]
    assert d["caption"][1].startswith("A man preparing desserts")
    assert d["image_path"][1] == str(images / "COCO_train2014_000000384029.jpg")


def test_demo_set(tmp_path):
    images = tmp_path / "demo_images"
    out = tmp_path / "captions_demo.parquet"
    assert main(["captions", "--dataset", "demo", "--images-dir", str(images), "--out", str(out)]) == 0
    _, d = _read(out)
    ids = list(dict.fromkeys(d["image_id"]))
    assert len(ids) >= 10 and len(d["caption"]) >= 5 * len(ids)
    assert d["caption_id"] == list(range(len(d["caption"])))
    for path in set(d["image_path"]):
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and min(im.size) >= 64
    assert {p.name for p in PHOTOS} >= set(ids)
    # the captions are distinct sentences, not placeholders
    assert len(set(d["caption"])) == len(d["caption"])
    # MCSE variant works on the demo set too
    assert prepare_captions("demo", None, images, tmp_path / "one.parquet", one_caption_per_image=True) == len(ids)


@pytest.mark.mirror
def test_real_wiki_head(mirror_dir, tmp_path):
    out = tmp_path / "wiki.parquet"
    assert prepare_wiki(mirror_dir / "wiki1m_head.txt", out) == 11913
    t = pq.read_table(out)
    assert t.num_rows == 11913 and t.column_names == ["text"]
    first = (mirror_dir / "wiki1m_head.txt").read_text(encoding="utf-8").split("\n", 1)[0].strip()
    assert t.column("text")[0].as_py() == first


# ---------------------------------------------------------------- broken inputs: one line, no traceback
def _cli_error(argv: list[str], capsys) -> str:
    from kdmcse.__main__ import main as kdmcse_main

    assert kdmcse_main(argv) == 2
    err = capsys.readouterr().err.split("\r")[-1]  # after any progress bar
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_wiki_with_invalid_utf8_names_the_line(tmp_path, capsys):
    src = tmp_path / "wiki.txt"
    src.write_bytes(b"a fine sentence .\nanother one .\nbroken \xff\xfe bytes .\n")
    err = _cli_error(["prepare", "wiki", "--input", str(src), "--out", str(tmp_path / "w.parquet")], capsys)
    assert "line 3" in err and "UTF-8" in err and str(src) in err
    assert not (tmp_path / "w.parquet").exists()


def test_wiki_of_blank_lines_is_refused(tmp_path, capsys):
    src = tmp_path / "wiki.txt"
    src.write_text("\n   \n\t\n\n", encoding="utf-8")
    err = _cli_error(["prepare", "wiki", "--input", str(src), "--out", str(tmp_path / "w.parquet")], capsys)
    assert "blank" in err and str(src) in err
    assert not (tmp_path / "w.parquet").exists()


def _coco(images, annotations) -> dict:
    return {"images": images, "annotations": annotations}


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (_coco([{"id": 1, "file_name": "a.jpg"}], [{"id": 7, "image_id": 1}]), ["annotation 7", "'caption'"]),
        (_coco([{"id": 1, "file_name": "a.jpg"}], [{"id": 7, "image_id": 1, "caption": None}]),
         ["annotation 7", "caption"]),
        (_coco([{"id": 1, "file_name": "a.jpg"}], [{"id": 7, "caption": "a dog ."}]), ["annotation 7", "'image_id'"]),
        (_coco([{"id": 1}], [{"id": 7, "image_id": 1, "caption": "a dog ."}]), ["image 1", "'file_name'"]),
        (_coco({"id": 1}, []), ["'images'", "list"]),
    ],
    ids=["no-caption", "null-caption", "no-image-id", "no-file-name", "images-not-a-list"],
)
def test_coco_annotation_problems_are_one_line(tmp_path, capsys, data, words):
    ann = tmp_path / "captions_train2014.json"
    ann.write_text(json.dumps(data), encoding="utf-8")
    _images(tmp_path / "img", ["a.jpg"])
    err = _cli_error(["prepare", "captions", "--dataset", "coco", "--input", str(ann), "--images-dir",
                      str(tmp_path / "img"), "--out", str(tmp_path / "c.parquet")], capsys)
    for w in words:
        assert w in err, err


def test_coco_zip_with_broken_json_is_one_line(tmp_path, capsys):
    z = tmp_path / "annotations_trainval2014.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("annotations/captions_train2014.json", b'{"images": [')
    err = _cli_error(["prepare", "captions", "--dataset", "coco", "--input", str(z), "--images-dir",
                      str(tmp_path), "--out", str(tmp_path / "c.parquet")], capsys)
    assert "captions_train2014.json" in err and "JSON" in err


def test_flickr_csv_with_broken_quoting_is_one_line(tmp_path, capsys):
    src = tmp_path / "flickr_annotations_30k.csv"
    src.write_text('raw,sentids,split,filename,img_id\n"[""a"", ""b""]",[],train,1.jpg,0\n"[""x"",train,2.jpg\n',
                   encoding="utf-8")
    err = _cli_error(["prepare", "captions", "--dataset", "flickr", "--input", str(src), "--images-dir",
                      str(tmp_path), "--out", str(tmp_path / "c.parquet")], capsys)
    assert str(src) in err
