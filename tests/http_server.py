"""A local HTTP server on 127.0.0.1 that serves fixture bytes and can misbehave on request.

Used by the download tests and by end-to-end tests that need a fake origin. It serves a dict
`path -> bytes`, honours `Range: bytes=a-` / `bytes=a-b` (206 + Content-Range), and can be told per path to:

- `drop_once`: send only part of the body, then close the connection (once; later requests succeed);
- `hang`: accept the request and never answer (until the server stops);
- `status`: answer with that HTTP status and no body (e.g. 404, 500);
- `lie_length`: announce a Content-Length this many bytes larger than the body (a truncated transfer);
- `no_range`: ignore Range headers and always send the whole file with 200.

Every request is recorded in `server.requests` as `(path, headers_dict)`.

    with FixtureServer({"/a.txt": b"hello"}) as srv:
        url = srv.url("/a.txt")
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Behaviour:
    drop_once: bool = False
    hang: bool = False
    status: int | None = None
    lie_length: int = 0
    no_range: bool = False
    _dropped: bool = field(default=False, repr=False)


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
        rng = self.headers.get("Range")
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
        self.send_header("Content-Length", str(len(chunk) + beh.lie_length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
        if beh.lie_length:
            self.send_header("Connection", "close")
        self.end_headers()
        if head:
            return
        if beh.drop_once and not beh._dropped:
            beh._dropped = True
            self.wfile.write(chunk[: max(1, len(chunk) // 2)])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)
        self.wfile.flush()
        if beh.lie_length:
            self.close_connection = True

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
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def set(self, path: str, **kwargs: object) -> Behaviour:
        """Configure how `path` misbehaves, e.g. `srv.set("/f", drop_once=True)`."""
        beh = Behaviour(**kwargs)  # type: ignore[arg-type]
        self.behaviour[path] = beh
        return beh

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
