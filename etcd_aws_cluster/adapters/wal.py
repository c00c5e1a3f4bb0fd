"""Read the member id and cluster id an etcd data dir belongs to, from the metadata record of its first WAL.

etcd's WAL is a sequence of frames: an 8-byte little-endian header (low 56 bits: record length; top byte:
padding) and a protobuf `walpb.Record{type=1, crc=2, data=3}`. The record of type 1 (metadata) carries
`etcdserverpb.Metadata{NodeID=1, ClusterID=2}`. Only that much protobuf is decoded here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from etcd_aws_cluster.base.errors import UnsafeError

METADATA_TYPE = 1
MAX_RECORD = 1 << 20
READ_LIMIT = 1 << 16


@dataclass(frozen=True)
class WalIds:
    member_id: int
    cluster_id: int


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> dict[int, int | bytes]:
    """Varint and length-delimited fields of one protobuf message (last one wins)."""
    fields: dict[int, int | bytes] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields[number], pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            fields[number] = buf[pos : pos + length]
            pos += length
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return fields


def read_ids(data_dir: Path) -> WalIds | None:
    """The ids in the first WAL file of `data_dir`; None when it has no WAL file.

    Fails closed: a WAL dir or file that cannot be read, or whose metadata record cannot be decoded, raises
    UnsafeError naming it, so that unreadable data never reads as "no data" or "any member".
    """
    wal_dir = data_dir / "member" / "wal"
    try:
        with os.scandir(wal_dir) as entries:
            wal_files = sorted(Path(e.path) for e in entries if e.name.endswith(".wal"))
        if not wal_files:
            return None
        with wal_files[0].open("rb") as handle:
            buf = handle.read(READ_LIMIT)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UnsafeError(f"cannot read etcd WAL in {wal_dir}: {exc.strerror or exc}") from None
    try:
        return _metadata(buf)
    except ValueError as exc:
        raise UnsafeError(f"cannot decode the metadata record of {wal_files[0]}: {exc}") from None


def _metadata(buf: bytes) -> WalIds:
    pos = 0
    while pos + 8 <= len(buf):
        header = int.from_bytes(buf[pos : pos + 8], "little")
        length = header & ((1 << 56) - 1)
        padding = (header >> 56) & 0x7 if header >> 63 else 0
        if length == 0 or length > MAX_RECORD:
            raise ValueError(f"record of length {length} before the metadata record")
        record = _fields(buf[pos + 8 : pos + 8 + length])
        pos += 8 + length + padding
        if record.get(1) == METADATA_TYPE and isinstance(record.get(3), bytes):
            meta = _fields(record[3])  # type: ignore[arg-type]
            member_id, cluster_id = meta.get(1), meta.get(2)
            if isinstance(member_id, int) and isinstance(cluster_id, int):
                return WalIds(member_id, cluster_id)
            raise ValueError("the metadata record has no member id and cluster id")
    raise ValueError(f"no metadata record in the first {len(buf)} bytes")
