"""Snapshot bytes to and from S3: exact part sizes, zstd both ways in bounded pieces, both checksums, corruption."""

from __future__ import annotations

import hashlib
import io
import os
import threading

import pytest

from etcd_aws_cluster.adapters.compression import (
    ZSTD,
    CorruptSnapshotError,
    SnapshotReader,
    TrailerCheck,
    TrailerMismatchError,
    copy_out,
)
from etcd_aws_cluster.base.errors import AwsError


def etcd_stream(db: bytes) -> bytes:
    """What etcd sends for a db: the db, then its sha256."""
    return db + hashlib.sha256(db).digest()


def stored_bytes(reader: SnapshotReader) -> bytes:
    return b"".join(iter(lambda: reader.read(7), b""))


def test_plain_reader_hands_out_exact_sizes_and_counts_both_sides() -> None:
    reader = SnapshotReader(iter([b"ab", b"", b"cdefg", b"h"]), None)
    assert [reader.read(3), reader.read(3), reader.read(3), reader.read(3)] == [b"abc", b"def", b"gh", b""]
    assert reader.stored.result() == reader.db.result()
    assert reader.db.result().size == 8 and reader.db.result().sha256 == hashlib.sha256(b"abcdefgh").hexdigest()
    assert SnapshotReader([b"xy", b"z"], None).read() == b"xyz"


def test_zstd_round_trip_keeps_the_db_and_checks_both_checksums() -> None:
    db = etcd_stream(b"key=value;" * 50_000 + os.urandom(3000))
    reader = SnapshotReader(io.BytesIO(db), ZSTD, check_trailer=True)
    stored = stored_bytes(reader)
    assert len(stored) < len(db) // 10  # compressed
    assert reader.db.result().sha256 == hashlib.sha256(db).hexdigest() and reader.db.result().size == len(db)
    assert reader.stored.result().sha256 == hashlib.sha256(stored).hexdigest()
    out = io.BytesIO()
    stored_sum, db_sum = copy_out(
        io.BytesIO(stored), out, ZSTD, stored_size=len(stored), db_size=len(db), what="snapshot s3://b/k"
    )
    assert out.getvalue() == db
    assert (stored_sum, db_sum) == (reader.stored.result(), reader.db.result())


@pytest.mark.parametrize("compression", [ZSTD, None])
def test_the_copy_checks_etcds_trailer_in_the_pass_that_hashes_the_db(compression: str | None) -> None:
    db = etcd_stream(b"key=value;" * 30_000)
    stored = stored_bytes(SnapshotReader(io.BytesIO(db), compression))
    _stored_sum, db_sum = copy_out(
        io.BytesIO(stored),
        io.BytesIO(),
        compression,
        stored_size=len(stored),
        db_size=len(db),
        what="s",
        check_trailer=True,
    )
    assert db_sum.sha256 == hashlib.sha256(db).hexdigest() and db_sum.size == len(db)  # the trailer counts
    for bad in (db[:5] + b"!" + db[6:], db[:-32] + bytes(32), db[-20:]):
        stored = stored_bytes(SnapshotReader(io.BytesIO(bad), compression))
        with pytest.raises(CorruptSnapshotError, match="does not end with the sha256 of the bytes before it"):
            copy_out(
                io.BytesIO(stored),
                io.BytesIO(),
                compression,
                stored_size=len(stored),
                db_size=len(bad),
                what="s",
                check_trailer=True,
            )
        copy_out(io.BytesIO(stored), io.BytesIO(), compression, stored_size=len(stored), db_size=len(bad), what="s")


def test_a_plain_object_is_copied_as_it_is() -> None:
    db = etcd_stream(b"old uncompressed snapshot")
    out = io.BytesIO()
    stored_sum, db_sum = copy_out(io.BytesIO(db), out, None, stored_size=len(db), db_size=len(db), what="s")
    assert out.getvalue() == db and stored_sum == db_sum and db_sum.sha256 == hashlib.sha256(db).hexdigest()


def test_garbled_zstd_is_corrupt_not_a_crash() -> None:
    db = etcd_stream(b"abc" * 10_000)
    stored = bytearray(stored_bytes(SnapshotReader([db], ZSTD)))
    stored[len(stored) // 2] ^= 0xFF
    with pytest.raises(CorruptSnapshotError, match="corrupt"):
        copy_out(io.BytesIO(bytes(stored)), io.BytesIO(), ZSTD, stored_size=len(stored), db_size=len(db), what="s")


def test_more_bytes_than_promised_are_refused_before_they_are_all_read() -> None:
    db = etcd_stream(b"\0" * 10_000_000)  # compresses to almost nothing: a small object can promise a huge db
    stored = stored_bytes(SnapshotReader([db], ZSTD))
    with pytest.raises(CorruptSnapshotError, match="larger than the 1000 bytes promised"):
        copy_out(io.BytesIO(stored), io.BytesIO(), ZSTD, stored_size=len(stored), db_size=1000, what="s")
    with pytest.raises(CorruptSnapshotError, match="more than the 10 bytes stored"):
        copy_out(io.BytesIO(stored), io.BytesIO(), ZSTD, stored_size=10, db_size=len(db), what="s")


def test_bytes_after_the_compressed_frame_are_refused() -> None:
    db = etcd_stream(b"abc" * 1000)
    stored = stored_bytes(SnapshotReader([db], ZSTD)) + b"trailing junk"
    with pytest.raises(CorruptSnapshotError, match="does not decompress"):
        copy_out(io.BytesIO(stored), io.BytesIO(), ZSTD, stored_size=len(stored), db_size=len(db), what="s")


@pytest.mark.parametrize("pieces", [[1], [5, 40, 3], [100], [31, 1, 1, 67]])
def test_the_trailer_check_holds_back_the_last_32_bytes_across_any_pieces(pieces: list[int]) -> None:
    db = etcd_stream(os.urandom(sum(pieces)))[: sum(pieces) + 32]
    good = TrailerCheck()
    at = 0
    for size in [*pieces, 32]:
        good.update(db[at : at + size])
        at += size
    good.verify("s")
    cut = TrailerCheck()
    cut.update(db[:-1])
    with pytest.raises(TrailerMismatchError, match="does not end with the sha256"):
        cut.verify("s")


def test_a_snapshot_file_without_its_trailer_fails_the_upload_read() -> None:
    reader = SnapshotReader([etcd_stream(b"db" * 1000)[:-3]], ZSTD, check_trailer=True)
    with pytest.raises(TrailerMismatchError):
        stored_bytes(reader)


def test_a_stopped_reader_refuses_to_read() -> None:
    stop = threading.Event()
    reader = SnapshotReader([b"abc"], ZSTD, stop=stop)
    stop.set()
    with pytest.raises(AwsError, match="abandoned"):
        reader.read(1)
