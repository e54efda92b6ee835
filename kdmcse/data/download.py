"""Fetch one registered artifact (`config/sources.yaml`) to a local path, verified by sha256.

`python -m kdmcse download --source KEY --registry config/sources.yaml --dest PATH [--mirror DIR_OR_URL]
[--override-path PATH] [--override-url URL] [--override-sha256 HEX] [--lock FILE] [--timeout S] [--retries N]`

Where the bytes may come from, in order: `--override-path` alone if given (a pre-staged local file, whose
name may differ, e.g. the offline `wiki1m_head.txt`); otherwise `<mirror>/<filename>` (folder or base URL),
then `--override-url` or the registry's URLs. Each candidate is streamed into `.<dest name>.part` beside
`dest`; an interrupted HTTP transfer resumes from that file with a Range request where the server answers
206, and restarts where it does not. Only a file whose sha256 matches is renamed onto `dest`.

Which sha256 is expected: `--override-sha256`, else the registry's pin (for the registry's own file), else
the one recorded in the lock file. Where none is known, the first download records the sha256 it got in
the lock file, and later runs must match it (so every rerun uses the same bytes).

urllib (stdlib) rather than requests or pooch: no extra dependency, byte-exact control over Range resumes
and truncation checks, which pooch does not do (it never resumes, and COCO's zip is 13 GB).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fcntl
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml
from tqdm import tqdm

from kdmcse import __version__
from kdmcse.errors import KdmcseError
from kdmcse.io import read_json, sha256_file, write_json

log = logging.getLogger(__name__)

CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Source:
    """One artifact of the registry."""

    key: str
    filename: str
    urls: tuple[str, ...]
    sha256: str | None = None
    size: int | None = None
    licence: str = ""
    notes: str = ""


@dataclass
class _Candidate:
    label: str  # what the error message shows
    location: str  # URL or local path
    is_url: bool


@dataclass
class _Attempts:
    failures: list[str] = field(default_factory=list)

    def add(self, label: str, why: str) -> None:
        self.failures.append(f"{label}: {why}")
        log.warning("%s: %s", label, why)


class _TransferError(Exception):
    """A transfer problem worth retrying (timeouts, drops, truncation, 5xx)."""


class _GiveUpOnCandidate(Exception):
    """A problem that retrying the same location will not fix (404, checksum of a full transfer)."""


# ----------------------------------------------------------------------------- registry


def load_registry(path: str | os.PathLike[str]) -> dict[str, Source]:
    """Read and check `config/sources.yaml`; every problem names the key and the field."""
    path = Path(path)
    if not path.is_file():
        raise KdmcseError(f"source registry {path} not found; pass --registry config/sources.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise KdmcseError(f"source registry {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not raw:
        raise KdmcseError(f"source registry {path} must map artifact keys to entries")
    out: dict[str, Source] = {}
    for key, entry in raw.items():
        where = f"{path}: entry {key!r}"
        if not isinstance(entry, dict):
            raise KdmcseError(f"{where} must be a mapping with filename, urls, sha256, size")
        filename = entry.get("filename")
        if not isinstance(filename, str) or not filename or "/" in filename:
            raise KdmcseError(f"{where}: 'filename' must be a plain file name, got {filename!r}")
        urls = entry.get("urls") or []
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise KdmcseError(f"{where}: 'urls' must be a list of strings")
        sha = entry.get("sha256")
        if sha is not None and not (isinstance(sha, str) and _HEX64.fullmatch(sha.lower())):
            raise KdmcseError(f"{where}: 'sha256' must be 64 hex digits or null, got {sha!r}")
        size = entry.get("size")
        if size is not None and not (isinstance(size, int) and size > 0):
            raise KdmcseError(f"{where}: 'size' must be a positive integer (bytes) or null, got {size!r}")
        out[str(key)] = Source(
            key=str(key),
            filename=filename,
            urls=tuple(urls),
            sha256=sha.lower() if sha else None,
            size=size,
            licence=str(entry.get("licence") or ""),
            notes=str(entry.get("notes") or ""),
        )
    return out


def get_source(registry: str | os.PathLike[str], key: str) -> Source:
    sources = load_registry(registry)
    if key not in sources:
        raise KdmcseError(f"unknown source {key!r} in {registry}; known: {', '.join(sorted(sources))}")
    return sources[key]


# ----------------------------------------------------------------------------- lock file


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[dict[str, Any]]:
    """Read-modify-write the lock JSON under an OS lock: parallel download jobs share one lock file."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path.parent / f".{lock_path.name}.flock", "a+") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        data = read_json(lock_path) if lock_path.is_file() else {}
        if not isinstance(data, dict):
            raise KdmcseError(f"lock file {lock_path} must hold a JSON object; delete it to re-record")
        before = dict(data)
        yield data
        if data != before:
            write_json(lock_path, data)


