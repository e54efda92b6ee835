"""Safe extraction of tar (any compression) and zip archives.

`python -m kdmcse extract --archive FILE --dest DIR [--strip-components N] [--members GLOB…] [--overwrite]`

Every member is checked before anything is written: no absolute paths, no `..`, no links that point
outside the archive, no device files or FIFOs. Tar members then go through tarfile's `filter="data"`
as a second line of defence; zip has no such filter, so its members are checked here and copied by hand.
Extraction happens in a temp folder beside DEST that is renamed onto DEST at the end, so a bad archive
fails with one clear error and leaves nothing behind.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from kdmcse.errors import KdmcseError

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    """One archive member after checks: where it goes and what it is."""

    name: str  # path inside DEST after stripping, POSIX separators
    kind: str  # "file" | "dir" | "symlink" | "hardlink"
    link: str = ""  # symlink target (as stored) or hardlink target (stripped archive path)
    member: object = None  # TarInfo or ZipInfo


def _clean(name: str, archive: Path, what: str = "member") -> list[str]:
    """Split an archive path into parts, refusing absolute paths and `..`."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise KdmcseError(f"{archive}: {what} {name!r} has an absolute path; refusing to extract this archive")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise KdmcseError(f"{archive}: {what} {name!r} contains '..'; refusing to extract this archive")
    return parts


def _strip(parts: list[str], n: int) -> str | None:
    return "/".join(parts[n:]) if len(parts) > n else None


def _check_symlink(entry_name: str, target: str, archive: Path, raw_name: str) -> None:
    """A symlink may point anywhere inside DEST (relative target), never outside it."""
    if target.startswith("/") or (len(target) > 1 and target[1] == ":"):
        raise KdmcseError(f"{archive}: symlink {raw_name!r} -> {target!r} is absolute; refusing to extract")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(entry_name), target))
    if resolved == ".." or resolved.startswith("../"):
        raise KdmcseError(f"{archive}: symlink {raw_name!r} -> {target!r} points outside the archive; "
                          "refusing to extract")


def _selected(name: str, globs: list[str] | None) -> bool:
    return not globs or any(fnmatch.fnmatchcase(name, g) for g in globs)


def _plan_tar(tf: tarfile.TarFile, archive: Path, strip: int, globs: list[str] | None) -> list[_Entry]:
    out: list[_Entry] = []
    for m in tf.getmembers():
        parts = _clean(m.name, archive)
        if m.ischr() or m.isblk() or m.isfifo() or m.isdev():
            raise KdmcseError(f"{archive}: member {m.name!r} is a device file or FIFO; refusing to extract")
        name = _strip(parts, strip)
        if name is None or not _selected(name, globs):
            continue
        if m.issym():
            _check_symlink(name, m.linkname, archive, m.name)
            out.append(_Entry(name, "symlink", m.linkname, m))
        elif m.islnk():
            target = _strip(_clean(m.linkname, archive, "hardlink target"), strip)
            if target is None:
                raise KdmcseError(f"{archive}: hardlink {m.name!r} -> {m.linkname!r} points into the part "
                                  f"removed by --strip-components {strip}")
            out.append(_Entry(name, "hardlink", target, m))
        elif m.isdir():
            out.append(_Entry(name, "dir", member=m))
        elif m.isfile():
            out.append(_Entry(name, "file", member=m))
        else:
            raise KdmcseError(f"{archive}: member {m.name!r} has an unsupported type; refusing to extract")
    return out


def _plan_zip(zf: zipfile.ZipFile, archive: Path, strip: int, globs: list[str] | None) -> list[_Entry]:
    out: list[_Entry] = []
    for info in zf.infolist():
        parts = _clean(info.filename, archive)
        mode = info.external_attr >> 16
        name = _strip(parts, strip)
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            raise KdmcseError(f"{archive}: member {info.filename!r} is a device file or FIFO; refusing to extract")
        if stat.S_ISLNK(mode):
            target = zf.read(info).decode("utf-8", "surrogateescape")
            _check_symlink(name or "", target, archive, info.filename)
            if name is not None and _selected(name, globs):
                out.append(_Entry(name, "symlink", target, info))
            continue
        if name is None or not _selected(name, globs):
            continue
        out.append(_Entry(name, "dir" if info.is_dir() else "file", member=info))
    return out


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, mode="r:*")
    except (tarfile.TarError, OSError) as exc:
        raise KdmcseError(f"{archive} is not a readable tar archive ({exc}); download it again") from exc


