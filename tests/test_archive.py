"""Safe extraction: good tar/zip archives land atomically; hostile members fail cleanly and leave nothing."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from kdmcse.data.archive import extract, main
from kdmcse.errors import KdmcseError

# A tiny stand-in for senteval.tar in its real layout (members STS/…, SICK/…, MR/…).
SENTEVAL_FILES = {
    "STS/STS12-en-test/STS.input.MSRpar.txt": b"a man is playing .\ta man plays .\n",
    "STS/STS12-en-test/STS.gs.MSRpar.txt": b"4.2\n",
    "STS/STSBenchmark/sts-dev.csv": b"main-captions\tMSRvid\t2012test\t0000\t5.000\tA man.\tA man.\n",
    "SICK/SICK_trial.txt": b"pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n",
    "MR/rt-polarity.pos": b"a good film .\n",
}


def _add(tf: tarfile.TarFile, name: str, data: bytes = b"", **kw) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in kw.items():
        setattr(info, k, v)
    tf.addfile(info, io.BytesIO(data) if data else None)


def make_senteval_tar(path: Path, mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for d in ("STS", "STS/STS12-en-test", "STS/STSBenchmark", "SICK", "MR"):
            _add(tf, d + "/", type=tarfile.DIRTYPE, mode=0o755)
        for name, data in SENTEVAL_FILES.items():
            _add(tf, name, data)
    return path


def _assert_clean(dest: Path) -> None:
    assert not dest.exists()
    if dest.parent.exists():  # no temp folder left beside DEST either
        assert [p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}")] == []


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tar.gz"), ("w:xz", ".tar.xz")])
def test_senteval_layout_any_compression(tmp_path, mode, suffix):
    tar = make_senteval_tar(tmp_path / f"senteval{suffix}", mode)
    dest = tmp_path / "resources" / "senteval"
    assert main(["--archive", str(tar), "--dest", str(dest)]) == 0
    for name, data in SENTEVAL_FILES.items():
        assert (dest / name).read_bytes() == data
    assert (dest / "STS" / "STS12-en-test").is_dir()


def test_strip_components_and_members_zip(tmp_path):
    z = tmp_path / "flickr30k-images.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("flickr30k-images/", b"")
        zf.writestr("flickr30k-images/1.jpg", b"one")
        zf.writestr("flickr30k-images/2.jpg", b"two")
        zf.writestr("flickr30k-images/readme.txt", b"x")
    dest = tmp_path / "images"
    extract(z, dest, strip_components=1, members=["*.jpg"])
    assert sorted(p.name for p in dest.iterdir()) == ["1.jpg", "2.jpg"]
    assert (dest / "2.jpg").read_bytes() == b"two"


def test_internal_symlink_allowed(tmp_path):
    tar = tmp_path / "a.tar"
    with tarfile.open(tar, "w") as tf:
        _add(tf, "d/file.txt", b"hi")
        _add(tf, "d/alias.txt", type=tarfile.SYMTYPE, linkname="file.txt")
    dest = tmp_path / "out"
    extract(tar, dest)
    assert (dest / "d" / "alias.txt").is_symlink()
    assert (dest / "d" / "alias.txt").read_bytes() == b"hi"


def _bad_tar(path: Path, kind: str) -> Path:
    with tarfile.open(path, "w") as tf:
        _add(tf, "ok/good.txt", b"fine")  # extracted first in a naive extractor
        if kind == "dotdot":
            _add(tf, "ok/../../evil.txt", b"evil")
        elif kind == "absolute":
            _add(tf, "/tmp/evil.txt", b"evil")
        elif kind == "symlink_out":
            _add(tf, "ok/link", type=tarfile.SYMTYPE, linkname="../../outside")
        elif kind == "symlink_abs":
            _add(tf, "ok/link", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        elif kind == "hardlink_out":
            _add(tf, "ok/hard", type=tarfile.LNKTYPE, linkname="../etc/passwd")
        elif kind == "device":
            _add(tf, "ok/dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
    return path


@pytest.mark.parametrize("kind,message", [
    ("dotdot", "'..'"), ("absolute", "absolute"), ("symlink_out", "outside"), ("symlink_abs", "absolute"),
    ("hardlink_out", "'..'"), ("device", "device"),
])
def test_hostile_tar_rejected_and_nothing_left(tmp_path, kind, message):
    tar = _bad_tar(tmp_path / "bad.tar", kind)
    dest = tmp_path / "out" / "senteval"
    with pytest.raises(KdmcseError, match=message):
        extract(tar, dest)
    _assert_clean(dest)
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("kind,message", [("dotdot", "'..'"), ("absolute", "absolute"), ("symlink_out", "outside")])
def test_hostile_zip_rejected_and_nothing_left(tmp_path, kind, message):
    z = tmp_path / "bad.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ok/good.txt", b"fine")
        if kind == "dotdot":
            zf.writestr("ok/../../evil.txt", b"evil")
        elif kind == "absolute":
            zf.writestr("/tmp/evil.txt", b"evil")
        else:
            info = zipfile.ZipInfo("ok/link")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "../../outside")
    dest = tmp_path / "out" / "images"
    with pytest.raises(KdmcseError, match=message):
        extract(z, dest)
    _assert_clean(dest)


def test_truncated_tar_fails_cleanly(tmp_path):
    tar = make_senteval_tar(tmp_path / "s.tar.gz", "w:gz")
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    dest = tmp_path / "out"
    with pytest.raises(KdmcseError, match="s.tar.gz"):
        extract(tar, dest)
    _assert_clean(dest)


def test_corrupt_member_midway_rolls_back(tmp_path):
    # Passes the member checks, fails while copying the second file (CRC error): the first file,
    # already written to the temp folder, must not survive.
    z = tmp_path / "c.zip"
    payload = b"x" * 5000
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a/first.txt", b"first")
        zf.writestr("a/second.txt", payload)
    raw = bytearray(z.read_bytes())
    i = raw.index(payload)
    raw[i + 100] ^= 0xFF
    z.write_bytes(bytes(raw))
    dest = tmp_path / "out" / "images"
    dest.parent.mkdir()
    with pytest.raises(KdmcseError, match="c.zip"):
        extract(z, dest)
    _assert_clean(dest)
    assert list(dest.parent.iterdir()) == []


def test_refuses_non_empty_dest_unless_overwrite(tmp_path):
    tar = make_senteval_tar(tmp_path / "s.tar")
    dest = tmp_path / "senteval"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(KdmcseError, match="--overwrite"):
        extract(tar, dest)
    extract(tar, dest, overwrite=True)
    assert not (dest / "old.txt").exists() and (dest / "MR" / "rt-polarity.pos").is_file()


def test_cli_reports_error_exit_2(tmp_path, capsys):
    from kdmcse.__main__ import main as cli

    tar = _bad_tar(tmp_path / "bad.tar", "dotdot")
    assert cli(["extract", "--archive", str(tar), "--dest", str(tmp_path / "o")]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.mirror
def test_real_senteval_tar(mirror_dir, tmp_path):
    dest = tmp_path / "resources" / "senteval"
    extract(mirror_dir / "senteval.tar", dest)
    for sub in ("STS/STS12-en-test", "STS/STS16-en-test", "STS/STSBenchmark", "SICK", "MR", "CR", "SUBJ",
                "MPQA", "SST/binary", "TREC", "MRPC"):
        assert (dest / sub).is_dir(), sub
    assert (dest / "STS" / "STS12-en-test" / "STS.input.MSRpar.txt").is_file()
    assert (dest / "STS" / "STSBenchmark" / "sts-dev.csv").is_file()


# ---------------------------------------------------------------- links chained through earlier members
def _zip_link(zf: zipfile.ZipFile, name: str, target: str) -> None:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zf.writestr(info, target)


def _files_outside(root: Path, inside: Path) -> list[str]:
    """Every file under `root` that is not under `inside` (the archive itself excepted)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and not p.is_symlink() and inside not in p.parents and p.suffix not in (".zip", ".tar"))


