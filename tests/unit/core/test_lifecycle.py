"""Every lifecycle state of the Auto Scaling API is classified; a warm-pool boot changes nothing."""

from __future__ import annotations

import botocore.session
import pytest

from etcd_aws_cluster.core.lifecycle import warm_pool_boot
from etcd_aws_cluster.core.model import GONE_STATES, MEMBER_STATES, OTHER_STATES, AsgInstance, AsgView, Identity
from tests.unit.adapters.test_aws import GOOD_ID, aws

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
