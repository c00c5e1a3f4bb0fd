"""One object uploaded to S3 from a non-seekable stream: parts sent in parallel, memory bounded.

Parts of PART_SIZE are read in the calling thread (the read compresses: see compression.py) and sent by
PARTS_IN_FLIGHT daemon threads; a part is read only when fewer than PARTS_IN_FLIGHT are held, so at most that many
parts are in memory whatever the object's size. Daemon threads, not s3transfer's pool: an upload abandoned at its
deadline must not keep the process alive at exit (the store's before-send guard stops their next request). Any
error aborts the multipart upload, so nothing half-written stays visible or billed.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

# 5 MiB (S3's smallest part) x 3 in flight: ~15 MiB of buffers whatever the db size, and 10,000 parts of 5 MiB
# (50 GiB stored) far above etcd's 8 GiB quota. Three connections overlap a real S3's latency; moto is no faster
# with more, and each part in flight costs the agent's peak RSS about twice its size (docs/benchmarks-backup.md).
PART_SIZE = 5 * 1024 * 1024
PARTS_IN_FLIGHT = 3


class _Senders:
    """PARTS_IN_FLIGHT daemon threads that send numbered parts and remember their ETags, or the first error."""

    def __init__(self, send: Callable[[int, bytes], str]) -> None:
        self._send = send
        self._slots = threading.Semaphore(PARTS_IN_FLIGHT)
        self._work: queue.Queue[tuple[int, bytes] | None] = queue.Queue()
        self._lock = threading.Lock()
        self.etags: dict[int, str] = {}
        self.sizes: dict[int, int] = {}
        self.error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._run, name=f"s3 part sender {i}", daemon=True) for i in range(PARTS_IN_FLIGHT)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            number, data = item
            try:
                if self.error is None:
                    etag = self._send(number, data)
                    with self._lock:
                        self.etags[number] = etag
                        self.sizes[number] = len(data)
            except BaseException as exc:  # handed to the reading thread
                with self._lock:
                    self.error = self.error or exc
            finally:
                del data
                self._slots.release()

    def reserve(self) -> None:
        """Wait for room to hold one more part; raise the first sender's error, if any."""
        self._slots.acquire()
        if self.error is not None:
            self._slots.release()
            raise self.error

    def submit(self, number: int, data: bytes) -> None:
        self._work.put((number, data))

    def release(self) -> None:
        """Give back a reserved room that was not used (the stream ended)."""
        self._slots.release()

    def finish(self, *, wait: bool) -> None:
        """Stop the senders; with `wait`, once every part is sent, raising the first error."""
        for _ in self._threads:
            self._work.put(None)
        if not wait:
            return  # daemon threads: an abandoned part ends with its request, and sends nothing after
        for thread in self._threads:
            thread.join()
        if self.error is not None:
            raise self.error


def upload(s3: S3Client, bucket: str, key: str, reader: IO[bytes], extra: dict[str, Any]) -> int:
    """Upload everything `reader` hands out to `bucket`/`key` (one PutObject when it fits one part); returns the
    bytes sent."""
    first = reader.read(PART_SIZE)
    if len(first) < PART_SIZE:
        s3.put_object(Bucket=bucket, Key=key, Body=first, **extra)
        return len(first)
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]
    try:
        sent = _parts(s3, bucket, key, upload_id, reader, first)
    except BaseException:
        _abort(s3, bucket, key, upload_id)
        raise
    return sent


def _parts(s3: S3Client, bucket: str, key: str, upload_id: str, reader: IO[bytes], first: bytes) -> int:
    def send(number: int, data: bytes) -> str:
        answer = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data)
        return str(answer["ETag"])

    senders = _Senders(send)
    number, data = 0, first
    senders.reserve()  # the room of the first part, already read
    try:
        while data:
            number += 1
            senders.submit(number, data)
            senders.reserve()  # room for the next part before reading it
            data = reader.read(PART_SIZE)
        senders.release()
    except BaseException:
        senders.finish(wait=False)
        raise
    senders.finish(wait=True)
    if sorted(senders.etags) != list(range(1, number + 1)):
        raise RuntimeError(f"parts {sorted(senders.etags)} of {number} were sent")  # never: every send gives one
    parts: list[CompletedPartTypeDef] = [{"PartNumber": n, "ETag": senders.etags[n]} for n in range(1, number + 1)]
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
    return sum(senders.sizes.values())


def _abort(s3: S3Client, bucket: str, key: str, upload_id: str) -> None:
    try:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except Exception as exc:  # best effort: a lifecycle rule on the bucket cleans up what is left
        log.warning("could not abort the multipart upload of s3://%s/%s: %s", bucket, key, exc)
