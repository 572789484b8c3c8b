"""An HTTP proxy on 127.0.0.1 in front of the GCS emulator (tests/gcs_emulator.py) that answers 503 to everything
for a while: an object store down in the middle of a save. The outage starts when a request's path first holds
``trigger`` (e.g. a checkpoint step's folder) and lasts ``down_s`` seconds; ``refused`` lists the requests answered
503 (monotonic time, method, path)."""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


class FaultProxy:
    def __init__(self, upstream: str, trigger: str, down_s: float) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.trigger = trigger
        self.down_s = down_s
        self.down_since: Optional[float] = None
        self.refused: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                proxy._forward(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any  # noqa: N815

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.handle_error = lambda request, address: None  # a client that gave up on its request
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def down(self, path: str) -> bool:
        """Whether the store is down for this request (starting the outage at the first path holding the trigger)."""
        with self._lock:
            now = time.monotonic()
            if self.down_since is None and self.trigger in urllib.parse.unquote(path):
                self.down_since = now
            return self.down_since is not None and now - self.down_since < self.down_s

    def _body(self, h: BaseHTTPRequestHandler) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline().strip():
                        pass
                    return b"".join(chunks)
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
        return h.rfile.read(int(h.headers.get("Content-Length") or 0))

    def _forward(self, h: BaseHTTPRequestHandler) -> None:
        body = self._body(h)
        if self.down(h.path):
            with self._lock:
                self.refused.append((time.monotonic(), h.command, urllib.parse.unquote(h.path)))
            data = b'{"error": {"code": 503, "message": "Service Unavailable"}}'
            h.send_response(503)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            self._reply(h, data)
            return
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP and k.lower() != "host"}
        headers["Host"] = self.upstream.netloc
        headers["Content-Length"] = str(len(body))
        conn.request(
            h.command, h.path, body=body if body or h.command in ("POST", "PUT", "PATCH") else None, headers=headers
        )
        response = conn.getresponse()
        data = response.read()
        conn.close()
        h.send_response(response.status)
        for k, v in response.getheaders():
            if k.lower() not in _HOP and k.lower() != "content-length":
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            self._reply(h, data)

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, data: bytes) -> None:
        try:
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on the request (its timeout)