def _lock_entry(lock_path: Path | None, lock_key: str) -> dict[str, Any] | None:
    if lock_path is None or not lock_path.is_file():
        return None
    with _locked(lock_path) as data:
        entry = data.get(lock_key)
    return entry if isinstance(entry, dict) else None


def _record_lock(lock_path: Path | None, lock_key: str, name: str, sha: str, size: int, origin: str) -> None:
    if lock_path is None:
        return
    with _locked(lock_path) as data:
        old = data.get(lock_key)
        if isinstance(old, dict) and old.get("sha256") == sha:
            return
        data[lock_key] = {
            "filename": name,
            "sha256": sha,
            "size": size,
            "source": origin,
            "recorded": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
    log.info("recorded sha256 %s for %s in %s", sha, lock_key, lock_path)


# ----------------------------------------------------------------------------- transfers



def _progress(total: int | None, initial: int, desc: str) -> tqdm:
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=desc, mininterval=1.0, leave=False)


def _copy_local(src: Path, part: Path) -> None:
    total = src.stat().st_size
    with open(src, "rb") as fi, open(part, "wb") as fo, _progress(total, 0, src.name) as bar:
        for block in iter(lambda: fi.read(CHUNK), b""):
            fo.write(block)
            bar.update(len(block))


def _parse_content_range(value: str | None) -> tuple[int, int | None] | None:
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (value or "").strip())
    if not m:
        return None
    return int(m.group(1)), None if m.group(3) == "*" else int(m.group(3))


