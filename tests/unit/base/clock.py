"""A clock that moves only when the code under test sleeps, for deadlines without waiting."""

from __future__ import annotations

from etcd_aws_cluster.base.deadline import Deadline

START = 1000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = START
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    @property
    def elapsed(self) -> float:
        return self.now - START

    def deadline(self, seconds: float) -> Deadline:
        return Deadline(seconds, clock=self, sleep=self.sleep)
