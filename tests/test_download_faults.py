"""Downloads under faults: cut transfers without a length, the Hub's published checksums, hand-placed files,
stale partial files, and two downloads of one artifact at once."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path

import pytest
from http_server import FixtureServer

from kdmcse.data.download import Source, fetch
from kdmcse.errors import KdmcseError

WIKI = b"".join(f"Sentence number {i} of the tiny wiki corpus .\n".encode() for i in range(40000))
SHA = hashlib.sha256(WIKI).hexdigest()
NAME = "wiki1m_for_simcse.txt"
HUB_PATH = f"/datasets/princeton-nlp/datasets-for-simcse/resolve/main/{NAME}"


def _source(*urls: str, sha: str | None = None) -> Source:
    return Source(key="wiki1m", filename=NAME, urls=tuple(urls), sha256=sha)


@pytest.fixture()
def server():
    with FixtureServer({f"/{NAME}": WIKI, HUB_PATH: WIKI}) as srv:
        yield srv


@pytest.fixture()
def hub(server, monkeypatch):
    """The fixture server stands in for the Hub: its URLs count as Hub URLs, as with a Hub mirror endpoint."""
    monkeypatch.setenv("HF_ENDPOINT", server.url("/").rstrip("/"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    server.set(HUB_PATH, hub_sha256=SHA, hub_size=len(WIKI))
    return server


def _lock(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


# ---------------------------------------------------------------- a cut transfer without Content-Length
def test_cut_transfer_without_length_is_completed_not_locked_in(server, tmp_path):
    # The server closes mid-body and never said how long the body was: the client saw a clean end of stream.
    server.set(f"/{NAME}", no_length=True, drop_once=True)
    dest, lock = tmp_path / NAME, tmp_path / "lock.json"
    fetch(_source(server.url(f"/{NAME}")), dest, lock=lock, backoff=0)
    assert dest.read_bytes() == WIKI
    assert _lock(lock)["wiki1m"]["sha256"] == SHA


def test_transfer_whose_length_cannot_be_checked_is_refused(server, tmp_path):
    # No length, no Range support: nothing tells a complete body from a cut one, and no checksum is known.
    server.set(f"/{NAME}", no_length=True, drop_once=True, no_range=True)
    dest, lock = tmp_path / NAME, tmp_path / "lock.json"
    with pytest.raises(KdmcseError, match="length"):
        fetch(_source(server.url(f"/{NAME}")), dest, lock=lock, backoff=0, retries=1)
    assert not dest.exists()
    assert "wiki1m" not in _lock(lock)


def test_unchecked_length_is_fine_when_a_checksum_is_known(server, tmp_path):
    server.set(f"/{NAME}", no_length=True, no_range=True)
    dest = tmp_path / NAME
    fetch(_source(server.url(f"/{NAME}"), sha=SHA), dest, backoff=0, retries=1)
    assert dest.read_bytes() == WIKI


# ---------------------------------------------------------------- the Hub's published sha256
def test_hub_checksum_refuses_corrupt_bytes(hub, tmp_path):
    bad = bytearray(WIKI)
    bad[len(bad) // 2] ^= 0x20  # same length, one flipped bit: only a checksum can tell
    hub.files[HUB_PATH] = bytes(bad)
    dest, lock = tmp_path / NAME, tmp_path / "lock.json"
    with pytest.raises(KdmcseError, match=f"expected {SHA} .*the Hub"):
        fetch(_source(hub.url(HUB_PATH)), dest, lock=lock, backoff=0, retries=1)
    assert not dest.exists()
    assert "wiki1m" not in _lock(lock)


def test_hub_checksum_is_read_from_the_resolve_redirect(hub, tmp_path):
    dest, lock = tmp_path / NAME, tmp_path / "lock.json"
    fetch(_source(hub.url(HUB_PATH)), dest, lock=lock, backoff=0)
    assert dest.read_bytes() == WIKI
    entry = _lock(lock)["wiki1m"]
    assert entry["sha256"] == SHA and entry["checked"] == "sha256 published by the Hub"
    assert any(h for p, h in hub.requests if p == f"/cdn{HUB_PATH}")  # the bytes came from the "CDN"


def test_hub_checksum_accepts_a_correct_mirror_copy_despite_a_wrong_lock_entry(hub, tmp_path):
    # A lock entry recorded from a cut download (as releases without length checks did) must not lock out
    # the right bytes: the Hub's checksum says which is right.
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / NAME).write_bytes(WIKI)
    lock = tmp_path / "lock.json"
    half = WIKI[: len(WIKI) // 2]
    lock.write_text(json.dumps({"wiki1m": {"filename": NAME, "sha256": hashlib.sha256(half).hexdigest(),
                                           "size": len(half), "source": "x", "recorded": "2024-01-01"}}))
    dest = tmp_path / "dl" / NAME
    fetch(_source(hub.url(HUB_PATH)), dest, mirror=str(mirror), lock=lock, backoff=0)
    assert dest.read_bytes() == WIKI
    assert _lock(lock)["wiki1m"]["sha256"] == SHA


def test_offline_hub_falls_back_to_length_checks(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server.url("/").rstrip("/"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dest = tmp_path / NAME
    fetch(_source(server.url(f"/{NAME}")), dest, backoff=0)
    assert dest.read_bytes() == WIKI
    assert all(p == f"/{NAME}" for p, _ in server.requests)  # no metadata request when offline


# ---------------------------------------------------------------- files placed by hand, old lock entries
def test_hand_placed_file_wins_over_the_lock(server, tmp_path, caplog):
    dest, lock = tmp_path / NAME, tmp_path / "lock.json"
    fetch(_source(server.url(f"/{NAME}")), dest, lock=lock, backoff=0)
    mine = WIKI + b"one more sentence .\n"
    dest.write_bytes(mine)  # the user replaces the file with the copy they want
    server.requests.clear()
    with caplog.at_level(logging.INFO, logger="kdmcse.data.download"):
        fetch(_source(server.url(f"/{NAME}")), dest, lock=lock, backoff=0)
    assert dest.read_bytes() == mine
    assert server.requests == []
    assert _lock(lock)["wiki1m"]["sha256"] == hashlib.sha256(mine).hexdigest()
    assert "placed by hand" in caplog.text


def test_old_lock_entry_without_checks_does_not_refuse_a_mirror_copy(server, tmp_path, caplog):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / NAME).write_bytes(WIKI)
    lock = tmp_path / "lock.json"
    lock.write_text(json.dumps({"wiki1m": {"filename": NAME, "sha256": "ab" * 32, "size": 7,
                                           "source": "x", "recorded": "2024-01-01"}}))
    dest = tmp_path / "dl" / NAME
    fetch(_source(server.url(f"/{NAME}")), dest, mirror=str(mirror), lock=lock, backoff=0)
    assert dest.read_bytes() == WIKI
    assert _lock(lock)["wiki1m"]["sha256"] == SHA
    assert "not length-checked" in caplog.text


def test_checked_lock_entry_still_refuses_other_bytes(server, tmp_path):
    dest, lock = tmp_path / NAME, tmp_path / "lock.json"
    fetch(_source(server.url(f"/{NAME}")), dest, lock=lock, backoff=0)
    dest.unlink()
    server.replace(f"/{NAME}", WIKI.replace(b"tiny", b"tidy"))
    with pytest.raises(KdmcseError, match=f"expected {SHA}"):
        fetch(_source(server.url(f"/{NAME}")), dest, lock=lock, backoff=0, retries=1)
    assert not dest.exists()


# ---------------------------------------------------------------- stale partial files (If-Range)
def test_partial_of_an_old_version_is_not_resumed(server, tmp_path):
    old = WIKI
    new = WIKI.replace(b"corpus", b"CORPUS")  # same length: only a validator tells them apart
    assert len(new) == len(old)
    server.set(f"/{NAME}", drop_once=True)
    dest = tmp_path / NAME
    with pytest.raises(KdmcseError):
        fetch(_source(server.url(f"/{NAME}")), dest, backoff=0, retries=1)
    part = tmp_path / f".{NAME}.part"
    assert 0 < part.stat().st_size < len(old)

    server.replace(f"/{NAME}", new)
    server.requests.clear()
    fetch(_source(server.url(f"/{NAME}")), dest, backoff=0, retries=1)
    assert dest.read_bytes() == new
    (req,) = server.requests_for(f"/{NAME}")
    assert req.get("If-Range") and req.get("Range")  # the resume was asked for, conditionally


def test_partial_of_the_same_version_is_resumed(server, tmp_path):
    server.set(f"/{NAME}", drop_once=True)
    dest = tmp_path / NAME
    with pytest.raises(KdmcseError):
        fetch(_source(server.url(f"/{NAME}")), dest, backoff=0, retries=1)
    server.requests.clear()
    fetch(_source(server.url(f"/{NAME}")), dest, backoff=0, retries=1)
    assert dest.read_bytes() == WIKI
    (req,) = server.requests_for(f"/{NAME}")
    assert int(req["Range"].removeprefix("bytes=").rstrip("-")) > 0


def test_partial_without_a_saved_validator_starts_over(server, tmp_path):
    part = tmp_path / f".{NAME}.part"
    part.write_bytes(b"bytes of unknown origin\n")
    dest = tmp_path / NAME
    fetch(_source(server.url(f"/{NAME}")), dest, backoff=0)
    assert dest.read_bytes() == WIKI
    assert "Range" not in server.requests_for(f"/{NAME}")[0]


# ---------------------------------------------------------------- two downloads of one artifact
def test_two_downloads_at_once_give_one_correct_file(server, tmp_path):
    server.set(f"/{NAME}", delay=0.01)  # ~30 chunks: about 0.3 s per transfer
    dest, lock = tmp_path / NAME, tmp_path / "lock.json"
    part = tmp_path / f".{NAME}.part"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fetch(_source(server.url(f"/{NAME}")), dest, lock=lock, backoff=0, retries=1)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    first = threading.Thread(target=run)
    first.start()
    deadline = time.time() + 10
    while not (part.exists() and part.stat().st_size > 0) and time.time() < deadline:
        time.sleep(0.005)
    second = threading.Thread(target=run)
    second.start()
    first.join(30)
    second.join(30)
    assert errors == []
    assert dest.read_bytes() == WIKI
    assert _lock(lock)["wiki1m"]["sha256"] == SHA


def test_second_download_that_may_not_wait_fails_with_one_line(server, tmp_path):
    from kdmcse.data.lockfile import target_lock

    dest = tmp_path / NAME
    with target_lock(dest, timeout=1):
        with pytest.raises(KdmcseError) as err:
            fetch(_source(server.url(f"/{NAME}")), dest, backoff=0, lock_timeout=0.2)
    assert "another download" in str(err.value) and "\n" not in str(err.value)
    assert server.requests == []
