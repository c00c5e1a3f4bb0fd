"""The insurance snapshot's budget (a share of the time left, never the time the change itself needs), and the rule
around a membership change: a snapshot before it when one is due, the record after it, both best effort; the cluster
record write's retries."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import pytest

from etcd_aws_cluster.app.backups import CHANGE_RESERVE, Backups, insurance_budget, snapshot_seconds
from etcd_aws_cluster.base.deadline import Deadline
from etcd_aws_cluster.base.errors import AwsError, RecordRaceError
from etcd_aws_cluster.core import view
from etcd_aws_cluster.core.model import AsgInstance, AsgView, Endpoints, MemberList, Probe
from etcd_aws_cluster.core.records import Checksum, ClusterRecord, SnapshotInfo, SnapshotMeta
from etcd_aws_cluster.core.view import ClusterView
from tests.unit.base.clock import FakeClock
from tests.unit.builders import EP, IDS, IPS, member

if TYPE_CHECKING:
    from etcd_aws_cluster.adapters.s3 import BackupStore
    from etcd_aws_cluster.app.context import Context


def test_the_insurance_gets_half_the_time_left_of_a_default_run() -> None:
    assert insurance_budget(180.0) == 90.0


def test_the_change_keeps_its_reserve_when_little_time_is_left() -> None:
    assert insurance_budget(40.0) == 40.0 - CHANGE_RESERVE
    assert insurance_budget(CHANGE_RESERVE) == 0.0
    assert insurance_budget(0.0) == 0.0


def test_a_2_gb_db_does_not_fit_a_default_run_and_a_100_mb_db_does() -> None:
    # The case: 2 GB at 6-9 MB/s takes longer than the whole 180 s deadline.
    assert snapshot_seconds(2_000_000_000) > insurance_budget(180.0)
    assert snapshot_seconds(100_000_000) < insurance_budget(180.0)
    assert snapshot_seconds(100_000_000) > insurance_budget(45.0)  # but not leave's last 45 s


def test_a_throughput_measured_in_the_run_replaces_the_default() -> None:
    assert snapshot_seconds(100_000_000, throughput=50_000_000) < snapshot_seconds(100_000_000)
    assert snapshot_seconds(0) == 0.0


class _AlwaysRaced:
    """A record store whose every conditional write loses to another writer."""

    asg_name, record_key = "etcd", "backups/etcd/cluster.json"

    def __init__(self) -> None:
        self.writes = 0

    def read_record_tagged(self) -> tuple[ClusterRecord | None, str | None]:
        return None, None

    def write_record(self, record: ClusterRecord, expected_etag: str | None) -> str | None:
        self.writes += 1
        raise RecordRaceError("the cluster record changed since this run read it: another instance wrote it first")


# -- the rule around a membership change: a snapshot before it when one is due, the record after it, best effort ---
class MemoryStore:
    """The record and the snapshots of one ASG, in memory; `failing` makes every call fail as a silent S3 does."""

    asg_name = "etcd"
    record_key = "p/etcd/cluster.json"

    def __init__(self, snapshots: tuple[SnapshotInfo, ...] = ()) -> None:
        self.record: ClusterRecord | None = None
        self.snapshots = snapshots
        self.failing = False

    @contextlib.contextmanager
    def limited(self, seconds: float, *, answer_within: float | None = None) -> Iterator[None]:
        yield

    def where(self, key: str) -> str:
        return f"s3://bucket/{key}"

    def _answer(self) -> None:
        if self.failing:
            raise AwsError("S3 did not answer")

    def list_snapshots(self) -> tuple[SnapshotInfo, ...]:
        self._answer()
        return self.snapshots

    def read_record(self) -> ClusterRecord | None:
        self._answer()
        return self.record

    def read_record_tagged(self) -> tuple[ClusterRecord | None, str | None]:
        return self.read_record(), None

    def write_record(self, record: ClusterRecord, expected_etag: str | None) -> str | None:
        self._answer()
        self.record = record
        return None


NOW = datetime(2024, 5, 10, 12, 0, 0, tzinfo=timezone.utc)


def _cluster(*indexes: int) -> ClusterView:
    members = tuple(member(n) for n in indexes)
    instances = tuple(AsgInstance(IDS[n], "InService", IPS[n]) for n in range(3))
    probes = tuple(Probe(IDS[n], IPS[n], answer=MemberList(members, cluster_id=7)) for n in indexes)
    return view.build(AsgView("etcd", 3, instances), probes, EP)


def _backups(store: MemoryStore) -> Backups:
    settings = SimpleNamespace(backup_interval=3600.0)
    ctx = SimpleNamespace(settings=settings, deadline=Deadline(60), now=lambda: NOW)
    return Backups(cast("Context", ctx), cast("BackupStore", store))


def _young_snapshot() -> SnapshotInfo:
    meta = SnapshotMeta(NOW - timedelta(minutes=5), 42, 7, "3.5.17", (), IDS[0])
    return SnapshotInfo.of("p/etcd/snapshots/a.db", meta, Checksum("ab" * 32, 100))


def test_the_record_after_a_change_names_the_members_after_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="etcd_aws_cluster")
    store = MemoryStore((_young_snapshot(),))
    change = _backups(store).guard_change(_cluster(0, 1, 2), "removing member 66")
    assert "backup before removing member 66: the newest snapshot is 300s old; none needed" in caplog.text
    change.record(_cluster(0, 1))
    assert store.record is not None
    assert store.record.members == ((IDS[0], EP.peer_url(IPS[0])), (IDS[1], EP.peer_url(IPS[1])))
    assert (store.record.cluster_id, store.record.updated_at) == (7, NOW)


def test_a_cluster_looked_at_after_the_change_is_looked_at_when_the_record_is_written() -> None:
    store = MemoryStore((_young_snapshot(),))
    change = _backups(store).guard_change(_cluster(0, 1, 2), "removing member 66")
    looks: list[ClusterView] = []

    def look() -> ClusterView:
        looks.append(_cluster(0))
        return looks[-1]

    assert not looks
    change.record(look, what="reconcile's removals")
    assert store.record is not None and store.record.members == ((IDS[0], EP.peer_url(IPS[0])),)


def test_a_silent_s3_neither_stops_the_change_nor_fails_it(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    store.failing = True
    change = _backups(store).guard_change(_cluster(0, 1, 2), "removing member 66")
    assert "backup before removing member 66 skipped, going on without it" in caplog.text
    change.record(_cluster(0, 1), what="reconcile's removals")
    assert "cluster record not updated after reconcile's removals (best effort" in caplog.text
    assert store.record is None


def _raced(seconds: float) -> tuple[Backups, _AlwaysRaced, FakeClock]:
    clock, store = FakeClock(), _AlwaysRaced()
    ctx = SimpleNamespace(now=lambda: datetime(2024, 5, 10, tzinfo=timezone.utc), deadline=clock.deadline(seconds))
    return Backups(cast("Context", ctx), cast("BackupStore", store)), store, clock


VIEW = ClusterView(AsgView("etcd", 0, ()), Endpoints(), (), (), (0xABC,), False)


def test_a_refresh_that_keeps_losing_the_race_gives_up_after_four_writes() -> None:
    backups, store, clock = _raced(60.0)
    with pytest.raises(RecordRaceError, match="another instance wrote it first"):
        backups.write_record(VIEW)
    assert store.writes == 4
    assert len(clock.sleeps) == 3  # between the writes, none after the last
    assert all(ceiling / 2 <= pause <= ceiling for pause, ceiling in zip(clock.sleeps, (0.4, 0.8, 1.6)))


def test_a_refresh_that_keeps_losing_the_race_ends_at_the_deadline() -> None:
    backups, store, clock = _raced(0.1)
    with pytest.raises(RecordRaceError):
        backups.write_record(VIEW)
    assert store.writes == 1 and clock.elapsed == pytest.approx(0.1)


def test_a_decision_that_lost_the_race_is_decided_again_without_a_pause() -> None:
    backups, store, clock = _raced(60.0)
    with pytest.raises(RecordRaceError, match="deciding again"):
        backups.write_record(VIEW, members=(("i-0123456789abcdef0", "http://10.0.0.1:2380"),))
    assert store.writes == 1 and clock.sleeps == []


def test_a_restore_says_its_recovery_point() -> None:
    from etcd_aws_cluster.app.backups import Restored
    from etcd_aws_cluster.app.replay import Progress

    at = datetime(2026, 12, 7, 10, 0, tzinfo=timezone.utc)
    base = SnapshotInfo("s/base", at, 10, 0xABC, "3.5.30", "0" * 64, 10, (), "i-0123456789abcdef0", lineage=None)
    alone = Restored(base, base)
    assert (
        alone.summary()
        == "snapshot s/base + 0 deltas up to revision 10 (2026-12-07T10:00:00.000000Z): the recovery point"
    )
    later = at + timedelta(seconds=42)
    merged = SnapshotInfo("s/merged", later, 25, 0xABC, "3.5.30", "1" * 64, 10, (), "i-0123456789abcdef0")
    done = Restored(merged, base, Progress(10, 25, later, revisions=15, deltas=2, stopped="delta d/3 is damaged"))
    assert (done.revision, done.at) == (25, later)
    assert done.summary() == (
        "snapshot s/base + 2 deltas up to revision 25 (2026-12-07T10:00:42.000000Z): the recovery point; uploaded as "
        "s/merged (lineage legacy (written before lineages)); the deltas stopped early: delta d/3 is damaged"
    )
    failed = Restored(base, base, failed="no etcd binary")
    assert failed.summary().endswith("; the deltas could NOT be applied: no etcd binary")
