"""`etcd-aws-cluster reconcile` end to end: moto, a fake IMDS and one real etcd per simulated instance."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
import requests

from tests.harness.fixtures import SimFactory
from tests.harness.sim import Node, SimulatedAsg
from tests.integration.helpers import boot, leader_of, member_status, run_ok

pytestmark = pytest.mark.integration


def state_file(node: Node) -> Path:
    return node.workdir / "reconcile-state.json"


def reconcile_env(node: Node, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {"ETCD_AWS_CLUSTER_RECONCILE_STATE_FILE": str(state_file(node)), **(extra or {})}


def reconcile(
    asg: SimulatedAsg, node: Node, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return asg.run_agent(node, "reconcile", *args, env=reconcile_env(node, env), timeout=90)


def member_ids(asg: SimulatedAsg, node: Node) -> set[str]:
    return {str(m["ID"]) for m in asg.members(node)}


def wait_for_one_leader(nodes: list[Node], timeout: float = 20) -> str:
    """Wait until every node reports the same leader, one of them; returns its member id."""
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while time.monotonic() < deadline:
        try:
            seen = {n.instance_id: str(member_status(n).get("leader", "")) for n in nodes}
            own = {str(member_status(n)["header"]["member_id"]) for n in nodes}
        except requests.RequestException:
            time.sleep(0.2)
            continue
        leaders = set(seen.values())
        if len(leaders) == 1 and leaders <= own:
            return leaders.pop()
        time.sleep(0.2)
    raise AssertionError(f"no agreed leader among the remaining members: {seen}")


def removed_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": INFO: removed member" in line]


def scale_in(asg: SimulatedAsg, victims: list[Node]) -> None:
    """Scale-in as the ASG does it: the instances' etcd stops, then they are terminated without replacement."""
    for victim in victims:
        asg.stop_etcd(victim)
    for victim in victims:
        assert asg.terminate(victim, replace=False) == []