def test_zip_symlink_chain_cannot_write_outside(tmp_path):
    # Each link is harmless read on its own (a -> ., a/b -> .., c -> a/b/..), but a/b is created *through* a,
    # so on disk c points two levels above the extraction folder and c/x lands there.
    z = tmp_path / "chain.zip"
    with zipfile.ZipFile(z, "w") as zf:
        _zip_link(zf, "a", ".")
        _zip_link(zf, "a/b", "..")
        _zip_link(zf, "c", "a/b/..")
        zf.writestr("c/x", b"escaped")
    dest = tmp_path / "l1" / "l2" / "out"
    dest.parent.mkdir(parents=True)
    with pytest.raises(KdmcseError, match="outside"):
        extract(z, dest)
    assert _files_outside(tmp_path, dest) == []
    _assert_clean(dest)


def test_tar_symlink_chain_cannot_write_outside(tmp_path):
    tar = tmp_path / "chain.tar"
    with tarfile.open(tar, "w") as tf:
        _add(tf, "a", type=tarfile.SYMTYPE, linkname=".")
        _add(tf, "a/b", type=tarfile.SYMTYPE, linkname="..")
        _add(tf, "c", type=tarfile.SYMTYPE, linkname="a/b/..")
        _add(tf, "c/x", b"escaped")
    dest = tmp_path / "l1" / "l2" / "out"
    dest.parent.mkdir(parents=True)
    with pytest.raises(KdmcseError, match="outside"):
        extract(tar, dest)
    assert _files_outside(tmp_path, dest) == []
    _assert_clean(dest)


