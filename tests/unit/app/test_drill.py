"""app/drill.py: what a restore drill counts as passed, and what its stored result says."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any, cast

import pytest

from etcd_aws_cluster.app import drill
from etcd_aws_cluster.app.replay import Progress
from etcd_aws_cluster.base.errors import DrillFailedError
from etcd_aws_cluster.core.deltas import Chain, DeltaInfo
from etcd_aws_cluster.core.records import SnapshotInfo

T0 = datetime(2026, 12, 7, 10, 0, tzinfo=timezone.utc)
INSTANCE = "i-0123456789abcdef0"
SNAPSHOT = SnapshotInfo("p/s/x.db.zst", T0, 10, 0xABC, "3.5.30", "0" * 64, 10, (), INSTANCE)


def delta(first: int, last: int) -> DeltaInfo:
    return DeltaInfo(f"p/d/{first}", None, first, last, T0 + timedelta(seconds=last), INSTANCE, "0" * 64, 10)


def backups() -> Any:
    return cast(Any, SimpleNamespace(ctx=SimpleNamespace(now=lambda: T0 + timedelta(hours=1))))


REACH = Chain(10, (delta(11, 20), delta(21, 30)), 30, None)


def judged(progress: Progress, live: int | None, reach: Chain = REACH) -> tuple[bool, str, int]:
    drilled = drill.Drilled(progress, live, reach)
    result = drill._result(backups(), SNAPSHOT, drilled, drill._problems(drilled))
    return result.ok, result.verdict, result.revision


def test_a_drill_that_reached_the_end_with_the_keys_counted_passes() -> None:
    ok, verdict, revision = judged(Progress(10, 30, T0 + timedelta(seconds=30), 20, 2, keys=7), 7)
    assert ok and revision == 30
    assert "2 deltas applied with their revisions up to revision 30; 7 keys live (as the follower counted)" in verdict


@pytest.mark.parametrize(
    ("progress", "live", "reach", "says"),
    [
        (Progress(10, 20, T0, 10, 1, stopped="delta p/d/21 could not be read: damaged"), 5, REACH, "stopped early"),
        (Progress(10, 25, T0, 15, 2), 5, REACH, "reached revision 25, their names promise 30"),
        (Progress(10, 30, T0, 20, 2), 5, Chain(10, REACH.deltas, 30, 30), "no delta holds revision 31"),
        (Progress(10, 30, T0, 20, 2, keys=7), 6, REACH, "6 keys are live at revision 30, the follower counted 7"),
    ],
)
def test_what_fails_a_drill(progress: Progress, live: int, reach: Chain, says: str) -> None:
    ok, verdict, _ = judged(progress, live, reach)
    assert not ok and says in verdict


def test_a_drill_whose_restore_failed_keeps_the_snapshot_as_its_point_and_the_command_fails() -> None:
    result = drill._result(backups(), SNAPSHOT, None, ["the restore failed: etcd would not start"])
    assert (result.ok, result.revision, result.recovered_at, result.keys) == (False, 10, T0, None)
    with pytest.raises(DrillFailedError, match="FAILED: the restore failed") as raised:
        drill.require_passed(result, "s3://b/p/s/x.db.zst")
    assert raised.value.exit_code == 9
    drill.require_passed(
        drill._result(backups(), SNAPSHOT, drill.Drilled(Progress(10, 10, None), 3, Chain(10, (), 10)), []), "x"
    )
