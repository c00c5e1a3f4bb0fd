"""An Instance Refresh, one instance at a time, with writes going on throughout: with the two lifecycle hooks
(`ready`, `leave --on-termination`) the cluster keeps quorum and loses no acknowledged write; without them, a
learner slow to catch up is enough for the refresh to take the cluster's quorum away."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import lifecycle_actions as hooks
from tests.harness.fixtures import SimFactory
from tests.harness.instance_refresh import LEARNER, Writer, replace_one
from tests.harness.moto_server import MotoServer
from tests.harness.sim import SimulatedAsg
from tests.integration.helpers import boot

pytestmark = pytest.mark.integration

# A learner takes this long to catch up and be promoted (etcd's ExecStartPost= `promote`).
SLOW_LEARNER = 4.0
# The longest the writes may stall: an election after a leader leaves, not a lost quorum.
ELECTION_STALL = 8.0


def with_hooks(asg: SimulatedAsg) -> None:
    hooks.put_hook(asg.autoscaling, asg.name, "etcd-ready", hooks.LAUNCHING, heartbeat_timeout=60)
    hooks.put_hook(
        asg.autoscaling, asg.name, "etcd-leave", hooks.TERMINATING, heartbeat_timeout=60, default_result="CONTINUE"
    )


@pytest.mark.parametrize("size", [3, 5])
def test_a_refresh_with_both_hooks_keeps_quorum_and_every_acknowledged_write(
    sim: SimFactory, moto_server: MotoServer, etcd_binary: Path, size: int
) -> None:
    asg = sim(size, etcd_binary)
    boot(asg, asg.nodes, env=LEARNER)
    asg.wait_healthy(size)
    with_hooks(asg)
    record = moto_server.lifecycle_record
    old = list(asg.nodes)
    writer = Writer(asg).start()
    try:
        steps = [replace_one(asg, node, hooked=True, promote_after=SLOW_LEARNER) for node in old]
    finally:
        writer.stop()

    members = asg.wait_healthy(size)
    assert sorted(m["name"] for m in members) == sorted(n.instance_id for n in asg.nodes)
    assert not {n.instance_id for n in old} & {m["name"] for m in members}, "every old instance has left"
    assert not any(m.get("isLearner") for m in members)
    assert len(writer.acknowledged) > 50 and writer.lost(asg.nodes[0]) == []
    assert writer.longest_gap < ELECTION_STALL, f"writes stalled {writer.longest_gap:.1f}s: quorum was lost"
    for step in steps:
        launch = hooks.of(record, asg.name, step.new.instance_id)
        assert [e.event for e in launch][0] == "wait" and launch[-1].event == "complete"
        assert launch[-1].result == "CONTINUE" and any(e.event == "heartbeat" for e in launch)
        assert "is a learner catching up" in step.ready_log, "held while its learner caught up"
        termination = hooks.of(record, asg.name, step.old.instance_id)
        assert [(e.event, e.result) for e in termination] == [("wait", None), ("complete", "CONTINUE")]
        stopped_at = float((step.old.workdir / "etcd-stopped-at").read_text())
        assert stopped_at < termination[-1].time, "etcd stopped before the termination went on"
        # It left itself, or the replacement's boot removed it first (its instance is Terminating:Wait, gone),
        # before or while it asked.
        outcomes = ("removed this instance's member", "(already left)", "was already gone")
        assert any(o in step.leave_log for o in outcomes) and "without leaving" not in step.leave_log, step.leave_log
    # One at a time: each launch completed before the next termination began.
    for earlier, later in zip(steps, steps[1:]):
        completed = hooks.of(record, asg.name, earlier.new.instance_id, "complete")[0].time
        assert completed < hooks.of(record, asg.name, later.old.instance_id, "wait")[0].time


def test_the_same_refresh_without_hooks_loses_quorum_when_a_learner_is_slow(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes, env=LEARNER)
    asg.wait_healthy(3)
    writer = Writer(asg).start()
    steps = []
    try:
        for node in list(asg.nodes)[:2]:  # the second termination is the one that hurts
            steps.append(replace_one(asg, node, hooked=False, promote_after=60))
        # The second replacement's boot may already find no quorum (and refuse to join), or join just before.
        writer.acknowledged.clear()
        writer.failures = 0
        probe = asg.run_agent(asg.nodes[-1], "status", timeout=60)
    finally:
        writer.stop()
        for step in steps:
            step.promoter.cancel()
    # The refresh went on while the first replacement was still a learner: one voter of two is left.
    assert probe.returncode == 11, probe.stdout + probe.stderr
    assert writer.acknowledged == {} and writer.failures > 0, "no write is acknowledged without quorum"
