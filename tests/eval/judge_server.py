"""A real OpenAI-compatible judge endpoint on 127.0.0.1 for tests: it scores like a judge would and misbehaves on
request (markers in the judged answer), so retries, re-asks, timeouts and key handling meet a real socket."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ANSWER = re.compile(r"模型回答：? ?' ?(.*)'。请针对模型回答给出得分", re.S)
_STD = re.compile(r"标准回答:(.*?)  模型回答", re.S)


def judge_like(content: str) -> str:
    """Score 1 for an answer equal to the reference, 0.5 otherwise, 0.8 without a reference; markers in the answer
    make it drift: [OFFSCALE] "得分：4分", [MALFORMED] no score at all."""
    answer = m.group(1) if (m := _ANSWER.search(content)) else ""
    std = s.group(1) if (s := _STD.search(content)) else None
    if "[OFFSCALE]" in answer:
        return "得分：4分\n理由：非常好"
    if "[MALFORMED]" in answer:
        return "我觉得这个回答还不错。"
    if std is None:
        return "得分:0.8/1 理由：回答流畅。"
    return "得分: 1\n理由：与标准回答一致。" if answer.strip() == std.strip() else "得分：0.5分\n理由：部分正确。"


class JudgeServer:
    """Serves ``POST /v1/chat/completions``. First-call misbehaviours (per distinct message) by marker:
    [FLAKY500] HTTP 500, [RATE] HTTP 429 with Retry-After 0, [SLOW] a reply after ``slow_s``, [GARBAGE] a 200 that is
    not JSON, [OFFSCALE_ONCE] an off-scale score; always: [BAD] HTTP 400, [DOWN] HTTP 503. With ``expected_key`` set,
    a wrong Authorization gets a 401 whose body echoes the header it got (as some APIs do). Echoing the key: [ECHOKEY]
    a scored reply quoting the Authorization header, [ECHOKEY_GARBAGE] a 200 that is not JSON with the header near
    byte 200 (where a cut would leave part of it), [ECHOKEY_BAD] an HTTP 400 with the header near byte 300. A message
    holding any string of ``down`` (settable while serving: a judge down for some items, then back) gets HTTP 503."""

    def __init__(self, delay_s: float = 0.0, slow_s: float = 1.0, expected_key: str | None = None) -> None:
        self.delay_s = delay_s
        self.slow_s = slow_s
        self.expected_key = expected_key
        self.down: set[str] = set()
        self.requests: list[dict[str, Any]] = []
        self.calls: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                self.counted = True
                try:
                    server._handle(self)
                finally:
                    server._release(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> JudgeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _release(self, h: BaseHTTPRequestHandler) -> None:
        """A request stops being in flight when its response starts: released before the reply is written, or the
        client could send its next request before this one is counted out."""
        if getattr(h, "counted", False):
            h.counted = False
            with self._lock:
                self.in_flight -= 1

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: str, headers: dict[str, str] | None = None) -> None:
        data = body.encode("utf-8")
        self._release(h)
        h.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}.items():
            h.send_header(k, v)
        h.end_headers()
        try:
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and went away

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        auth = h.headers.get("Authorization")
        content = body["messages"][0]["content"]
        with self._lock:
            self.requests.append({"path": h.path, "auth": auth, "body": body})
            self.calls[content] += 1
            first = self.calls[content] == 1
        if h.path != "/v1/chat/completions":
            return self._send(h, 404, '{"error": "not found"}')
        if self.expected_key is not None and auth != f"Bearer {self.expected_key}":
            return self._send(h, 401, json.dumps({"error": f"Incorrect API key provided: {auth}"}))
        if self.delay_s:
            time.sleep(self.delay_s)
        if "[ECHOKEY]" in content:
            reply = f"得分: 1\n理由：请求头是 {auth}，密钥 {auth.removeprefix('Bearer ') if auth else ''}。"
            return self._send(
                h,
                200,
                json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}, ensure_ascii=False),
            )
        if first and "[ECHOKEY_GARBAGE]" in content:
            return self._send(h, 200, "<html>" + "x" * 190 + f" {auth} </html>")
        if "[ECHOKEY_BAD]" in content:
            return self._send(h, 400, json.dumps({"error": "y" * 280 + f" {auth}"}))
        if "[BAD]" in content:
            return self._send(h, 400, '{"error": "bad request"}')
        if "[DOWN]" in content or any(marker in content for marker in self.down):
            return self._send(h, 503, '{"error": "overloaded"}')
        if first and "[FLAKY500]" in content:
            return self._send(h, 500, '{"error": "internal"}')
        if first and "[RATE]" in content:
            return self._send(h, 429, '{"error": "rate limited"}', {"Retry-After": "0"})
        if first and "[GARBAGE]" in content:
            return self._send(h, 200, "<html>gateway</html>")
        if first and "[SLOW]" in content:
            time.sleep(self.slow_s)
        reply = "得分：4分" if first and "[OFFSCALE_ONCE]" in content else judge_like(content)
        self._send(
            h,
            200,
            json.dumps(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
                    ],
                },
                ensure_ascii=False,
            ),
        )
