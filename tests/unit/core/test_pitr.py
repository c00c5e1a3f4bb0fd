"""core/pitr.py: which snapshots a point-in-time restore begins from, and the refusals of points out of reach."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from etcd_aws_cluster.base.errors import UnsafeError
from etcd_aws_cluster.core import pitr
from etcd_aws_cluster.core.deltas import DeltaInfo
from etcd_aws_cluster.core.records import SnapshotInfo

T0 = datetime(2026, 12, 7, 10, 0, 0, tzinfo=timezone.utc)
LINEAGE = "20261207T090000Z-0a1b2c3d"
OTHER = "20261207T093000Z-0f0f0f0f"
INSTANCE = "i-0123456789abcdef0"


def snap(key: str, revision: int, minutes: int, lineage: str | None = LINEAGE) -> SnapshotInfo:
    at = T0 + timedelta(minutes=minutes)
    return SnapshotInfo(key, at, revision, 0xABC, "3.5.30", "0" * 64, 10, (), INSTANCE, lineage=lineage)


def delta(first: int, last: int, minutes: int, lineage: str | None = LINEAGE) -> DeltaInfo:
    return DeltaInfo(f"d/{first}-{last}", lineage, first, last, T0 + timedelta(minutes=minutes), INSTANCE, "0" * 64, 5)


# snapshots at revision 10 (10:00) and 30 (10:20); deltas 11..20 (10:05), 21..30 (10:20), 31..40 (10:30)
SNAPSHOTS = (snap("s10", 10, 0), snap("s30", 30, 20), snap("o5", 5, 40, OTHER))
DELTAS = (delta(11, 20, 5), delta(21, 30, 20), delta(31, 40, 30))


@pytest.mark.parametrize(("revision", "first"), [(10, "s10"), (15, "s10"), (29, "s10"), (30, "s30"), (40, "s30")])
def test_a_revision_begins_at_the_newest_snapshot_at_or_before_it(revision: int, first: str) -> None:
    found = pitr.candidates(SNAPSHOTS, DELTAS, LINEAGE, revision=revision)
    assert found[0].key == first
    assert all(info.lineage == LINEAGE and info.revision <= revision for info in found)


@pytest.mark.parametrize(("minutes", "first"), [(0, "s10"), (19, "s10"), (20, "s30"), (30, "s30")])
def test_a_time_begins_at_the_newest_snapshot_taken_at_or_before_it(minutes: int, first: str) -> None:
    found = pitr.candidates(SNAPSHOTS, DELTAS, LINEAGE, at=T0 + timedelta(minutes=minutes))
    assert [info.key for info in found][0] == first


@pytest.mark.parametrize(
    "point",
    [
        {"revision": 9},
        {"revision": 41},
        {"at": T0 - timedelta(seconds=1)},
        {"at": T0 + timedelta(minutes=30, seconds=1)},
    ],
)
def test_a_point_outside_the_lineages_range_is_refused_naming_the_ranges(point: dict[str, object]) -> None:
    with pytest.raises(UnsafeError, match="outside what lineage .* revision 10 .* to revision 40") as caught:
        pitr.candidates(SNAPSHOTS, DELTAS, LINEAGE, **point)  # type: ignore[arg-type]
    assert f"lineage {OTHER}" in str(caught.value)  # the other lineage's range is named too


def test_a_lineage_without_snapshots_is_refused() -> None:
    with pytest.raises(UnsafeError, match="it has no snapshot"):
        pitr.candidates(SNAPSHOTS, DELTAS, "20261207T000000Z-00000000", revision=12)


def test_a_revision_behind_a_gap_is_refused_though_inside_the_range() -> None:
    holed = (delta(11, 15, 3), delta(21, 30, 20), delta(31, 40, 30))  # 16..20 are in no delta
    with pytest.raises(UnsafeError, match=r"reach only revision 15 \(no delta holds revision 16\)"):
        pitr.candidates(SNAPSHOTS, holed, LINEAGE, revision=18)
    assert pitr.candidates(SNAPSHOTS, holed, LINEAGE, revision=15)[0].key == "s10"
    assert pitr.candidates(SNAPSHOTS, holed, LINEAGE, revision=35)[0].key == "s30"  # the later snapshot skips it
    with pytest.raises(UnsafeError, match="reach only revision 15"):
        pitr.candidates(SNAPSHOTS, holed, LINEAGE, at=T0 + timedelta(minutes=10))


def test_a_point_is_a_revision_or_a_time() -> None:
    with pytest.raises(ValueError, match="a revision or a time"):
        pitr.candidates(SNAPSHOTS, DELTAS, LINEAGE)
