"""Reading ``.tar.gz`` archives as a stream and proving they were read whole.

Python's streaming ``tarfile`` mode (``r|gz``) checks neither the gzip trailer (CRC-32 and
length) nor the tar end-of-archive marker: a gzip file cut exactly between two members reads
as a complete, smaller archive. :class:`GzipCheckedReader` decompresses with :mod:`zlib`, which
checks the trailer of every gzip member, and says so when the input ends before it;
:class:`TarWalk` feeds that to ``tarfile`` (``r|``) and, at the end, checks the two zero
blocks that close a tar archive (POSIX) and that nothing but zero padding follows them.

>>> import io, tarfile
>>> buf = io.BytesIO()
>>> with tarfile.open(fileobj=buf, mode="w:gz") as tar:
...     info = tarfile.TarInfo("a.txt"); info.size = 2; tar.addfile(info, io.BytesIO(b"hi"))
>>> walk = TarWalk(io.BytesIO(buf.getvalue()), "demo.tar.gz")
>>> [m.name for m in walk]; walk.verify_end()
['a.txt']
>>> walk = TarWalk(io.BytesIO(buf.getvalue()[:-8]), "cut.tar.gz")  # trailer missing
>>> [m.name for m in walk]
['a.txt']
>>> walk.verify_end()
Traceback (most recent call last):
...
data_fetch.sources.archives.ArchiveTruncatedError: cut.tar.gz ends before its gzip end-of-stream marker: the file is incomplete
"""
from __future__ import annotations

import io
import tarfile
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from data_fetch.download import DownloadError

CHUNK = 1 << 16
GZIP_MAGIC = b"\x1f\x8b"
#: A tar archive ends with two 512-byte zero blocks.
END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE
TAIL = 1 << 16


class ArchiveError(DownloadError):
    """An archive is damaged (bad gzip data, CRC-32 or length mismatch, broken tar data)."""


class ArchiveTruncatedError(ArchiveError):
    """An archive ends early (no gzip trailer or no tar end-of-archive marker)."""


class GzipCheckedReader(io.RawIOBase):
    """A readable file of the decompressed bytes of a gzip stream (one or more members).

    Raises :class:`ArchiveError` when the input ends inside a member or a member's CRC-32 or
    length does not match its trailer. Memory stays bounded: at most ``n`` bytes are
    decompressed per read, whatever the compression ratio. Keeps the last bytes it returned
    (``tail``) so the end of a tar archive can be checked.
    """

    def __init__(self, raw: BinaryIO, name: str):
        super().__init__()
        self.raw, self.name = raw, name
        self.out = 0
        self.tail = bytearray()
        self._z = zlib.decompressobj(wbits=31)
        self._pending = b""      # compressed bytes not yet given to zlib
        self._done = False

    def readable(self) -> bool:  # noqa: D102
        return True

    def readinto(self, buffer) -> int:  # noqa: D102
        data = self._decompress(len(buffer))
        buffer[:len(data)] = data
        self.out += len(data)
        self.tail += data
        if len(self.tail) > TAIL:
            del self.tail[:len(self.tail) - TAIL]
        return len(data)

    def _next_input(self) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        return self.raw.read(CHUNK) or b""

    def _decompress(self, n: int) -> bytes:
        while not self._done:
            if self._z.eof:
                self._start_next_member()
                continue
            data = self._z.unconsumed_tail or self._next_input()
            if not data:
                raise ArchiveTruncatedError(f"{self.name} ends before its gzip end-of-stream marker: "
                                   "the file is incomplete")
            try:
                out = self._z.decompress(data, n)
            except zlib.error as err:
                raise ArchiveError(f"{self.name} is damaged ({err}): the gzip data or its "
                                   "CRC-32/length check failed") from None
            if out:
                return out
        return b""

    def _start_next_member(self) -> None:
        """After a member's trailer: another member, zero padding, or the end."""
        rest = self._z.unused_data
        while True:
            rest = rest.lstrip(b"\x00")
            if rest:
                break
            rest = self.raw.read(CHUNK) or b""
            if not rest:
                self._done = True
                return
        if not rest.startswith(GZIP_MAGIC[:len(rest)]):
            raise ArchiveError(f"{self.name} has data after its gzip stream that is not gzip")
        self._z = zlib.decompressobj(wbits=31)
        self._pending = rest

    def drain(self) -> tuple[int, bool]:
        """Read to the end; returns (bytes read, whether they were all zero)."""
        n, zero = 0, True
        while chunk := self.read(CHUNK):
            n += len(chunk)
            zero = zero and not chunk.strip(b"\x00")
        return n, zero


class TarWalk:
    """Iterate the members of a ``.tar.gz`` read from ``raw``; :meth:`verify_end` proves it whole.

    Members are read in stream mode (``tar.extractfile(member)`` works inside the loop).
    Call :meth:`verify_end` after the loop ran to its end: it reads the rest of the stream,
    so the gzip trailers are checked, and checks the tar end-of-archive marker.
    """

    def __init__(self, raw: BinaryIO, name: str):
        self.name = name
        self.gz = GzipCheckedReader(raw, name)
        try:
            self.tar = tarfile.open(fileobj=self.gz, mode="r|")
        except tarfile.ReadError as err:
            raise ArchiveError(f"{name} is not a tar archive ({err})") from None

    def __iter__(self) -> Iterator[tarfile.TarInfo]:
        try:
            yield from self.tar
        except tarfile.ReadError as err:
            raise ArchiveError(f"{self.name}: damaged tar data ({err})") from None

    def extract(self, member: tarfile.TarInfo) -> bytes:
        """The bytes of a regular-file member (read now, in stream order)."""
        handle = self.tar.extractfile(member)
        try:
            return handle.read() if handle else b""
        except tarfile.ReadError as err:
            raise ArchiveError(f"{self.name}: damaged tar data ({err})") from None

    def verify_end(self) -> None:
        """Raise :class:`ArchiveError` unless the archive ended with its end-of-archive marker."""
        end = self.tar.offset                       # where tarfile met the first zero block
        seen = self.gz.out - end                    # bytes tarfile already read past that point
        if seen < 0 or seen > len(self.gz.tail):
            raise ArchiveError(f"{self.name}: cannot locate the tar end-of-archive marker")
        zero = not bytes(self.gz.tail[len(self.gz.tail) - seen:]).strip(b"\x00") if seen else True
        more, more_zero = self.gz.drain()
        if not (zero and more_zero) or seen + more < END_OF_ARCHIVE:
            raise ArchiveTruncatedError(f"{self.name} lacks the tar end-of-archive marker (two zero "
                               "blocks): the archive was cut short")

    def close(self) -> None:
        """Close the tar reader (not ``raw``)."""
        self.tar.close()
