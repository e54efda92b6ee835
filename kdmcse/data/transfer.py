"""Moving bytes into a `.part` file: HTTP with safe resumes, or a copy of a local file.

A resume is only ever conditional. When a transfer starts, the URL and the server's validator (a strong ETag,
else Last-Modified) are saved beside the partial file (`.<name>.part.json`); a later resume sends
`Range: bytes=N-` with `If-Range: <validator>` (RFC 9110 §13.1.5), so a server whose file changed meanwhile
sends the whole new file (200) instead of the tail of another version. A partial file with no saved validator,
or saved for another URL, is discarded rather than trusted.

Each transfer reports the total size the server announced (Content-Length, Content-Range, or the `*/N` of a
416 answer), so the caller can tell a complete body from one cut short when no checksum is known.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from kdmcse import __version__
from kdmcse.io import read_json, write_json

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class TransferError(Exception):
    """A problem worth retrying (timeouts, drops, truncation, 5xx); the partial file is kept where it is valid."""


class GiveUpOnCandidate(Exception):
    """A problem that retrying the same location will not fix (404, a checksum of a full transfer)."""


@dataclass
class Transfer:
    """What one transfer into the `.part` file learnt."""

    resumed: bool = False
    total: int | None = None  # size of the whole file as the server (or the local file) says; None = unknown
    ranges: bool = True  # the server did not say it refuses Range requests


def state_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def discard(part: Path) -> None:
    """Remove a partial file and what was saved about it."""
    for p in (part, state_path(part)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _progress(total: int | None, initial: int, desc: str) -> tqdm:
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=desc, mininterval=1.0, leave=False)


def copy_local(src: Path, part: Path) -> Transfer:
    """Copy a local file (a mirror folder, an override path) into `part`."""
    discard(part)
    total = src.stat().st_size
    with open(src, "rb") as fi, open(part, "wb") as fo, _progress(total, 0, src.name) as bar:
        for block in iter(lambda: fi.read(CHUNK), b""):
            fo.write(block)
            bar.update(len(block))
    written = part.stat().st_size
    if written != total:
        raise TransferError(f"copied {written} of {total} bytes (the file changed while it was copied)")
    return Transfer(total=total)


def _content_range(value: str | None) -> tuple[int | None, int | None] | None:
    """`bytes a-b/N` -> (a, N); `bytes */N` -> (None, N); N may be `*` (unknown)."""
    m = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (value or "").strip())
    if not m:
        return None
    return (int(m.group(1)) if m.group(1) else None), (None if m.group(2) == "*" else int(m.group(2)))


def _validator(state: dict[str, Any] | None) -> str | None:
    """What `If-Range` may carry: a strong ETag, else the Last-Modified date (a weak ETag never may)."""
    if not state:
        return None
    etag = state.get("etag")
    if isinstance(etag, str) and etag and not etag.startswith("W/"):
        return etag
    modified = state.get("last_modified")
    return modified if isinstance(modified, str) and modified else None


def _saved_state(part: Path, url: str) -> dict[str, Any] | None:
    try:
        state = read_json(state_path(part))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state.get("url") == url else None


def http_fetch(url: str, part: Path, timeout: float) -> Transfer:
    """Stream `url` into `part`, resuming from its current size where that is safe (see the module doc)."""
    have = part.stat().st_size if part.exists() else 0
    state = _saved_state(part, url) if have else None
    if have and _validator(state) is None:
        log.info("not resuming %s: nothing records which version of %s it holds; starting over", part.name, url)
        discard(part)
        have, state = 0, None
    headers = {"User-Agent": f"kdmcse/{__version__}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        headers["If-Range"] = _validator(state)  # type: ignore[assignment]
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            cr = _content_range(exc.headers.get("Content-Range"))
            announced = (state or {}).get("total")
            if cr is not None and cr[1] == have and announced in (None, have):
                return Transfer(resumed=True, total=have)  # the partial file is already the whole file
            discard(part)  # the partial file does not fit what the server has: start over
            raise TransferError(f"HTTP 416 for a resume from byte {have}; restarting") from exc
        if exc.code in (408, 429) or exc.code >= 500:
            raise TransferError(f"HTTP {exc.code} {exc.reason}") from exc
        raise GiveUpOnCandidate(f"HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise TransferError(f"cannot connect: {reason}") from exc

    with resp:
        etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
        ranges = (resp.headers.get("Accept-Ranges") or "").strip().lower() != "none"
        if resp.status == 206 and have:
            cr = _content_range(resp.headers.get("Content-Range"))
            if cr is None or cr[0] != have:
                discard(part)
                raise TransferError(f"server answered a resume with an unexpected Content-Range "
                                    f"{resp.headers.get('Content-Range')!r}; restarting")
            if etag and state and state.get("etag") and etag != state["etag"]:
                discard(part)  # a server that ignores If-Range but says the file changed
                raise TransferError(f"{url} changed since the partial download began (ETag {state['etag']} -> "
                                    f"{etag}); restarting")
            announced = (state or {}).get("total")
            if announced is not None and cr[1] is not None and cr[1] != announced:
                discard(part)
                raise TransferError(f"{url} now says it has {cr[1]} bytes, {announced} when the partial download "
                                    "began; restarting")
            mode, start, total, resumed = "ab", have, cr[1], True
            log.info("resuming %s from byte %d", url, have)
        else:
            if have:
                log.info("server sent the whole of %s (it changed since the partial download began, or ignores "
                         "Range); restarting from byte 0", url)
            length = resp.headers.get("Content-Length")
            mode, start, resumed = "wb", 0, False
            total = int(length) if length and length.isdigit() else None
            write_json(state_path(part), {"url": url, "etag": etag, "last_modified": modified, "total": total})
        written = start
        try:
            with open(part, mode) as f, _progress(total, start, Path(part.name).stem) as bar:
                while True:
                    block = resp.read(CHUNK)
                    if not block:
                        break
                    f.write(block)
                    written += len(block)
                    bar.update(len(block))
        except (OSError, http.client.HTTPException) as exc:  # includes timeouts and IncompleteRead
            raise TransferError(f"connection lost after {written} bytes: {exc!r}") from exc
        if total is not None and written != total:
            raise TransferError(f"truncated transfer: got {written} of {total} bytes (Content-Length mismatch)")
    return Transfer(resumed=resumed, total=total, ranges=ranges)
