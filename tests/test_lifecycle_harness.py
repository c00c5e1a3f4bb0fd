"""The moto server's lifecycle hooks (tests/harness/moto_lifecycle.py): held launches and terminations, the two
calls moto lacks, heartbeats and timeouts, each recorded."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError

from tests.harness import lifecycle_actions as hooks
from tests.harness.fixtures import SimFactory
from tests.harness.moto_server import MotoServer

pytestmark = pytest.mark.integration


def states(asg_states: dict[str, str], *wanted: str) -> list[str]:
    return sorted(i for i, s in asg_states.items() if s in wanted)


def test_a_launching_hook_holds_new_instances_until_their_action_completes(
    sim: SimFactory, moto_server: MotoServer
) -> None:
    asg = sim(2)
    record = moto_server.lifecycle_record
    hooks.put_hook(asg.autoscaling, asg.name, "ready", hooks.LAUNCHING)
    new = asg.scale_to(3)[0]
    assert new.lifecycle_state == "Pending:Wait" and new.imds.lifecycle_state == "InService"
    assert asg.desired_capacity == 3 and len(asg.all_nodes) == 3, "a held instance counts toward the capacity"

    asg.autoscaling.record_lifecycle_action_heartbeat(
        AutoScalingGroupName=asg.name, LifecycleHookName="ready", InstanceId=new.instance_id
    )
    asg.autoscaling.complete_lifecycle_action(
        AutoScalingGroupName=asg.name,
        LifecycleHookName="ready",
        InstanceId=new.instance_id,
        LifecycleActionResult="CONTINUE",
    )
    asg.refresh()
    assert new.lifecycle_state == "InService"
    steps = [(e.event, e.result) for e in hooks.of(record, asg.name, new.instance_id)]
    assert steps == [("wait", None), ("heartbeat", None), ("complete", "CONTINUE")]
    with pytest.raises(ClientError, match="No active Lifecycle Action"):  # as AWS: nothing left to complete
        asg.autoscaling.complete_lifecycle_action(
            AutoScalingGroupName=asg.name,
            LifecycleHookName="ready",
            InstanceId=new.instance_id,
            LifecycleActionResult="CONTINUE",
        )


def test_a_terminating_hook_holds_the_instance_and_a_timeout_takes_the_default_result(
    sim: SimFactory, moto_server: MotoServer
) -> None:
    asg = sim(2)
    record = moto_server.lifecycle_record
    hooks.put_hook(
        asg.autoscaling, asg.name, "leave", hooks.TERMINATING, heartbeat_timeout=2, default_result="CONTINUE"
    )
    old = asg.nodes[0]
    asg.autoscaling.terminate_instance_in_auto_scaling_group(
        InstanceId=old.instance_id, ShouldDecrementDesiredCapacity=True
    )
    asg.refresh()
    assert old.lifecycle_state == "Terminating:Wait" and old.imds.lifecycle_state == "Terminated"
    assert asg.desired_capacity == 1
    time.sleep(2.5)
    asg.refresh()  # the next Auto Scaling call sees the timeout
    assert old.terminated
    assert [(e.event, e.result) for e in hooks.of(record, asg.name, old.instance_id)] == [
        ("wait", None),
        ("timeout", "CONTINUE"),
    ]
