"""The boot's best-effort read of the cluster record: a silent S3 lets a node restart from its data; the end of the
run never does."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import pytest

from etcd_aws_cluster.app.handoff import _read_record
from etcd_aws_cluster.base.errors import AwsError, UnsafeError
from tests.unit.base.clock import FakeClock

if TYPE_CHECKING:
    from etcd_aws_cluster.app.backups import Backups


class SilentStore:
    @contextlib.contextmanager
    def limited(self, seconds: float, *, answer_within: float | None = None) -> Iterator[None]:
        yield


def backups_with_time_left(seconds: float) -> Backups:
    clock = FakeClock()
    deadline = clock.deadline(10.0)
    clock.sleep(10.0 - seconds)

    def read_record() -> None:
        raise AwsError("reading the cluster record: no time left before the run's deadline (10s)")

    fake = SimpleNamespace(store=SilentStore(), ctx=SimpleNamespace(deadline=deadline), read_record=read_record)
    return cast("Backups", fake)


def test_a_record_that_cannot_be_read_while_time_is_left_decides_from_local_data() -> None:
    assert _read_record(backups_with_time_left(5.0), best_effort=True) is None


def test_a_record_read_cut_by_the_runs_deadline_gives_up_instead_of_restarting() -> None:
    with pytest.raises(UnsafeError, match="deadline passed before the cluster record could be read"):
        _read_record(backups_with_time_left(0.0), best_effort=True)
