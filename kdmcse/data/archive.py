"""Safe extraction of tar (any compression) and zip archives.

`python -m kdmcse extract --archive FILE --dest DIR [--strip-components N] [--members GLOB…] [--overwrite]
[--max-bytes N]`

Every member is checked before anything is written: no absolute paths, no `..`, no device files or FIFOs,
and no path that leaves DEST once the links the archive creates are followed. That last check resolves each
member against the tree the members before it build (`kdmcse.data.archive_tree`), the way the file system
will: `a -> .` then `a/b -> ..` is a link *at* `b` pointing outside, although each looks harmless alone.
Tar members then go through tarfile's `filter="data"` as a second line of defence; zip has no such filter,
so its members are copied by hand, each target checked again on disk before it is written.

The total size the members declare is bounded (default: 20 times the archive, at least 64 MiB; `--max-bytes`
raises it) and counted again while writing, so a zip bomb fails before it fills the disk. Extraction happens
in a temp folder beside DEST that is renamed onto DEST at the end, so a bad archive fails with one clear error
and leaves nothing behind.
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
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from kdmcse.data.archive_tree import LinkLoop, Outside, Tree
from kdmcse.data.lockfile import target_lock
from kdmcse.errors import KdmcseError
from kdmcse.io import make_temp_dir

log = logging.getLogger(__name__)

MAX_RATIO = 20  # expanded size / archive size above which an archive is refused (the registry's are ~1)
MIN_LIMIT = 64 << 20  # ... unless it expands to less than this
COPY_BLOCK = 1 << 20


@dataclass
class _Entry:
    """One archive member after checks: where it goes and what it is."""

    name: str  # path inside DEST after stripping, POSIX separators
    kind: str  # "file" | "dir" | "symlink" | "hardlink"
    link: str = ""  # symlink target (as stored) or hardlink target (stripped archive path)
    member: object = None  # TarInfo or ZipInfo
    size: int = 0  # bytes a file member declares


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


class _Budget:
    """The bytes an archive may expand to; checked on the sizes members declare and on the bytes written."""

    def __init__(self, archive: Path, limit: int | None) -> None:
        self.archive = archive
        self.default = limit is None
        self.limit = limit if limit is not None else max(MIN_LIMIT, MAX_RATIO * archive.stat().st_size)
        self.used = 0

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            why = (f"{MAX_RATIO} times the archive's {_mib(self.archive.stat().st_size)}, at least "
                   f"{_mib(MIN_LIMIT)}" if self.default else "--max-bytes")
            raise KdmcseError(
                f"{self.archive}: members expand to more than {_mib(self.limit)} (the limit: {why}); refusing a "
                "possible archive bomb. If the archive is genuine, pass a larger --max-bytes (in the workflow: "
                "set max_extracted_bytes for it in the source registry)"
            )


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _plan_tar(tf: tarfile.TarFile, archive: Path, strip: int, globs: list[str] | None,
              budget: _Budget) -> list[_Entry]:
    out: list[_Entry] = []
    # Iterate lazily: a member's header is checked against the budget before its data is read past.
    for m in tf:
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
            budget.take(m.size)
            out.append(_Entry(name, "file", member=m, size=m.size))
        else:
            raise KdmcseError(f"{archive}: member {m.name!r} has an unsupported type; refusing to extract")
    return out


def _plan_zip(zf: zipfile.ZipFile, archive: Path, strip: int, globs: list[str] | None,
              budget: _Budget) -> list[_Entry]:
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
        if info.is_dir():
            out.append(_Entry(name, "dir", member=info))
        else:
            budget.take(info.file_size)
            out.append(_Entry(name, "file", member=info, size=info.file_size))
    return out


def _check_tree(plan: list[_Entry], archive: Path) -> None:
    """Resolve every member in order against the links the earlier ones create; refuse any way out of DEST."""
    tree = Tree()
    for e in plan:
        try:
            if e.kind == "symlink":
                tree.add_link(e.name, e.link)
            elif e.kind == "hardlink":
                tree.check_write(e.name)
                tree.check_path(e.link)
            else:  # a file or a folder: only links redirect later paths, so nothing to record
                tree.check_write(e.name)
        except Outside as exc:
            what = (f"symlink {e.name!r} -> {e.link!r} points" if e.kind == "symlink"
                    else f"member {e.name!r} would be written")
            raise KdmcseError(f"{archive}: {what} outside the archive folder once the links before it are followed "
                              f"({exc}); refusing to extract") from exc
        except LinkLoop as exc:
            raise KdmcseError(f"{archive}: member {e.name!r}: its links form a loop ({exc}); "
                              "refusing to extract") from exc
    try:
        tree.check_links()
    except Outside as exc:
        raise KdmcseError(f"{archive}: a symlink leads outside the archive folder once every member is in place "
                          f"({exc}); refusing to extract") from exc
    except LinkLoop as exc:
        raise KdmcseError(f"{archive}: symlinks form a loop ({exc}); refusing to extract") from exc


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, mode="r:*")
    except (tarfile.TarError, OSError) as exc:
        raise KdmcseError(f"{archive} is not a readable tar archive ({exc}); download it again") from exc


def _extract_tar(archive: Path, tmp: Path, plan: list[_Entry], budget: _Budget) -> None:
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


def _inside(root: Path, path: Path, archive: Path, name: str) -> None:
    """Second check, on disk: `path` with every existing link followed must stay under `root`."""
    real = os.path.realpath(path)
    if os.path.commonpath([real, root]) != str(root):
        raise KdmcseError(f"{archive}: member {name!r} would be written to {real}, outside the archive folder; "
                          "refusing to extract")


def _extract_zip(archive: Path, tmp: Path, plan: list[_Entry], budget: _Budget) -> None:
    root = Path(os.path.realpath(tmp))
    written = _Budget(archive, budget.limit)
    written.default = budget.default
    with zipfile.ZipFile(archive) as zf:
        try:
            for e in tqdm(plan, desc=archive.name, unit="file", mininterval=1.0, leave=False):
                target = tmp.joinpath(*e.name.split("/"))
                _inside(root, target.parent, archive, e.name)
                if e.kind == "dir":
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                if e.kind == "symlink":
                    os.symlink(e.link, target)
                    continue
                _inside(root, target, archive, e.name)
                with zf.open(e.member) as src, open(target, "wb") as dst:  # type: ignore[arg-type]
                    for block in iter(lambda: src.read(COPY_BLOCK), b""):
                        written.take(len(block))  # the declared sizes were checked; count what really comes out
                        dst.write(block)
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
    max_bytes: int | None = None,
) -> Path:
    """Check every member of `archive`, then extract it into `dest` atomically; return `dest`.

    `members` are globs matched against the member path after stripping (e.g. `STS/*`). `max_bytes` bounds the
    expanded size (default: `MAX_RATIO` times the archive's size, at least `MIN_LIMIT`).
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise KdmcseError(f"archive {archive} not found; download it first (python -m kdmcse download)")
    if strip_components < 0:
        raise KdmcseError(f"--strip-components must be >= 0, got {strip_components}")
    if max_bytes is not None and max_bytes < 1:
        raise KdmcseError(f"--max-bytes must be >= 1, got {max_bytes}")
    budget = _Budget(archive, max_bytes)
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())) and not overwrite:
        raise KdmcseError(f"destination {dest} already exists and is not empty; remove it or pass --overwrite")

    if zipfile.is_zipfile(archive):
        kind = "zip"
        try:
            with zipfile.ZipFile(archive) as zf:
                plan = _plan_zip(zf, archive, strip_components, members, budget)
        except zipfile.BadZipFile as exc:
            raise KdmcseError(f"{archive} is not a readable zip archive ({exc}); download it again") from exc
    else:
        kind = "tar"
        with _open_tar(archive) as tf:
            try:
                plan = _plan_tar(tf, archive, strip_components, members, budget)
            except (tarfile.TarError, EOFError) as exc:
                raise KdmcseError(f"{archive} is truncated or corrupt ({exc}); download it again") from exc
    if not any(e.kind != "dir" for e in plan):
        raise KdmcseError(f"{archive}: nothing to extract after --strip-components {strip_components}"
                          + (f" and --members {' '.join(members)}" if members else ""))

    _check_tree(plan, archive)

    dest.parent.mkdir(parents=True, exist_ok=True)
    with target_lock(dest, what="extraction"):
        # A killed extraction leaves its temp folder (13 GB for COCO); under the lock no one else is using it.
        for stale in [*dest.parent.glob(f".{dest.name}.extract-*"), *dest.parent.glob(f".{dest.name}.old-*")]:
            log.info("removing %s, left by an extraction that was killed", stale)
            shutil.rmtree(stale, ignore_errors=True)
        _extract_into(archive, dest, kind, plan, budget)
    n_files = sum(e.kind == "file" for e in plan)
    log.info("extracted %d files from %s into %s", n_files, archive, dest)
    return dest


