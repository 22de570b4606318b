"""Download machinery shared by every source: resumable, verified, and never half-done.

* :class:`RemoteStream` is a readable file over an HTTP ``GET``. When the connection drops it
  reconnects with a ranged ``GET`` (``Range: bytes=N-``) and carries on, so a caller can feed it
  to :func:`tarfile.open` in stream mode and never notice. It hashes what it reads (MD5 and
  SHA-256), can copy the bytes to a file on the side, and updates a tqdm bar.
* :func:`download` writes to ``<dest>.part``, resumes from the bytes already there, verifies the
  checksum, and only then renames to ``dest``: a file with the final name is always complete.
* Servers that answer with an HTML page instead of data (Box, expired signed URLs, login walls)
  are detected from the first bytes; 401/403/404 give a message that says what to do.

We never rely on ``HEAD``: Box answers it with a false 404 while ``GET`` works.

>>> redact_url("https://user:pw@host.org/a/b.zip?sig=SECRET&se=2030")
'https://host.org/a/b.zip?<redacted>'
"""
from __future__ import annotations

import hashlib
import io
import logging
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

CHUNK = 1 << 16
USER_AGENT = "cxr-race-course-data-fetch/0.1 (+https://github.com/)"
HTML_MARKERS = (b"<!doctype html", b"<html", b"<head", b"<body")


class DownloadError(RuntimeError):
    """A download failed; the message says why and what to try."""


class AccessError(DownloadError):
    """The server refused access (HTTP 401 or 403)."""


class ChecksumError(DownloadError):
    """Downloaded bytes do not match the published checksum."""


class HTMLPageError(DownloadError):
    """The server sent an HTML page where data was expected (a login wall, an error page)."""


