"""What only some etcd releases do: 3.6's one-learner-at-a-time default and the 3.5 -> 3.6 rolling upgrade by
instance replacement, the way an operator moves an ASG to a new AMI."""

from __future__ import annotations

import time

import pytest
import requests

from tests.harness import etcd_binaries
from tests.harness.fixtures import SimFactory
from tests.harness.sim import Node, SimulatedAsg
from tests.integration.helpers import boot, decision, env, run_ok

pytestmark = pytest.mark.integration

LEARNER = {"ETCD_AWS_CLUSTER_LEARNER": "true"}


def versions(node: Node, timeout: float = 2.0) -> dict[str, str]:
    """``GET /version`` of ``node``'s etcd: its own release (etcdserver) and the cluster's (etcdcluster)."""
    answer: dict[str, str] = requests.get(f"{node.client_url}/version", timeout=timeout).json()
    return answer


def wait_cluster_version(asg: SimulatedAsg, prefix: str, timeout: float = 60) -> dict[str, str]:
    """Wait until every running etcd reports a cluster version starting with ``prefix`` (the leader raises it
    once every member runs the new release); returns the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        answers = [versions(node) for node in asg.running_nodes()]
        if answers and all(a.get("etcdcluster", "").startswith(prefix) for a in answers):
            return answers[0]
        assert time.monotonic() < deadline, f"cluster version still {answers}"
        time.sleep(0.5)


def wait_started_learner(asg: SimulatedAsg, learner: Node, timeout: float = 60) -> None:
    """Wait until a voter lists ``learner`` as a started learner (the sim's ``wait_healthy`` asks every etcd,
    and a learner refuses the member list)."""
    voter = asg.nodes[0]
    deadline = time.monotonic() + timeout
    while True:
        mine = [m for m in asg.members(voter) if learner.peer_url in m["peerURLs"]]
        if [(m.get("name"), m.get("isLearner")) for m in mine] == [(learner.instance_id, True)]:
            return
        assert time.monotonic() < deadline, f"{learner} not a started learner: {mine}\n{learner.etcd_log_tail()}"
        time.sleep(0.5)


@pytest.mark.parametrize("label", ["3.6", "3.7"])
def test_second_learner_waits_until_the_first_is_promoted(sim: SimFactory, label: str) -> None:
    """From 3.6 etcd keeps one learner at a time (--max-learners 1): a second replacement joining as a learner
    while the first is still a learner is refused, so the agent waits for the promotion, then joins."""
    asg = sim(5, etcd_binaries.release(label).etcd)
    boot(asg, asg.nodes)
    asg.wait_healthy(5)
    asg.put("survives", "yes")
    first_victim, second_victim = asg.nodes[3], asg.nodes[4]
    for victim in (first_victim, second_victim):
        asg.stop_etcd(victim, kill=True)
    (first, second) = asg.terminate(first_victim) + asg.terminate(second_victim)
    boot(asg, [first], env=LEARNER)
    wait_started_learner(asg, first)

    refused = asg.run_agent(second, env={**LEARNER, "ETCD_AWS_CLUSTER_TIMEOUT": "8"}, timeout=60)
    assert refused.returncode != 0, refused.stderr
    retried = [line for line in refused.stderr.splitlines() if "too many learner members" in line]
    assert len(retried) >= 2 and retried[0].endswith("; retrying"), refused.stderr
    assert not [m for m in asg.members() if second.peer_url in m["peerURLs"]]

    waiting = asg.start_agent(second, env=LEARNER)
    assert "promoted learner" in run_ok(asg, first, "promote", env=LEARNER, timeout=120).stderr
    _, stderr = waiting.communicate(timeout=120)
    assert waiting.returncode == 0 and decision(stderr) == "join", stderr
    asg.start_etcd(second)
    assert "promoted learner" in run_ok(asg, second, "promote", env=LEARNER, timeout=120).stderr
    members = asg.wait_healthy(5, timeout=60)
    assert not any(m.get("isLearner") for m in members)
    assert {first.instance_id, second.instance_id} <= {m["name"] for m in members}
    assert asg.get("survives") == "yes"


def test_rolling_upgrade_from_35_to_36_by_instance_replacement(sim: SimFactory) -> None:
    """A 3.5.30 cluster formed by the agent; each instance in turn is terminated and its replacement runs 3.6
    and joins through the agent. The data survives and the cluster ends on 3.6."""
    old, new = etcd_binaries.release(etcd_binaries.etcd_provision.SID_ETCD_VERSION), etcd_binaries.release("3.6")
    asg = sim(3, old.etcd)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    assert wait_cluster_version(asg, "3.5.")["etcdserver"] == old.version
    asg.put("before-the-upgrade", "kept")

    for step, victim in enumerate(list(asg.nodes)):
        asg.stop_etcd(victim)
        (replacement,) = asg.terminate(victim)
        replacement.etcd_binary = new.etcd
        logs = boot(asg, [replacement])
        assert decision(logs[replacement.instance_id]) == "join"
        assert env(replacement)["ETCD_INITIAL_CLUSTER_STATE"] == "existing"
        members = asg.wait_healthy(3, timeout=90)
        assert victim.instance_id not in {m["name"] for m in members}
        assert versions(replacement)["etcdserver"] == new.version
        asg.put(f"after-step-{step}", "kept")

    final = wait_cluster_version(asg, "3.6.")
    assert {versions(node)["etcdserver"] for node in asg.nodes} == {new.version}, final
    assert asg.get("before-the-upgrade") == "kept"
    assert [asg.get(f"after-step-{step}") for step in range(3)] == ["kept"] * 3
