"""The watch stream parser: etcd's gateway lines become revisions (events grouped by revision, one per txn),
progress and compaction; a stream that ends, idles or is closed ends quietly; anything else raises."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, cast

import pytest
import requests
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from etcd_aws_cluster.adapters.etcd.transport import EtcdRequestError
from etcd_aws_cluster.adapters.etcd.watch import MAX_WATCH_MESSAGE, Watch, WatchCompacted, WatchMessage
from etcd_aws_cluster.core.deltas import Op

URL = "http://127.0.0.1:2379/v3/watch"
AT = datetime(2026, 12, 7, 10, 0, tzinfo=timezone.utc)
HEADER = {"cluster_id": "14841639068965178418", "member_id": "10276657743932975437", "revision": "9"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def line(result: dict[str, Any]) -> bytes:
    return json.dumps({"result": {"header": HEADER, **result}}).encode() + b"\n"


def put(key: str, value: str, revision: int, lease: int = 0) -> dict[str, Any]:
    kv: dict[str, Any] = {"key": b64(key), "value": b64(value), "mod_revision": str(revision)}
    if lease:
        kv["lease"] = str(lease)
    return {"kv": kv}


def delete(key: str, revision: int) -> dict[str, Any]:
    return {"type": "DELETE", "kv": {"key": b64(key), "mod_revision": str(revision)}}


class FakeResponse:
    """A streamed response: its body in the chunks given (a chunk may be an exception to raise there)."""

    def __init__(self, chunks: list[bytes | Exception]) -> None:
        self.chunks = chunks
        self.closed = False

    def iter_content(self, size: int) -> Iterator[bytes]:
        for chunk in self.chunks:
            if isinstance(chunk, Exception):
                raise chunk
            yield chunk

    def close(self) -> None:
        self.closed = True


def messages(*chunks: bytes | Exception) -> list[WatchMessage]:
    response = FakeResponse(list(chunks))
    found = list(Watch(cast(requests.Response, response), URL, lambda: AT).messages())
    assert response.closed
    return found


def test_events_become_revisions_grouped_by_revision_in_order() -> None:
    created, changes = messages(
        line({"created": True}),
        line({"events": [put("a", "1", 5, lease=7), put("b", "2", 6), delete("a", 6), put("c", "3", 7)]}),
    )
    assert created.created and created.progress == 0 and created.cluster_id == int(HEADER["cluster_id"])
    assert [(r.revision, r.at, r.ops) for r in changes.revisions] == [
        (5, AT, (Op("put", b"a", b"1", 7),)),
        (6, AT, (Op("put", b"b", b"2"), Op("delete", b"a"))),
        (7, AT, (Op("put", b"c", b"3"),)),
    ]
    assert changes.progress == 0  # a response with events says nothing of what follows


def test_a_progress_notification_says_every_change_up_to_its_revision_was_sent() -> None:
    (progress,) = messages(line({}))
    assert progress.revisions == () and progress.progress == 9 and not progress.created


def test_lines_split_across_chunks_and_blank_lines_are_read() -> None:
    whole = line({"events": [put("a", "1", 5)]})
    found = messages(b"\n", whole[:10], whole[10:-1], b"\n", line({}))
    assert [m.progress for m in found] == [0, 9] and found[0].revisions[0].revision == 5


def test_a_compacted_start_raises_with_the_compact_revision() -> None:
    with pytest.raises(WatchCompacted) as caught:
        messages(line({"created": True}), line({"canceled": True, "compact_revision": "42"}))
    assert caught.value.compact_revision == 42


def test_a_watch_canceled_for_another_reason_raises_a_transient_error() -> None:
    with pytest.raises(EtcdRequestError, match="canceled the watch") as caught:
        messages(line({"canceled": True, "cancel_reason": "permission denied"}))
    assert caught.value.transient and not isinstance(caught.value, WatchCompacted)


@pytest.mark.parametrize(
    "bad",
    [
        b"not json\n",
        json.dumps({"result": {"events": []}}).encode() + b"\n",  # no header
        line({"events": [{"type": "MERGE", "kv": {"key": b64("a"), "mod_revision": "5"}}]}),
        line({"events": [{"kv": {"key": b64("a")}}]}),  # no revision
        line({"events": [{"kv": {"key": "!!", "mod_revision": "5"}}]}),  # not base64
        line({"events": [put("a", "1", 6), put("b", "1", 5)]}),  # out of order
    ],
)
def test_what_etcd_does_not_send_raises(bad: bytes) -> None:
    with pytest.raises(EtcdRequestError):
        messages(bad)


def test_an_error_object_raises_with_its_message() -> None:
    error = json.dumps({"error": {"grpc_code": 14, "message": "etcdserver: no leader"}}).encode() + b"\n"
    with pytest.raises(EtcdRequestError, match="no leader") as caught:
        messages(error)
    assert caught.value.transient


def test_a_message_longer_than_the_cap_is_not_read_into_memory() -> None:
    with pytest.raises(EtcdRequestError, match="longer than") as caught:
        messages(b"x" * (MAX_WATCH_MESSAGE + 1))
    assert not caught.value.transient


def test_an_idle_stream_ends_quietly() -> None:
    idle = requests.exceptions.ConnectionError(ReadTimeoutError(None, URL, "Read timed out."))  # type: ignore[arg-type]
    assert [m.progress for m in messages(line({}), idle)] == [9]


def test_a_broken_stream_raises_a_transient_error() -> None:
    broken = requests.exceptions.ChunkedEncodingError(ProtocolError("Connection broken"))
    with pytest.raises(EtcdRequestError, match="broke") as caught:
        messages(line({}), broken)
    assert caught.value.transient


def test_a_closed_stream_ends_quietly() -> None:
    response = FakeResponse([line({}), requests.exceptions.ChunkedEncodingError("closed under it")])
    watch = Watch(cast(requests.Response, response), URL, lambda: AT)
    found = []
    for message in watch.messages():
        found.append(message)
        watch.close()
    assert [m.progress for m in found] == [9] and response.closed
