"""Download machinery shared by every source: resumable, verified, and never half-done.

* :class:`RemoteStream` is a readable file over an HTTP ``GET``. When the connection drops it
  reconnects with a ranged ``GET`` (``Range: bytes=N-``) and carries on, so a caller can feed it
  to :func:`tarfile.open` in stream mode and never notice. It hashes what it reads (MD5 and
  SHA-256), can copy the bytes to a file on the side, and updates a tqdm bar.
* :func:`download` writes to ``<dest>.part``, resumes from the bytes already there, verifies the
  checksum, and only then renames to ``dest``: a file with the final name is always complete.
* Servers that answer with an HTML page instead of data (Box, expired signed URLs, login walls)
  are detected from the first bytes; 401/403/404 give a message that says what to do.
* 429 and 5xx answers are retried with exponential backoff, honouring ``Retry-After``; a body
  shorter than its declared ``Content-Length`` is resumed, and one that stays short is an error.
* :func:`make_session` gives a session that never reads ``~/.netrc`` on its own (requests
  would otherwise send netrc passwords to any host listed there, open sources included);
  credentials travel only through :class:`data_fetch.credentials.HostBoundAuth`.

We never rely on ``HEAD``: Box answers it with a false 404 while ``GET`` works.

>>> redact_url("https://user:pw@host.org/a/b.zip?sig=SECRET&se=2030")
'https://host.org/a/b.zip?<redacted>'
"""
from __future__ import annotations

import email.utils
import hashlib
import io
import logging
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3
from tqdm.auto import tqdm

from data_fetch.redaction import install_log_filters, redact, register_secret

log = logging.getLogger(__name__)
#: Statuses that mean "try again later" (rate limits, overloaded or restarting servers).
RETRY_STATUSES = (429, 500, 502, 503, 504)
#: The longest ``Retry-After`` we wait for; a server asking for more ends the run.
MAX_RETRY_AFTER = 300.0
_sleep = time.sleep  # tests replace this to check the waits without waiting

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


