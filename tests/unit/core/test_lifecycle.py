"""Every lifecycle state of the Auto Scaling API is classified; a warm-pool boot changes nothing."""

from __future__ import annotations

import botocore.session
import pytest

from etcd_aws_cluster.base.errors import ConfigError
from etcd_aws_cluster.core import view
from etcd_aws_cluster.core.lifecycle import (
    LAUNCHING,
    TERMINATING,
    Hook,
    choose_hook,
    heartbeat_due,
    holding_hooks,
    may_hold,
    readiness,
    warm_pool_boot,
)
from etcd_aws_cluster.core.model import (
    GONE_STATES,
    MEMBER_STATES,
    OTHER_STATES,
    AsgInstance,
    AsgView,
    EtcdFailure,
    Identity,
    Member,
    MemberList,
    Probe,
)
from tests.unit.adapters.test_aws import GOOD_ID, aws
from tests.unit.builders import EP, IDS, IPS, member

ME = Identity(GOOD_ID, "10.0.0.1", "us-east-1")


def api_states() -> list[str]:
    model = botocore.session.get_session().get_service_model("autoscaling")
    return list(model.shape_for("LifecycleState").enum)


def test_every_state_of_the_installed_botocore_is_classified_exactly_once() -> None:
    classes = (MEMBER_STATES, GONE_STATES, OTHER_STATES)
    states = api_states()
    assert "InService" in states  # the model was found (older botocore lists fewer states: all must be classified)
    unclassified = [s for s in states if sum(s in c for c in classes) != 1]
    assert unclassified == []


@pytest.mark.parametrize(
    ("state", "member", "gone"),
    [
        ("InService", True, False),
        ("RootVolumeReplaced", True, False),
        ("Terminating:Retained", False, True),
        ("Warmed:Terminated", False, True),
        ("Warmed:Running", False, False),
        ("Standby", False, False),
        ("SomeFutureState:Wait", False, False),
    ],
)
def test_what_a_state_means(state: str, member: bool, gone: bool) -> None:
    instance = AsgInstance(GOOD_ID, state, "10.0.0.1")
    assert (instance.counts_as_member, instance.is_gone) == (member, gone)


@pytest.mark.parametrize("state", ["Warmed:Pending:Wait", "SomeFutureState:Wait:Proceed"])
def test_warm_pool_and_unknown_states_of_another_instance_do_not_stop_the_run(state: str) -> None:
    view = aws(state=state).describe("etcd")
    assert [i.lifecycle_state for i in view.instances] == [state]
    assert view.members() == ()


@pytest.mark.parametrize("state", ["Warmed:Pending", "Warmed:Pending:Wait", "Warmed:Running", "Warmed:Hibernated"])
def test_a_boot_in_the_warm_pool_says_so(state: str) -> None:
    asg = AsgView("etcd", 3, (AsgInstance(GOOD_ID, state, "10.0.0.1"),))
    reason = warm_pool_boot(asg, ME)
    assert reason is not None and state in reason and "warm pool" in reason


@pytest.mark.parametrize("state", ["Pending", "InService", "Standby"])
def test_a_boot_out_of_the_warm_pool_goes_on(state: str) -> None:
    asg = AsgView("etcd", 3, (AsgInstance(GOOD_ID, state, "10.0.0.1"),))
    assert warm_pool_boot(asg, ME) is None
    assert warm_pool_boot(AsgView("etcd", 3, ()), ME) is None


# --- the lifecycle hooks' decisions ---------------------------------------------------------------------------
READY = Hook("ready", LAUNCHING, 300, "ABANDON")
LEAVE = Hook("leave", TERMINATING, 300, "CONTINUE")
OTHER_READY = Hook("other", LAUNCHING, 60, "CONTINUE")


@pytest.mark.parametrize(
    ("hooks", "transition", "configured", "chosen"),
    [
        ((), LAUNCHING, None, None),  # no hook: nothing to complete
        ((LEAVE,), LAUNCHING, None, None),  # only a hook of the other transition
        ((READY, LEAVE), LAUNCHING, None, READY),
        ((READY, LEAVE), TERMINATING, None, LEAVE),
        ((READY, OTHER_READY), LAUNCHING, "other", OTHER_READY),
        ((READY, LEAVE), LAUNCHING, "ready", READY),
    ],
)
def test_which_hook_this_instance_completes(
    hooks: tuple[Hook, ...], transition: str, configured: str | None, chosen: Hook | None
) -> None:
    assert choose_hook(hooks, transition, configured) == chosen


