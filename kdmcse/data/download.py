"""Fetch one registered artifact (`config/sources.yaml`) to a local path, verified.

`python -m kdmcse download --source KEY --registry config/sources.yaml --dest PATH [--mirror DIR_OR_URL]
[--override-path PATH] [--override-url URL] [--override-sha256 HEX] [--lock FILE] [--timeout S] [--retries N]
[--lock-timeout S]`

Where the bytes may come from, in order: `--override-path` alone if given (a pre-staged local file, whose
name may differ, e.g. the offline `wiki1m_head.txt`); otherwise `<mirror>/<filename>` (folder or base URL),
then `--override-url` or the registry's URLs. Each candidate is streamed into `.<dest name>.part` beside
`dest` (`kdmcse.data.transfer`: resumes are conditional on the file being unchanged). Only a file that passes
the checks is renamed onto `dest`. One download of a target runs at a time (`.<dest name>.lock`); a second
waits for it.

How a file is checked, strongest first: against a trusted sha256 (`--override-sha256`; the registry's pin;
for a file on the Hugging Face Hub, the sha256 the Hub publishes, `kdmcse.data.hub`), else against the sha256
recorded in the lock file by an earlier checked download, else by its length (the registry's or the Hub's
size, or the total the server announced). A transfer none of these can check is refused: a connection that
closes early without a Content-Length looks complete. The first checked download of an unpinned file records
its sha256 in the lock file, and later runs must match it. A file placed at `dest` by hand is kept (and
re-recorded) unless a trusted sha256 says it is wrong.

urllib (stdlib) rather than requests or pooch: no extra dependency, byte-exact control over Range resumes
and truncation checks, which pooch does not do (it never resumes, and COCO's zip is 13 GB).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from kdmcse.data import hub
from kdmcse.data.lockfile import target_lock, is_binding, lock_entry, record
from kdmcse.data.registry import HEX64, Source, get_source, load_registry
from kdmcse.data.transfer import GiveUpOnCandidate, Transfer, TransferError, copy_local, discard, http_fetch
from kdmcse.errors import KdmcseError
from kdmcse.io import sha256_file

log = logging.getLogger(__name__)

__all__ = ["Source", "fetch", "get_source", "load_registry", "main"]


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


@dataclass
class _Expected:
    """What a download must match, and where each expectation comes from (for the messages and the lock)."""

    sha256: str | None = None
    sha_from: str = ""
    trusted: bool = False  # from --override-sha256, the registry or the Hub (not merely the lock file)
    size: int | None = None
    size_from: str = ""
    advisory: str | None = None  # a lock entry from a release that did not check lengths


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


def _expectation(source: Source, own_file: bool, override_sha256: str | None, override_url: str | None,
                 locked: dict | None, ask_hub: bool, lock_path: Path | None) -> _Expected:
    exp = _Expected(size=source.size if own_file else None, size_from="the registry")
    if override_sha256:
        exp.sha256, exp.sha_from, exp.trusted = override_sha256, "--override-sha256", True
    elif own_file and source.sha256:
        exp.sha256, exp.sha_from, exp.trusted = source.sha256, "the registry", True
    elif is_binding(locked):
        exp.sha256, exp.sha_from = locked["sha256"], f"lock file {lock_path}"  # type: ignore[index]
    if locked is not None and not is_binding(locked):
        exp.advisory = locked["sha256"]
    if ask_hub and (exp.sha256 is None or exp.size is None):
        urls = [override_url] if override_url else (list(source.urls) if own_file else [])
        published = next((hub.published_file(u) for u in urls if hub.is_hub_url(u)), None)
        if published is not None:
            if exp.sha256 is None and published.sha256:
                exp.sha256, exp.sha_from, exp.trusted = published.sha256, "the sha256 the Hub publishes", True
            if exp.size is None and published.size:
                exp.size, exp.size_from = published.size, "the size the Hub publishes"
    return exp


def _how_checked(exp: _Expected, transfer: Transfer, cand: _Candidate) -> str | None:
    """How the bytes in the .part file were checked, or None if nothing could check them."""
    if exp.sha256 is not None:
        return {"--override-sha256": "sha256 from --override-sha256", "the registry": "sha256 pinned in the registry",
                "the sha256 the Hub publishes": "sha256 published by the Hub"}.get(exp.sha_from,
                                                                                  "sha256 recorded in the lock")
    if exp.size is not None:
        return f"length against {exp.size_from}"
    if not cand.is_url:
        return "copied from a local file"
    if transfer.total is not None:
        return "length announced by the server"
    return None


def _keep_present(dest: Path, name: str, exp: _Expected, locked: dict | None, lock_path: Path | None,
                  lock_key: str) -> bool:
    """Decide on a file already at `dest`: True = keep it (and record it), False = fetch again."""
    got = sha256_file(dest)
    size = dest.stat().st_size
    if exp.sha256 is not None and exp.trusted:
        if got == exp.sha256:
            log.info("%s already present at %s (sha256 %s matches %s)", name, dest, got, exp.sha_from)
            record(lock_path, lock_key, name, got, size, str(dest), f"sha256 matching {exp.sha_from}")
            return True
        log.warning("%s exists but its sha256 %s != %s from %s; fetching it again", dest, got, exp.sha256,
                    exp.sha_from)
        return False
    known = exp.sha256 or exp.advisory
    if known is None or got == known:
        log.info("%s already present at %s (sha256 %s)", name, dest, got)
        checked = (locked or {}).get("checked") or ("placed by hand" if known is None
                                                     else "present, matching an earlier lock entry")
    else:
        # No trusted checksum: the user's own copy wins over what an earlier download recorded.
        log.warning("keeping %s placed by hand at %s (sha256 %s); it replaces sha256 %s recorded in %s",
                    name, dest, got, known, lock_path)
        checked = "placed by hand"
    record(lock_path, lock_key, name, got, size, str(dest), checked)
    return True


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
    lock_timeout: float | None = None,
) -> Path:
    """Obtain `source` at `dest`, checked; raise one KdmcseError listing every attempt if nothing works.

    `lock_timeout`: seconds to wait for another download of the same `dest` (None: as long as it takes).
    """
    dest = Path(dest)
    if override_sha256 is not None:
        override_sha256 = override_sha256.strip().lower()
        if not HEX64.fullmatch(override_sha256):
            raise KdmcseError(f"--override-sha256 must be 64 hex digits, got {override_sha256!r}")
    if override_path and not Path(override_path).is_file():
        raise KdmcseError(f"--override-path {override_path} is not a file; stage the file there first")
    with target_lock(dest, lock_timeout):
        return _fetch(source, dest, mirror=mirror, override_path=override_path, override_url=override_url,
                      override_sha256=override_sha256, lock_path=Path(lock) if lock else None, timeout=timeout,
                      retries=retries, backoff=backoff)


def _fetch(source: Source, dest: Path, *, mirror: str | None, override_path: str | None, override_url: str | None,
           override_sha256: str | None, lock_path: Path | None, timeout: float, retries: int,
           backoff: float) -> Path:
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
    locked = lock_entry(lock_path, lock_key)
    exp = _expectation(source, own_file, override_sha256, override_url, locked, ask_hub=not override_path,
                       lock_path=lock_path)

    if dest.is_file() and _keep_present(dest, name, exp, locked, lock_path, lock_key):
        return dest

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
                if cand.is_url:
                    transfer = http_fetch(cand.location, part, timeout)
                    if transfer.total is None and exp.sha256 is None and exp.size is None and transfer.ranges:
                        # The body ended with the connection and nothing says how long it is: ask for the
                        # bytes after it. 416 "*/N" confirms the end; a 206 means the body had been cut.
                        transfer = http_fetch(cand.location, part, timeout)
                else:
                    transfer = copy_local(Path(cand.location), part)
            except GiveUpOnCandidate as exc:
                attempts.add(cand.label, str(exc))
                break
            except TransferError as exc:
                attempts.add(cand.label, f"attempt {attempt + 1}/{retries}: {exc}")
                continue
            except OSError as exc:
                attempts.add(cand.label, f"cannot read or write: {exc}")
                break
            got_size = part.stat().st_size
            if exp.size is not None and got_size != exp.size:
                discard(part)
                attempts.add(cand.label, f"size {got_size} bytes != {exp.size} from {exp.size_from}")
                if transfer.resumed:
                    continue
                break
            checked = _how_checked(exp, transfer, cand)
            if checked is None:
                discard(part)
                attempts.add(cand.label, "the server sent no Content-Length and refuses Range requests, so a "
                                         "complete transfer cannot be told from a cut one (length unchecked), and "
                                         "no sha256 is known to check it against")
                break
            got = sha256_file(part)
            if exp.sha256 is not None and got != exp.sha256:
                discard(part)
                attempts.add(cand.label, f"sha256 {got} != expected {exp.sha256} (from {exp.sha_from})")
                if transfer.resumed:  # a stale partial file may be at fault: one fresh try
                    continue
                break
            if exp.advisory is not None and got != exp.advisory:
                log.warning("the lock entry of %s (sha256 %s) was recorded by a release whose downloads were not "
                            "length-checked; replacing it with the checked sha256 %s", lock_key, exp.advisory, got)
            os.replace(part, dest)
            discard(part)
            record(lock_path, lock_key, name, got, got_size, cand.location, checked)
            log.info("fetched %s -> %s (sha256 %s, %s)", cand.label, dest, got, checked)
            return dest

    tried = "\n".join(f"  - {f}" for f in attempts.failures) or "  (no location to try)"
    expected = (f"{exp.sha256} (from {exp.sha_from})" if exp.sha256
                else "not pinned (a length-checked download is accepted and recorded in the lock file)")
    raise KdmcseError(
        f"could not obtain {name} (source {source.key!r}). Tried:\n{tried}\n"
        f"expected sha256: {expected}\n"
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
    ap.add_argument("--lock-timeout", type=float, default=None,
                    help="seconds to wait for another download of the same file (default: as long as it takes)")
    args = ap.parse_args(argv)

    source = get_source(args.registry, args.source)
    dest = Path(args.dest) if args.dest else Path("resources/downloads") / source.filename
    fetch(source, dest, mirror=args.mirror, override_path=args.override_path, override_url=args.override_url,
          override_sha256=args.override_sha256, lock=args.lock, timeout=args.timeout, retries=args.retries,
          backoff=args.backoff, lock_timeout=args.lock_timeout)
    return 0