def test_link_that_a_later_member_redirects_outside_is_refused(tmp_path):
    # d -> e is inside when written; a/e -> .. looks inside too, but a -> . puts it at e: d now points outside.
    z = tmp_path / "late.zip"
    with zipfile.ZipFile(z, "w") as zf:
        _zip_link(zf, "d", "e")
        _zip_link(zf, "a", ".")
        _zip_link(zf, "a/e", "..")
    dest = tmp_path / "out"
    with pytest.raises(KdmcseError, match="outside"):
        extract(z, dest)
    _assert_clean(dest)


def test_link_loop_is_refused(tmp_path):
    z = tmp_path / "cycle.zip"
    with zipfile.ZipFile(z, "w") as zf:
        _zip_link(zf, "p", "q")
        _zip_link(zf, "q", "p")
        zf.writestr("p/x", b"x")
    with pytest.raises(KdmcseError, match="links form a loop"):
        extract(z, tmp_path / "out")


def test_zip_links_inside_still_work(tmp_path):
    z = tmp_path / "ok.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("d/file.txt", b"hi")
        _zip_link(zf, "d/alias.txt", "file.txt")
        _zip_link(zf, "up", "d")
        zf.writestr("up/new.txt", b"through the link")
    dest = tmp_path / "out"
    extract(z, dest)
    assert (dest / "d" / "alias.txt").read_bytes() == b"hi"
    assert (dest / "d" / "new.txt").read_bytes() == b"through the link"


# ---------------------------------------------------------------- size bounds
def _zip_bomb(path: Path, mib: int) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("zeros.bin", "w") as f:
            block = bytes(1 << 20)
            for _ in range(mib):
                f.write(block)
    return path


def test_zip_bomb_is_refused_before_writing(tmp_path):
    bomb = _zip_bomb(tmp_path / "bomb.zip", 100)  # ~100 KiB that expand to 100 MiB
    assert bomb.stat().st_size < 1 << 20
    dest = tmp_path / "out"
    with pytest.raises(KdmcseError, match=r"expand.*MiB"):
        extract(bomb, dest)
    _assert_clean(dest)


def test_tar_gz_bomb_is_refused_from_its_header(tmp_path):
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tf:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 100 << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    with pytest.raises(KdmcseError, match=r"expand.*MiB"):
        extract(bomb, tmp_path / "out")
    _assert_clean(tmp_path / "out")


def test_size_limit_can_be_raised(tmp_path):
    bomb = _zip_bomb(tmp_path / "big.zip", 70)
    dest = tmp_path / "out"
    with pytest.raises(KdmcseError, match="--max-bytes"):
        extract(bomb, dest)
    extract(bomb, dest, max_bytes=80 << 20)
    assert (dest / "zeros.bin").stat().st_size == 70 << 20


# ---------------------------------------------------------------- permissions
def test_extracted_folder_follows_the_umask(tmp_path):
    import os

    tar = make_senteval_tar(tmp_path / "s.tar")
    old = os.umask(0o022)
    try:
        dest = extract(tar, tmp_path / "senteval")
    finally:
        os.umask(old)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755


def test_temp_folders_left_by_a_killed_extraction_are_removed(tmp_path):
    tar = make_senteval_tar(tmp_path / "s.tar")
    dest = tmp_path / "resources" / "senteval"
    stale = dest.parent / ".senteval.extract-k1ll3d"  # what a SIGKILL mid-extraction leaves
    (stale / "STS").mkdir(parents=True)
    (stale / "STS" / "half.txt").write_bytes(b"x" * 1000)
    extract(tar, dest)
    assert (dest / "MR" / "rt-polarity.pos").is_file()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["senteval"]
