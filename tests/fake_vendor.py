"""A base for local fakes of vendor APIs: a real HTTP server on 127.0.0.1 that records every request.

A vendor fake subclasses `FakeVendor` and implements `route(req)`, answering in the vendor's documented shapes
and asserting the documented request shapes itself (a wrong method, path, header or body answers 400 with the
reason, and the reason is kept in `problems`, so a test fails loudly instead of passing on a lenient fake).
`fail_next` scripts failures (401, 429 with Retry-After, 503, a connection reset) for the next matching requests.
"""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode("utf-8"), keep_blank_values=True)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list -> JSON, bytes/str as is
    headers: dict[str, str] = field(default_factory=dict)


class Problem(Exception):
    """The request breaks the vendor's documented contract."""


@dataclass
class _Scripted:
    method: str
    pattern: re.Pattern
    reply: Reply | None  # None: drop the connection
    times: int


class FakeVendor:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.problems: list[str] = []
        self._script: list[_Scripted] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                req = Request(self.command, parts.path, parse_qs(parts.query, keep_blank_values=True),
                              {k.lower(): v for k, v in self.headers.items()}, body)
                with fake._lock:
                    fake.requests.append(req)
                    scripted = fake._take(req)
                if scripted is not None and scripted.reply is None:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                try:
                    reply = scripted.reply if scripted is not None else fake.route(req)
                except Problem as exc:
                    fake.problems.append(f"{req.method} {req.path}: {exc}")
                    reply = Reply(400, {"problem": str(exc)})
                data = reply.body
                if isinstance(data, (dict, list)):
                    data = json.dumps(data).encode()
                    reply.headers.setdefault("Content-Type", "application/json")
                elif isinstance(data, str):
                    data = data.encode()
                data = data or b""
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def route(self, req: Request) -> Reply:  # pragma: no cover - subclasses answer
        raise Problem("no such endpoint")

    def fail_next(self, method: str, path_regex: str, status: int | None, body: Any = None,
                  headers: dict[str, str] | None = None, times: int = 1) -> None:
        """The next `times` requests matching answer `status` (None: the connection is dropped)."""
        reply = None if status is None else Reply(status, body, dict(headers or {}))
        with self._lock:
            self._script.append(_Scripted(method.upper(), re.compile(path_regex), reply, times))

    def _take(self, req: Request) -> _Scripted | None:
        for s in self._script:
            if s.method == req.method and s.pattern.search(req.path) and s.times > 0:
                s.times -= 1
                return s
        return None

    def calls(self, method: str, path_regex: str = "") -> list[Request]:
        pattern = re.compile(path_regex)
        with self._lock:
            return [r for r in self.requests if r.method == method.upper() and pattern.search(r.path)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
