"""Reading a member's ids from the first records of its WAL, failing closed."""

from __future__ import annotations

from pathlib import Path

import pytest

from etcd_aws_cluster.adapters.wal import WalIds, read_ids
from etcd_aws_cluster.base.errors import UnsafeError


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def wal_bytes(member_id: int, cluster_id: int) -> bytes:
    """A WAL's first frames as etcd writes them: a crc record (type 4), then the metadata record (type 1)."""
    metadata = b"\x08" + _varint(member_id) + b"\x10" + _varint(cluster_id)
    crc_record = b"\x08\x04\x10\x00"
    meta_record = b"\x08\x01\x1a" + _varint(len(metadata)) + metadata
    return b"".join(len(r).to_bytes(8, "little") + r for r in (crc_record, meta_record))


def data_dir_with_wal(base: Path, content: bytes = b"") -> Path:
    wal = base / "member" / "wal"
    wal.mkdir(parents=True)
    (wal / "0000000000000000-0000000000000000.wal").write_bytes(content or wal_bytes(0x1234, 0xABCD))
    return base


def test_wal_ids_are_read(tmp_path: Path) -> None:
    assert read_ids(data_dir_with_wal(tmp_path)) == WalIds(0x1234, 0xABCD)
    assert read_ids(tmp_path / "nothing-here") is None


def test_an_unreadable_wal_is_refused(tmp_path: Path) -> None:
    (tmp_path / "member" / "wal" / "0000000000000000-0000000000000000.wal").mkdir(parents=True)  # open() fails
    with pytest.raises(UnsafeError, match="cannot read etcd WAL"):
        read_ids(tmp_path)


def test_a_wal_without_a_metadata_record_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeError, match="cannot decode the metadata record"):
        read_ids(data_dir_with_wal(tmp_path, b"\x00" * 64))
