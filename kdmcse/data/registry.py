"""The source registry (`config/sources.yaml`): one entry per downloadable artifact, checked field by field."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from kdmcse.errors import KdmcseError

HEX64 = re.compile(r"[0-9a-f]{64}")
# Artifact keys become the `{artifact}` wildcard of the download and extract rules (workflow/rules/common.smk).
KEY = re.compile(r"[A-Za-z0-9_]+")


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
    max_extracted_bytes: int | None = None  # for archives that legitimately expand more than the default bound


def _bad_filename(name: object) -> bool:
    """A plain file name: no folder parts, not hidden (`.<name>.part` and `.<name>.lock` sit beside it)."""
    return (not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".")
            or any(c in name for c in "/\\\0\n\r"))


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def load_registry(path: str | os.PathLike[str]) -> dict[str, Source]:
    """Read and check `config/sources.yaml`; every problem names the key and the field."""
    path = Path(path)
    if not path.is_file():
        raise KdmcseError(f"source registry {path} not found; pass --registry config/sources.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise KdmcseError(f"source registry {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not raw:
        raise KdmcseError(f"source registry {path} must map artifact keys to entries")
    out: dict[str, Source] = {}
    for key, entry in raw.items():
        where = f"{path}: entry {key!r}"
        if not isinstance(key, str) or not KEY.fullmatch(key):
            raise KdmcseError(f"{where}: keys may hold only letters, digits and '_' (they are used in paths)")
        if not isinstance(entry, dict):
            raise KdmcseError(f"{where} must be a mapping with filename, urls, sha256, size")
        filename = entry.get("filename")
        if _bad_filename(filename):
            raise KdmcseError(f"{where}: 'filename' must be a plain file name (no '/', not starting with '.'), "
                              f"got {filename!r}")
        urls = entry.get("urls") or []
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise KdmcseError(f"{where}: 'urls' must be a list of strings")
        sha = entry.get("sha256")
        if sha is not None and not (isinstance(sha, str) and HEX64.fullmatch(sha.lower())):
            raise KdmcseError(f"{where}: 'sha256' must be 64 hex digits or null, got {sha!r}")
        size = entry.get("size")
        if size is not None and not _positive_int(size):
            raise KdmcseError(f"{where}: 'size' must be a positive integer (bytes) or null, got {size!r}")
        limit = entry.get("max_extracted_bytes")
        if limit is not None and not _positive_int(limit):
            raise KdmcseError(f"{where}: 'max_extracted_bytes' must be a positive integer or null, got {limit!r}")
        out[key] = Source(
            key=key,
            filename=filename,
            urls=tuple(urls),
            sha256=sha.lower() if sha else None,
            size=size,
            licence=str(entry.get("licence") or ""),
            notes=str(entry.get("notes") or ""),
            max_extracted_bytes=limit,
        )
    return out


def get_source(registry: str | os.PathLike[str], key: str) -> Source:
    sources = load_registry(registry)
    if key not in sources:
        raise KdmcseError(f"unknown source {key!r} in {registry}; known: {', '.join(sorted(sources))}")
    return sources[key]
