"""The checksum the Hugging Face Hub publishes for a file it hosts.

For a file stored with LFS (or Xet), a HEAD on its `resolve/` URL answers with a redirect to the storage host
that carries the file's sha256 in `X-Linked-Etag` and its size in `X-Linked-Size`; for a small file kept in
git, the ETag is the git blob id instead (not a sha256, but the size still applies). `huggingface_hub` (a
dependency of transformers) implements that protocol, redirects, retries and tokens included, in
`get_hf_file_metadata`; the bytes themselves still come through `kdmcse.data.transfer`, which resumes and
is verified against this checksum.

URLs count as Hub URLs on huggingface.co, hf.co and the endpoint in `HF_ENDPOINT` (a Hub mirror). With
`HF_HUB_OFFLINE=1` the Hub is not asked.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from dataclasses import dataclass

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"[0-9a-f]{64}")
HUB_HOSTS = ("huggingface.co", "hf.co")
TIMEOUT_S = 10.0  # huggingface_hub's own default for metadata requests


@dataclass(frozen=True)
class HubFile:
    sha256: str | None  # None for a file kept in git (its ETag is a git blob id)
    size: int | None


def _origin(url: str) -> tuple[str, str]:
    parsed = urllib.parse.urlparse(url)
    return parsed.scheme, (parsed.netloc or "").lower()


def is_hub_url(url: str) -> bool:
    """A `…/resolve/<revision>/<path>` URL on the Hub or on the endpoint `HF_ENDPOINT` names."""
    parsed = urllib.parse.urlparse(url)
    host = (parsed.hostname or "").lower()
    endpoint = os.environ.get("HF_ENDPOINT", "").strip()
    on_hub = host in HUB_HOSTS or (bool(endpoint) and _origin(endpoint) == _origin(url))
    return on_hub and "/resolve/" in parsed.path


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def published_file(url: str, timeout: float = TIMEOUT_S) -> HubFile | None:
    """The sha256 and size the Hub publishes for `url`, or None (offline, unreachable, not found)."""
    if offline():
        log.info("HF_HUB_OFFLINE is set: not asking the Hub for the checksum of %s", url)
        return None
    try:
        from huggingface_hub import get_hf_file_metadata

        meta = get_hf_file_metadata(url, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any failure only means there is no published checksum to use
        log.warning("could not read the checksum the Hub publishes for %s (%s: %s); checking lengths only",
                    url, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return None
    etag = (meta.etag or "").lower()
    sha = etag if _HEX64.fullmatch(etag) else None
    log.info("the Hub publishes %s for %s", f"sha256 {sha}" if sha else "no sha256 (a git-stored file)", url)
    return HubFile(sha256=sha, size=meta.size)
