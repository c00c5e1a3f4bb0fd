"""`etcd-aws-cluster leave` against real etcd: removes only this instance's member, idempotent, quorum-guarded."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.harness.fake_imds import LIFECYCLE_PATH
from tests.harness.fixtures import SimFactory
from tests.harness.sim import Node, SimulatedAsg
from tests.integration.helpers import boot, run_ok
from tests.packaging_helpers import (
    MAX_EXPOSURE,
    REPO,
    STAND_IN_ETCD_UNIT,
    exposure,
    parse_unit,
    single,
    unit_root,
    values,
    verify,
)

pytestmark = pytest.mark.integration


def names(asg: SimulatedAsg, via: Node) -> list[str]:
    return sorted(m.get("name") or "(unstarted)" for m in asg.members(via))


def wait_exit(asg: SimulatedAsg, node: Node, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.etcd_pid is not None and not asg.registry.is_running(node.etcd_pid):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.etcd_matrix
def test_leave_removes_this_member_and_is_idempotent(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    asg.put("survives", "yes")
    stay, leaver = asg.nodes[0], asg.nodes[2]

    dry = run_ok(asg, leaver, "leave", "--dry-run")
    assert dry.stdout.startswith("# would remove this instance's member ") and leaver.instance_id in dry.stdout
    assert len(asg.members(stay)) == 3

    result = run_ok(asg, leaver, "leave")
    assert "removed this instance's member" in result.stderr
    assert names(asg, stay) == sorted(n.instance_id for n in asg.nodes if n is not leaver)
    assert wait_exit(asg, leaver), "a removed member's etcd stops by itself"
    asg.stop_etcd(leaver)  # reap it
    asg.wait_healthy(2)  # a new election follows when the leaver was the leader
    assert asg.get("survives", stay) == "yes"

    again = run_ok(asg, leaver, "leave")  # its etcd is gone now; the others answer
    assert "not a member of the cluster (already left)" in again.stderr
    assert len(asg.members(stay)) == 2


def test_leave_refuses_to_break_quorum(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    asg.stop_etcd(asg.nodes[0], kill=True)
    leaver = asg.nodes[1]
    result = asg.run_agent(leaver, "leave", timeout=60)
    assert result.returncode == 6, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error (" in line]
    assert errors == [
        f"etcd-aws-cluster: ERROR: error (refused): removing member {leaver.instance_id} would leave "
        "1 of 2 voting members healthy, below quorum; refusing"
    ]
    assert len(asg.members(leaver)) == 3


def test_leave_if_terminating_waits_for_the_terminated_target_state(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    node = asg.nodes[1]

    staying = run_ok(asg, node, "leave", "--if-terminating")  # InService: nothing to do
    assert "target lifecycle state is InService, not Terminated" in staying.stderr
    node.imds.path_overrides[LIFECYCLE_PATH] = None  # IMDS without the item (HTTP 404): nothing to do either
    assert "target lifecycle state is not set" in run_ok(asg, node, "leave", "--if-terminating").stderr
    assert len(asg.members(node)) == 3

    del node.imds.path_overrides[LIFECYCLE_PATH]
    node.imds.lifecycle_state = "Terminated"  # what IMDS says once the ASG starts terminating it
    result = run_ok(asg, node, "leave", "--if-terminating")
    assert "target lifecycle state is Terminated: leaving the cluster" in result.stderr
    assert node.instance_id not in names(asg, asg.nodes[0])
    assert len(asg.members(asg.nodes[0])) == 2


def test_leave_without_any_etcd_is_an_etcd_error(sim: SimFactory) -> None:
    asg = sim(2)
    result = asg.run_agent(asg.nodes[0], "leave", timeout=60)
    assert result.returncode == 5, result.stderr
    assert "cannot tell whether this instance is still a member" in result.stderr


LEAVE_UNIT = REPO / "packaging" / "systemd" / "etcd-aws-cluster-leave.service"


def test_leave_unit_runs_leave_at_shutdown_before_etcd_stops() -> None:
    unit = parse_unit(LEAVE_UNIT.read_text())
    # At start it waits for a hooked termination (leave --on-termination), again and again; at stop it covers one
    # without a hook.
    assert single(unit, "Service", "Type") == "simple" and single(unit, "Service", "Restart") == "always"
    waiting = ["/usr/bin/etcd-aws-cluster", "leave", "--on-termination"]
    assert single(unit, "Service", "ExecStart").split()[:3] == waiting
    assert single(unit, "Service", "ExecStop").split()[:3] == ["/usr/bin/etcd-aws-cluster", "leave", "--if-terminating"]
    # Units stop in reverse start order: After= etcd makes this one stop (and leave) while etcd still runs.
    assert {"etcd.service", "etcd2.service", "network-online.target"} <= set(values(unit, "Unit", "After"))
    # Never tied to etcd's own start/stop: a restart of etcd must not remove the member.
    for key in ("Requires", "BindsTo", "PartOf", "Requisite"):
        assert not [u for u in values(unit, "Unit", key) if u.startswith("etcd")], key
    timeout = float(single(unit, "Service", "ExecStop").split("--timeout")[1].split()[0])
    assert float(single(unit, "Service", "TimeoutStopSec")) > timeout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_leave_unit_verifies_clean_and_is_sandboxed(tmp_path: Path) -> None:
    root = unit_root(
        tmp_path,
        {LEAVE_UNIT.name: LEAVE_UNIT, "etcd.service": STAND_IN_ETCD_UNIT},
        executables=["/usr/bin/etcd-aws-cluster", "/usr/bin/etcd"],
    )
    result = verify(LEAVE_UNIT.name, root)
    assert (result.returncode, result.stderr) == (0, "")
    score, report = exposure(LEAVE_UNIT)
    assert score <= MAX_EXPOSURE, report
