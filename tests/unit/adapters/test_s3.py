"""The backup URL and the store's encryption settings are checked before any S3 call."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, cast

import pytest

from etcd_aws_cluster.adapters.s3 import BackupStore, BackupUrl, parse_backup_url
from etcd_aws_cluster.base.errors import ConfigError, RecordRaceError, UnsafeError
from etcd_aws_cluster.core.records import ClusterRecord, Handoff


def offline_client() -> Any:
    """A real S3 client (its event system is what the store hooks into) that never looks for credentials (botocore
    1.29 would ask the instance metadata service): no request of it leaves this process."""
    import boto3

    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")
    return session.client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("s3://bucket", BackupUrl("bucket", "")),
        ("s3://my.bucket-1/", BackupUrl("my.bucket-1", "")),
        ("s3://b12/etcd/prod/", BackupUrl("b12", "etcd/prod")),
    ],
)
def test_backup_urls(url: str, parsed: BackupUrl) -> None:
    assert parse_backup_url(url) == parsed


@pytest.mark.parametrize(
    "url",
    [
        "bucket/prefix",
        "https://b.s3.amazonaws.com/x",
        "s3://",
        "s3://B",
        "s3://a..b/x",
        "s3://ok/a//b",
        "s3://ok/../x",
        "s3://ok/a b",
        "s3://ok/a\nb",
        "s3://ok/%2e",
    ],
)
def test_bad_backup_urls(url: str) -> None:
    with pytest.raises(ConfigError, match="backup_url"):
        parse_backup_url(url)


def test_store_keys_put_the_region_and_the_group_in_one_segment_each() -> None:
    store = BackupStore(offline_client(), "s3://bkt/p", "a/b c", region="eu-west-1")
    assert store.record_key == "p/eu-west-1/a%2Fb%20c/cluster.json"
    assert store.snapshot_prefix == "p/eu-west-1/a%2Fb%20c/snapshots/"
    assert store.handoff_prefix == "p/eu-west-1/a%2Fb%20c/handoff/"
    # the layout before the region is read (record, snapshots), never written
    assert store.legacy_record_key == "p/a%2Fb%20c/cluster.json"
    assert store.legacy_snapshot_prefix == "p/a%2Fb%20c/snapshots/"
    bare = BackupStore(offline_client(), "s3://bkt", "g", region="us-gov-west-1")
    assert (bare.record_key, bare.legacy_record_key) == ("us-gov-west-1/g/cluster.json", "g/cluster.json")


@pytest.mark.parametrize("region", ["", "US-EAST-1", "us-east", "../x", "us-east-1/..", "eu west 1"])
def test_a_region_that_is_not_one_is_refused(region: str) -> None:
    with pytest.raises(UnsafeError, match="region"):
        BackupStore(offline_client(), "s3://bkt/p", "g", region=region)


@pytest.mark.parametrize(("sse", "key"), [("aws:kms", "bad key!"), ("AES256", "alias/etcd"), ("none", None)])
def test_encryption_settings(sse: str, key: str | None) -> None:
    with pytest.raises(ConfigError):
        BackupStore(cast(Any, None), "s3://bkt/p", "g", sse, key, region="us-east-1")


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body
        self._left = body

    def stream(self, **_: Any) -> Any:
        yield self._body

    def read(self, size: int | None = None, **_: Any) -> bytes:  # a streamed body (GetObject)
        cut = len(self._left) if size is None or size < 0 else size
        data, self._left = self._left[:cut], self._left[cut:]
        return data


def _headers(request: Any) -> dict[str, str]:
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}


def _answering(client: Any, status: int, body: bytes, sent: list[Any]) -> None:
    """Answer every request of `client` without a network: keep the prepared (signed) request, reply `status`."""
    from botocore.awsrequest import AWSResponse

    def reply(request: Any, **_: Any) -> AWSResponse:
        sent.append(request)
        headers = {"ETag": '"0123456789abcdef0123456789abcdef"'} if status == 200 else {}
        return AWSResponse(request.url, status, headers, _Raw(body))

    client.meta.events.register("before-send.s3.PutObject", reply)


def test_record_writes_send_if_match_and_if_none_match_headers_on_this_botocore() -> None:
    """On botocore 1.29 (make compat) PutObject has no IfMatch parameter: the headers come from the store's event
    handlers, and they are signed like any header. A missing handler fails this test on every botocore."""
    client = offline_client()
    store = BackupStore(client, "s3://bkt/p", "g", region="us-east-1")
    sent: list[Any] = []
    _answering(client, 200, b"", sent)
    record = ClusterRecord("g", None, (), None, datetime(2024, 5, 10, tzinfo=timezone.utc))
    assert store.write_record(record, None) == '"0123456789abcdef0123456789abcdef"'
    assert store.write_record(record, '"abc"') is not None
    writes = [_headers(request) for request in sent if request.url.endswith("/cluster.json")]
    create, replace = writes
    assert create.get("If-None-Match") == "*" and "If-Match" not in create
    assert replace.get("If-Match") == '"abc"' and "If-None-Match" not in replace
    assert "if-match" in replace["Authorization"].lower()  # part of the signature
    # the layout marker (after a creation) and other objects carry no condition
    (marker,) = (request for request in sent if request.url.endswith("/layout-v2"))
    store.write_handoff(Handoff("i-0123456789abcdef0", record.updated_at, None, None, None, record.updated_at))
    for other in (marker, sent[-1]):
        assert not {"If-Match", "If-None-Match"} & set(_headers(other))


def test_a_412_answer_to_a_record_write_is_a_lost_race() -> None:
    client = offline_client()
    store = BackupStore(client, "s3://bkt/p", "g", region="us-east-1")
    error = (
        b"<Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions failed</Message></Error>"
    )
    _answering(client, 412, error, [])
    record = ClusterRecord("g", None, (), None, datetime(2024, 5, 10, tzinfo=timezone.utc))
    with pytest.raises(RecordRaceError, match="another instance wrote it first"):
        store.write_record(record, '"abc"')


def test_a_listing_reads_the_manifests_at_once_and_keeps_their_order() -> None:
    """Each manifest is a round trip of its own: a barrier that only opens with every read in flight shows they are
    sent together (reads one at a time would time it out), and the snapshots still come newest first, each with
    the manifest that names it."""
    import threading
    from dataclasses import replace
    from urllib.parse import unquote

    from botocore.awsrequest import AWSResponse

    from etcd_aws_cluster.core import records
    from tests.unit.core.test_records import snap

    client = offline_client()
    store = BackupStore(client, "s3://bkt/p", "g", region="us-east-1")
    infos = [
        replace(snap(f"{store.snapshot_prefix}2024051{n}T000000000000Z-r{n}-i-0123456789abcdef0.db.zst", n), size=n)
        for n in range(1, 6)
    ]
    manifests = {store.manifest_key(info.key): records.snapshot_to_json(info).encode() for info in infos}
    listed = "".join(f"<Contents><Key>{i.key}</Key><Size>{i.size}</Size></Contents>" for i in infos)
    listed += "".join(f"<Contents><Key>{key}</Key><Size>9</Size></Contents>" for key in manifests)
    gets = threading.Barrier(len(manifests), timeout=10)

    def reply(request: Any, **_: Any) -> AWSResponse:
        if "list-type=2" in request.url:
            new_layout = f"prefix={store.snapshot_prefix.replace('/', '%2F')}" in request.url
            body = (
                f"<ListBucketResult>{listed if new_layout else ''}<IsTruncated>false</IsTruncated></ListBucketResult>"
            )
            return AWSResponse(request.url, 200, {}, _Raw(body.encode()))
        gets.wait()
        key = unquote(request.url.split("?")[0].split("/bkt/", 1)[1])
        body = manifests[key]
        return AWSResponse(request.url, 200, {"Content-Length": str(len(body))}, _Raw(body))

    client.meta.events.register("before-send.s3.ListObjectsV2", reply)
    client.meta.events.register("before-send.s3.GetObject", reply)
    assert store.list_snapshots() == tuple(reversed(infos))