@pytest.mark.parametrize(
    ("hooks", "configured", "message"),
    [
        ((READY, OTHER_READY), None, "has 2 autoscaling:EC2_INSTANCE_LAUNCHING hooks (other, ready): set which"),
        ((READY, LEAVE), "leave", "no autoscaling:EC2_INSTANCE_LAUNCHING hook named leave (it has: ready)"),
        ((), "ready", "named ready (it has: none)"),
    ],
)
def test_an_unclear_hook_is_a_configuration_error(
    hooks: tuple[Hook, ...], configured: str | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        choose_hook(hooks, LAUNCHING, configured)


ME_NODE = Identity(IDS[2], IPS[2], "us-east-1")


def cluster(
    members: tuple[Member, ...], answering: str = "012", lists: dict[int, tuple[Member, ...]] | None = None
) -> view.ClusterView:
    instances = tuple(AsgInstance(IDS[n], "InService", IPS[n]) for n in range(3))
    probes = [
        Probe(IDS[n], IPS[n], answer=MemberList((lists or {}).get(n, members), 7))
        if str(n) in answering
        else Probe(IDS[n], IPS[n], error=EtcdFailure.REFUSED)
        for n in range(3)
    ]
    return view.build(AsgView("etcd", 3, instances), probes, EP)


THREE = (member(0), member(1), member(2))


@pytest.mark.parametrize(
    ("members", "answering", "lists", "why"),
    [
        (THREE, "012", None, None),
        ((member(0), member(1)), "01", None, "this instance has no member in the cluster yet"),
        ((member(0), member(1), member(2, started=False)), "01", None, "member 66 has not started yet"),
        (THREE, "01", None, "member 66's etcd does not answer"),
        ((member(0), member(1), member(2, learner=True)), "012", None, "member 66 is a learner catching up"),
        ((member(0), member(1), member(2, learner=True)), "01", None, "member 66 is a learner catching up"),
        (THREE, "12", None, "1 voting member(s) do not answer: " + IDS[0]),
        (THREE, "012", {0: (member(0), member(1))}, "different member lists"),
    ],
)
def test_a_launch_is_ready_once_its_member_is_a_started_answering_voter_of_a_healthy_cluster(
    members: tuple[Member, ...], answering: str, lists: dict[int, tuple[Member, ...]] | None, why: str | None
) -> None:
    found = readiness(cluster(members, answering, lists), ME_NODE)
    if why is None:
        assert found is None
    else:
        assert found is not None and why in found


@pytest.mark.parametrize(
    ("last", "now", "due"),
    [(None, 0.0, True), (0.0, 99.0, False), (0.0, 100.0, True), (50.0, 149.0, False), (50.0, 151.0, True)],
)
def test_a_heartbeat_goes_out_at_once_then_every_third_of_the_timeout(
    last: float | None, now: float, due: bool
) -> None:
    assert heartbeat_due(last, now, 300) is due


@pytest.mark.parametrize(
    ("held_for", "hold_limit", "timeout", "may"),
    [
        (0.0, 600.0, 300, True),
        (599.0, 600.0, 300, True),
        (600.0, 600.0, 300, False),  # the setting's limit
        (0.0, 0.0, 300, False),  # termination_hold = 0: never hold
        (5.0, 10**6, 1, True),
        (99.0, 10**6, 1, False),  # 100 heartbeat timeouts is AWS's global limit: stop one timeout before it
    ],
)
def test_a_termination_is_held_up_to_the_setting_and_never_into_the_global_timeout(
    held_for: float, hold_limit: float, timeout: int, may: bool
) -> None:
    assert may_hold(held_for, hold_limit, Hook("leave", TERMINATING, timeout, "CONTINUE")) is may


@pytest.mark.parametrize(
    ("state", "hooks", "shown"),
    [
        ("Pending:Wait", (READY, LEAVE), "ready"),
        ("Warmed:Pending:Wait", (READY, LEAVE), "ready"),
        ("Terminating:Wait", (READY, LEAVE), "leave"),
        ("Pending:Wait", (READY, OTHER_READY), "other,ready"),
        ("Pending:Wait", (LEAVE,), None),
        ("InService", (READY, LEAVE), None),
    ],
)
def test_the_hook_holding_an_instance_is_the_one_of_its_wait_states_transition(
    state: str, hooks: tuple[Hook, ...], shown: str | None
) -> None:
    assert holding_hooks(state, hooks) == shown
