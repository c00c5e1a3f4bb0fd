"""Situations that split, stall or break clusters with lesser tools, each reproduced with real etcd."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from etcd_aws_cluster.adapters.atomic_file import TEST_PAUSE_VARIABLE
from etcd_aws_cluster.adapters.wal import WalIds, read_ids
from etcd_aws_cluster.core.envfile import KEYS
from tests.harness import etcd_binaries
from tests.harness.fixtures import SimFactory
from tests.harness.sim import Node, SimulatedAsg
from tests.integration.helpers import boot, decision, env, member_change, run_ok, wait_listening

pytestmark = pytest.mark.integration


@pytest.mark.etcd_matrix
def test_whole_cluster_reboot_restarts_from_local_data_without_waiting(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    asg.put("before-reboot", "kept")
    for node in asg.nodes:
        asg.stop_etcd(node)
    started = time.monotonic()
    logs = boot(asg, asg.nodes)  # every agent runs while no etcd answers
    elapsed = time.monotonic() - started
    decisions = {decision(err) for err in logs.values()}
    # Agents that run once two etcds are back (quorum) find a cluster answering: "member" is right for them too.
    assert "restart" in decisions and decisions <= {"restart", "member"}
    assert {env(n)["ETCD_INITIAL_CLUSTER_STATE"] for n in asg.nodes} == {"existing"}
    assert elapsed < 10, f"agents waited {elapsed:.1f}s for peers during a whole-cluster reboot"
    asg.wait_healthy(3)
    assert asg.get("before-reboot") == "kept"


@pytest.mark.etcd_matrix
def test_nodes_started_seconds_apart_form_one_cluster(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(3, etcd_binary)
    first, *rest = asg.nodes
    boot(asg, [first])  # its etcd now waits for quorum: client port open but silent
    wait_listening(first)
    started = time.monotonic()
    logs = boot(asg, rest, env={"ETCD_AWS_CLUSTER_PROBE_TIMEOUT": "10"})
    elapsed = time.monotonic() - started
    members = asg.wait_healthy(3)
    assert {decision(err) for err in logs.values()} <= {"new", "member"}
    # the first etcd's silent client port was recognised from its peer port, not waited out for the probe timeout
    assert "its peer port says it is forming a cluster" in "".join(logs.values())
    assert elapsed < 8, f"the late agents took {elapsed:.1f}s"  # well under the 10 s probe timeout
    assert sorted(m["name"] for m in members) == sorted(n.instance_id for n in asg.nodes)


def test_two_late_members_of_a_new_cluster_start_one_at_a_time(sim: SimFactory, etcd_binary: Path) -> None:
    # Three of five formed the cluster; the last two (named in its initial list, never run) boot together. Both
    # writing "existing" at once left their etcds waiting on each other's silent peer port for over a minute.
    asg = sim(5, etcd_binary)
    asg.write_static_env()
    early, late = asg.nodes[:3], sorted(asg.nodes[3:], key=lambda n: n.instance_id)
    for node in early:
        asg.start_etcd(node)
    asg.wait_healthy(5, timeout=60)  # the three running ones agree on five members, two not started
    started = time.monotonic()
    logs = boot(asg, late)
    assert {decision(err) for err in logs.values()} == {"member"}
    # the second waited for the first, unless the first's etcd was already up and answering when it looked
    second = logs[late[1].instance_id]
    assert "members start one at a time" in second or f"etcd on {late[0].instance_id} ({late[0].ip}) lists" in second
    members = asg.wait_healthy(5, timeout=60)
    elapsed = time.monotonic() - started
    assert sorted(m["name"] for m in members) == sorted(n.instance_id for n in asg.nodes)
    assert all(m.get("clientURLs") for m in members)
    assert elapsed < 30, f"the late members took {elapsed:.1f}s to join"


def test_five_nodes_bootstrap_concurrently(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(5, etcd_binary)
    logs = boot(asg, asg.nodes)
    members = asg.wait_healthy(5, timeout=60)
    assert {decision(err) for err in logs.values()} <= {"new", "member"}
    assert sorted(m["name"] for m in members) == sorted(n.instance_id for n in asg.nodes)
    assert len({env(n)["ETCD_INITIAL_CLUSTER"] for n in asg.nodes}) == 1


@pytest.mark.etcd_matrix
def test_hung_peer_costs_one_probe_timeout(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(5, etcd_binary)
    asg.bootstrap_static(timeout=60)  # the cluster is the setting here, not the subject
    for hung in asg.nodes[3:]:
        asg.pause_etcd(hung)  # accepts TCP, never answers
    started = time.monotonic()
    result = run_ok(asg, asg.nodes[0], env={"ETCD_AWS_CLUSTER_PROBE_TIMEOUT": "8.0"})
    elapsed = time.monotonic() - started
    assert decision(result.stderr) == "member"
    assert result.stderr.count("did not answer within 8.0s") == 2
    # probed one after the other, two hung peers would cost 16 s before anything else; in parallel one 8 s timeout
    # plus the run itself (several seconds with 4 test workers on a 2-CPU machine)
    assert elapsed < 14.0, f"two hung peers cost {elapsed:.1f}s with an 8 s probe timeout"


def test_replacement_join_with_a_hung_peer(sim: SimFactory, etcd_binary: Path) -> None:
    """3.5 adds a member while a quorum is connected; 3.4 insists on every voting member: a clear, bounded refusal
    (3.4 may go on counting the hung member as connected for a few seconds, and then the join succeeds)."""
    asg = sim(5, etcd_binary)
    asg.bootstrap_static(timeout=60)  # the cluster is the setting here, not the subject
    hung = asg.nodes[1]
    asg.pause_etcd(hung)
    victim = asg.nodes[4]
    asg.stop_etcd(victim, kill=True)
    (replacement,) = asg.terminate(victim)
    started = time.monotonic()
    result = asg.run_agent(replacement, env={"ETCD_AWS_CLUSTER_TIMEOUT": "12"}, timeout=60)
    assert time.monotonic() - started < 20
    if result.returncode != 0:
        assert (etcd_binaries.version_of(etcd_binary) or "").startswith("3.4."), result.stderr
        assert result.returncode == 5, result.stderr
        assert f"not answering: {hung.instance_id}" in result.stderr
        return
    assert decision(result.stderr) == "join"
    asg.start_etcd(replacement)
    asg.resume_etcd(hung)
    members = asg.wait_healthy(5, timeout=60)
    assert victim.instance_id not in {m["name"] for m in members}


def removed_while_stopped(sim: SimFactory, etcd_binary: Path) -> tuple[SimulatedAsg, Node, WalIds]:
    """A 3-node cluster whose third node's etcd was stopped and its member removed: stale data on that node."""
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    node = asg.nodes[2]
    old_ids = read_ids(node.data_dir)
    assert old_ids is not None
    asg.stop_etcd(node)
    member_change(asg, asg.nodes[0], "remove", {"ID": str(old_ids.member_id)})
    return asg, node, old_ids