def _http_fetch(url: str, part: Path, timeout: float) -> bool:
    """Stream `url` into `part`, resuming from its current size where possible. Returns True if resumed.

    Raises _TransferError for retryable problems and _GiveUpOnCandidate for 4xx answers.
    """
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"kdmcse/{__version__}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            part.unlink()  # the partial file does not fit what the server has: start over
            raise _TransferError(f"HTTP 416 for a resume from byte {have}; restarting") from exc
        if exc.code in (408, 429) or exc.code >= 500:
            raise _TransferError(f"HTTP {exc.code} {exc.reason}") from exc
        raise _GiveUpOnCandidate(f"HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise _TransferError(f"cannot connect: {reason}") from exc

    with resp:
        resumed = False
        mode = "wb"
        start = 0
        if resp.status == 206 and have:
            cr = _parse_content_range(resp.headers.get("Content-Range"))
            if cr is None or cr[0] != have:
                part.unlink()
                raise _TransferError(f"server answered a resume with an unexpected Content-Range "
                                     f"{resp.headers.get('Content-Range')!r}; restarting")
            mode, start, resumed = "ab", have, True
            log.info("resuming %s from byte %d", url, have)
        elif have:
            log.info("server ignored the Range request for %s; restarting from byte 0", url)
        length = resp.headers.get("Content-Length")
        expected_total = start + int(length) if length and length.isdigit() else None
        written = start
        try:
            with open(part, mode) as f, _progress(expected_total, start, Path(part.name).stem) as bar:
                while True:
                    block = resp.read(CHUNK)
                    if not block:
                        break
                    f.write(block)
                    written += len(block)
                    bar.update(len(block))
        except (OSError, http.client.HTTPException) as exc:  # includes timeouts and IncompleteRead
            raise _TransferError(f"connection lost after {written} bytes: {exc!r}") from exc
        if expected_total is not None and written != expected_total:
            raise _TransferError(f"truncated transfer: got {written} of {expected_total} bytes "
                                 "(Content-Length mismatch)")
    return resumed


# ----------------------------------------------------------------------------- main entry


def _candidates(source: Source, mirror: str | None, override_path: str | None,
                override_url: str | None) -> list[_Candidate]:
    if override_path:
        return [_Candidate(f"override path {override_path}", str(override_path), False)]
    out: list[_Candidate] = []
    if mirror:
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", mirror):
            url = mirror.rstrip("/") + "/" + urllib.parse.quote(source.filename)
            out.append(_Candidate(f"mirror {url}", url, True))
        else:
            path = Path(mirror) / source.filename
            out.append(_Candidate(f"mirror {path}", str(path), False))
    for url in [override_url] if override_url else source.urls:
        out.append(_Candidate(url, url, True))
    return out


def fetch(
    source: Source,
    dest: str | os.PathLike[str],
    *,
    mirror: str | None = None,
    override_path: str | None = None,
    override_url: str | None = None,
    override_sha256: str | None = None,
    lock: str | os.PathLike[str] | None = None,
    timeout: float = 60.0,
    retries: int = 3,
    backoff: float = 1.0,
) -> Path:
    """Obtain `source` at `dest`, verified; raise one KdmcseError listing every attempt if nothing works."""
    dest = Path(dest)
    lock_path = Path(lock) if lock else None
    if override_sha256 is not None:
        override_sha256 = override_sha256.strip().lower()
        if not _HEX64.fullmatch(override_sha256):
            raise KdmcseError(f"--override-sha256 must be 64 hex digits, got {override_sha256!r}")
    if override_path and not Path(override_path).is_file():
        raise KdmcseError(f"--override-path {override_path} is not a file; stage the file there first")

    # A file under another name (e.g. the mirror's wiki1m_head.txt) is another artifact: the registry's
    # pin and size do not apply to it, and the lock file keeps its checksum under its own key.
    if override_path:
        name = Path(override_path).name
    elif override_url:
        name = Path(urllib.parse.urlparse(override_url).path).name or source.filename
    else:
        name = source.filename
    own_file = name == source.filename
    lock_key = source.key if own_file else f"{source.key}/{name}"
    locked = _lock_entry(lock_path, lock_key)
    expected = override_sha256 or (source.sha256 if own_file else None) or (locked or {}).get("sha256")
    expected_from = ("--override-sha256" if override_sha256 else "the registry" if own_file and source.sha256
                     else f"lock file {lock_path}" if expected else None)
    size = source.size if own_file else None

    if dest.is_file():
        got = sha256_file(dest)
        if expected is None or got == expected:
            log.info("%s already present at %s (sha256 %s)", name, dest, got)
            _record_lock(lock_path, lock_key, name, got, dest.stat().st_size, str(dest))
            return dest
        log.warning("%s exists but its sha256 %s != expected %s; fetching it again", dest, got, expected)

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.parent / f".{dest.name}.part"
    attempts = _Attempts()
    for cand in _candidates(source, mirror, override_path, override_url):
        if not cand.is_url and not Path(cand.location).is_file():
            attempts.add(cand.label, "no such file")
            continue
        for attempt in range(max(1, retries)):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            try:
                resumed = _http_fetch(cand.location, part, timeout) if cand.is_url else False
                if not cand.is_url:
                    _copy_local(Path(cand.location), part)
            except _GiveUpOnCandidate as exc:
                attempts.add(cand.label, str(exc))
                break
            except _TransferError as exc:
                attempts.add(cand.label, f"attempt {attempt + 1}/{retries}: {exc}")
                continue
            except OSError as exc:
                attempts.add(cand.label, f"cannot read or write: {exc}")
                break
            got_size = part.stat().st_size
            if size is not None and got_size != size:
                part.unlink()
                attempts.add(cand.label, f"size {got_size} bytes != registry size {size}")
                if resumed:
                    continue
                break
            got = sha256_file(part)
            if expected is not None and got != expected:
                part.unlink()
                attempts.add(cand.label, f"sha256 {got} != expected {expected} (from {expected_from})")
                if resumed:  # a stale partial file may be at fault: one fresh try
                    continue
                break
            os.replace(part, dest)
            _record_lock(lock_path, lock_key, name, got, got_size, cand.location)
            log.info("fetched %s -> %s (sha256 %s)", cand.label, dest, got)
            return dest

    tried = "\n".join(f"  - {f}" for f in attempts.failures) or "  (no location to try)"
    raise KdmcseError(
        f"could not obtain {name} (source {source.key!r}). Tried:\n{tried}\n"
        f"expected sha256: {expected or 'not pinned (any content is accepted and recorded in the lock file)'}\n"
        f"To fix: download {name} by hand and place it at {dest} (or in a folder passed as --mirror, "
        f"or pass --override-path FILE), then rerun."
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kdmcse download", description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", required=True, help="artifact key in the registry")
    ap.add_argument("--registry", default="config/sources.yaml")
    ap.add_argument("--dest", help="target file (default resources/downloads/<filename>)")
    ap.add_argument("--mirror", help="folder or base URL tried before the origin: <mirror>/<filename>")
    ap.add_argument("--override-path", help="copy this pre-staged local file instead of downloading")
    ap.add_argument("--override-url", help="download from this URL instead of the registry's")
    ap.add_argument("--override-sha256", help="expect this sha256 instead of the registry's or the lock's")
    ap.add_argument("--lock", help="JSON file recording the sha256 of unpinned downloads")
    ap.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds")
    ap.add_argument("--retries", type=int, default=3, help="attempts per location")
    ap.add_argument("--backoff", type=float, default=2.0, help="first retry delay in seconds (doubles)")
    args = ap.parse_args(argv)

    source = get_source(args.registry, args.source)
    dest = Path(args.dest) if args.dest else Path("resources/downloads") / source.filename
    fetch(source, dest, mirror=args.mirror, override_path=args.override_path, override_url=args.override_url,
          override_sha256=args.override_sha256, lock=args.lock, timeout=args.timeout, retries=args.retries,
          backoff=args.backoff)
    return 0
