"""The insurance snapshot's budget: a share of the time left, never the time the change itself needs; the cluster
record write's retries."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import pytest

from etcd_aws_cluster.app.backups import CHANGE_RESERVE, Backups, insurance_budget, snapshot_seconds
from etcd_aws_cluster.base.errors import RecordRaceError
from etcd_aws_cluster.core.model import AsgView, Endpoints
from etcd_aws_cluster.core.records import ClusterRecord
from etcd_aws_cluster.core.view import ClusterView
from tests.unit.base.clock import FakeClock

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

    def where(self, key: str) -> str:
        return f"s3://bucket/{key}"


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
