"""core/deltas.py: the stored form of a delta, its name, and the choices over deltas (chain, cut, retention)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest

from etcd_aws_cluster.core import deltas
from etcd_aws_cluster.core.deltas import DamagedDeltaError, Delta, DeltaHeader, DeltaInfo, Op, Revision
from etcd_aws_cluster.core.records import SnapshotInfo

T0 = datetime(2026, 12, 7, 10, 0, 0, tzinfo=timezone.utc)
LINEAGE = "20261207T090000Z-0a1b2c3d"
INSTANCE = "i-0123456789abcdef0"


def delta(first: int = 11, last: int = 13, lineage: str | None = LINEAGE) -> Delta:
    return Delta(
        DeltaHeader(lineage, 0xABC, first, last, INSTANCE),
        (
            Revision(11, T0, (Op("put", b"/a", b"one", 0), Op("put", b"/b", b"\x00\xff", 7))),
            Revision(13, T0 + timedelta(seconds=2), (Op("delete", b"/a"),)),
        ),
        leases=((7, 30),),
        keys=1,
    )


def info(first: int, last: int, *, lineage: str | None = LINEAGE, at: datetime = T0, size: int = 100) -> DeltaInfo:
    return DeltaInfo(f"d/{first}-{last}", lineage, first, last, at, INSTANCE, "0" * 64, size)


def snapshot(key: str, revision: int, *, lineage: str | None = LINEAGE, hours: int = 0) -> SnapshotInfo:
    return SnapshotInfo(
        key, T0 + timedelta(hours=hours), revision, 0xABC, "3.5.30", "0" * 64, 10, (), INSTANCE, lineage=lineage
    )


def test_a_delta_round_trips_through_its_stored_form() -> None:
    original = delta()
    assert deltas.decode(deltas.encode(original), "test") == original
    assert original.last_at == T0 + timedelta(seconds=2)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-10],  # cut short
        lambda data: data.replace(b'"b3Zl"', b'"b3ZM"', 1) if b'"b3Zl"' in data else data.replace(b"b25l", b"b25M"),
        lambda data: data.replace(b'"r":13', b'"r":14'),  # a revision changed: the trailer's sha256 no longer holds
        lambda data: b"\n".join(data.split(b"\n")[:1] + data.split(b"\n")[2:]),  # a line lost
        lambda data: data.replace(b'"version":1', b'"version":2'),
    ],
)
def test_any_damage_is_refused(damage: object) -> None:
    data = deltas.encode(delta())
    damaged = damage(data)  # type: ignore[operator]
    assert damaged != data
    with pytest.raises(DamagedDeltaError):
        deltas.decode(damaged, "test")


def test_a_delta_whose_revisions_leave_its_range_is_not_written() -> None:
    with pytest.raises(ValueError, match="outside"):
        deltas.encode(delta(first=12))
    twice = Delta(DeltaHeader(None, 1, 1, 1, INSTANCE), (Revision(1, T0, (Op("put", b"k"), Op("delete", b"k"))),))
    with pytest.raises(ValueError, match="own non-empty key"):
        deltas.encode(twice)


def test_the_name_says_everything_a_listing_needs() -> None:
    header = DeltaHeader(LINEAGE, 0xABC, 11, 13, INSTANCE)
    sha = hashlib.sha256(b"x").hexdigest()
    name = deltas.delta_name(header, T0, sha)
    parsed = deltas.parse_delta_key(f"p/{LINEAGE}/{name}", f"{LINEAGE}/{name}", 55, "test")
    assert parsed == DeltaInfo(f"p/{LINEAGE}/{name}", LINEAGE, 11, 13, T0, INSTANCE, sha, 55)
    legacy = deltas.parse_delta_key("k", f"legacy/{name}", 1, "test")
    assert legacy is not None and legacy.lineage is None
    for tail in (f"other/{name}", f"{LINEAGE}/{name}.bak", f"{LINEAGE}/x{name}", f"{LINEAGE}/sub/{name}"):
        assert deltas.parse_delta_key("k", tail, 1, "test") is None


def test_the_chain_covers_every_revision_once_and_stops_at_a_gap() -> None:
    found = [
        info(1, 9),  # before the snapshot
        info(8, 20),  # straddles the snapshot at 10
        info(21, 30),
        info(25, 35),  # a hand-over's overlap: taken after 21..30, for 31..35
        info(21, 28),  # covered by 21..30, which reaches further
        info(40, 50),  # after a gap at 36..39
        info(36, 60, lineage=None),  # another lineage's
    ]
    got = deltas.chain(10, found, LINEAGE)
    assert [(d.first, d.last) for d in got.deltas] == [(8, 20), (21, 30), (25, 35)]
    assert got.last == 35 and got.gap_after == 35
    assert deltas.chain(60, found, LINEAGE) == deltas.Chain(60, (), 60, None)


def test_a_chain_is_cut_at_a_revision_or_a_time() -> None:
    found = deltas.chain(10, [info(11, 20, at=T0), info(21, 30, at=T0 + timedelta(seconds=10))], LINEAGE)
    by_revision = deltas.until(found, revision=15)
    assert [d.last for d in by_revision.deltas] == [20] and by_revision.last == 15
    by_time = deltas.until(found, at=T0 + timedelta(seconds=5))
    assert [d.last for d in by_time.deltas] == [20, 30]
    revision = Revision(22, T0 + timedelta(seconds=6), (Op("put", b"k"),))
    assert not deltas.wanted(revision, until_at=T0 + timedelta(seconds=5))
    assert deltas.wanted(revision, until_revision=22) and not deltas.wanted(revision, until_revision=21)


def test_retention_keeps_the_deltas_kept_snapshots_need_and_only_those() -> None:
    snapshots = [snapshot("s10", 10), snapshot("s20", 20, hours=1), snapshot("s30", 30, hours=2)]
    found = [info(5, 10), info(11, 15), info(16, 25), info(26, 40), info(41, 45), info(1, 50, lineage=None)]
    doomed = [snapshots[0]]
    gone = deltas.retention(snapshots, doomed, found)
    # s20 needs 21..30, s30 everything after 30; the legacy lineage has no snapshot
    assert sorted((d.first, d.last, d.lineage) for d in gone) == [(1, 50, None), (5, 10, LINEAGE), (11, 15, LINEAGE)]
    assert set(deltas.retention(snapshots, [], found)) == {info(1, 50, lineage=None), info(5, 10)}


def test_restorable_range_per_lineage() -> None:
    snapshots = [snapshot("s10", 10), snapshot("s20", 20, hours=1), snapshot("x5", 5, lineage=None)]
    later = T0 + timedelta(hours=1, minutes=5)
    found = [info(21, 30, at=later, size=7), info(31, 33, at=later, size=3), info(40, 41, size=1)]
    ranges = {r.lineage: r for r in deltas.restorable(snapshots, found)}
    mine = ranges[LINEAGE]
    assert (mine.oldest_revision, mine.newest_revision, mine.newest_at) == (10, 33, later)
    assert (mine.deltas, mine.delta_bytes, mine.gap_after) == (3, 11, 33)
    assert (ranges[None].oldest_revision, ranges[None].newest_revision, ranges[None].deltas) == (5, 5, 0)
