"""The backup URL and the store's encryption settings are checked before any S3 call."""

from __future__ import annotations

from typing import Any, cast

import pytest

from etcd_aws_cluster.errors import ConfigError
from etcd_aws_cluster.s3 import BackupStore, BackupUrl, HashingReader, parse_backup_url


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


def test_store_keys_put_the_group_in_one_segment() -> None:
    store = BackupStore(cast(Any, None), "s3://bkt/p", "a/b c")
    assert store.record_key == "p/a%2Fb%20c/cluster.json"
    assert store.snapshot_prefix == "p/a%2Fb%20c/snapshots/"
    assert BackupStore(cast(Any, None), "s3://bkt", "g").record_key == "g/cluster.json"


@pytest.mark.parametrize(("sse", "key"), [("aws:kms", "bad key!"), ("AES256", "alias/etcd"), ("none", None)])
def test_encryption_settings(sse: str, key: str | None) -> None:
    with pytest.raises(ConfigError):
        BackupStore(cast(Any, None), "s3://bkt/p", "g", sse, key)


def test_hashing_reader_hands_out_exact_sizes() -> None:
    reader = HashingReader(iter([b"ab", b"", b"cdefg", b"h"]))
    assert [reader.read(3), reader.read(3), reader.read(3), reader.read(3)] == [b"abc", b"def", b"gh", b""]
    assert reader.size == 8
    rest = HashingReader([b"xy", b"z"])
    assert rest.read() == b"xyz"