def test_removed_member_moves_its_stale_data_aside_and_rejoins(sim: SimFactory, etcd_binary: Path) -> None:
    asg, node, old_ids = removed_while_stopped(sim, etcd_binary)
    result = run_ok(asg, node)
    assert decision(result.stderr) == "join"
    moved = [p for p in node.data_dir.parent.iterdir() if p.name.startswith(node.data_dir.name + ".stale-")]
    assert len(moved) == 1 and (moved[0] / "member" / "wal").is_dir()
    asg.start_etcd(node)
    members = asg.wait_healthy(3, timeout=60)
    assert node.instance_id in {m["name"] for m in members}
    new_ids = read_ids(node.data_dir)
    assert new_ids is not None and new_ids.member_id != old_ids.member_id


@pytest.mark.etcd_matrix
def test_a_lost_data_dir_is_replaced_by_a_fresh_member_that_gets_the_data_from_the_leader(
    sim: SimFactory, etcd_binary: Path
) -> None:
    # An instance-store data dir comes back empty after a stop/start: same instance, same IP, a member that ran.
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    asg.put("/kept", "yes")
    node = asg.nodes[2]
    old_ids = read_ids(node.data_dir)
    assert old_ids is not None
    asg.stop_etcd(node)
    shutil.rmtree(node.data_dir)
    result = run_ok(asg, node)
    assert decision(result.stderr) == "join", result.stderr
    assert "data dir lost" in result.stderr
    asg.start_etcd(node)  # with "existing" on the old entry etcd would panic on every start
    members = asg.wait_healthy(3, timeout=60)
    assert node.instance_id in {m["name"] for m in members}
    assert asg.get("/kept", node=node) == "yes"  # the new member got the data from the leader
    new_ids = read_ids(node.data_dir)
    assert new_ids is not None and new_ids.member_id != old_ids.member_id


