"""One retry loop under the deadline: how many attempts, which pauses, and what ends it."""

from __future__ import annotations

import random

import pytest

from etcd_aws_cluster.base import retry
from etcd_aws_cluster.base.retry import RetryPolicy, attempts
from tests.unit.base.clock import FakeClock


class Top(random.Random):
    """Every backoff at its ceiling: the pauses are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_the_first_attempt_is_at_once_and_later_ones_after_the_policys_pauses() -> None:
    clock = FakeClock()
    deadline = clock.deadline(100.0)
    made = []
    for attempt in attempts(deadline, RetryPolicy(base=0.5, cap=3.0), rng=Top()):
        made.append((attempt, clock.elapsed))
        if attempt == 4:
            break
    assert made == [(0, 0.0), (1, 0.5), (2, 1.5), (3, 3.5), (4, 6.5)]
    assert clock.sleeps == [0.5, 1.0, 2.0, 3.0]


def test_attempts_end_at_the_deadline_without_sleeping_past_it() -> None:
    clock = FakeClock()
    deadline = clock.deadline(4.0)
    made = list(attempts(deadline, RetryPolicy(base=1.0, cap=5.0), rng=Top()))
    # pauses 1 + 2, then the third pause (4 s) is cut to the 1 s left, after which no attempt is made
    assert made == [0, 1, 2]
    assert clock.sleeps == [1.0, 2.0, 1.0]
    assert clock.elapsed == pytest.approx(4.0)


def test_the_first_attempt_is_made_even_past_the_deadline() -> None:
    clock = FakeClock()
    deadline = clock.deadline(1.0)
    clock.now += 5
    assert list(attempts(deadline, RetryPolicy(base=1.0, cap=5.0))) == [0]
    assert clock.sleeps == []


def test_max_attempts_bounds_the_tries_and_the_last_failure_has_no_pause() -> None:
    clock = FakeClock()
    deadline = clock.deadline(100.0)
    assert list(attempts(deadline, RetryPolicy(base=0.2, cap=1.0, max_attempts=3), rng=Top())) == [0, 1, 2]
    assert clock.sleeps == [0.2, 0.4]


def test_a_success_ends_the_loop_without_a_pause() -> None:
    clock = FakeClock()
    deadline = clock.deadline(100.0)
    for attempt in attempts(deadline, retry.LOOK_AGAIN):
        if attempt == 0:
            break
    assert clock.sleeps == []


@pytest.mark.parametrize(
    ("policy", "ceilings"),
    [
        (retry.ETCD_CALL, [0.25, 0.5, 1.0, 1.5, 1.5]),
        (retry.LOOK_AGAIN, [0.5, 1.0, 2.0, 3.0, 3.0]),
        (retry.MEMBER_CHANGE, [1.0, 2.0, 4.0, 5.0, 5.0]),
        (retry.IMDS, [0.2, 0.4]),
        (retry.RECORD_WRITE, [0.4, 0.8, 1.6]),
    ],
)
def test_the_named_policies_pauses(policy: RetryPolicy, ceilings: list[float]) -> None:
    clock = FakeClock()
    deadline = clock.deadline(1000.0)
    for attempt in attempts(deadline, policy, rng=Top()):
        if attempt == len(ceilings):
            break
    assert clock.sleeps == ceilings


def test_bounded_policies_make_their_number_of_tries() -> None:
    clock = FakeClock()
    deadline = clock.deadline(1000.0)
    assert len(list(attempts(deadline, retry.IMDS))) == 3
    assert len(list(attempts(deadline, retry.RECORD_WRITE))) == 4
