"""The replay loop (app/replay.apply) against a fake etcd: which revisions it applies, in what order, where it stops."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone

import pytest

from etcd_aws_cluster.app.replay import LEASE_TTL_FLOOR, TIME_UP, Point, ReplayBroken, apply, read_in_order
from etcd_aws_cluster.base.deadline import Deadline
from etcd_aws_cluster.base.errors import AgentError, AwsError
from etcd_aws_cluster.core.deltas import DamagedDeltaError, Delta, DeltaHeader, DeltaInfo, Op, Revision

T0 = datetime(2026, 12, 7, 10, 0, tzinfo=timezone.utc)
LINEAGE = "20261207T000000Z-0badcafe"


class FakeEtcd:
    """Applies transactions like etcd: each changes the revision by one (a broken one by `jump`)."""

    def __init__(self, revision: int, jump: int | None = None) -> None:
        self.revision = revision
        self.applied: list[tuple[Op, ...]] = []
        self.leases: dict[int, int] = {}
        self.jump = jump

    def txn(self, ops: Sequence[Op]) -> int:
        self.applied.append(tuple(ops))
        self.revision += 1
        if self.jump is not None and self.revision == self.jump:
            self.revision += 1  # a lease expired in the copy: etcd made a revision of its own first
        return self.revision

    def grant_lease(self, lease_id: int, ttl: int) -> bool:
        if lease_id in self.leases:
            return False
        self.leases[lease_id] = ttl
        return True


def rev(n: int, *ops: Op) -> Revision:
    return Revision(n, T0 + timedelta(seconds=n), ops or (Op("put", f"/k/{n}".encode(), b"v"),))


def delta(
    first: int,
    last: int,
    revisions: Sequence[Revision],
    leases: Sequence[tuple[int, int]] = (),
    keys: int | None = None,
) -> tuple[DeltaInfo, Delta]:
    header = DeltaHeader(LINEAGE, 1, first, last, "i-0123456789abcdef0")
    at = revisions[-1].at if revisions else T0
    info = DeltaInfo(f"d/{first}-{last}", LINEAGE, first, last, at, "i-0123456789abcdef0", "0" * 64, 1)
    return info, Delta(header, tuple(revisions), tuple(leases), keys)


def test_applies_each_revision_after_the_snapshot_once_in_order() -> None:
    etcd = FakeEtcd(10)
    # the snapshot was streamed: its manifest said revision 8, its db holds 10; two leaders' deltas overlap at 13
    chain = [delta(9, 13, [rev(n) for n in range(9, 14)]), delta(12, 15, [rev(n) for n in range(12, 16)], keys=7)]
    progress = apply(etcd, chain, 10)
    assert [ops[0].key for ops in etcd.applied] == [f"/k/{n}".encode() for n in range(11, 16)]
    assert (progress.base, progress.revision, progress.revisions, progress.deltas) == (10, 15, 5, 2)
    assert progress.at == T0 + timedelta(seconds=15) and progress.stopped is None
    assert progress.keys == 7  # the last delta was applied to its end: its key count holds for the result


def test_leases_are_granted_once_before_their_first_put_with_a_floor() -> None:
    etcd = FakeEtcd(0)
    ops = (Op("put", b"/a", b"1", lease=5), Op("put", b"/b", b"2", lease=6))
    chain = [delta(1, 2, [rev(1, *ops), rev(2, Op("put", b"/c", b"3", lease=5))], leases=((5, 3600), (6, 10)))]
    apply(etcd, chain, 0)
    assert etcd.leases == {5: 3600, 6: LEASE_TTL_FLOOR}
    assert etcd.applied[0] == ops  # one revision, one transaction


def test_a_lease_the_delta_does_not_list_is_still_granted() -> None:
    etcd = FakeEtcd(0)
    apply(etcd, [delta(1, 1, [rev(1, Op("put", b"/a", b"1", lease=9))])], 0)
    assert etcd.leases == {9: LEASE_TTL_FLOOR}


def test_an_unreadable_delta_stops_the_replay_at_the_revision_before_it() -> None:
    etcd = FakeEtcd(0)
    good = delta(1, 3, [rev(n) for n in range(1, 4)], keys=3)
    bad_info = delta(4, 6, [rev(4)])[0]
    later = delta(7, 8, [rev(7), rev(8)])

    def read(info: DeltaInfo) -> Delta:
        if info.key == bad_info.key:
            raise DamagedDeltaError(f"delta {info.key} is damaged: cut short")
        return {good[0].key: good[1], later[0].key: later[1]}[info.key]

    progress = apply(etcd, read_in_order([good[0], bad_info, later[0]], read), 0)
    assert progress.revision == 3 and progress.revisions == 3
    assert progress.stopped is not None and "d/4-6" in progress.stopped and "cut short" in progress.stopped
    assert progress.keys == 3


def test_read_in_order_reads_lazily_and_nothing_after_an_error() -> None:
    asked: list[str] = []

    def read(info: DeltaInfo) -> Delta:
        asked.append(info.key)
        raise AwsError("S3 said no")

    infos = [delta(1, 1, [rev(1)])[0], delta(2, 2, [rev(2)])[0]]
    found = list(read_in_order(infos, read))
    assert asked == ["d/1-1"] and len(found) == 1 and isinstance(found[0][1], AgentError)


def test_a_revision_missing_from_the_history_stops_the_replay() -> None:
    etcd = FakeEtcd(0)
    progress = apply(etcd, [delta(1, 5, [rev(1), rev(2), rev(4)])], 0)
    assert progress.revision == 2 and progress.stopped is not None and "3..3" in progress.stopped
    assert progress.keys is None


def test_another_revision_from_etcd_breaks_the_replay() -> None:
    with pytest.raises(ReplayBroken, match="replaying revision 3 .* etcd made revision 4"):
        apply(FakeEtcd(0, jump=3), [delta(1, 4, [rev(n) for n in range(1, 5)])], 0)


@pytest.mark.parametrize(
    "point", [Point(revision=3), Point(at=T0 + timedelta(seconds=3)), Point(at=T0 + timedelta(seconds=3.5))]
)
def test_a_point_in_time_ends_the_replay_there(point: Point) -> None:
    etcd = FakeEtcd(0)
    progress = apply(etcd, [delta(1, 5, [rev(n) for n in range(1, 6)], keys=5)], 0, point)
    assert progress.revision == 3 and progress.stopped is None and len(etcd.applied) == 3
    assert progress.keys is None  # counted at 5, not at 3


def test_a_passed_deadline_stops_the_replay() -> None:
    clock = [0.0]
    deadline = Deadline(10, clock=lambda: clock[0])
    etcd = FakeEtcd(0)

    def chain() -> Iterator[tuple[DeltaInfo, Delta]]:
        yield delta(1, 2, [rev(1), rev(2)])
        clock[0] = 11.0
        yield delta(3, 4, [rev(3), rev(4)])

    progress = apply(etcd, chain(), 0, deadline=deadline)
    assert progress.revision == 2 and progress.stopped == TIME_UP


def test_a_passed_deadline_stops_inside_a_delta() -> None:
    clock = [0.0]
    etcd = FakeEtcd(0)
    real_txn = etcd.txn

    def slow_txn(ops: Sequence[Op]) -> int:
        clock[0] += 4.0
        return real_txn(ops)

    etcd.txn = slow_txn  # type: ignore[method-assign]
    progress = apply(
        etcd, [delta(1, 9, [rev(n) for n in range(1, 10)])], 0, deadline=Deadline(10, clock=lambda: clock[0])
    )
    assert progress.revision == 3 and progress.stopped == TIME_UP


def test_point_describes_itself() -> None:
    assert str(Point(revision=7)) == "revision 7"
    assert str(Point(at=T0)) == "time 2026-12-07T10:00:00.000000Z"
