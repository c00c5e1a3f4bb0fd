"""The context's etcd call retry: through any member, transient answers again under the deadline, the rest at once."""

from __future__ import annotations

import pytest

from etcd_aws_cluster.adapters.etcd import EtcdFailure, EtcdRequestError
from etcd_aws_cluster.app.context import Context
from etcd_aws_cluster.app.settings import Settings
from etcd_aws_cluster.base.errors import EtcdError
from tests.unit.base.clock import FakeClock

URLS = ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]


def context(clock: FakeClock, seconds: float) -> Context:
    return Context(Settings.model_construct(), deadline=clock.deadline(seconds), environ={})


class Etcd:
    """A call that fails with the queued errors (one per call), then answers with the URL it was made to."""

    def __init__(self, *errors: EtcdRequestError) -> None:
        self.errors = list(errors)
        self.calls: list[str] = []

    def __call__(self, url: str) -> str:
        self.calls.append(url)
        if self.errors:
            raise self.errors.pop(0)
        return url


def unhealthy(url: str) -> EtcdRequestError:
    return EtcdRequestError(f"{url} answered HTTP 503: unhealthy cluster", failure=EtcdFailure.HTTP, transient=True)


def test_a_transient_answer_is_tried_on_the_next_member_then_again_after_a_pause() -> None:
    clock = FakeClock()
    call = Etcd(unhealthy(URLS[0]), unhealthy(URLS[1]), unhealthy(URLS[0]))
    assert context(clock, 10.0).retry("adding", call, URLS) == URLS[1]
    assert call.calls == [URLS[0], URLS[1], URLS[0], URLS[1]]
    assert len(clock.sleeps) == 1 and 0.125 <= clock.sleeps[0] <= 0.25  # ETCD_CALL's first pause


def test_an_answer_retries_cannot_fix_ends_at_once() -> None:
    clock = FakeClock()
    wrong = EtcdRequestError("http://10.0.0.1:2379 answered HTTP 400: bad peer URL", failure=EtcdFailure.HTTP)
    with pytest.raises(EtcdError, match="adding failed: .*bad peer URL"):
        context(clock, 10.0).retry("adding", Etcd(wrong), URLS)
    assert clock.sleeps == []


def test_transient_answers_until_the_deadline_end_with_the_last_one() -> None:
    clock = FakeClock()
    call = Etcd(*(unhealthy(URLS[n % 2]) for n in range(1000)))
    with pytest.raises(EtcdError, match=r"adding did not succeed before the deadline: http://10.0.0.2:2379 answered"):
        context(clock, 5.0).retry("adding", call, URLS)
    assert clock.elapsed == pytest.approx(5.0)
    assert max(clock.sleeps) <= 1.5  # ETCD_CALL's cap: etcd 3.4 is unhealthy for ~5 s after a change
    assert len(call.calls) == 2 * len(clock.sleeps)  # a round before each pause; none after the last
