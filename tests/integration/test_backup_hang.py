"""Issue 15, item 1: healing never waits on S3. Real etcd, ASG/EC2 in moto, and S3 an endpoint that accepts
connections and never answers (tests/harness/silent_server.py) for the agent under test.

A replacement joins a cluster that has quorum: its decision needs nothing from S3, so its agent writes the env file
at once (the insurance snapshot and the record update are skipped, and say why); `leave` removes its member within
its time. Before, the agent hung until killed at 90 s after the member add: an added voter that never started.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.harness.fixtures import SimFactory
from tests.harness.silent_server import SilentServer
from tests.integration.helpers import decision, env, run_ok
from tests.integration.test_backup_restore import AGENT_TIMEOUT, booted

pytestmark = pytest.mark.integration

# Well inside the agent's timeout (120 s here, 180 s by default): a join costs a few seconds (etcd refuses member
# changes for ~5 s after a change) plus at most one first-answer window for S3, not a deadline.
HEALING_BOUND = 30.0


@pytest.mark.etcd_also("3.6")
def test_a_replacement_joins_at_once_while_s3_hangs(sim: SimFactory, etcd_binary: Path, moto_url: str) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    asg = backed.asg
    *survivors, victim = asg.nodes
    asg.stop_etcd(victim, kill=True)
    (replacement,) = asg.terminate(victim)
    with SilentServer() as silent:
        hanging = {**backed.env, "AWS_ENDPOINT_URL_S3": silent.url}  # ASG and EC2 stay on moto
        started = time.monotonic()
        result = run_ok(asg, replacement, env=hanging, timeout=AGENT_TIMEOUT)
        took = time.monotonic() - started
        assert silent.connections >= 1, "the agent never asked S3: the test would not show anything"
        rerun = run_ok(asg, survivors[0], env=hanging, timeout=AGENT_TIMEOUT)  # a member's boot: no change
    err = result.stderr
    assert took < HEALING_BOUND, f"the join took {took:.1f}s with S3 hanging:\n{err}"
    assert decision(err) == "join", err
    assert "backup before this membership change skipped" in err and "S3's first answer" in err, err
    assert "cluster record not updated after this membership change" in err, err
    assert err.index("wrote ") < err.index("cluster record not updated"), "the record must come after the env file"
    assert env(replacement)["ETCD_INITIAL_CLUSTER_STATE"] == "existing"
    asg.start_etcd(replacement)
    members = asg.wait_healthy(3, timeout=60)
    assert sorted(str(m["name"]) for m in members) == sorted(n.instance_id for n in asg.nodes)
    record = backed.store.read_record()  # moto: the skipped update left the record as it was
    assert record is not None and victim.instance_id in {i for i, _ in record.members}

    assert decision(rerun.stderr) == "member", rerun.stderr
    assert "could not bring the cluster record up to date" in rerun.stderr, rerun.stderr
    assert env(survivors[0])["ETCD_INITIAL_CLUSTER_STATE"] == "existing"


@pytest.mark.etcd_also("3.6")
def test_leave_while_s3_hangs_removes_the_member_within_its_time(
    sim: SimFactory, etcd_binary: Path, moto_url: str
) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    asg = backed.asg
    stay, leaver = asg.nodes[0], asg.nodes[2]
    with SilentServer() as silent:
        hanging = {**backed.env, "AWS_ENDPOINT_URL_S3": silent.url, "ETCD_AWS_CLUSTER_TIMEOUT": "60"}
        started = time.monotonic()
        result = run_ok(asg, leaver, "leave", env=hanging, timeout=90)
        took = time.monotonic() - started
    assert took < HEALING_BOUND, f"leave took {took:.1f}s with S3 hanging:\n{result.stderr}"
    assert "backup before removing this instance's member" in result.stderr and "skipped" in result.stderr
    assert "cluster record not updated after removing" in result.stderr, result.stderr
    assert asg.member_names(stay) == sorted(n.instance_id for n in asg.nodes if n is not leaver)


@pytest.mark.etcd_also("3.6")
def test_an_insurance_that_does_not_fit_is_skipped_and_the_record_follows_the_join(
    sim: SimFactory, etcd_binary: Path, moto_url: str
) -> None:
    backed = booted(sim, etcd_binary, moto_url)  # no snapshot yet: the insurance would take one
    asg = backed.asg
    victim = asg.nodes[-1]
    asg.stop_etcd(victim, kill=True)
    (replacement,) = asg.terminate(victim)
    # 30 s in all: CHANGE_RESERVE leaves the insurance no time, whatever the db size
    result = run_ok(asg, replacement, env={**backed.env, "ETCD_AWS_CLUSTER_TIMEOUT": "30"}, timeout=60)
    err = result.stderr
    assert decision(err) == "join", err
    assert "backup before this membership change skipped: a snapshot of the" in err, err
    assert "0s are left for it; no snapshot exists" in err, err
    assert backed.snapshot_objects() == []
    record = backed.store.read_record()  # S3 answers: the record follows the change, after the env file
    assert record is not None
    assert {i for i, _ in record.members} == {n.instance_id for n in asg.nodes}
    asg.start_etcd(replacement)
    asg.wait_healthy(3, timeout=60)


@pytest.mark.etcd_also("3.6")
def test_reconcile_while_s3_hangs_removes_a_gone_member_within_its_time(
    sim: SimFactory, etcd_binary: Path, moto_url: str
) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    asg = backed.asg
    stay, gone = asg.nodes[0], asg.nodes[2]
    asg.stop_etcd(gone)
    assert asg.terminate(gone, replace=False) == []  # scale-in: 2 of 3 answer, 2 of 2 after the removal
    with SilentServer() as silent:
        hanging = {
            **backed.env,
            "AWS_ENDPOINT_URL_S3": silent.url,
            "ETCD_AWS_CLUSTER_TIMEOUT": "60",
            "ETCD_AWS_CLUSTER_RECONCILE_STATE_FILE": str(stay.workdir / "reconcile-state.json"),
        }
        started = time.monotonic()
        result = run_ok(asg, stay, "reconcile", env=hanging, timeout=90)
        took = time.monotonic() - started
    err = result.stderr
    assert took < HEALING_BOUND, f"reconcile took {took:.1f}s with S3 hanging:\n{err}"
    assert "backup before removing member" in err and "skipped" in err, err
    assert "cluster record not updated after reconcile's removals" in err, err
    assert asg.member_names(stay) == sorted(n.instance_id for n in asg.nodes)


@pytest.mark.etcd_also("3.6")
def test_a_record_read_without_quorum_that_hangs_is_a_clear_refusal_by_the_deadline(
    sim: SimFactory, etcd_binary: Path, moto_url: str
) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    asg = backed.asg
    _, *lost = asg.nodes
    for node in lost:  # two of three members stop: the one left answers the member list but has no quorum
        asg.stop_etcd(node, kill=True)
    (replacement,) = asg.terminate(lost[0])
    with SilentServer() as silent:
        hanging = {**backed.env, "AWS_ENDPOINT_URL_S3": silent.url, "ETCD_AWS_CLUSTER_TIMEOUT": "15"}
        started = time.monotonic()
        result = asg.run_agent(replacement, env=hanging, timeout=60)
        took = time.monotonic() - started
    err = result.stderr
    assert result.returncode == 6 and took < 15 + 10, f"exit {result.returncode} after {took:.1f}s:\n{err}"
    assert not replacement.env_file.exists()
    assert "no answer before the run's deadline" in err and "cluster.json" in err, err
    assert "decision=new" not in err and "decision=join" not in err
    assert "cannot be read" in err and "Refusing to decide" in err, err  # the record decides, and cannot be read


@pytest.mark.etcd_also("3.6")
def test_a_whole_cluster_reboot_restarts_at_once_while_s3_hangs(
    sim: SimFactory, etcd_binary: Path, moto_url: str
) -> None:
    """No etcd answers and every node has data: the record read that could change the decision (a restore that
    replaced this data) is best effort and bounded, so each node restarts from its data within seconds."""
    backed = booted(sim, etcd_binary, moto_url)
    asg = backed.asg
    asg.put("/before-reboot", "kept")
    for node in asg.nodes:
        asg.stop_etcd(node)
    with SilentServer() as silent:
        hanging = {**backed.env, "AWS_ENDPOINT_URL_S3": silent.url}
        for node in asg.nodes:
            started = time.monotonic()
            result = run_ok(asg, node, env=hanging, timeout=AGENT_TIMEOUT)
            took = time.monotonic() - started
            assert took < HEALING_BOUND, f"the restart took {took:.1f}s with S3 hanging:\n{result.stderr}"
            assert decision(result.stderr) == "restart", result.stderr
            assert "cannot read the cluster record" in result.stderr and "S3's first answer" in result.stderr
            assert env(node)["ETCD_INITIAL_CLUSTER_STATE"] == "existing"
        assert silent.connections >= len(asg.nodes)
    for node in asg.nodes:
        asg.start_etcd(node)
    asg.wait_healthy(3, timeout=60)
    assert asg.get("/before-reboot") == "kept"
