"""The agent end to end: moto, one fake IMDS and one real etcd per simulated instance, all on 127.0.0.0/8."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.harness.fixtures import SimFactory
from tests.integration.helpers import boot, decision, env, member_change, run_ok

pytestmark = pytest.mark.integration


@pytest.mark.etcd_matrix
def test_three_nodes_bootstrap_concurrently(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(3, etcd_binary)
    logs = boot(asg, asg.nodes)
    members = asg.wait_healthy(3)
    assert sorted(m["name"] for m in members) == sorted(n.instance_id for n in asg.nodes)
    files = [env(n) for n in asg.nodes]
    assert {f["ETCD_INITIAL_CLUSTER"] for f in files} == {
        ",".join(f"{n.instance_id}={n.peer_url}" for n in sorted(asg.nodes, key=lambda n: n.instance_id))
    }
    # All new, or a late node that found the others already up and used "existing": never two clusters.
    assert {decision(err) for err in logs.values()} <= {"new", "member"}
    for node in asg.nodes:
        values = env(node)
        assert values["ETCD_NAME"] == node.instance_id
        assert values["ETCD_ADVERTISE_CLIENT_URLS"] == node.client_url
        assert values["ETCD_LISTEN_CLIENT_URLS"] == node.client_url
        assert values["ETCD_LISTEN_PEER_URLS"] == values["ETCD_INITIAL_ADVERTISE_PEER_URLS"] == node.peer_url


def test_rerun_on_a_running_member_changes_nothing(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    before = asg.wait_healthy(3)
    node = asg.nodes[0]
    first = env(node)
    result = run_ok(asg, node)
    assert decision(result.stderr) == "member"
    assert asg.wait_healthy(3) == before
    after = env(node)
    assert after["ETCD_INITIAL_CLUSTER_STATE"] == "existing"  # rewritten each boot: no longer "new"
    assert {k: v for k, v in after.items() if k != "ETCD_INITIAL_CLUSTER_STATE"} == {
        k: v for k, v in first.items() if k != "ETCD_INITIAL_CLUSTER_STATE"
    }


@pytest.mark.etcd_matrix
def test_replaced_instance_removes_the_dead_member_and_joins(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    asg.put("survives", "yes")
    victim = asg.nodes[1]
    asg.stop_etcd(victim, kill=True)
    (replacement,) = asg.terminate(victim)
    logs = boot(asg, [replacement])
    assert decision(logs[replacement.instance_id]) == "join"
    members = asg.wait_healthy(3, timeout=60)
    assert sorted(m["name"] for m in members) == sorted(n.instance_id for n in asg.nodes)
    assert victim.instance_id not in {m["name"] for m in members}
    assert env(replacement)["ETCD_INITIAL_CLUSTER_STATE"] == "existing"
    assert asg.get("survives") == "yes"


def test_scale_out_with_two_concurrent_joiners(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    new = asg.scale_to(5)
    assert len(new) == 2
    logs = boot(asg, new, timeout=150)
    members = asg.wait_healthy(5, timeout=60)
    assert sorted(m["name"] for m in members) == sorted(n.instance_id for n in asg.nodes)
    assert {decision(logs[n.instance_id]) for n in new} <= {"join"}


def test_rerun_after_a_partial_join_converges(sim: SimFactory, etcd_binary: Path) -> None:
    """A run that added its member and died before writing the file: the next run takes that member as its own."""
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    new = asg.scale_to(4)[0]
    member_change(asg, asg.nodes[0], "add", {"peerURLs": [new.peer_url]})
    result = run_ok(asg, new)
    assert decision(result.stderr) == "member"
    assert env(new)["ETCD_INITIAL_CLUSTER_STATE"] == "existing"
    asg.start_etcd(new)
    members = asg.wait_healthy(4, timeout=60)
    assert sorted(m["name"] for m in members) == sorted(n.instance_id for n in asg.nodes)


def test_partial_join_beside_the_unstarted_member_of_a_dead_instance(sim: SimFactory, etcd_binary: Path) -> None:
    """Two joiners were added; one instance died before its etcd started. The other still starts: the dead one's
    member is listed in its file under its id (etcd matches the others by peer URL), not refused. (etcd adds a
    second unstarted member only with --strict-reconfig-check=false, as some operators run it.)"""
    asg = sim(3, etcd_binary, etcd_env={"ETCD_STRICT_RECONFIG_CHECK": "false"})
    asg.bootstrap_static()
    dead, survivor = asg.scale_to(5)
    for node in (dead, survivor):
        member_change(asg, asg.nodes[0], "add", {"peerURLs": [node.peer_url]})
    ghost = next(m for m in asg.members() if dead.peer_url in m["peerURLs"])
    asg.terminate(dead, replace=False)
    result = run_ok(asg, survivor)
    assert decision(result.stderr) == "member"
    assert f"member-{int(ghost['ID']):x}={dead.peer_url}" in env(survivor)["ETCD_INITIAL_CLUSTER"]
    asg.start_etcd(survivor)
    deadline = time.monotonic() + 60
    while not any(m.get("name") == survivor.instance_id for m in asg.members()):
        assert time.monotonic() < deadline, survivor.etcd_log_tail()
        time.sleep(0.2)
    assert asg.health(survivor)
