"""A small threaded HTTP server on 127.0.0.1 for the fetcher tests (no internet needed).

Each path maps to a :class:`Route` that says what to send and how to misbehave: honour or
ignore ``Range``, cut the body short, declare a longer ``Content-Length`` than it sends,
answer the first requests with 429/5xx (and ``Retry-After``), answer with an HTML page,
require Basic auth, redirect, or answer ``HEAD`` with a false 404 (as Box does). Every
request is recorded in ``server.seen`` (headers included, to check where secrets went).

>>> with LoopbackServer({"/a.bin": Route(b"hello")}) as srv:
...     import requests; requests.get(srv.url("/a.bin")).content
b'hello'
"""
from __future__ import annotations

import base64
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HTML_PAGE = (b"<!DOCTYPE html><html><head><title>Sign in</title></head>"
             b"<body>Please log in to continue.</body></html>")


@dataclass
class Route:
    """What the server sends for one path."""

    body: bytes
    content_type: str = "application/octet-stream"
    status: int = 200
    truncate_first: int = 0          # how many GET responses are cut short
    truncate_at: float = 0.5         # where to cut: a fraction of the body sent
    auth: tuple[str, str] | None = None
    html: bool = False               # send an HTML page (200 text/html) instead of the body
    ignore_range: bool = False
    head_status: int = 404           # Box answers HEAD with a false 404
    fail_first: int = 0              # how many GETs are answered with fail_status
    fail_status: int = 503
    retry_after: str | None = None   # Retry-After header sent with those failures
    declared_length: int | None = None  # Content-Length to claim (the body sent stays as is)
    redirect: str | None = None      # answer 302 to this absolute URL
    hits: int = field(default=0)
    failures: int = field(default=0)


@dataclass
class Seen:
    """One request the server received."""

    method: str
    path: str
    query: str
    headers: dict[str, str]


def _handler(server: "LoopbackServer") -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _route(self) -> Route | None:
            parts = urlsplit(self.path)
            server.seen.append(Seen(self.command, parts.path, parts.query, dict(self.headers)))
            return server.routes.get(parts.path)

        def do_HEAD(self) -> None:  # noqa: N802
            route = self._route()
            self.send_response(route.head_status if route else 404)
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            route = self._route()
            if route is None:
                return self._send(404, b"not found", "text/plain")
            if route.auth and not self._authorised(route.auth):
                return self._send(401, b"unauthorised", "text/plain",
                                  {"WWW-Authenticate": 'Basic realm="test"'})
            if route.redirect:
                return self._send(302, b"", "text/plain", {"Location": route.redirect})
            if route.failures < route.fail_first:
                route.failures += 1
                extra = {"Retry-After": route.retry_after} if route.retry_after else {}
                return self._send(route.fail_status, b"busy", "text/plain", extra)
            if route.html:
                return self._send(200, HTML_PAGE, "text/html; charset=utf-8")
            if route.status != 200:
                return self._send(route.status, b"error", "text/plain")
            self._send_body(route)

        def _authorised(self, auth: tuple[str, str]) -> bool:
            expected = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            return self.headers.get("Authorization", "") == f"Basic {expected}"

        def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _send_body(self, route: Route) -> None:
            body, start = route.body, 0
            match = re.match(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if match and not route.ignore_range:
                start = int(match.group(1))
                if start >= len(body):
                    return self._send(416, b"", "text/plain",
                                      {"Content-Range": f"bytes */{len(body)}"})
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            payload = body[start:]
            declared = len(payload) if route.declared_length is None else route.declared_length - start
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(declared))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            route.hits += 1
            if route.hits <= route.truncate_first:
                cut = max(1, int(len(payload) * route.truncate_at))
                self.wfile.write(payload[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(payload)
            if declared != len(payload):
                self.close_connection = True

    return Handler


class LoopbackServer:
    """Serve ``routes`` on ``127.0.0.1`` in a background thread; use as a context manager."""

    def __init__(self, routes: dict[str, Route] | None = None):
        self.routes: dict[str, Route] = dict(routes or {})
        self.seen: list[Seen] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT``."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str, host: str | None = None) -> str:
        """Absolute URL of ``path`` on this server (``host='localhost'``: a second origin)."""
        base = self.base if host is None else f"http://{host}:{self.httpd.server_address[1]}"
        return base + "/" + path.lstrip("/")

    def auth_headers(self) -> list[str]:
        """Every ``Authorization`` header this server received."""
        return [s.headers["Authorization"] for s in self.seen if "Authorization" in s.headers]

    def add(self, path: str, route: Route) -> Route:
        """Serve ``route`` at ``path`` (leading slash optional)."""
        self.routes["/" + path.lstrip("/")] = route
        return route

    def __enter__(self) -> "LoopbackServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
