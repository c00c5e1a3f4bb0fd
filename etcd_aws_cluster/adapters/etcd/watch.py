"""etcd's watch over the JSON gateway, and what `backup --follow` asks beside it: a lease's granted TTL and the
number of live keys at a revision.

`POST /v3/watch` with one create request streams JSON lines `{"result": {...}}` for as long as the connection
lasts: first `created`, then responses with `events` (every event of one revision comes in the same response:
etcd never splits a revision without the `fragment` option, which is not asked for), progress notifications
(a header and nothing else: every revision up to the header's has been sent), and, when the start revision is
compacted, `canceled` with `compact_revision` (seen on 3.4.23, 3.5.30 and 3.6.16). The gateway keeps the watch
open after the request body ends.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from etcd_aws_cluster.adapters.etcd.transport import EtcdRequestError, Transport, _uint64, causes, stream_result
from etcd_aws_cluster.base import validate
from etcd_aws_cluster.core.deltas import Op, Revision
from etcd_aws_cluster.core.model import EtcdFailure

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

# Every key: from "\0" (the smallest key) to range_end "\0", which means "to the end of the keyspace".
ALL_KEYS = base64.b64encode(b"\0").decode()
# One gateway line is one watch response. etcd batches up to 1000 revisions into one while catching up, each up to
# its request limit (1.5 MiB by default); a line longer than this is not read into memory.
MAX_WATCH_MESSAGE = 64 * 1024 * 1024
READ_CHUNK = 64 * 1024


class WatchCompacted(EtcdRequestError):  # noqa: N818 -- an outcome of the watch, named as etcd names it
    """The watch's start revision is older than etcd's compaction: the changes since it are gone."""

    def __init__(self, message: str, compact_revision: int) -> None:
        super().__init__(message, failure=EtcdFailure.ANSWER)
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class WatchMessage:
    """One watch response: its complete revisions in order (none for `created` and progress notifications),
    the cluster it came from and the revision every change up to which has been sent (`progress`, 0 when the
    message does not say: only a progress notification does)."""

    cluster_id: int
    revisions: tuple[Revision, ...] = ()
    created: bool = False
    progress: int = 0


class Watch:
    """An open watch stream. `messages()` reads it (in one thread); `close()` ends it from any thread."""

    def __init__(self, response: requests.Response, url: str, now: Callable[[], datetime.datetime]) -> None:
        self._response = response
        self.url = url
        self._now = now
        self._closed = threading.Event()

    def messages(self) -> Iterator[WatchMessage]:
        """The watch's messages as they come. Ends quietly when the stream ends, is closed, or is idle for longer
        than its read timeout (nothing changed: the caller opens it again from the next revision); raises
        WatchCompacted, or EtcdRequestError when the stream breaks or sends what etcd does not send."""
        import requests

        try:
            for line in self._lines():
                if line.strip():
                    yield self._message(line)
        except (requests.RequestException, OSError, ValueError) as exc:
            read_timeout = isinstance(exc, requests.exceptions.ConnectionError) and _is_read_timeout(exc)
            if self._closed.is_set() or read_timeout:
                return
            raise EtcdRequestError(
                f"watch stream from {self.url} broke: {type(exc).__name__}",
                failure=EtcdFailure.UNREACHABLE,
                transient=True,
            ) from None
        finally:
            self._response.close()

    def close(self) -> None:
        """End the stream: a read blocked in another thread returns at once (the socket is shut down)."""
        self._closed.set()
        sock = _socket_of(self._response)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _lines(self) -> Iterator[bytes]:
        buffered = b""
        for chunk in self._response.iter_content(READ_CHUNK):
            if self._closed.is_set():
                return
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            yield from lines
            if len(buffered) > MAX_WATCH_MESSAGE:
                raise EtcdRequestError(
                    f"watch stream from {self.url} sent a message longer than {MAX_WATCH_MESSAGE} bytes",
                    failure=EtcdFailure.ANSWER,
                )
        if buffered.strip() and not self._closed.is_set():
            yield buffered

    def _message(self, line: bytes) -> WatchMessage:
        url = self.url
        result = stream_result(line, f"watch stream from {url}")
        header = result.get("header")
        cluster_id = _uint64(header.get("cluster_id")) if isinstance(header, dict) else None
        if cluster_id is None or not isinstance(header, dict):
            raise EtcdRequestError(f"watch stream from {url} sent no header", failure=EtcdFailure.ANSWER)
        compacted = _uint64(result.get("compact_revision", "0")) or 0
        if compacted > 0:
            raise WatchCompacted(f"etcd has compacted its history up to revision {compacted}", compacted)
        if result.get("canceled") is True:
            reason = result.get("cancel_reason", "")
            raise EtcdRequestError(
                f"etcd canceled the watch from {url}: {validate.shown(reason, 200)}",
                failure=EtcdFailure.ANSWER,
                transient=True,
            )
        events = result.get("events") or []
        if not isinstance(events, list):
            raise EtcdRequestError(f"watch stream from {url} sent malformed events", failure=EtcdFailure.ANSWER)
        created = result.get("created") is True
        if events:
            return WatchMessage(cluster_id, revisions=_revisions(events, self._now(), url))
        revision = _uint64(header.get("revision", "0")) or 0
        return WatchMessage(cluster_id, created=created, progress=0 if created else revision)


def _revisions(events: list[Any], at: datetime.datetime, url: str) -> tuple[Revision, ...]:
    """The events of one watch response grouped by revision, in order: one Revision per etcd transaction."""
    grouped: dict[int, list[Op]] = {}
    for event in events:
        revision, op = _event(event, url)
        grouped.setdefault(revision, []).append(op)
    order = list(grouped)
    if order != sorted(order):
        raise EtcdRequestError(f"watch stream from {url} sent revisions out of order", failure=EtcdFailure.ANSWER)
    return tuple(Revision(revision, at, tuple(ops)) for revision, ops in grouped.items())


def _event(event: Any, url: str) -> tuple[int, Op]:
    kv = event.get("kv") if isinstance(event, dict) else None
    kind = event.get("type", "PUT") if isinstance(event, dict) else None
    if not isinstance(kv, dict) or kind not in ("PUT", "DELETE"):
        raise EtcdRequestError(f"watch stream from {url} sent a malformed event", failure=EtcdFailure.ANSWER)
    revision = _uint64(kv.get("mod_revision"))
    lease = _uint64(kv.get("lease", "0"))
    try:
        key = base64.b64decode(kv.get("key", ""), validate=True)
        value = base64.b64decode(kv.get("value", ""), validate=True) if kind == "PUT" else b""
    except (binascii.Error, TypeError, ValueError):
        key = b""
    if not revision or lease is None or not key:
        raise EtcdRequestError(f"watch stream from {url} sent a malformed event", failure=EtcdFailure.ANSWER)
    if kind == "DELETE":
        return revision, Op("delete", key)
    return revision, Op("put", key, value, lease)


def _is_read_timeout(exc: BaseException) -> bool:
    """requests reports a read timeout in the middle of a streamed body as a ConnectionError around urllib3's
    ReadTimeoutError."""
    from urllib3.exceptions import ReadTimeoutError

    return any(isinstance(item, (ReadTimeoutError, TimeoutError, socket.timeout)) for item in causes(exc))


def _socket_of(response: requests.Response) -> socket.socket | None:
    """The socket under a streamed response, when urllib3 and http.client show it (best effort: without it a
    closed watch ends at its next read timeout)."""
    raw = getattr(response, "raw", None)
    for path in (("_connection", "sock"), ("connection", "sock"), ("_fp", "fp", "raw", "_sock")):
        item: Any = raw
        for name in path:
            item = getattr(item, name, None)
        if isinstance(item, socket.socket):
            return item
    return None


class WatchApi(Transport):
    """The watch, a lease's TTL, and a count of the keys (v3 only)."""

    def watch(
        self,
        client_url: str,
        start_revision: int,
        *,
        connect_timeout: float,
        idle_timeout: float,
        now: Callable[[], datetime.datetime],
    ) -> Watch:
        """Watch every key from `start_revision` on, with progress notifications (etcd sends one every 10 minutes
        while nothing changes). `idle_timeout` bounds each read: a quiet stream ends after it, not in error."""
        body = {
            "create_request": {
                "key": ALL_KEYS,
                "range_end": ALL_KEYS,
                "start_revision": str(start_revision),
                "progress_notify": True,
            }
        }
        last: EtcdRequestError | None = None
        for prefix in self._v3_prefixes():
            url = f"{client_url}{prefix}/watch"
            response = self._call("POST", url, connect_timeout, body, stream=True, read_timeout=idle_timeout)
            if response.status_code == 404:
                response.close()
                last = EtcdRequestError(f"{url} answered HTTP 404", failure=EtcdFailure.HTTP, status=404)
                continue
            if response.status_code != 200:
                error = self._error(response, url)
                response.close()
                raise error
            return Watch(response, url, now)
        raise last or EtcdRequestError(f"{client_url} serves no v3 gateway", failure=EtcdFailure.HTTP, status=404)

    def lease_ttl(self, client_url: str, lease_id: int, timeout: float) -> int | None:
        """The TTL lease `lease_id` was granted with (seconds); None when the lease no longer exists."""
        body = {"ID": str(lease_id)}
        _, answer = self._post_v3(client_url, ("lease/timetolive", "kv/lease/timetolive"), body, timeout)
        granted = _uint64(answer.get("grantedTTL", "0"))
        if granted is None:
            raise EtcdRequestError(
                f"etcd at {client_url} sent a malformed TTL for lease {lease_id:x}", failure=EtcdFailure.ANSWER
            )
        return granted or None

    def key_count(self, client_url: str, revision: int, timeout: float) -> int:
        """How many keys were live at `revision` (EtcdRequestError once that revision is compacted)."""
        body = {"key": ALL_KEYS, "range_end": ALL_KEYS, "count_only": True, "revision": str(revision)}
        _, answer = self._post_v3(client_url, ("kv/range",), body, timeout)
        count = _uint64(answer.get("count", "0"))
        if count is None:
            raise EtcdRequestError(f"etcd at {client_url} sent a malformed key count", failure=EtcdFailure.ANSWER)
        return count
