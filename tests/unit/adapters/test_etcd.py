"""The snapshot stream parser: etcd's chunks, then its sha256; anything else raises."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from etcd_aws_cluster.adapters.etcd.maintenance import EtcdRequestError, _snapshot_chunks

URL = "http://127.0.0.1:2379/v3/maintenance/snapshot"


def line(blob: bytes, remaining: int | None) -> bytes:
    result: dict[str, object] = {"blob": base64.b64encode(blob).decode()}
    if remaining:  # the gateway omits zero values
        result["remaining_bytes"] = str(remaining)
    return json.dumps({"result": result}).encode()


def stream(db: bytes, chunk: int = 4) -> list[bytes]:
    parts = [db[i : i + chunk] for i in range(0, len(db), chunk)]
    lines = [line(p, max(0, len(db) - chunk * (n + 1))) for n, p in enumerate(parts)]
    return [*lines, line(hashlib.sha256(db).digest(), 0)]


def test_yields_the_db_and_its_digest() -> None:
    db = b"0123456789abcdefXYZ"
    assert b"".join(_snapshot_chunks(stream(db), URL)) == db + hashlib.sha256(db).digest()


def test_blank_lines_are_ignored() -> None:
    db = b"abcdefgh"
    lines = stream(db)
    assert b"".join(_snapshot_chunks([b"", lines[0], b"", *lines[1:], b""], URL)).startswith(db)


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_a_short_stream_raises(cut: int) -> None:
    lines = stream(b"0123456789ab")
    with pytest.raises(EtcdRequestError, match="ended early"):
        list(_snapshot_chunks(lines[:-cut], URL))


def test_a_wrong_digest_raises_before_it_is_yielded() -> None:
    lines = stream(b"0123456789ab")
    lines[-1] = line(hashlib.sha256(b"other").digest(), 0)
    seen: list[bytes] = []
    with pytest.raises(EtcdRequestError, match="does not match its own sha256"):
        seen.extend(_snapshot_chunks(lines, URL))
    assert b"".join(seen) == b"0123456789ab"


def test_an_error_object_raises_with_its_message() -> None:
    lines = stream(b"0123456789ab")
    error = json.dumps({"error": {"grpc_code": 14, "message": "etcdserver: leader changed"}}).encode()
    with pytest.raises(EtcdRequestError, match="leader changed") as caught:
        list(_snapshot_chunks([lines[0], error], URL))
    assert caught.value.transient


@pytest.mark.parametrize(
    "bad",
    [
        b"{not json",
        b'{"result": {"blob": "***"}}',
        b'{"result": {"blob": "", "remaining_bytes": "-1"}}',
        b'{"result": {"blob": "", "remaining_bytes": true}}',
        b'{"result": "x"}',
        b'"x" ' + b" " * (2 * 1024 * 1024),
    ],
)
def test_malformed_chunks_raise(bad: bytes) -> None:
    with pytest.raises(EtcdRequestError):
        list(_snapshot_chunks([bad], URL))
