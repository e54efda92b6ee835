"""Small file helpers shared by every stage: atomic writes, JSON, and a log-file friendly stderr."""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, TextIO


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (`os.umask` alone must set it to read it,
    which briefly changes it for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_temp_dir(parent: str | os.PathLike[str], prefix: str, suffix: str = "") -> Path:
    """`tempfile.mkdtemp` in `parent`, with the permissions an ordinary `mkdir` would give.

    mkdtemp always creates 0700 folders; renamed into place as an output (an extracted archive, a model folder,
    a checkpoint), they would be unreadable to everyone else whatever the umask says.
    """
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def apply_umask(tree: str | os.PathLike[str]) -> None:
    """Give every file and folder under `tree` the mode an ordinary write gets under the umask.

    Libraries that write through private temp files (transformers' safetensors writer among them) leave 0600
    files behind; a model folder meant to be shared or uploaded must be readable as the user's umask allows.
    """
    mask = current_umask()
    root = Path(tree)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds.

    The temp file lives in the same folder so the rename is atomic on POSIX file systems, and a crash
    never leaves a half-written file under the final name.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix or ".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            # mkstemp creates 0600 files; give the result the permissions an ordinary write would have.
            os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path, suffix=".json.tmp") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def recorded_job(job_file: str | os.PathLike[str], job: Any) -> bool | None:
    """Whether an interrupted run's folder was made for `job`: None when there is no job file,
    True when it records this very job (resume), False for another job or an unreadable file (start afresh)."""
    if not Path(job_file).is_file():
        return None
    try:
        return read_json(job_file) == job
    except ValueError:
        return False


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (downloads, caption tables and caches share this)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()



class LogStream:
    """A stderr for log files: progress-bar redraws become lines, at most one every `interval` seconds.

    tqdm redraws a bar in place with a carriage return; in a rule's log file that is thousands of `\\r` updates
    on one physical line, whatever `mininterval` the caller (or a library) chose. Here each redraw that is
    shown becomes a line of its own, at most one per `interval` seconds; the latest redraw held back is written
    when its bar closes, so the final count is never lost. Every other write (log records, tracebacks, prints)
    passes through unchanged.
    """

    def __init__(self, stream: TextIO, interval: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last_shown = -float("inf")
        self._held: str | None = None  # the latest redraw not shown yet
        self._redrawing = False  # the last thing written was a bar redraw (its closing newline may follow)

    def write(self, text: str) -> int:
        with self._lock:
            previous = ""
            for token in re.split(r"(\r|\n)", text):
                if token == "\r":
                    self._redrawing = True
                elif token == "\n":
                    if self._redrawing:  # a bar closing (tqdm leave=True): its last state ends the line
                        if self._held is not None:
                            self._show(self._held)
                        self._redrawing = False
                    else:
                        self._stream.write("\n")
                elif token:
                    if previous == "\r":
                        self._redraw(token.rstrip(" "))
                    else:  # plain text: any bar state before it is over
                        self._redrawing, self._held = False, None
                        self._stream.write(token)
                if token:
                    previous = token
        return len(text)

    def _redraw(self, line: str) -> None:
        if not line.strip():  # a bar clearing its line (tqdm leave=False): nothing to show
            self._held = None
        elif self._clock() - self._last_shown >= self._interval:
            self._show(line)
        else:
            self._held = line

    def _show(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._last_shown = self._clock()
        self._held = None

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:  # fileno, encoding, buffer, ...: those of the wrapped stream
        return getattr(self._stream, name)


def copy_output(source: BinaryIO, sink: TextIO) -> None:
    """Copy a child process's output (a pipe) to `sink` as it comes, in pieces cut before each `\r` or `\n`.

    A child writes to its file descriptor, past any `LogStream` of ours; read through a pipe and copied here,
    its progress bars get the same treatment. Cutting before a delimiter hands each redraw over whole.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    read = getattr(source, "read1", source.read)
    while chunk := read(1 << 16):
        pending += decoder.decode(chunk)
        cut = max(pending.rfind("\r"), pending.rfind("\n"))
        if cut > 0:
            sink.write(pending[:cut])
            sink.flush()
            pending = pending[cut:]
    sink.write(pending + decoder.decode(b"", final=True))
    sink.flush()