def test_scale_in_five_to_three_in_one_reconcile(sim: SimFactory, etcd_binary: Path) -> None:
    test_started = time.monotonic()
    asg = sim(5, etcd_binary)
    asg.bootstrap_static(timeout=60)  # the cluster is the setting here, not the subject
    asg.put("survives", "yes")
    node = asg.nodes[0]
    victims = asg.nodes[3:]
    scale_in(asg, victims)
    assert asg.desired_capacity == 3
    env_file = node.env_file.read_bytes(), node.env_file.stat().st_mtime_ns

    dry = reconcile(asg, node, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "5 members, 3 of 5 voting members answer (quorum 3)" in dry.stdout
    would = [line for line in dry.stdout.splitlines() if line.startswith("would remove member")]
    assert sorted(line.split()[4] for line in would) == sorted(v.instance_id for v in victims)
    assert all(f"instance {v.instance_id} is no longer in ASG {asg.name}" in dry.stdout for v in victims)
    assert len(asg.members(node)) == 5 and not state_file(node).exists()

    started = time.monotonic()
    result = reconcile(asg, node)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    members = asg.members(node)
    assert sorted(m["name"] for m in members) == sorted(n.instance_id for n in asg.nodes)
    removed = removed_lines(result.stderr)
    assert len(removed) == 2, result.stderr
    for victim in victims:
        assert any(victim.instance_id in line and "is no longer in ASG" in line for line in removed), removed
    asg.wait_healthy(3, timeout=30)
    assert asg.get("survives") == "yes"
    assert (node.env_file.read_bytes(), node.env_file.stat().st_mtime_ns) == env_file  # never touched

    again = reconcile(asg, asg.nodes[2])
    assert again.returncode == 0, again.stderr
    assert "nothing to remove" in again.stderr and not removed_lines(again.stderr)
    whole = time.monotonic() - test_started
    print(f"\n[etcd {asg.etcd_version}] one reconcile 5 -> 3: {took:.2f}s; whole test: {whole:.1f}s")


@pytest.mark.parametrize("how", ["detached", "standby"])
def test_gone_leader_is_removed_and_the_rest_elect_a_new_one(sim: SimFactory, etcd_binary: Path, how: str) -> None:
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    leader = leader_of(asg.nodes)
    leader_id = str(member_status(leader)["header"]["member_id"])
    rest = [n for n in asg.nodes if n is not leader]
    env: dict[str, str] = {}
    if how == "detached":  # out of the ASG, its etcd still running and still the leader
        asg.autoscaling.detach_instances(
            InstanceIds=[leader.instance_id], AutoScalingGroupName=asg.name, ShouldDecrementDesiredCapacity=True
        )
    else:  # Standby, and the setting says such members go
        asg.enter_standby(leader, decrement=True)
        env["ETCD_AWS_CLUSTER_RECONCILE_REMOVE_STATES"] = "Standby"
    assert str(member_status(rest[0])["leader"]) == leader_id

    result = reconcile(asg, rest[0], env=env)
    assert result.returncode == 0, result.stderr
    (line,) = removed_lines(result.stderr)
    assert leader.instance_id in line
    assert ("is no longer in ASG" if how == "detached" else "is Standby (reconcile_remove_states)") in line
    new_leader = wait_for_one_leader(rest)
    assert new_leader != leader_id
    assert sorted(m["name"] for m in asg.members(rest[0])) == sorted(n.instance_id for n in rest)
    if how == "detached":
        asg.refresh()  # the harness retires the detached instance (stops its etcd, if it has not exited)
    else:
        asg.stop_etcd(leader)
    asg.wait_healthy(2, timeout=30)
    asg.put("after", "re-election")
    assert asg.get("after") == "re-election"


def test_no_quorum_exits_non_zero_and_changes_nothing(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    node = asg.nodes[0]
    for victim in asg.nodes[1:]:
        asg.stop_etcd(victim, kill=True)
        asg.terminate(victim, replace=False)
    before = member_ids(asg, node)
    assert len(before) == 3
    for args in ((), ("--dry-run",)):
        started = time.monotonic()
        result = reconcile(asg, node, *args, env={"ETCD_AWS_CLUSTER_TIMEOUT": "10"})
        assert result.returncode == 6, result.stderr
        errors = [line for line in result.stderr.splitlines() if "error (" in line]
        assert len(errors) == 1 and "no quorum: 1 of 3" in errors[0], result.stderr
        assert time.monotonic() - started < 15
    assert member_ids(asg, node) == before
    assert not state_file(node).exists()


def test_concurrent_reconciles_converge(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(5, etcd_binary)
    asg.bootstrap_static(timeout=60)  # the cluster is the setting here, not the subject
    victims = asg.nodes[3:]
    scale_in(asg, victims)
    survivors = asg.nodes
    # Two runs per survivor, each with its own state file (so no host lock serializes them): six at once.
    runs = [
        asg.start_agent(n, "reconcile", env=reconcile_env(n, {"ETCD_AWS_CLUSTER_RECONCILE_STATE_FILE": str(path)}))
        for n in survivors
        for path in (n.workdir / "a.json", n.workdir / "b.json")
    ]
    results = [(p.wait(90), p.communicate()[1]) for p in runs]
    assert [code for code, _ in results] == [0] * len(runs), results
    for node in survivors:
        assert sorted(m["name"] for m in asg.members(node)) == sorted(n.instance_id for n in survivors)
    logs = "\n".join(err for _, err in results)
    for victim in victims:  # removed by some run, and no run failed over the others' removals
        assert any(victim.instance_id in line for line in removed_lines(logs)), logs
    asg.wait_healthy(3, timeout=30)
    print("\n" + "\n".join(line for line in logs.splitlines() if "removed" in line or "retrying" in line))


def test_failed_join_is_removed_after_the_grace_period_and_not_before(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    (joiner,) = asg.scale_to(4)
    run_ok(asg, joiner)  # adds its member and writes its file; its etcd never starts: a failed join
    unstarted = [m for m in asg.members(asg.nodes[0]) if not m.get("name")]
    assert len(unstarted) == 1
    node = asg.nodes[0]
    grace = 20.0  # three agent runs must fit before it ends, on 4 test workers sharing 2 CPUs
    env = {"ETCD_AWS_CLUSTER_RECONCILE_GRACE": str(grace)}

    first = reconcile(asg, node, env=env)
    assert first.returncode == 0, first.stderr
    seen = json.loads(state_file(node).read_text())["unstarted_since"]
    assert list(seen) == [f"{int(unstarted[0]['ID']):x}"]
    first_seen = float(next(iter(seen.values())))
    assert "kept for now" in first.stderr and not removed_lines(first.stderr)

    early = reconcile(asg, node, env=env)
    assert early.returncode == 0, early.stderr
    dry = reconcile(asg, node, "--dry-run", env=env)
    assert time.time() - first_seen < grace, "the machine was too slow for this test's grace period"
    assert len(asg.members(node)) == 4 and not removed_lines(early.stderr)
    assert "would remove" not in dry.stdout and "kept for now" in dry.stdout

    time.sleep(max(0.0, first_seen + grace + 0.2 - time.time()))
    late = reconcile(asg, node, env=env)
    assert late.returncode == 0, late.stderr
    (line,) = removed_lines(late.stderr)
    assert "never started (a failed join" in line and joiner.peer_url in line
    assert sorted(m["name"] for m in asg.members(node)) == sorted(n.instance_id for n in asg.nodes if n is not joiner)
    assert json.loads(state_file(node).read_text())["unstarted_since"] == {}
    asg.wait_healthy(3, timeout=30)
