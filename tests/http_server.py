"""A local HTTP server on 127.0.0.1 that serves given objects, redirects given paths and records
every request it receives (tests of where rows may read from)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator


class RecordingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes], redirects: dict[str, str]):
        self.files, self.redirects, self.requests = dict(files), dict(redirects), []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def seen(self) -> list[str]:
        with self.lock:
            return list(self.requests)


class _Handler(BaseHTTPRequestHandler):
    server: RecordingServer

    def _answer(self, body: bool) -> None:
        with self.server.lock:
            self.server.requests.append(f"{self.command} {self.path}")
        path = self.path.split("?", 1)[0]
        if path in self.server.redirects:
            self.send_response(302)
            self.send_header("Location", self.server.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = self.server.files.get(path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._answer(body=True)

    def do_HEAD(self):  # noqa: N802
        self._answer(body=False)

    def log_message(self, *args):
        pass


@contextmanager
def serve(files: dict[str, bytes] | None = None, redirects: dict[str, str] | None = None) -> Iterator[RecordingServer]:
    """A server for the `with` block: `files` maps paths ("/x.png") to bytes, `redirects` paths to a
    Location; anything else is 404. `.url` is its base URL, `.seen()` the requests so far."""
    server = RecordingServer(files or {}, redirects or {})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
