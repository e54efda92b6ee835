"""Two kinds of lock: the sources lock file (`resources/sources.lock.json`, the sha256 each artifact was fetched
with) and an exclusive OS lock per target (a download's file, an extraction's folder), so two jobs never share
a `.part` file or a temp folder, and leftovers of a killed job can be removed safely by the next one.

A lock-file entry records how its bytes were checked (`checked`). Entries without that field were written by
releases that accepted a transfer whose length nobody checked; they are advisory only (a mismatch is logged
and the entry replaced) since they may hold the checksum of a cut file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

from kdmcse.errors import KdmcseError
from kdmcse.io import read_json, write_json

log = logging.getLogger(__name__)

POLL_S = 0.2


@contextlib.contextmanager
def locked_json(lock_path: Path) -> Iterator[dict[str, Any]]:
    """Read-modify-write the lock JSON under an OS lock: parallel download jobs share one lock file."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path.parent / f".{lock_path.name}.flock", "a+") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            data = read_json(lock_path) if lock_path.is_file() else {}
        except ValueError as exc:
            raise KdmcseError(f"lock file {lock_path} is not valid JSON ({exc}); delete it to re-record") from exc
        if not isinstance(data, dict):
            raise KdmcseError(f"lock file {lock_path} must hold a JSON object; delete it to re-record")
        before = dict(data)
        yield data
        if data != before:
            write_json(lock_path, data)


def lock_entry(lock_path: Path | None, key: str) -> dict[str, Any] | None:
    if lock_path is None or not lock_path.is_file():
        return None
    with locked_json(lock_path) as data:
        entry = data.get(key)
    return entry if isinstance(entry, dict) and isinstance(entry.get("sha256"), str) else None


def is_binding(entry: dict[str, Any] | None) -> bool:
    """Whether later downloads must match the entry (it records how its bytes were checked)."""
    return entry is not None and bool(entry.get("checked"))


def record(lock_path: Path | None, key: str, name: str, sha: str, size: int, origin: str, checked: str) -> None:
    """Pin `sha` for `key`; an identical binding entry is left as it is."""
    if lock_path is None:
        return
    with locked_json(lock_path) as data:
        old = data.get(key)
        if isinstance(old, dict) and old.get("sha256") == sha and old.get("checked"):
            return
        data[key] = {
            "filename": name,
            "sha256": sha,
            "size": size,
            "source": origin,
            "checked": checked,
            "recorded": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
    log.info("recorded sha256 %s for %s in %s (%s)", sha, key, lock_path, checked)


@contextlib.contextmanager
def target_lock(dest: Path, timeout: float | None = None, what: str = "download") -> Iterator[None]:
    """Hold the exclusive lock of one target (`.<name>.lock` beside it) for the whole download or extraction.

    A second job for the same target waits for the first (a download then finds the finished file), or after
    `timeout` seconds fails with one line naming the process holding it. None waits as long as it takes.
    The lock file is removed on release; a waiter that then holds the lock of a removed file notices
    (the path no longer names its inode) and locks the current file instead.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    path = dest.parent / f".{dest.name}.lock"
    start = time.monotonic()
    announced = False
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            f.close()
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = _holder(path)
            if timeout is not None and time.monotonic() - start >= timeout:
                raise KdmcseError(f"another {what} of {dest.name} is in progress ({holder}, lock {path}); "
                                  "wait for it to finish or stop it, then rerun") from None
            if not announced:
                log.info("another %s of %s is in progress (%s); waiting for it", what, dest.name, holder)
                announced = True
            time.sleep(POLL_S)
            continue
        if _same_file(f, path):
            break
        f.close()  # locked a file its holder removed meanwhile: lock the one that is there now
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        f.flush()
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while still holding the lock, so no one can lock this file afterwards unnoticed
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _same_file(f: Any, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "unknown process"
    except OSError:
        return "unknown process"
