"""Snapshot bytes on their way to and from S3: compressed (zstd) or not, streamed in bounded memory, and the sha256
and size of both the db and the stored bytes counted on the way.

zstd level 3 was chosen by measurement on a real etcd db (docs/benchmarks-backup.md): about 7.6x smaller at
125-200 MB/s on one core, decompressed at 400+ MB/s; gzip -1 compresses 4.7x at 25-54 MB/s, slower than
`etcdctl snapshot save` itself, and xz and bz2 at 7-15 MB/s. The C library releases the GIL, so compressing a
part overlaps with the upload of the parts before it.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import IO, Union, cast

from etcd_aws_cluster.base.errors import AgentError, AwsError, ErrorKind
from etcd_aws_cluster.core.records import Checksum

ZSTD = "zstd"
ZSTD_LEVEL = 3
# What a decompression may need for its window: level 3 uses 2 MiB; this refuses (as corrupt) an object that
# would make a restore hold more, whatever its header says.
ZSTD_MAX_WINDOW = 16 * 1024 * 1024
READ_CHUNK = 1024 * 1024
PIECES_AHEAD = 4  # decompressed pieces waiting to be hashed and written
SHA256_BYTES = 32

Stream = Union[Iterable[bytes], IO[bytes]]


class CorruptSnapshotError(AgentError):
    """A downloaded snapshot does not match the size or sha256 its manifest promises, or does not decompress."""

    kind = ErrorKind.CORRUPT_SNAPSHOT


class TrailerMismatchError(AgentError):
    """A snapshot's last 32 bytes are not the sha256 of the bytes before them (etcd appends it): cut or garbled."""

    kind = ErrorKind.ETCD


class Digest:
    """A running sha256 and byte count."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes | bytearray) -> None:
        self._sha256.update(data)
        self.size += len(data)

    def result(self) -> Checksum:
        return Checksum(self._sha256.hexdigest(), self.size)


class TrailerCheck:
    """Checks etcd's sha256 trailer over a stream fed in pieces: holds back the last 32 bytes seen."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._tail = b""

    def update(self, data: bytes) -> None:
        joined = self._tail + data if len(data) < SHA256_BYTES else None
        if joined is not None:
            self._sha256.update(joined[:-SHA256_BYTES])
            self._tail = joined[-SHA256_BYTES:]
            return
        self._sha256.update(self._tail)
        with memoryview(data) as view:
            self._sha256.update(view[:-SHA256_BYTES])
        self._tail = data[-SHA256_BYTES:]

    def verify(self, what: str) -> None:
        if self._tail != self._sha256.digest():
            raise TrailerMismatchError(f"{what} does not end with the sha256 of its db: cut or garbled on the way")


def _chunks_of(source: Stream) -> Iterator[bytes]:
    if hasattr(source, "read"):
        reader = cast("IO[bytes]", source)
        return iter(lambda: reader.read(READ_CHUNK), b"")
    return iter(source)


class SnapshotReader:
    """A read-only, non-seekable file of the bytes to store for a snapshot stream: compressed with `compression`
    (or as they come), with the checksums of the db (`db`) and of what was handed out (`stored`).

    `read(n)` returns exactly n bytes until the end, as equal multipart parts need. With `check_trailer`, the
    stream's end must be etcd's sha256 trailer (TrailerMismatchError at the end otherwise). Once `stop` is set
    every read raises: an upload abandoned at its deadline stops reading.
    """

    def __init__(
        self,
        source: Stream,
        compression: str | None,
        *,
        stop: threading.Event | None = None,
        check_trailer: bool = False,
        what: str = "the snapshot",
    ) -> None:
        self._chunks = _chunks_of(source)
        self._stop = stop
        self._buffer = bytearray()
        self._done = False
        self._what = what
        self._trailer = TrailerCheck() if check_trailer else None
        self._compressor = None
        if compression == ZSTD:
            import zstandard

            self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compressobj()
        elif compression is not None:
            raise ValueError(f"unknown compression {compression!r}")
        self.db = Digest()
        self.stored = Digest()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def _fill(self) -> None:
        chunk = next(self._chunks, None)
        if chunk is None:
            self._done = True
            if self._trailer is not None:
                self._trailer.verify(self._what)
            if self._compressor is not None:
                self._buffer += self._compressor.flush()
            return
        self.db.update(chunk)
        if self._trailer is not None:
            self._trailer.update(chunk)
        self._buffer += self._compressor.compress(chunk) if self._compressor is not None else chunk

    def read(self, size: int | None = -1) -> bytearray:
        if self._stop is not None and self._stop.is_set():
            raise AwsError("the upload was abandoned at its deadline")
        want = None if size is None or size < 0 else size
        while not self._done and (want is None or len(self._buffer) < want):
            self._fill()
        cut = len(self._buffer) if want is None else min(want, len(self._buffer))
        # Hand out the buffer itself and keep only what is left over (less than one chunk's output): a part is
        # never copied, so it is in memory once while it waits and is sent.
        data, self._buffer = self._buffer, self._buffer[cut:]
        del data[cut:]
        self.stored.update(data)
        return data


