"""Downloader against a local HTTP server: success, resume, checksums, truncation, 404, hangs, mirrors, lock."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from http_server import FixtureServer

from kdmcse.data.download import Source, fetch, get_source, load_registry, main
from kdmcse.errors import KdmcseError

ROOT = Path(__file__).resolve().parents[1]
# Fixture content in the real format (one Wikipedia-style sentence per line), large enough to span chunks.
WIKI = b"".join(f"Sentence number {i} of the tiny wiki corpus .\n".encode() for i in range(40000))
SHA = hashlib.sha256(WIKI).hexdigest()


def _source(url: str, sha: str | None = None, filename: str = "wiki1m_for_simcse.txt") -> Source:
    return Source(key="wiki1m", filename=filename, urls=(url,), sha256=sha)


@pytest.fixture()
def server():
    with FixtureServer({"/wiki1m_for_simcse.txt": WIKI}) as srv:
        yield srv


def _no_stray_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if not p.name.endswith(".part")]


def test_registry_in_repo_is_valid():
    sources = load_registry(ROOT / "config" / "sources.yaml")
    assert {"wiki1m", "senteval", "flickr30k_images", "flickr30k_captions",
            "coco_train2014_images", "coco_annotations_2014"} <= set(sources)
    assert sources["senteval"].filename == "senteval.tar"
    assert all(s.urls for s in sources.values())


def test_unknown_key_names_known_ones():
    with pytest.raises(KdmcseError, match="known: .*senteval"):
        get_source(ROOT / "config" / "sources.yaml", "nope")


def test_success_with_pinned_sha(server, tmp_path):
    dest = tmp_path / "dl" / "wiki1m_for_simcse.txt"
    fetch(_source(server.url("/wiki1m_for_simcse.txt"), SHA), dest, backoff=0)
    assert dest.read_bytes() == WIKI
    assert _no_stray_files(dest.parent) == ["wiki1m_for_simcse.txt"]
    assert not (dest.parent / ".wiki1m_for_simcse.txt.part").exists()


def test_resume_after_dropped_connection(server, tmp_path):
    server.set("/wiki1m_for_simcse.txt", drop_once=True)
    dest = tmp_path / "wiki1m_for_simcse.txt"
    fetch(_source(server.url("/wiki1m_for_simcse.txt"), SHA), dest, backoff=0, retries=3)
    assert dest.read_bytes() == WIKI
    reqs = server.requests_for("/wiki1m_for_simcse.txt")
    assert len(reqs) == 2
    assert "Range" not in reqs[0]
    start = int(reqs[1]["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start < len(WIKI)


def test_restart_when_server_ignores_range(server, tmp_path):
    server.set("/wiki1m_for_simcse.txt", drop_once=True, no_range=True)
    dest = tmp_path / "wiki1m_for_simcse.txt"
    fetch(_source(server.url("/wiki1m_for_simcse.txt"), SHA), dest, backoff=0)
    assert dest.read_bytes() == WIKI  # a 200 answer to a Range request must not be appended


def test_wrong_checksum_leaves_nothing(server, tmp_path):
    dest = tmp_path / "wiki1m_for_simcse.txt"
    with pytest.raises(KdmcseError) as err:
        fetch(_source(server.url("/wiki1m_for_simcse.txt"), "0" * 64), dest, backoff=0)
    msg = str(err.value)
    assert "sha256" in msg and "0" * 64 in msg and str(dest) in msg
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_truncated_transfer_detected(server, tmp_path):
    server.set("/wiki1m_for_simcse.txt", lie_length=100)
    dest = tmp_path / "wiki1m_for_simcse.txt"
    with pytest.raises(KdmcseError, match="truncated|connection lost"):
        fetch(_source(server.url("/wiki1m_for_simcse.txt")), dest, backoff=0, retries=2)
    assert not dest.exists()


def test_404_names_every_url(server, tmp_path):
    dest = tmp_path / "x.txt"
    src = Source(key="k", filename="x.txt", urls=(server.url("/missing-a"), server.url("/missing-b")))
    with pytest.raises(KdmcseError) as err:
        fetch(src, dest, backoff=0)
    msg = str(err.value)
    assert "x.txt" in msg and "/missing-a: HTTP 404" in msg and "/missing-b: HTTP 404" in msg
    assert "place it at" in msg
    # 404 is final: one request per URL, no retries
    assert len(server.requests_for("/missing-a")) == 1
    assert not dest.exists()


def test_hanging_server_times_out(server, tmp_path):
    server.set("/wiki1m_for_simcse.txt", hang=True)
    dest = tmp_path / "wiki1m_for_simcse.txt"
    with pytest.raises(KdmcseError, match="attempt 2/2"):
        fetch(_source(server.url("/wiki1m_for_simcse.txt")), dest, timeout=0.3, retries=2, backoff=0)
    assert not dest.exists()


def test_server_error_then_next_url(server, tmp_path):
    server.set("/broken/wiki1m_for_simcse.txt", status=503)
    src = Source(key="wiki1m", filename="wiki1m_for_simcse.txt", sha256=SHA,
                 urls=(server.url("/broken/wiki1m_for_simcse.txt"), server.url("/wiki1m_for_simcse.txt")))
    dest = tmp_path / "w.txt"
    fetch(src, dest, retries=2, backoff=0)
    assert dest.read_bytes() == WIKI
    assert len(server.requests_for("/broken/wiki1m_for_simcse.txt")) == 2  # 5xx is retried


def test_mirror_folder_used_first(server, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "wiki1m_for_simcse.txt").write_bytes(WIKI)
    dest = tmp_path / "out" / "wiki1m_for_simcse.txt"
    fetch(_source(server.url("/wiki1m_for_simcse.txt"), SHA), dest, mirror=str(mirror))
    assert dest.read_bytes() == WIKI
    assert server.requests == []  # origin never contacted


def test_mirror_url_and_fallback_to_origin(server, tmp_path):
    dest = tmp_path / "wiki1m_for_simcse.txt"
    fetch(_source(server.url("/wiki1m_for_simcse.txt"), SHA), dest, mirror=server.url("/m/"), backoff=0)
    paths = [p for p, _ in server.requests]
    assert paths == ["/m/wiki1m_for_simcse.txt", "/wiki1m_for_simcse.txt"]


def test_lock_written_then_enforced(server, tmp_path):
    lock = tmp_path / "sources.lock.json"
    dest = tmp_path / "wiki1m_for_simcse.txt"
    url = server.url("/wiki1m_for_simcse.txt")
    fetch(_source(url), dest, lock=lock)
    entry = json.loads(lock.read_text())["wiki1m"]
    assert entry["sha256"] == SHA and entry["size"] == len(WIKI)

    # The origin now serves other bytes: the recorded checksum must refuse them.
    server.files["/wiki1m_for_simcse.txt"] = WIKI.replace(b"tiny", b"tidy")
    dest.unlink()
    with pytest.raises(KdmcseError, match=f"expected {SHA}"):
        fetch(_source(url), dest, lock=lock, backoff=0)
    assert not dest.exists()


def test_override_path_recorded_under_own_name(tmp_path):
    head = tmp_path / "wiki1m_head.txt"
    head.write_bytes(WIKI[:1000])
    lock = tmp_path / "lock.json"
    dest = tmp_path / "dl" / "wiki1m_for_simcse.txt"
    # the registry's pin is for the full file, so it must not apply to a differently named stand-in
    fetch(_source("http://127.0.0.1:9/unused", SHA), dest, override_path=str(head), lock=lock)
    assert dest.read_bytes() == WIKI[:1000]
    data = json.loads(lock.read_text())
    assert set(data) == {"wiki1m/wiki1m_head.txt"}


def test_override_sha256_wins(server, tmp_path):
    dest = tmp_path / "wiki1m_for_simcse.txt"
    with pytest.raises(KdmcseError, match="override-sha256"):
        fetch(_source(server.url("/wiki1m_for_simcse.txt"), SHA), dest, override_sha256="ab" * 32, backoff=0)


def test_existing_dest_is_verified_not_refetched(server, tmp_path):
    dest = tmp_path / "wiki1m_for_simcse.txt"
    dest.write_bytes(WIKI)
    fetch(_source(server.url("/wiki1m_for_simcse.txt"), SHA), dest)
    assert server.requests == []


def test_cli_end_to_end(server, tmp_path, capsys):
    reg = tmp_path / "sources.yaml"
    reg.write_text(
        "wiki1m:\n  filename: wiki1m_for_simcse.txt\n"
        f"  urls: [{server.url('/wiki1m_for_simcse.txt')}]\n  sha256: {SHA}\n  size: {len(WIKI)}\n"
        "  licence: test\n  notes: test\n"
    )
    dest = tmp_path / "d" / "wiki1m_for_simcse.txt"
    assert main(["--source", "wiki1m", "--registry", str(reg), "--dest", str(dest),
                 "--lock", str(tmp_path / "lock.json"), "--retries", "1"]) == 0
    assert dest.read_bytes() == WIKI


def test_registry_errors_name_the_key(tmp_path):
    reg = tmp_path / "sources.yaml"
    reg.write_text("wiki1m:\n  filename: a.txt\n  urls: [http://x/a.txt]\n  sha256: nothex\n")
    with pytest.raises(KdmcseError, match="'wiki1m'.*sha256"):
        load_registry(reg)