def _extract_into(archive: Path, dest: Path, kind: str, plan: list[_Entry], budget: _Budget) -> None:
    free = shutil.disk_usage(dest.parent).free
    if budget.used > free:
        raise KdmcseError(f"{archive} expands to {_mib(budget.used)} but {dest.parent} has {_mib(free)} free; "
                          "make room or extract elsewhere")
    tmp = make_temp_dir(dest.parent, prefix=f".{dest.name}.extract-")
    try:
        (_extract_zip if kind == "zip" else _extract_tar)(archive, tmp, plan, budget)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kdmcse extract", description=__doc__.split("\n\n")[0])
    ap.add_argument("--archive", required=True, help="tar (any compression) or zip file")
    ap.add_argument("--dest", required=True, help="folder to create")
    ap.add_argument("--strip-components", type=int, default=0, help="drop this many leading path parts")
    ap.add_argument("--members", nargs="+", metavar="GLOB", help="extract only members matching these globs")
    ap.add_argument("--overwrite", action="store_true", help="replace DEST if it exists")
    ap.add_argument("--max-bytes", type=int, help=f"largest expanded size accepted (default: {MAX_RATIO} times "
                                                  f"the archive, at least {MIN_LIMIT >> 20} MiB)")
    args = ap.parse_args(argv)
    extract(args.archive, args.dest, strip_components=args.strip_components, members=args.members,
            overwrite=args.overwrite, max_bytes=args.max_bytes)
    return 0