class RetryableStatusError(DownloadError):
    """HTTP 429 or 5xx: the server may answer later (``retry_after`` seconds, if it said)."""

    def __init__(self, message: str, status: int, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


class TooLargeError(DownloadError):
    """A file is larger than the cap set for it (a decompression bomb or a wrong file)."""


def redact_url(url: str) -> str:
    """Return ``url`` without user info and with any query string (signatures, tokens) hidden."""
    try:
        parts = urlsplit(str(url))
        port = parts.port
    except ValueError:  # a malformed address: hide its secrets the generic way
        return redact(str(url))
    if not parts.scheme:
        return redact(str(url))
    host = parts.hostname or ""
    if port:
        host = f"{host}:{port}"
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


install_log_filters()


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


def check_url(url: str) -> str:
    """``url`` if it is a well-formed http(s) address; else :class:`ValueError` (redacted).

    Run before any network so a typo in a signed URL never reaches requests, whose errors
    quote the whole address.
    """
    try:
        parts = urlsplit(str(url))
        port = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise ValueError(f"{redact_url(url)} is not a valid URL (bad port or brackets)") from None
    if parts.query:
        register_secret(parts.query)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{redact_url(url)} is not an http(s):// URL with a host name")
    if port == 0:
        raise ValueError(f"{redact_url(url)} has port 0")
    return str(url)


class FetchSession(requests.Session):
    """A session that never adds ``~/.netrc`` credentials by itself.

    requests reads ``~/.netrc`` whenever a request has no ``auth`` (and again on every
    redirect) as long as ``trust_env`` is on. We keep ``trust_env`` for what users expect from
    it (proxy variables, ``no_proxy``, CA bundles) and switch off only the netrc lookup; the
    restricted sources pass a :class:`~data_fetch.credentials.HostBoundAuth` explicitly.
    """

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:  # noqa: D102
        trust, self.trust_env = self.trust_env, False  # only prepare_request's netrc lookup
        try:
            return super().prepare_request(request)
        finally:
            self.trust_env = trust

    def rebuild_auth(self, prepared_request: requests.PreparedRequest,
                     response: requests.Response) -> None:
        """On a redirect: drop ``Authorization`` when the origin changes; never add netrc."""
        headers = prepared_request.headers
        if "Authorization" in headers and self.should_strip_auth(response.request.url,
                                                                 prepared_request.url):
            del headers["Authorization"]


def make_session() -> requests.Session:
    """A :class:`FetchSession` with this project's User-Agent (one connection reused)."""
    session = FetchSession()
    session.headers["User-Agent"] = USER_AGENT
    # bytes as stored: Content-Length, Range offsets and checksums then all count the same bytes
    session.headers["Accept-Encoding"] = "identity"
    return session


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _status_error(resp: requests.Response, url: str, access_hint: str | None) -> DownloadError:
    code, where = resp.status_code, redact_url(url)
    if code in (401, 403):
        hint = access_hint or "the server refused this file; check the address"
        return AccessError(f"HTTP {code} ({resp.reason}) for {where}: access refused. {hint}")
    if code == 404:
        return DownloadError(f"HTTP 404 (not found) for {where}: the link is dead or has expired; "
                             "check the address or use --mirror to point at another copy")
    if code in RETRY_STATUSES:
        return RetryableStatusError(f"HTTP {code} ({resp.reason}) for {where}", code,
                                    _retry_after(resp))
    return DownloadError(f"HTTP {code} ({resp.reason}) for {where}")


_TRANSIENT = (
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.Timeout,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
    RetryableStatusError,
)


class RemoteStream(io.RawIOBase):
    """A read-only file over HTTP ``GET`` that resumes with ranged requests when cut off.

    ``start`` skips that many bytes (resuming a ``.part`` file). ``tee`` appends every byte
    read to a file. ``digests()`` gives the MD5/SHA-256 of the bytes read from ``start`` on
    (pass ``hashers`` pre-fed with earlier bytes to cover a whole file). ``max_bytes`` caps
    the file's size (:class:`TooLargeError`). ``resume_hint`` ends the message given when the
    connection keeps failing: it must say truthfully what a re-run does.

    >>> # with RemoteStream(url) as s: tarfile.open(fileobj=s, mode="r|gz")
    """

    def __init__(self, url: str, *, session: requests.Session | None = None, auth: Any = None,
                 start: int = 0, tee: Path | None = None, hashers: dict | None = None,
                 retries: int = 5, backoff: float = 1.0, timeout: float = 60.0,
                 progress: tqdm | None = None, access_hint: str | None = None,
                 check_html: bool = True, max_bytes: int | None = None,
                 resume_hint: str = "Run the same command again to try again."):
        super().__init__()
        self.url, self.auth, self.pos = check_url(url), auth, start
        self.max_bytes, self.resume_hint = max_bytes, resume_hint
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

    def check_complete(self) -> None:
        """Raise :class:`DownloadError` unless the bytes read match the declared length."""
        if self.total is not None and self.pos != self.total:
            raise DownloadError(f"{redact_url(self.url)}: got {self.pos} bytes, the server "
                                f"declared {self.total} (Content-Length). {self.resume_hint}")

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
        if self.max_bytes is not None and self.total is not None and self.total > self.max_bytes:
            resp.close()
            self._resp = None
            raise TooLargeError(f"{redact_url(self.url)} is {human_bytes(self.total)}, over the "
                                f"{human_bytes(self.max_bytes)} allowed for this file")
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
        if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
            return  # the declared length counts encoded bytes, not the ones we read
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
        if self.max_bytes is not None and self.pos > self.max_bytes:
            raise TooLargeError(f"{redact_url(self.url)} is over the "
                                f"{human_bytes(self.max_bytes)} allowed for this file")
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
        what = str(err) if isinstance(err, RetryableStatusError) else type(err).__name__
        if failures > self.retries:
            raise DownloadError(f"download of {redact_url(self.url)} kept failing after "
                                f"{self.retries} retries at byte {self.pos}: {what}. "
                                f"{self.resume_hint}") from None
        wait = min(self.backoff * 2 ** (failures - 1), 30.0)
        asked = getattr(err, "retry_after", None)
        if asked is not None:
            if asked > MAX_RETRY_AFTER:
                raise DownloadError(f"{what}: the server asks to wait {asked:.0f} s before "
                                    f"trying again. {self.resume_hint}") from None
            wait = max(wait, asked)
        self.reconnects += 1
        log.warning("request to %s failed at byte %d (%s); retrying in %.1f s",
                    redact_url(self.url), self.pos, what, wait)
        _sleep(wait)
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


def _verify_file(path: Path, what: str, md5: str | None, sha256: str | None,
                 verify: Callable[[Path], None] | None) -> None:
    if md5 or sha256:
        check_digests({"md5": file_digest(path, "md5") if md5 else "",
                       "sha256": file_digest(path, "sha256") if sha256 else ""},
                      what, md5, sha256)
    if verify is not None:
        verify(path)


def _reuse_existing(dest: Path, md5: str | None, sha256: str | None,
                    verify: Callable[[Path], None] | None) -> bool:
    """True when ``dest`` is there and passes its checks; a failing one is deleted."""
    if not dest.exists():
        return False
    try:
        _verify_file(dest, str(dest), md5, sha256, verify)
    except DownloadError as err:
        log.warning("%s fails its check (%s); downloading it again", dest, err)
        dest.unlink()
        return False
    return True


def download(url: str, dest: str | Path, *, md5: str | None = None, sha256: str | None = None,
             session: requests.Session | None = None, auth: Any = None, retries: int = 5,
             backoff: float = 1.0, progress: bool = True, access_hint: str | None = None,
             desc: str | None = None, verify: Callable[[Path], None] | None = None,
             max_bytes: int | None = None) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` and verifying it before the rename.

    The bytes go to ``dest.part``; ``dest`` gets its name only after the declared
    ``Content-Length``, the checksum (when given) and ``verify(part)`` (a callable raising
    :class:`DownloadError`, e.g. "is this a readable zip") all pass. An existing ``dest`` is
    checked the same way and downloaded again if it fails. On a failed check the partial file
    is deleted, so nothing incomplete ever carries the final name.

    >>> # download("https://host/images_001.tar.gz", "data/images_001.tar.gz", md5="fe8e...")
    """
    dest = Path(dest)
    if _reuse_existing(dest, md5, sha256, verify):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    bar = tqdm(total=None, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
               desc=desc or dest.name, disable=not progress, leave=False)
    stream = RemoteStream(url, session=session, auth=auth, start=start, tee=part,
                          hashers=_prehashed(part), retries=retries, backoff=backoff,
                          progress=bar, access_hint=access_hint, max_bytes=max_bytes,
                          resume_hint=f"Run the same command again: it resumes from the bytes "
                                      f"kept in {part.name}.")
    try:
        stream.drain()
        stream.check_complete()
    finally:
        stream.close()
        bar.close()
    try:
        check_digests(stream.digests(), redact_url(url), md5, sha256)
        if verify is not None:
            verify(part)
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    part.replace(dest)
    return dest


def read_location(location: str | Path, *, session: requests.Session | None = None,
                  auth: Any = None, access_hint: str | None = None, retries: int = 5,
                  backoff: float = 1.0, max_bytes: int | None = None) -> bytes:
    """The bytes of a small file given as a local path or an http(s) URL (complete, capped)."""
    if not is_url(location):
        path = Path(location).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no file at {path}")
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise TooLargeError(f"{path} is {human_bytes(path.stat().st_size)}, over the "
                                f"{human_bytes(max_bytes)} allowed for this file")
        return path.read_bytes()
    with RemoteStream(str(location), session=session, auth=auth, retries=retries,
                      backoff=backoff, access_hint=access_hint, max_bytes=max_bytes) as stream:
        data = stream.read()
        stream.check_complete()
        return data


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