@pytest.fixture
def bind_mounted() -> Iterator[Callable[[Path], None]]:
    """Make a directory a mount point of its own (`mount --bind d d`), as an EBS volume or `docker -v` is; every
    mount is undone after the test. Needs root (CI runs as root)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) for a bind mount")
    mounted: list[Path] = []

    def bind(directory: Path) -> None:
        subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
        mounted.append(directory)

    try:
        yield bind
    finally:
        for directory in reversed(mounted):
            # --lazy: etcd (stopped by the sim fixture, torn down after this one) may still hold files there.
            subprocess.run(["umount", "--lazy", str(directory)], check=True)


def test_stale_data_on_a_mount_point_is_kept_inside_it_and_etcd_starts(
    sim: SimFactory, etcd_binary: Path, bind_mounted: Callable[[Path], None]
) -> None:
    asg, node, old_ids = removed_while_stopped(sim, etcd_binary)
    bind_mounted(node.data_dir)  # renaming it now fails with EBUSY
    result = run_ok(asg, node)
    assert decision(result.stderr) == "join"
    assert not [p for p in node.data_dir.parent.iterdir() if ".stale-" in p.name]
    (kept,) = [p for p in node.data_dir.iterdir() if p.name.startswith(".stale-")]
    assert read_ids(kept) == old_ids
    asg.start_etcd(node)  # etcd starts from a data dir that holds only the .stale- subdir
    members = asg.wait_healthy(3, timeout=60)
    assert node.instance_id in {m["name"] for m in members}
    new_ids = read_ids(node.data_dir)
    assert new_ids is not None and new_ids.member_id != old_ids.member_id


def test_local_wal_ids_match_the_cluster(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    answer = asg.member_list(asg.nodes[0])
    ids = read_ids(asg.nodes[0].data_dir)
    assert ids is not None
    assert ids.cluster_id == int(answer["header"]["cluster_id"])
    assert ids.member_id == int(answer["header"]["member_id"])


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the agent exited {proc.returncode} first:\n{proc.communicate()[1]}"
        assert time.monotonic() < deadline, "the agent never reached the write"
        time.sleep(0.01)


def complete_temp_file(directory: Path) -> bool:
    """A temp file of the env file holds the whole new text (the agent wrote and fsynced it)."""
    for path in directory.glob("*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            if path.read_text().count("\n") == len(KEYS) + 1:
                return True
    return False


def test_kill_9_at_the_write_leaves_the_old_file_or_the_whole_new_one(sim: SimFactory) -> None:
    """The fault lands at the write itself: the agent pauses (a test-only hook) just before and just after
    renaming its complete temp file into place, and is killed there."""
    asg = sim(3)
    node = asg.nodes[0]
    old = "ETCD_NAME=old-file\n"
    outcomes: list[str] = []
    leftovers: list[Path] = []
    for moment in ("before the rename", "after the rename"):
        node.env_file.write_text(old)
        # The pause comes before and after the rename: long where the kill lands, short where it does not.
        proc = asg.start_agent(node, env={TEST_PAUSE_VARIABLE: "30" if moment == "before the rename" else "3"})
        if moment == "before the rename":
            wait_for(lambda: complete_temp_file(node.env_file.parent), proc)
        else:
            wait_for(lambda: node.env_file.read_text() != old, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        leftovers.extend(p for p in node.env_file.parent.iterdir() if p.name.endswith(".tmp"))
        text = node.env_file.read_text()
        if text == old:
            outcomes.append("old")
        else:
            lines = [line for line in text.splitlines() if not line.startswith("#")]
            assert [line.split("=", 1)[0] for line in lines] == list(KEYS), text
            assert text.endswith("\n")
            outcomes.append("new")
    assert outcomes == ["old", "new"]
    assert leftovers, "the kill before the rename leaves its temp file"
    # ...which the next run, holding the lock, removed before writing
    assert not [p for p in node.env_file.parent.iterdir() if p.name.endswith(".tmp")], leftovers


@pytest.mark.etcd_matrix
def test_learner_join_then_promote(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    victim = asg.nodes[2]
    asg.stop_etcd(victim, kill=True)
    (replacement,) = asg.terminate(victim)
    learner = {"ETCD_AWS_CLUSTER_LEARNER": "true"}
    assert decision(run_ok(asg, replacement, env=learner).stderr) == "join"
    mine = [m for m in asg.members() if replacement.peer_url in m["peerURLs"]]
    assert len(mine) == 1 and mine[0].get("isLearner") is True
    asg.start_etcd(replacement)
    promoted = run_ok(asg, replacement, "promote", env=learner, timeout=120)
    assert "promoted learner" in promoted.stderr
    members = asg.wait_healthy(3, timeout=60)
    assert not any(m.get("isLearner") for m in members)
    again = run_ok(asg, replacement, "promote", env=learner)
    assert "already a voting member" in again.stderr
