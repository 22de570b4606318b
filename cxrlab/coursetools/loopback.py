"""Serve a folder on 127.0.0.1 for as long as a ``with`` block lasts (the course's fixtures).

The fixtures of :mod:`cxrlab.coursetools.covid_fixture` and
:mod:`cxrlab.coursetools.track_fixtures` write files in a source's real format into a
temporary folder and fetch them through the real fetcher from this server, so the fetcher's
own code (HTTP, resume, checksums, conversion, manifest) makes every fixture dataset. Nothing
leaves the machine: the server listens on the loopback address only.

>>> import tempfile, pathlib, requests
>>> with tempfile.TemporaryDirectory() as tmp:
...     _ = (pathlib.Path(tmp) / "a.txt").write_text("hello")
...     with serve_folder(tmp) as base:
...         requests.get(f"{base}/a.txt", timeout=5).text
'hello'
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep a notebook's output clean
        pass


@contextmanager
def serve_folder(folder: str | Path) -> Iterator[str]:
    """Serve ``folder`` over HTTP on 127.0.0.1 (a free port); yields ``http://127.0.0.1:PORT``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