def _extract_tar(archive: Path, tmp: Path, plan: list[_Entry]) -> None:
    with _open_tar(archive) as tf:
        renamed = []
        for e in plan:
            m: tarfile.TarInfo = e.member  # type: ignore[assignment]
            renamed.append(m.replace(name=e.name, linkname=e.link, deep=False) if e.kind != "dir"
                           else m.replace(name=e.name, deep=False))
        try:
            for m in tqdm(renamed, desc=archive.name, unit="file", mininterval=1.0, leave=False):
                tf.extract(m, tmp, filter="data")
        except tarfile.FilterError as exc:
            raise KdmcseError(f"{archive}: unsafe member rejected ({exc}); refusing to extract") from exc
        except (tarfile.TarError, OSError, EOFError, KeyError) as exc:
            raise KdmcseError(f"{archive}: extraction failed ({exc}); the archive may be truncated, "
                              "download it again") from exc


def _extract_zip(archive: Path, tmp: Path, plan: list[_Entry]) -> None:
    with zipfile.ZipFile(archive) as zf:
        try:
            for e in tqdm(plan, desc=archive.name, unit="file", mininterval=1.0, leave=False):
                target = tmp.joinpath(*e.name.split("/"))
                if e.kind == "dir":
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                if e.kind == "symlink":
                    os.symlink(e.link, target)
                    continue
                with zf.open(e.member) as src, open(target, "wb") as dst:  # type: ignore[arg-type]
                    shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise KdmcseError(f"{archive}: extraction failed ({exc}); the archive may be corrupt, "
                              "download it again") from exc


def extract(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    strip_components: int = 0,
    members: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Check every member of `archive`, then extract it into `dest` atomically; return `dest`.

    `members` are globs matched against the member path after stripping (e.g. `STS/*`).
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise KdmcseError(f"archive {archive} not found; download it first (python -m kdmcse download)")
    if strip_components < 0:
        raise KdmcseError(f"--strip-components must be >= 0, got {strip_components}")
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())) and not overwrite:
        raise KdmcseError(f"destination {dest} already exists and is not empty; remove it or pass --overwrite")

    if zipfile.is_zipfile(archive):
        kind = "zip"
        try:
            with zipfile.ZipFile(archive) as zf:
                plan = _plan_zip(zf, archive, strip_components, members)
        except zipfile.BadZipFile as exc:
            raise KdmcseError(f"{archive} is not a readable zip archive ({exc}); download it again") from exc
    else:
        kind = "tar"
        with _open_tar(archive) as tf:
            try:
                plan = _plan_tar(tf, archive, strip_components, members)
            except (tarfile.TarError, EOFError) as exc:
                raise KdmcseError(f"{archive} is truncated or corrupt ({exc}); download it again") from exc
    if not any(e.kind != "dir" for e in plan):
        raise KdmcseError(f"{archive}: nothing to extract after --strip-components {strip_components}"
                          + (f" and --members {' '.join(members)}" if members else ""))

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        (_extract_zip if kind == "zip" else _extract_tar)(archive, tmp, plan)
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{os.getpid()}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n_files = sum(e.kind == "file" for e in plan)
    log.info("extracted %d files from %s into %s", n_files, archive, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kdmcse extract", description=__doc__.split("\n\n")[0])
    ap.add_argument("--archive", required=True, help="tar (any compression) or zip file")
    ap.add_argument("--dest", required=True, help="folder to create")
    ap.add_argument("--strip-components", type=int, default=0, help="drop this many leading path parts")
    ap.add_argument("--members", nargs="+", metavar="GLOB", help="extract only members matching these globs")
    ap.add_argument("--overwrite", action="store_true", help="replace DEST if it exists")
    args = ap.parse_args(argv)
    extract(args.archive, args.dest, strip_components=args.strip_components, members=args.members,
            overwrite=args.overwrite)
    return 0