def redact_url(url: str) -> str:
    """Return ``url`` without user info and with any query string (signatures, tokens) hidden."""
    parts = urlsplit(str(url))
    if not parts.scheme:
        return str(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


class RedactQueryFilter(logging.Filter):
    """Hide query strings (signed-URL signatures, tokens) in log records of HTTP libraries."""

    PATTERN = re.compile(r"\?[^\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        message = record.getMessage()
        if "?" in message:
            record.msg, record.args = self.PATTERN.sub("?<redacted>", message), ()
        return True


for _name in ("urllib3.connectionpool", "requests"):
    logging.getLogger(_name).addFilter(RedactQueryFilter())


def is_url(location: str | Path) -> bool:
    """True for ``http(s)://`` locations, False for local paths."""
    return str(location).startswith(("http://", "https://"))


def human_bytes(n: float) -> str:
    """Format a byte count, e.g. ``human_bytes(2_000_000_000) == '2.0 GB'``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def looks_like_html(first_bytes: bytes, content_type: str | None = None) -> bool:
    """Whether a response that should hold data is really an HTML page."""
    if content_type and "text/html" in content_type.lower():
        return True
    head = first_bytes[:512].lstrip().lower()
    if head.startswith(b"<?xml"):  # XHTML is HTML; other XML (S3 listings) is data
        return b"<html" in head
    return head.startswith(HTML_MARKERS)


def make_session() -> requests.Session:
    """A :class:`requests.Session` with this project's User-Agent (one connection reused)."""
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    return session


def _status_error(resp: requests.Response, url: str, access_hint: str | None) -> DownloadError:
    code, where = resp.status_code, redact_url(url)
    if code in (401, 403):
        hint = access_hint or "check that you are logged in and allowed to download this file"
        return AccessError(f"HTTP {code} ({resp.reason}) for {where}: access refused. {hint}")
    if code == 404:
        return DownloadError(f"HTTP 404 (not found) for {where}: the link is dead or has expired; "
                             "check the address or use --mirror to point at another copy")
    return DownloadError(f"HTTP {code} ({resp.reason}) for {where}")


_TRANSIENT = (
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.Timeout,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)


class RemoteStream(io.RawIOBase):
    """A read-only file over HTTP ``GET`` that resumes with ranged requests when cut off.

    ``start`` skips that many bytes (resuming a ``.part`` file). ``tee`` appends every byte
    read to a file. ``digests()`` gives the MD5/SHA-256 of the bytes read from ``start`` on
    (pass ``hashers`` pre-fed with earlier bytes to cover a whole file).

    >>> # with RemoteStream(url) as s: tarfile.open(fileobj=s, mode="r|gz")
    """

    def __init__(self, url: str, *, session: requests.Session | None = None, auth: Any = None,
                 start: int = 0, tee: Path | None = None, hashers: dict | None = None,
                 retries: int = 5, backoff: float = 1.0, timeout: float = 60.0,
                 progress: tqdm | None = None, access_hint: str | None = None,
                 check_html: bool = True):
        super().__init__()
        self.url, self.auth, self.pos = url, auth, start
        self.session = session or make_session()
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self.progress, self.access_hint, self.check_html = progress, access_hint, check_html
        self.hashers = hashers if hashers is not None else {"md5": hashlib.md5(), "sha256": hashlib.sha256()}
        self.total: int | None = None
        self.reconnects = 0
        self._resp: requests.Response | None = None
        self._buffer = b""
        self._eof = False
        self._tee = open(tee, "ab") if tee is not None else None

    # -- io.RawIOBase -------------------------------------------------------------------
    def readable(self) -> bool:  # noqa: D102
        return True

    def readinto(self, buffer) -> int:  # noqa: D102
        data = self._read_some(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:  # noqa: D102
        if self._resp is not None:
            self._resp.close()
            self._resp = None
        if self._tee is not None:
            self._tee.close()
            self._tee = None
        super().close()

    # -- public helpers -----------------------------------------------------------------
    def digests(self) -> dict[str, str]:
        """Hex digests of the bytes read so far, e.g. ``{"md5": "...", "sha256": "..."}``."""
        return {name: h.hexdigest() for name, h in self.hashers.items()}

    def drain(self) -> int:
        """Read (and hash) the rest of the stream; returns how many bytes that was."""
        n = 0
        while chunk := self._read_some(CHUNK):
            n += len(chunk)
        return n

    # -- internals ----------------------------------------------------------------------
    def _connect(self) -> None:
        headers = {"Range": f"bytes={self.pos}-"} if self.pos else {}
        resp = self.session.get(self.url, headers=headers, stream=True, auth=self.auth,
                                timeout=self.timeout, allow_redirects=True)
        if resp.status_code == 416 and self.pos:
            resp.close()
            self._eof = True  # nothing left beyond what we have
            return
        if resp.status_code >= 400:
            resp.close()
            raise _status_error(resp, self.url, self.access_hint)
        self._resp = resp
        self._learn_total(resp)
        if resp.status_code == 200 and self.pos:
            self._skip_ignored_range(resp)
        if self.check_html:
            self._buffer = self._raw_read(CHUNK)
            if looks_like_html(self._buffer, resp.headers.get("Content-Type")):
                resp.close()
                raise HTMLPageError(
                    f"{redact_url(self.url)} sent an HTML page instead of data (a login or error "
                    "page, or an expired link). Open the address in a browser to see why.")

    def _learn_total(self, resp: requests.Response) -> None:
        content_range = resp.headers.get("Content-Range", "")
        if "/" in content_range and not content_range.endswith("/*"):
            self.total = int(content_range.rsplit("/", 1)[1])
        elif resp.headers.get("Content-Length") and resp.status_code == 200:
            self.total = int(resp.headers["Content-Length"])
        if self.progress is not None and self.total is not None:
            self.progress.total = self.total
            self.progress.refresh()

    def _skip_ignored_range(self, resp: requests.Response) -> None:
        """The server ignored ``Range`` and sent everything: discard what we already have."""
        log.info("server ignored the Range header; skipping %d bytes", self.pos)
        left = self.pos
        while left > 0:
            chunk = self._raw_read(min(CHUNK, left))
            if not chunk:
                raise DownloadError(f"{redact_url(self.url)} is shorter than the partial file")
            left -= len(chunk)

    def _raw_read(self, n: int) -> bytes:
        assert self._resp is not None
        # read1 returns what has arrived (up to n bytes), so a cut connection loses nothing
        return self._resp.raw.read1(n, decode_content=True) or b""

    def _read_some(self, n: int) -> bytes:
        failures = 0
        while not self._eof:
            try:
                if self._resp is None:
                    self._connect()
                    if self._eof:
                        break
                data = self._buffer[:n] if self._buffer else self._raw_read(n)
                self._buffer = self._buffer[len(data):] if self._buffer else b""
            except _TRANSIENT as err:
                failures = self._on_failure(err, failures)
                continue
            if data:
                self._account(data)
                return data
            if self.total is not None and self.pos < self.total:
                failures = self._on_failure(ConnectionError("connection closed early"), failures)
                continue
            self._eof = True
        return b""

    def _account(self, data: bytes) -> None:
        self.pos += len(data)
        for h in self.hashers.values():
            h.update(data)
        if self._tee is not None:
            self._tee.write(data)
        if self.progress is not None:
            self.progress.update(len(data))

    def _on_failure(self, err: BaseException, failures: int) -> int:
        if self._resp is not None:
            self._resp.close()
            self._resp = None
        self._buffer = b""
        failures += 1
        if failures > self.retries:
            raise DownloadError(f"download of {redact_url(self.url)} kept failing after "
                                f"{self.retries} retries at byte {self.pos}: {type(err).__name__}. "
                                "Run the same command again to resume.") from None
        self.reconnects += 1
        log.warning("connection to %s dropped at byte %d (%s); resuming",
                    redact_url(self.url), self.pos, type(err).__name__)
        time.sleep(min(self.backoff * 2 ** (failures - 1), 30.0))
        return failures


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_digests(got: dict[str, str], what: str, md5: str | None = None,
                  sha256: str | None = None) -> None:
    """Raise :class:`ChecksumError` when a known checksum does not match."""
    for name, expected in (("md5", md5), ("sha256", sha256)):
        if expected and got.get(name, "").lower() != expected.lower():
            raise ChecksumError(f"{name.upper()} mismatch for {what}: expected {expected.lower()}, "
                                f"got {got.get(name)}. The download is corrupt or the file changed "
                                "upstream; nothing was kept, run again to download afresh.")


def _prehashed(part: Path) -> dict:
    hashers = {"md5": hashlib.md5(), "sha256": hashlib.sha256()}
    if part.exists():
        with open(part, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                for h in hashers.values():
                    h.update(chunk)
    return hashers


def download(url: str, dest: str | Path, *, md5: str | None = None, sha256: str | None = None,
             session: requests.Session | None = None, auth: Any = None, retries: int = 5,
             backoff: float = 1.0, progress: bool = True, access_hint: str | None = None,
             desc: str | None = None) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` and verifying the checksum.

    An existing ``dest`` is verified (when a checksum is given) and kept. On a checksum
    mismatch the partial file is deleted and :class:`ChecksumError` raised; ``dest`` then does
    not exist, so nothing incomplete ever carries the final name.

    >>> # download("https://host/images_001.tar.gz", "data/images_001.tar.gz", md5="fe8e...")
    """
    dest = Path(dest)
    if dest.exists():
        if md5 or sha256:
            check_digests({"md5": file_digest(dest, "md5") if md5 else "",
                           "sha256": file_digest(dest, "sha256") if sha256 else ""},
                          str(dest), md5, sha256)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    bar = tqdm(total=None, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
               desc=desc or dest.name, disable=not progress, leave=False)
    stream = RemoteStream(url, session=session, auth=auth, start=start, tee=part,
                          hashers=_prehashed(part), retries=retries, backoff=backoff,
                          progress=bar, access_hint=access_hint)
    try:
        stream.drain()
    finally:
        stream.close()
        bar.close()
    try:
        check_digests(stream.digests(), redact_url(url), md5, sha256)
    except ChecksumError:
        part.unlink(missing_ok=True)
        raise
    part.replace(dest)
    return dest


def read_location(location: str | Path, *, session: requests.Session | None = None,
                  auth: Any = None, access_hint: str | None = None, retries: int = 5,
                  backoff: float = 1.0) -> bytes:
    """The bytes of a small file given as a local path or an http(s) URL."""
    if not is_url(location):
        path = Path(location).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"no file at {path}")
        return path.read_bytes()
    with RemoteStream(str(location), session=session, auth=auth, retries=retries,
                      backoff=backoff, access_hint=access_hint) as stream:
        return stream.read()


def check_free_space(folder: str | Path, needed: int, margin: float = 1.1) -> None:
    """Raise :class:`DownloadError` unless ``folder``'s disk has ``needed`` bytes (plus 10%)."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed * margin:
        raise DownloadError(f"not enough disk space in {folder}: need about "
                            f"{human_bytes(needed * margin)}, {human_bytes(free)} free. "
                            "Free some space, choose another --dest, or fetch less (--limit).")


def join_url(base: str, *parts: Iterable[str] | str) -> str:
    """Join a base URL (or folder) and relative parts with single slashes."""
    pieces = [str(base).rstrip("/")] + [str(p).strip("/") for p in parts]
    return "/".join(pieces)
