"""Survivors that cannot form a quorum, on real etcd 3.4 and 3.5 and moto S3: 1 of 3 recorded members survives
a whole-cluster outage in which the other two were replaced. Every agent waits for the survivor's hand-off, then
all three restore the same newest data, and etcd starts on all three with every key of that data.

A survivor whose agent runs again only after the others restored (also on 3.6) never restarts on its old data:
it takes part in the recorded restore, or joins the restored cluster as a new member, its data moved aside."""

from __future__ import annotations

import base64
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from etcd_aws_cluster.adapters.s3 import BackupStore, connect_s3
from etcd_aws_cluster.adapters.wal import read_ids
from etcd_aws_cluster.core.records import ClusterRecord, SnapshotMeta
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


def backed_up(
    sim: SimFactory, etcd_binary: Path, moto_url: str, size: int = 3
) -> tuple[SimulatedAsg, BackupStore, dict[str, str]]:
    """A 3-node cluster with a cluster record. Bootstrapped by hand: agents that form a new cluster at the same
    moment can see the record the first of them writes and wait for each other (a separate issue)."""
    tool = etcd_binaries.snapshot_tool(etcd_binary)
    if tool is None:
        pytest.skip(f"no etcdutl/etcdctl beside {etcd_binary}")
    s3 = connect_s3("us-east-1", {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": moto_url}, timeout=10, max_attempts=2)
    s3.create_bucket(Bucket="backups")
    asg = sim(size, etcd_binary)
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


def outage_replacing_all_but(asg: SimulatedAsg, *survivors: Node) -> None:
    """Every etcd stops (gracefully: its db holds every write); every instance but `survivors` is replaced."""
    size = len(asg.nodes)
    for node in asg.nodes:
        asg.stop_etcd(node)
    for node in [n for n in asg.nodes if n not in survivors]:
        asg.terminate(node, replace=True)
    assert all(s in asg.nodes for s in survivors) and len(asg.nodes) == size


def restored_everywhere(logs: dict[str, str]) -> tuple[str, int]:
    """The one snapshot every instance that restored chose. A quorum restores; an instance whose agent looks
    again only once the restored cluster answers joins it (as its member that never ran, or, with data the
    restore replaced, as a new member): nothing waits on a timed pause."""
    decisions = {instance_id: decision(err) for instance_id, err in logs.items()}
    assert set(decisions.values()) <= {"restore", "member", "join"}, decisions
    assert list(decisions.values()).count("restore") > len(decisions) // 2, decisions
    chosen = {m.groups() for err in logs.values() for m in RESTORED.finditer(err)}
    assert len(chosen) == 1, chosen  # the same snapshot on every instance that restored
    key, revision = chosen.pop()
    return key, int(revision)


def survivor_ahead_of_the_snapshot(
    sim: SimFactory, etcd_binary: Path, aws: str
) -> tuple[SimulatedAsg, BackupStore, dict[str, str], Node]:
    """A backed-up cluster with keys written after its newest snapshot: only the survivor's db (node 0) has them."""
    asg, store, extra = backed_up(sim, etcd_binary, aws)
    for i in range(20):
        asg.put(f"/before/{i}", f"b{i}")
    survivor = asg.nodes[0]
    run_ok(asg, survivor, "backup", env=extra)
    for i in range(30):
        asg.put(f"/after/{i}", f"a{i}")
    return asg, store, extra, survivor


def test_a_survivor_with_newer_data_uploads_it_and_every_instance_restores_it(
    sim: SimFactory, etcd_binary: Path, aws: str
) -> None:
    asg, store, extra, survivor = survivor_ahead_of_the_snapshot(sim, etcd_binary, aws)
    outage_replacing_all_but(asg, survivor)

    logs = boot(asg, asg.nodes, timeout=150, env=extra)
    key, revision = restored_everywhere(logs)
    assert key.endswith(f"-{survivor.instance_id}.db.zst") and "uploaded it" in logs[survivor.instance_id]
    # Whether the others waited for the hand-off or found it already written depends on who looked first: either
    # way every instance that restored chose the survivor's upload (restored_everywhere: one snapshot), not the older.
    uploaded = next(s for s in store.list_snapshots() if s.key == key)
    assert not uploaded.hash_trailer and uploaded.revision == revision
    assert list(survivor.workdir.glob("data.stale-*"))  # moved aside, never deleted

    asg.wait_healthy(3, timeout=60)
    for node in asg.nodes:  # each one's own data (a serializable read), whether it restored or joined
        assert [own_data(node, f"/after/{i}") for i in range(30)] == [f"a{i}" for i in range(30)]
        assert own_data(node, "/before/7") == "b7"
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
    for node in asg.nodes:
        assert [own_data(node, f"/later/{i}") for i in range(20)] == [f"l{i}" for i in range(20)]


@pytest.mark.etcd_also("3.6")
def test_another_lineages_higher_snapshot_neither_stops_the_upload_nor_wins_the_restore(
    sim: SimFactory, etcd_binary: Path, aws: str
) -> None:
    asg, store, extra, survivor = survivor_ahead_of_the_snapshot(sim, etcd_binary, aws)
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
    assert key.endswith(f"-{survivor.instance_id}.db.zst") and "uploaded it" in logs[survivor.instance_id], logs
    assert revision < foreign.revision
    asg.wait_healthy(3, timeout=60)
    assert [asg.get(f"/after/{i}", node=asg.nodes[i % 3]) for i in range(30)] == [f"a{i}" for i in range(30)]
    assert foreign.key in {s.key for s in store.list_snapshots()}  # still there, restorable by hand


# -- a survivor whose agent runs only after the others restored ----------------------------------------------------


def serializable(node: Node, key: str) -> str | None:
    """`key` as this node's own etcd has it (a serializable read: no leader, no other member involved)."""
    body = {"key": base64.b64encode(key.encode()).decode(), "serializable": True}
    response = requests.post(f"{node.client_url}/v3/kv/range", json=body, timeout=5)
    response.raise_for_status()
    kvs = response.json().get("kvs") or []
    return base64.b64decode(kvs[0].get("value", "")).decode() if kvs else None


def own_data(node: Node, key: str, timeout: float = 20) -> str | None:
    """`key` in this node's own etcd once it has it: a member that just joined catches up from the leader."""
    deadline = time.monotonic() + timeout
    while (value := serializable(node, key)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def delete(node: Node, key: str) -> None:
    body = {"key": base64.b64encode(key.encode()).decode()}
    requests.post(f"{node.client_url}/v3/kv/deleterange", json=body, timeout=5).raise_for_status()


def restored_without_the_late_survivor(
    sim: SimFactory, etcd_binary: Path, moto_url: str, *, start_etcd: bool
) -> tuple[SimulatedAsg, BackupStore, dict[str, str], Node, int, str]:
    """Four recorded members; two survive an outage (fewer than a quorum of 4), two are replaced. The late
    survivor's agent hands off and gives up (its fellow survivor has not handed off yet); the others then hand
    off, see both hand-offs and restore the newest snapshot without it. Its data holds a key (`/old-only`) that
    was deleted before that snapshot. Returns the sim, the store, the env, the late survivor, the id of its
    data's cluster and the restored snapshot's key."""
    asg, store, extra = backed_up(sim, etcd_binary, moto_url, size=4)
    late, other = asg.nodes[0], asg.nodes[1]
    for i in range(10):
        asg.put(f"/kept/{i}", f"k{i}")
    asg.put("/old-only", "stale")
    asg.stop_etcd(late)  # its data stops here: /old-only is in it
    delete(other, "/old-only")
    for i in range(10):
        asg.put(f"/later/{i}", f"l{i}", node=other)
    printed = run_ok(asg, other, "backup", env=extra).stdout
    old_cluster = read_ids(late.data_dir)
    assert old_cluster is not None
    outage_replacing_all_but(asg, late, other)

    gave_up = asg.run_agent(late, env={**extra, "ETCD_AWS_CLUSTER_TIMEOUT": "6"})
    assert gave_up.returncode != 0, gave_up.stderr
    assert f"waiting for the hand-off of {other.instance_id}" in gave_up.stderr, gave_up.stderr
    assert (late.data_dir / "member" / "wal").is_dir()  # untouched: it only handed off
    others = [n for n in asg.nodes if n is not late]
    if start_etcd:
        logs = boot(asg, others, timeout=150, env=extra)
    else:
        procs = [(n, asg.start_agent(n, env=extra)) for n in others]
        logs = {n.instance_id: proc.communicate(timeout=150)[1] for n, proc in procs}
        assert all(proc.returncode == 0 for _, proc in procs), logs
    key, _ = restored_everywhere(logs)
    assert printed.startswith(store.where(key))  # the newest snapshot, taken after /old-only was deleted
    return asg, store, extra, late, old_cluster.cluster_id, key


def assert_restored_data_only(asg: SimulatedAsg, late: Node) -> None:
    asg.wait_healthy(4, timeout=60)
    assert [own_data(late, f"/later/{i}") for i in range(10)] == [f"l{i}" for i in range(10)]
    assert own_data(late, "/kept/3") == "k3"
    assert serializable(late, "/old-only") is None  # it has the snapshot's data, and nothing of its old data
    assert asg.get("/old-only") is None
    stale = list(late.workdir.glob("data.stale-*"))
    assert len(stale) == 1 and (stale[0] / "member" / "wal").is_dir()  # moved aside, kept


@pytest.mark.etcd_also("3.6")
def test_a_late_survivor_joins_the_running_restored_cluster_as_a_new_member(
    sim: SimFactory, etcd_binary: Path, aws: str
) -> None:
    asg, store, extra, late, old_cluster, _ = restored_without_the_late_survivor(sim, etcd_binary, aws, start_etcd=True)
    others = [n for n in asg.nodes if n is not late]
    deadline = time.monotonic() + 60
    while not all(asg.health(n) for n in others):  # 3 of the 4 restored members run: a quorum
        assert time.monotonic() < deadline, "the restored cluster did not come up"
        time.sleep(0.2)
    helper = others[0]
    assert decision(run_ok(asg, helper, env=extra).stderr) == "member"  # its boot completes the record
    record = store.read_record()
    assert record is not None and record.cluster_id not in (None, old_cluster)
    asg.put("/after-restore", "new")

    joined = run_ok(asg, late, env=extra).stderr
    assert decision(joined) == "join" and f"belongs to cluster {old_cluster:x}" in joined
    asg.start_etcd(late)
    assert_restored_data_only(asg, late)
    assert own_data(late, "/after-restore") == "new"


@pytest.mark.etcd_also("3.6")
def test_a_late_survivor_takes_part_in_the_recorded_restore_before_the_restored_cluster_runs(
    sim: SimFactory, etcd_binary: Path, aws: str
) -> None:
    asg, store, extra, late, old_cluster, key = restored_without_the_late_survivor(
        sim, etcd_binary, aws, start_etcd=False
    )
    record = store.read_record()
    assert record is not None and record.cluster_id is None and old_cluster in record.replaces
    restored = read_ids(next(n for n in asg.nodes if n is not late).data_dir)
    assert restored is not None and restored.cluster_id not in record.replaces  # the restored data restarts

    joined = run_ok(asg, late, env=extra).stderr
    assert decision(joined) == "restore" and f"restored {key} " in joined and "moved this node's etcd data" in joined
    for node in asg.nodes:
        asg.start_etcd(node)
    assert_restored_data_only(asg, late)


@pytest.mark.etcd_also("3.6")
def test_an_instance_left_out_of_a_restore_by_hand_boots_into_it_not_onto_its_old_data(
    sim: SimFactory, etcd_binary: Path, aws: str
) -> None:
    """The runbook's restore by hand, run on two of three instances: the third one's agent (a reboot) finds the
    record of that restore, which names its data's cluster as replaced, and restores the same snapshot."""
    asg, store, extra = backed_up(sim, etcd_binary, aws)
    for i in range(10):
        asg.put(f"/kept/{i}", f"k{i}")
    printed = run_ok(asg, asg.nodes[0], "backup", env=extra).stdout
    asg.put("/after-backup", "dropped")  # written after the snapshot: the restore drops it, on purpose
    left_out = asg.nodes[2]
    old = read_ids(left_out.data_dir)
    assert old is not None
    for node in asg.nodes:
        asg.stop_etcd(node)
    for node in asg.nodes[:2]:
        run_ok(asg, node, "restore", env=extra)
    record = store.read_record()
    assert record is not None and record.cluster_id is None and old.cluster_id in record.replaces

    booted = run_ok(asg, left_out, env=extra).stderr
    assert decision(booted) == "restore" and "moved this node's etcd data" in booted
    assert {m.group(1) for m in RESTORED.finditer(booted)} == {record.newest_snapshot}
    assert printed.startswith(store.where(record.newest_snapshot))
    for node in asg.nodes:
        asg.start_etcd(node)
    asg.wait_healthy(3, timeout=60)
    for node in asg.nodes:
        assert [own_data(node, f"/kept/{i}") for i in range(10)] == [f"k{i}" for i in range(10)]
        assert serializable(node, "/after-backup") is None  # none restarted on its old data
    assert len(list(left_out.workdir.glob("data.stale-*"))) == 1
