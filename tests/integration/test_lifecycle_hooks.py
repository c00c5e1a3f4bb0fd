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
    record = moto_server.lifecycle_record
    # A learner, not promoted: `ready` holds the launch with heartbeats, one every third of the timeout.
    deadline = time.monotonic() + HEARTBEAT_TIMEOUT
    while len(hooks.of(record, asg.name, new.instance_id, "heartbeat")) < 2:
        assert time.monotonic() < deadline and ready.poll() is None, hooks.of(record, asg.name, new.instance_id)
        time.sleep(0.2)
    assert ready.poll() is None and is_learner(asg, new, first)
    table = asg.run_agent(first, "status", timeout=60).stdout
    assert "Pending:Wait (etcd-ready)" in next(line for line in table.splitlines() if new.instance_id in line)
    promoted_at = time.time()
    run_ok(asg, new, "promote", env=learner)
    code, err = wait_done(ready)
    assert code == 0, err
    assert "is a learner catching up with the leader" in err, err

    steps = hooks.of(record, asg.name, new.instance_id)
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


def on_termination(asg: SimulatedAsg, node: Node, hold: float = 600) -> tuple[subprocess.Popen[str], Path]:
    """Start `leave --on-termination` on `node`, with a stop_etcd_command that stops its etcd and notes when."""
    stopped = node.workdir / "etcd-stopped-at"
    env = {
        "ETCD_AWS_CLUSTER_STOP_ETCD_COMMAND": f"sh -c 'kill {node.etcd_pid} && date +%s.%N > {stopped}'",
        "ETCD_AWS_CLUSTER_TERMINATION_HOLD": str(hold),
    }
    return asg.start_agent(node, "leave", "--on-termination", "--timeout", str(hold + 300), env=env), stopped


def terminate_held(asg: SimulatedAsg, node: Node) -> None:
    asg.autoscaling.terminate_instance_in_auto_scaling_group(
        InstanceId=node.instance_id, ShouldDecrementDesiredCapacity=False
    )
    asg.refresh()
    assert node.lifecycle_state == "Terminating:Wait" and node.imds.lifecycle_state == "Terminated"


def member_names(asg: SimulatedAsg, via: Node) -> list[str]:
    return sorted(m.get("name") or "(unstarted)" for m in asg.members(via))


def test_on_termination_leaves_then_stops_etcd_then_completes_the_action(
    sim: SimFactory, moto_server: MotoServer, etcd_binary: Path
) -> None:
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    stay, leaver = asg.nodes[0], asg.nodes[2]
    hooks.put_hook(asg.autoscaling, asg.name, "etcd-leave", hooks.TERMINATING, default_result="CONTINUE")
    agent, stopped = on_termination(asg, leaver)
    time.sleep(2)
    assert agent.poll() is None, "it waits while the instance is not terminating"
    assert len(asg.members(stay)) == 3

    terminate_held(asg, leaver)
    code, err = wait_done(agent)
    assert code == 0, err
    assert leaver.instance_id not in member_names(asg, stay) and len(asg.members(stay)) == 2
    (complete,) = hooks.of(moto_server.lifecycle_record, asg.name, leaver.instance_id, "complete")
    assert complete.result == "CONTINUE"
    assert float(stopped.read_text()) < complete.time, "etcd stops before the termination goes on"
    lines = err.splitlines()
    removed = next(i for i, line in enumerate(lines) if "removed this instance's member" in line)
    completed = next(i for i, line in enumerate(lines) if "completed lifecycle action etcd-leave" in line)
    assert removed < completed
    asg.stop_etcd(leaver)
    asg.refresh()
    assert leaver.terminated


def termination_with_a_member_down(
    sim: SimFactory, etcd_binary: Path, hold: float
) -> tuple[SimulatedAsg, tuple[Node, Node, Node], subprocess.Popen[str]]:
    """A 3-member cluster with a terminating hook, one member killed (leaving now would leave 1 of 2 voters), and
    `leave --on-termination` running on the instance held in Terminating:Wait: (asg, (down, stay, leaver), agent)."""
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    down, stay, leaver = asg.nodes
    hooks.put_hook(asg.autoscaling, asg.name, "etcd-leave", hooks.TERMINATING, heartbeat_timeout=30)
    asg.stop_etcd(down, kill=True)
    agent, _ = on_termination(asg, leaver, hold=hold)
    terminate_held(asg, leaver)
    return asg, (down, stay, leaver), agent


def test_on_termination_holds_the_termination_while_leaving_would_break_quorum(
    sim: SimFactory, moto_server: MotoServer, etcd_binary: Path
) -> None:
    asg, (down, stay, leaver), agent = termination_with_a_member_down(sim, etcd_binary, hold=600)
    record = moto_server.lifecycle_record
    first = hooks.wait_for(record, asg.name, leaver.instance_id, "heartbeat")
    assert agent.poll() is None and len(asg.members(stay)) == 3, "held, not left"

    back_at = time.time()
    asg.start_etcd(down)  # the member is back: leaving is safe again
    code, err = wait_done(agent, timeout=120)
    assert code == 0, err
    assert "leaving now would break quorum" in err
    (complete,) = hooks.of(record, asg.name, leaver.instance_id, "complete")
    assert first.time < back_at < complete.time
    assert leaver.instance_id not in member_names(asg, stay)
    assert not hooks.of(record, asg.name, leaver.instance_id, "timeout")


def test_on_termination_completes_without_leaving_once_the_hold_is_over(
    sim: SimFactory, moto_server: MotoServer, etcd_binary: Path
) -> None:
    asg, (down, stay, leaver), agent = termination_with_a_member_down(sim, etcd_binary, hold=6)
    code, err = wait_done(agent, timeout=120)
    assert code == 0, err
    assert "completed the termination without leaving" in err and "below quorum" in err
    (complete,) = hooks.of(moto_server.lifecycle_record, asg.name, leaver.instance_id, "complete")
    assert complete.result == "CONTINUE"
    assert len(asg.members(stay)) == 3, "the member stays: removing it would have broken quorum"
