"""The insurance snapshot's budget: a share of the time left, never the time the change itself needs."""

from __future__ import annotations

from etcd_aws_cluster.app.backups import CHANGE_RESERVE, insurance_budget, snapshot_seconds


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
