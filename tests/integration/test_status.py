"""`etcd-aws-cluster status` against real etcd: the table, the verdict and its exit code."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness.fixtures import SimFactory
from tests.harness.sim import Node, SimulatedAsg
from tests.integration.helpers import boot, member_change

pytestmark = pytest.mark.integration


def status(asg: SimulatedAsg, node: Node, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result: subprocess.CompletedProcess[str] = asg.run_agent(node, "status", *args, env=env, timeout=60)
    return result.returncode, result.stdout, result.stderr


def report(asg: SimulatedAsg, node: Node, expected_code: int) -> dict[str, Any]:
    code, out, err = status(asg, node, "--json")
    assert code == expected_code, f"{out}\n{err}"
    data: dict[str, Any] = json.loads(out)
    assert data["exit_code"] == code
    return data


@pytest.mark.etcd_matrix
def test_healthy_degraded_no_quorum(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    members = {m["name"]: int(m["ID"]) for m in asg.wait_healthy(3)}
    node = asg.nodes[0]

    data = report(asg, node, 0)
    assert data["verdict"] == "healthy" and data["reasons"] == []
    assert [r["instance_id"] for r in data["rows"]] == sorted(n.instance_id for n in asg.nodes)
    for row in data["rows"]:
        assert row["member_id"] == f"{members[row['instance_id']]:x}"
        assert row["ip"] == asg.node(row["instance_id"]).ip
        assert row["lifecycle_state"] == "InService"
        assert (row["started"], row["learner"], row["reachable"]) == (True, False, True)
    leaders = [r for r in data["rows"] if r["leader"]]
    assert len(leaders) == 1 and data["leader"] == leaders[0]["member_id"]

    code, out, err = status(asg, node)  # the table: plain text, no colour when not on a terminal
    assert code == 0, err
    assert out.splitlines()[0].split()[:4] == ["INSTANCE", "IP", "STATE", "MEMBER"]
    assert "\033[" not in out
    assert "healthy: 3 of 3 voting members reachable (quorum 2), leader " in out
    assert err == ""  # no log lines without -v: the table says it all

    down = asg.nodes[2]
    asg.stop_etcd(down, kill=True)
    asg.wait_healthy(3)  # the other two have a leader (a new one, if `down` led)
    data = report(asg, node, 10)
    assert data["verdict"] == "degraded"
    row = next(r for r in data["rows"] if r["instance_id"] == down.instance_id)
    assert row["reachable"] is False and row["note"] == "refused"
    assert any(down.instance_id in reason and "unreachable" in reason for reason in data["reasons"])

    asg.stop_etcd(asg.nodes[1], kill=True)
    data = report(asg, node, 11)
    assert data["verdict"] == "no quorum"
    assert data["reasons"][0] == "1 of 3 voting members reachable; quorum needs 2"


def add_member(asg: SimulatedAsg, peer_url: str, timeout: float = 30) -> dict[str, Any]:
    """member add by hand, retried while etcd says "unhealthy cluster"."""
    member: dict[str, Any] = member_change(asg, asg.nodes[0], "add", {"peerURLs": [peer_url]}, timeout)["member"]
    return member


def test_member_outside_the_asg_and_instance_without_member(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    added = add_member(asg, f"http://127.0.0.254:{asg.peer_port}")
    (spare,) = asg.scale_to(4)  # an instance whose agent has not run: no member
    data = report(asg, asg.nodes[1], 10)
    row = data["rows"][-1]
    assert (row["instance_id"], row["ip"], row["member_id"], row["started"]) == (
        None,
        "127.0.0.254",
        f"{int(added['ID']):x}",
        False,
    )
    assert row["note"] == f"not in ASG {asg.name}"
    assert f"member {int(added['ID']):x} (not started) belongs to no instance of ASG {asg.name}" in data["reasons"]
    assert data["voters"] == 4 and data["reachable_voters"] == 3  # 3 of 4 is still a quorum
    spare_row = next(r for r in data["rows"] if r["instance_id"] == spare.instance_id)
    assert (spare_row["member_id"], spare_row["reachable"], spare_row["note"]) == (None, False, "no member; refused")
    assert f"instance {spare.instance_id} (InService) has no member" in data["reasons"]


def test_no_etcd_at_all_is_no_quorum_and_errors_keep_their_codes(sim: SimFactory) -> None:
    asg = sim(2)
    data = report(asg, asg.nodes[0], 11)
    assert data["reasons"] == ["no etcd member answers on the 2 instances asked"]
    assert [r["reachable"] for r in data["rows"]] == [False, False]
    code, _, err = status(asg, asg.nodes[0], env={"AWS_EC2_METADATA_DISABLED": "true"})
    assert code == 3 and "AWS_EC2_METADATA_DISABLED" in err
    code, _, err = status(asg, asg.nodes[0], "--asg-name", "no-such-group")
    assert code == 4 and "no-such-group was not found" in err
