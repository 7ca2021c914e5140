"""A fault-injecting HTTP proxy in front of an S3 endpoint, for tests (127.0.0.1 only).

Requests whose path matches `select` fail deterministically: each object path fails its first k
requests (whatever their method: a client may HEAD before it GETs), k drawn from a seeded hash (0
for about 1 - fraction of the paths, else 1 to `max_failures`), answering 503 SlowDown or 500
InternalError as a real S3 does under load. Reads (GET/HEAD) and writes (PUT) of one path count
separately.
Paths containing one of `always_fail` fail every time; GETs of paths containing one of `slow` answer after
`delay_s`. Everything else is forwarded unchanged.
"""

from __future__ import annotations

import hashlib
import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ERRORS = {
    503: ("SlowDown", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
}
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade", "trailer"}


@dataclass
class Faults:
    fraction: float = 0.0  # share of selected paths that fail at first
    max_failures: int = 2  # how many first attempts such a pair fails
    seed: int = 0
    select: tuple[str, ...] = ()  # substrings of the path that faults apply to (empty: all)
    always_fail: tuple[str, ...] = ()  # substrings of the path that fail every request
    methods: tuple[str, ...] = ("GET", "PUT", "HEAD", "POST", "DELETE")
    slow: tuple[str, ...] = ()  # substrings of the path whose GETs answer only after `delay_s`
    delay_s: float = 0.0
    attempts: Counter = field(default_factory=Counter)  # (read|write, path) -> requests seen
    injected: Counter = field(default_factory=Counter)  # method -> errors answered
    forwarded: Counter = field(default_factory=Counter)  # method -> requests forwarded
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _planned_failures(self, kind: str, path: str) -> int:
        key = path.lstrip("/").split("/", 1)[-1]  # the object key: the same plan whatever the bucket
        h = hashlib.sha256(f"{self.seed}:{kind}:{key}".encode()).digest()
        u = int.from_bytes(h[:8], "big") / 2**64
        if u >= self.fraction:
            return 0
        return 1 + h[8] % max(1, self.max_failures)

    def decide(self, method: str, path: str) -> int | None:
        """The status to answer with, or None to forward."""
        if method not in self.methods or (self.select and not any(s in path for s in self.select)):
            return None
        kind = "read" if method in ("GET", "HEAD") else "write"
        with self.lock:
            n = self.attempts[(kind, path)]
            self.attempts[(kind, path)] += 1
        if any(s in path for s in self.always_fail):
            return 503
        if n < self._planned_failures(kind, path):
            h = hashlib.sha256(f"{self.seed}:{kind}:{path.lstrip('/').split('/', 1)[-1]}:{n}".encode()).digest()
            return 503 if h[0] % 2 else 500
        return None


class FlakyS3Proxy:
    """`with FlakyS3Proxy(upstream, Faults(...)) as proxy:` then use `proxy.endpoint` as endpoint_url."""

    def __init__(self, upstream: str, faults: Faults):
        self.upstream = urlsplit(upstream)
        self.faults = faults
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self):
                body = self._body()
                path = self.path
                if self.command == "GET" and any(x in path for x in proxy.faults.slow):
                    time.sleep(proxy.faults.delay_s)  # a store that answers late (still within a socket's patience)
                status = proxy.faults.decide(self.command, urlsplit(path).path)
                if status is not None:
                    with proxy.faults.lock:
                        proxy.faults.injected[self.command] += 1
                    code, message = ERRORS[status]
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                               f"<Message>{message}</Message><RequestId>flaky-proxy</RequestId></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload) if self.command != "HEAD" else 0))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                with proxy.faults.lock:
                    proxy.faults.forwarded[self.command] += 1
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                try:
                    conn.request(self.command, path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() in HOP_HEADERS or (k.lower() == "content-length" and self.command != "HEAD"):
                            continue
                        self.send_header(k, v)
                    if self.command != "HEAD":
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="flaky-s3", daemon=True)

    def __enter__(self) -> "FlakyS3Proxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)
