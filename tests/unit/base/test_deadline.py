"""The deadline's pauses and the backoff between attempts."""

from __future__ import annotations

import random

import pytest

from etcd_aws_cluster.base.deadline import backoff
from tests.unit.base.clock import FakeClock


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(0, 0.25), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0), (9, 5.0)]
)
def test_backoff_is_equal_jitter_between_half_the_ceiling_and_the_ceiling(attempt: int, ceiling: float) -> None:
    rng = random.Random(attempt)
    pauses = [backoff(attempt, base=0.25, cap=5.0, rng=rng) for _ in range(500)]
    assert all(ceiling / 2 <= p <= ceiling for p in pauses)
    # jittered over the whole band, not stuck at one end (full jitter would reach below the floor)
    assert min(pauses) < ceiling * 0.6 and max(pauses) > ceiling * 0.9


def test_backoff_at_the_band_edges() -> None:
    class Edge(random.Random):
        def __init__(self, pick: str) -> None:
            super().__init__()
            self.pick = pick

        def uniform(self, a: float, b: float) -> float:
            return a if self.pick == "low" else b

    assert backoff(3, base=0.5, cap=3.0, rng=Edge("low")) == 1.5
    assert backoff(3, base=0.5, cap=3.0, rng=Edge("high")) == 3.0


def test_pause_never_sleeps_past_the_deadline() -> None:
    clock = FakeClock()
    deadline = clock.deadline(2.0)
    assert deadline.pause(1.5) is True
    assert deadline.pause(1.5) is False  # slept the 0.5 s left, then the deadline had passed
    assert clock.sleeps == [1.5, 0.5]
    assert deadline.pause(1.0) is False and clock.sleeps == [1.5, 0.5]  # no time left: no sleep at all
