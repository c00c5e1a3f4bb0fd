"""Lifecycle hooks against real etcd and moto's held instances: `ready` completes a launch only once its member is a
healthy voter, heartbeating while a learner catches up; `leave --on-termination` leaves, stops etcd, then completes
the termination, and holds it while leaving would break quorum."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import lifecycle_actions as hooks
from tests.harness.fixtures import SimFactory
from tests.harness.moto_server import MotoServer
from tests.harness.sim import Node, SimulatedAsg
from tests.integration.helpers import boot, run_ok

pytestmark = pytest.mark.integration

# Short, so that a test sees several heartbeats (one every third of it), long enough for a boot and etcd's start.
HEARTBEAT_TIMEOUT = 20


def is_learner(asg: SimulatedAsg, node: Node, via: Node) -> bool:
    return any(m.get("name") == node.instance_id and m.get("isLearner") for m in asg.members(via))


def launch_held(asg: SimulatedAsg, size: int, env: dict[str, str] | None = None) -> Node:
    """Scale out by one into Pending:Wait; run the boot agent on the new instance and start its etcd."""
    new = asg.scale_to(size)[0]
    assert new.lifecycle_state == "Pending:Wait"
    run_ok(asg, new, env=env)
    asg.start_etcd(new)
    return new


def wait_done(proc: subprocess.Popen[str], timeout: float = 90) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


@pytest.mark.etcd_matrix
def test_ready_completes_the_launch_only_once_the_learner_is_promoted(
    sim: SimFactory, moto_server: MotoServer, etcd_binary: Path
) -> None:
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    first = asg.nodes[0]
    hooks.put_hook(asg.autoscaling, asg.name, "etcd-ready", hooks.LAUNCHING, heartbeat_timeout=HEARTBEAT_TIMEOUT)
    learner = {"ETCD_AWS_CLUSTER_LEARNER": "true"}
    new = launch_held(asg, 4, learner)
    ready = asg.start_agent(new, "ready")
    time.sleep(HEARTBEAT_TIMEOUT * 0.4)  # a learner, not promoted: `ready` holds the launch with heartbeats
    assert ready.poll() is None and is_learner(asg, new, first)
    promoted_at = time.time()
    run_ok(asg, new, "promote", env=learner)
    code, err = wait_done(ready)
    assert code == 0, err
    assert "is a learner catching up with the leader" in err, err

    steps = hooks.of(moto_server.lifecycle_record, asg.name, new.instance_id)
    assert [s.event for s in steps][0] == "wait" and [s.event for s in steps][-1] == "complete"
    heartbeats = [s for s in steps if s.event == "heartbeat"]
    assert len(heartbeats) >= 2 and heartbeats[0].time < promoted_at
    assert all(s.time < steps[-1].time for s in heartbeats)
    assert steps[-1].result == "CONTINUE" and steps[-1].time > promoted_at, "completed only after the promotion"
    asg.refresh()
    assert new.lifecycle_state == "InService"
    asg.wait_healthy(4)


def test_ready_does_nothing_without_a_hook_and_completes_a_warm_pool_launch_at_once(
    sim: SimFactory, moto_server: MotoServer
) -> None:
    asg = sim(1)
    node = asg.nodes[0]
    boot(asg, [node])
    assert "has no launching lifecycle hook: nothing to complete" in run_ok(asg, node, "ready").stderr

    hooks.put_hook(asg.autoscaling, asg.name, "etcd-ready", hooks.LAUNCHING)
    assert "not held by a launching hook" in run_ok(asg, node, "ready").stderr  # InService: a later boot

    asg.autoscaling.put_warm_pool(AutoScalingGroupName=asg.name, MinSize=1)
    (warm,) = asg.refresh()
    assert warm.lifecycle_state == "Warmed:Pending:Wait" and warm.imds.lifecycle_state == "Warmed:Stopped"
    result = run_ok(asg, warm, "ready")
    assert "goes into the warm pool: launch completed at once" in result.stderr
    asg.refresh()
    assert warm.lifecycle_state == "Warmed:Stopped"
    steps = hooks.of(moto_server.lifecycle_record, asg.name, warm.instance_id)
    assert [(s.event, s.result) for s in steps] == [("wait", None), ("complete", "CONTINUE")]
    assert not (warm.workdir / "etcd-cluster.env").exists() and len(asg.members(node)) == 1, "it joined nothing"
