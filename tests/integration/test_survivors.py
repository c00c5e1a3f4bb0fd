"""Survivors that cannot form a quorum, on real etcd 3.4 and 3.5 and moto S3: 1 of 3 recorded members survives
a whole-cluster outage in which the other two were replaced. Every agent waits for the survivor's hand-off, then
all three restore the same newest data, and etcd starts on all three with every key of that data."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from etcd_aws_cluster.records import ClusterRecord, SnapshotMeta
from etcd_aws_cluster.s3 import BackupStore, connect_s3
from tests.harness import etcd_binaries
from tests.harness.fixtures import SimFactory
from tests.harness.moto_server import FAKE_CREDENTIALS
from tests.harness.sim import REGION, Node, SimulatedAsg
from tests.integration.helpers import boot, decision, run_ok

pytestmark = pytest.mark.integration

RESTORED = re.compile(r"restore: restored (\S+) \(revision (\d+)\)")


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """moto's URL, with its fake credentials in this process's environment (for the test's own S3 client)."""
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return moto_url


def backed_up(sim: SimFactory, etcd_binary: Path, moto_url: str) -> tuple[SimulatedAsg, BackupStore, dict[str, str]]:
    """A 3-node cluster with a cluster record. Bootstrapped by hand: agents that form a new cluster at the same
    moment can see the record the first of them writes and wait for each other (a separate issue)."""
    tool = etcd_binaries.snapshot_tool(etcd_binary)
    if tool is None:
        pytest.skip(f"no etcdutl/etcdctl beside {etcd_binary}")
    s3 = connect_s3("us-east-1", {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": moto_url}, timeout=10, max_attempts=2)
    s3.create_bucket(Bucket="backups")
    asg = sim(3, etcd_binary)
    asg.bootstrap_static()
    store = BackupStore(s3, "s3://backups/etcd", asg.name, region=REGION)
    members = tuple(sorted((n.instance_id, n.peer_url) for n in asg.nodes))
    store.write_record(ClusterRecord(asg.name, None, members, None, datetime.now(timezone.utc)), None)
    extra = {
        "ETCD_AWS_CLUSTER_BACKUP_URL": "s3://backups/etcd",
        "ETCD_AWS_CLUSTER_ETCDUTL": str(tool),
        "ETCD_AWS_CLUSTER_TIMEOUT": "60",  # a stuck agent ends with its reason, well before boot() gives up
    }
    return asg, store, extra


def outage_replacing_all_but(asg: SimulatedAsg, survivor: Node) -> None:
    """Every etcd stops (gracefully: its db holds every write); every instance but `survivor` is replaced."""
    for node in asg.nodes:
        asg.stop_etcd(node)
    for node in [n for n in asg.nodes if n is not survivor]:
        asg.terminate(node, replace=True)
    assert survivor in asg.nodes and len(asg.nodes) == 3


def restored_everywhere(logs: dict[str, str]) -> tuple[str, int]:
    assert {decision(err) for err in logs.values()} == {"restore"}, logs
    chosen = {m.groups() for err in logs.values() for m in RESTORED.finditer(err)}
    assert len(chosen) == 1, chosen  # the same snapshot on every instance
    key, revision = chosen.pop()
    return key, int(revision)


def test_a_survivor_with_newer_data_uploads_it_and_every_instance_restores_it(
    sim: SimFactory, etcd_binary: Path, aws: str
) -> None:
    asg, store, extra = backed_up(sim, etcd_binary, aws)
    for i in range(20):
        asg.put(f"/before/{i}", f"b{i}")
    survivor = asg.nodes[0]
    run_ok(asg, survivor, "backup", env=extra)
    for i in range(30):  # after the newest snapshot: only the survivor's db has these
        asg.put(f"/after/{i}", f"a{i}")
    outage_replacing_all_but(asg, survivor)

    logs = boot(asg, asg.nodes, timeout=150, env=extra)
    key, revision = restored_everywhere(logs)
    assert key.endswith(f"-{survivor.instance_id}.db") and "uploaded it" in logs[survivor.instance_id]
    assert "waiting for the hand-off of" in "".join(logs[n.instance_id] for n in asg.nodes if n is not survivor)
    uploaded = next(s for s in store.list_snapshots() if s.key == key)
    assert not uploaded.hash_trailer and uploaded.revision == revision
    assert list(survivor.workdir.glob("data.stale-*"))  # moved aside, never deleted

    asg.wait_healthy(3, timeout=60)
    assert [asg.get(f"/after/{i}", node=asg.nodes[i % 3]) for i in range(30)] == [f"a{i}" for i in range(30)]
    assert asg.get("/before/7") == "b7"
    record = store.read_record()
    assert record is not None and record.newest_snapshot == key
    assert sorted(i for i, _ in record.members) == sorted(n.instance_id for n in asg.nodes)


def test_a_survivor_with_older_data_uploads_nothing_and_the_snapshot_is_restored(
    sim: SimFactory, etcd_binary: Path, aws: str
) -> None:
    asg, store, extra = backed_up(sim, etcd_binary, aws)
    survivor, other = asg.nodes[0], asg.nodes[1]
    asg.put("/early", "e", node=other)
    asg.stop_etcd(survivor)  # its data stops here
    for i in range(20):
        asg.put(f"/later/{i}", f"l{i}", node=other)
    printed = run_ok(asg, other, "backup", env=extra).stdout
    outage_replacing_all_but(asg, survivor)

    logs = boot(asg, asg.nodes, timeout=150, env=extra)
    key, _ = restored_everywhere(logs)
    assert printed.startswith(store.where(key))  # the hand backup
    assert [s.key for s in store.list_snapshots()] == [key]  # nothing uploaded
    assert "uploaded nothing" in logs[survivor.instance_id]

    asg.wait_healthy(3, timeout=60)
    assert [asg.get(f"/later/{i}") for i in range(20)] == [f"l{i}" for i in range(20)]


@pytest.mark.etcd_also("3.6")
def test_another_lineages_higher_snapshot_neither_stops_the_upload_nor_wins_the_restore(
    sim: SimFactory, etcd_binary: Path, aws: str
) -> None:
    asg, store, extra = backed_up(sim, etcd_binary, aws)
    for i in range(20):
        asg.put(f"/before/{i}", f"b{i}")
    survivor = asg.nodes[0]
    run_ok(asg, survivor, "backup", env=extra)
    for i in range(30):
        asg.put(f"/after/{i}", f"a{i}")
    # An abandoned cluster's snapshot (another lineage) with far higher revisions: by revision alone it would
    # be "newer" than the survivor's data, which would then not be uploaded, and it would be restored instead.
    abandoned = SnapshotMeta(
        datetime.now(timezone.utc),
        10**6,
        0xDEAD,
        "3.5.30",
        (),
        survivor.instance_id,
        lineage="20200101T000000Z-00c0ffee",
    )
    foreign = store.upload(iter([b"the abandoned cluster's db"]), abandoned)
    outage_replacing_all_but(asg, survivor)

    logs = boot(asg, asg.nodes, timeout=150, env=extra)
    key, revision = restored_everywhere(logs)
    assert key.endswith(f"-{survivor.instance_id}.db") and "uploaded it" in logs[survivor.instance_id], logs
    assert revision < foreign.revision
    asg.wait_healthy(3, timeout=60)
    assert [asg.get(f"/after/{i}", node=asg.nodes[i % 3]) for i in range(30)] == [f"a{i}" for i in range(30)]
    assert foreign.key in {s.key for s in store.list_snapshots()}  # still there, restorable by hand