class _CountingSource:
    """The stored bytes as read from S3, hashed and counted, refused past the size the manifest names."""

    def __init__(self, body: IO[bytes], limit: int, what: str) -> None:
        self._body = body
        self._limit = limit
        self._what = what
        self.digest = Digest()

    def read(self, size: int = -1) -> bytes:
        data = self._body.read(READ_CHUNK if size < 0 else size)
        self.digest.update(data)
        if self.digest.size > self._limit:
            raise CorruptSnapshotError(f"{self._what} is corrupt: it holds more than the {self._limit} bytes stored")
        return data


def copy_out(
    body: IO[bytes],
    out: IO[bytes],
    compression: str | None,
    *,
    stored_size: int,
    db_size: int,
    what: str,
    stop: threading.Event | None = None,
) -> tuple[Checksum, Checksum]:
    """Copy a stored snapshot from `body` to `out` as the db (decompressed), in bounded memory; returns the
    checksums of (the stored bytes, the db). CorruptSnapshotError when it holds more than the sizes promised or
    does not decompress; the caller compares the checksums with the manifest.

    Reading and decompressing run in a thread of their own, hashing and writing the db in this one: both release
    the GIL, so a download costs about the slower of the two, not their sum. At most PIECES_AHEAD pieces of
    READ_CHUNK wait between them."""
    source = _CountingSource(body, stored_size, what)
    reader: IO[bytes] = cast("IO[bytes]", source)
    if compression == ZSTD:
        import zstandard

        reader = cast(
            "IO[bytes]",
            zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(
                cast("IO[bytes]", source), read_size=READ_CHUNK, read_across_frames=False
            ),
        )
    elif compression is not None:
        raise CorruptSnapshotError(f"{what} is stored with {compression}, which this agent cannot read")
    pieces: queue.Queue[bytes | BaseException | None] = queue.Queue(PIECES_AHEAD)
    done = threading.Event()  # set by this thread when it stops taking pieces

    def hand_over(item: bytes | BaseException | None) -> bool:
        while not done.is_set():
            try:
                pieces.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for data in iter(lambda: reader.read(READ_CHUNK), b""):
                if not hand_over(data):
                    return
            while source.read(READ_CHUNK):  # what follows the compressed frame counts against the stored checksum
                pass
            hand_over(None)
        except BaseException as exc:  # handed to the writing thread
            hand_over(exc)

    threading.Thread(target=produce, name="snapshot download", daemon=True).start()
    db = Digest()
    try:
        while (item := pieces.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            if stop is not None and stop.is_set():
                raise OSError("the download was abandoned at its deadline")
            db.update(item)
            if db.size > db_size:
                raise CorruptSnapshotError(f"{what} is corrupt: its db is larger than the {db_size} bytes promised")
            out.write(item)
    except _zstd_errors() as exc:
        raise CorruptSnapshotError(f"{what} is corrupt: it does not decompress ({exc})") from None
    finally:
        done.set()
    return source.digest.result(), db.result()


def _zstd_errors() -> tuple[type[Exception], ...]:
    try:
        import zstandard
    except ImportError:  # then nothing can raise its errors
        return ()
    return (zstandard.ZstdError,)


def compress(data: bytes) -> bytes:
    """A small object (a delta) compressed whole, with zstd's own checksum."""
    import zstandard

    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compress(data)


def decompress(data: bytes, limit: int, what: str) -> bytes:
    """`data`, one whole zstd frame that names its size (as `compress` writes it), decompressed; refused
    (CorruptSnapshotError) when it is not that, or would be more than `limit` bytes."""
    import zstandard

    try:
        size = zstandard.frame_content_size(data)
        if not 0 <= size <= limit:
            raise CorruptSnapshotError(f"{what} does not name a size of at most {limit} bytes")
        decompressor = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).decompressobj()
        out = decompressor.decompress(data)
        if not decompressor.eof or decompressor.unused_data or len(out) != size:
            raise CorruptSnapshotError(f"{what} is not one whole zstd frame of {size} bytes")
    except zstandard.ZstdError as exc:
        raise CorruptSnapshotError(f"{what} does not decompress ({exc})") from None
    return out
