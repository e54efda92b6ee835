"""A local HTTP server on 127.0.0.1 that serves fixture bytes and can misbehave on request.

Used by the download tests and by end-to-end tests that need a fake origin. It serves a dict
`path -> bytes`, honours `Range: bytes=a-` / `bytes=a-b` (206 + Content-Range), and can be told per path to:

- `drop_once`: send only part of the body, then close the connection (once; later requests succeed);
- `hang`: accept the request and never answer (until the server stops);
- `status`: answer with that HTTP status and no body (e.g. 404, 500);
- `lie_length`: announce a Content-Length this many bytes larger than the body (a truncated transfer);
- `no_range`: ignore Range headers and always send the whole file with 200;
- `no_length`: send no Content-Length and end the body by closing the connection (with `drop_once`, a cut
  transfer looks complete to the client);
- `no_validators`: send neither ETag nor Last-Modified;
- `delay`: sleep this many seconds after each 64 KiB of body (a slow origin);
- `hub_sha256` / `hub_size`: answer like the Hugging Face Hub's `resolve/` URL of an LFS file: a 302 to another
  host name (`localhost`, the "CDN", which serves the same bytes under `/cdn<path>`), carrying the file's
  sha256 in `X-Linked-Etag` and its size in `X-Linked-Size`.

Every file has a strong ETag (a hash of its current bytes) and a Last-Modified date, and `If-Range` is
honoured: a Range request whose validator no longer matches gets the whole new file with 200 (RFC 9110 13.1.5).
Every request is recorded in `server.requests` as `(path, headers_dict)`.

    with FixtureServer({"/a.txt": b"hello"}) as srv:
        url = srv.url("/a.txt")
"""

from __future__ import annotations

import email.utils
import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Behaviour:
    drop_once: bool = False
    hang: bool = False
    status: int | None = None
    lie_length: int = 0
    no_range: bool = False
    no_length: bool = False
    no_validators: bool = False
    delay: float = 0.0
    hub_sha256: str | None = None
    hub_size: int | None = None
    _dropped: bool = field(default=False, repr=False)


def etag_of(body: bytes) -> str:
    """The fixture's strong ETag of some bytes (32 hex digits, so it never looks like a sha256)."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: object) -> None:  # keep pytest output quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        with owner.lock:
            owner.requests.append((path, dict(self.headers.items())))
        beh = owner.behaviour.get(path, Behaviour())
        if beh.hub_sha256 is not None:
            self._hub_redirect(path, beh)
            return
        if path.startswith("/cdn/") and path[4:] in owner.files:
            path = path[4:]
            beh = Behaviour(**{k: v for k, v in vars(beh).items() if not k.startswith("_")})
        if beh.hang:
            owner.stop_event.wait(60)
            self.close_connection = True
            return
        if beh.status is not None:
            self._empty(beh.status)
            return
        body = owner.files.get(path)
        if body is None:
            self._empty(404)
            return

        start, end, status = 0, len(body), 200
        etag, modified = etag_of(body), owner.last_modified.get(path, "Mon, 01 Jan 2024 00:00:00 GMT")
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and if_range is not None and if_range not in (etag, modified):
            rng = None  # the partial the client holds is of other bytes: send the whole new file
        if rng and not beh.no_range:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if not m or int(m.group(1)) >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(m.group(1))
            end = min(len(body), int(m.group(2)) + 1) if m.group(2) else len(body)
            status = 206
        chunk = body[start:end]

        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "none" if beh.no_range else "bytes")
        if not beh.no_validators:
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", modified)
        if not beh.no_length:
            self.send_header("Content-Length", str(len(chunk) + beh.lie_length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
        if beh.lie_length or beh.no_length:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if head:
            return
        if beh.drop_once and not beh._dropped:
            beh._dropped = True
            chunk = chunk[: max(1, len(chunk) // 2)]
            self.close_connection = True
        step = 1 << 16
        for i in range(0, len(chunk), step):
            self.wfile.write(chunk[i : i + step])
            if beh.delay:
                self.wfile.flush()
                time.sleep(beh.delay)
        self.wfile.flush()

    def _hub_redirect(self, path: str, beh: Behaviour) -> None:
        """What huggingface.co answers for `resolve/` of an LFS file: 302 to the CDN, metadata in X-Linked-*."""
        port = self.server.server_address[1]
        self.send_response(302)
        self.send_header("Location", f"http://localhost:{port}/cdn{path}")
        self.send_header("X-Linked-Etag", f'"{beh.hub_sha256}"')
        if beh.hub_size is not None:
            self.send_header("X-Linked-Size", str(beh.hub_size))
        self.send_header("ETag", '"0123456789abcdef0123456789abcdef01234567"')  # the git pointer's, not the file's
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: "FixtureServer"


class FixtureServer:
    """Serve `files` on an ephemeral port of 127.0.0.1 in a background thread."""

    def __init__(self, files: dict[str, bytes] | None = None, **behaviour: Behaviour) -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.behaviour: dict[str, Behaviour] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.last_modified: dict[str, str] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def set(self, path: str, **kwargs: object) -> Behaviour:
        """Configure how `path` misbehaves, e.g. `srv.set("/f", drop_once=True)`."""
        beh = Behaviour(**kwargs)  # type: ignore[arg-type]
        self.behaviour[path] = beh
        return beh

    def replace(self, path: str, body: bytes) -> None:
        """New bytes at `path`, with a new ETag and a later Last-Modified, as an origin updating a file would."""
        self.files[path] = body
        self.last_modified[path] = email.utils.formatdate(time.time() + 3600, usegmt=True)

    def url(self, path: str = "/") -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def requests_for(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            return [h for p, h in self.requests if p == path]

    def start(self) -> "FixtureServer":
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()  # release hanging handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FixtureServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
