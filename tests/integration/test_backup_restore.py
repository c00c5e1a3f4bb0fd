"""Issue #9's guarantees end to end: the agent, real etcd 3.4 and 3.5, S3 in moto, all on 127.0.0.0/8.

Each test boots a cluster with the agent (backup_url set, so the agent keeps the cluster record), backs up with the
agent's own `backup` command, then takes instances away the way an outage or a roll-out does and checks what the
replacements decide, what they start from and what the cluster serves afterwards.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

from etcd_aws_cluster.adapters.s3 import BackupStore
from etcd_aws_cluster.core import records
from etcd_aws_cluster.core.records import SnapshotInfo, SnapshotMeta
from tests.harness import etcd_binaries
from tests.harness.fixtures import SimFactory
from tests.harness.moto_server import s3_client as moto_s3_client
from tests.harness.sim import REGION, Node, SimulatedAsg
from tests.integration.helpers import (
    boot,
    decision,
    decisions,
    env,
    run_ok,
    wait_for_exit,
    wait_for_log,
    wait_listening,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.integration

BUCKET = "backups"
BACKUP_URL = f"s3://{BUCKET}/etcd"
AGENT_TIMEOUT = 150.0


# -- helpers ------------------------------------------------------------------------------------------------------


def s3_client(moto_url: str) -> S3Client:
    client: S3Client = moto_s3_client(moto_url)
    return client


@dataclasses.dataclass
class Backed:
    """A simulated ASG whose agents back up to a moto bucket, and a view of that bucket."""

    asg: SimulatedAsg
    s3: S3Client
    store: BackupStore
    env: dict[str, str]

    def object_keys(self) -> list[str]:
        """Every object key under the backup URL's prefix."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="etcd/")
        return sorted(str(item["Key"]) for page in pages for item in page.get("Contents", []))

    def snapshot_objects(self) -> list[str]:
        prefix = self.store.snapshot_prefix
        return [k for k in self.object_keys() if k.startswith(prefix) and k.endswith((".db", ".db.zst"))]

    def backup(self, node: Node, *args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_ok(self.asg, node, "backup", *args, env={**self.env, **(extra or {})})


def backed_sim(sim: SimFactory, etcd_binary: Path, moto_url: str, size: int = 3) -> Backed:
    tool = etcd_binaries.snapshot_tool(etcd_binary)
    assert tool is not None, f"no etcdutl/etcdctl beside {etcd_binary}"  # make setup installs both
    s3 = s3_client(moto_url)
    s3.create_bucket(Bucket=BUCKET)
    asg = sim(size, etcd_binary)
    agent_env = {
        "ETCD_AWS_CLUSTER_BACKUP_URL": BACKUP_URL,
        "ETCD_AWS_CLUSTER_ETCDUTL": str(tool),
        "ETCD_AWS_CLUSTER_TIMEOUT": str(AGENT_TIMEOUT - 30),
    }
    return Backed(asg, s3, BackupStore(s3, BACKUP_URL, asg.name, region=REGION), agent_env)


def booted(sim: SimFactory, etcd_binary: Path, moto_url: str) -> Backed:
    """A 3-node cluster bootstrapped by the agent with backup_url set (so the cluster record exists)."""
    backed = backed_sim(sim, etcd_binary, moto_url)
    boot(backed.asg, backed.asg.nodes, env=backed.env)
    backed.asg.wait_healthy(3, timeout=60)
    record = backed.store.read_record()
    assert record is not None, "the agent wrote no cluster record when it created the cluster"
    assert {i for i, _ in record.members} == {n.instance_id for n in backed.asg.nodes}
    return backed


def put_keys(asg: SimulatedAsg, prefix: str, count: int) -> dict[str, str]:
    written = {f"{prefix}/{i}": f"{prefix}-value-{i}" for i in range(count)}
    for key, value in written.items():
        asg.put(key, value)
    return written


def two_snapshots(
    backed: Backed, first_prefix: str, later_prefix: str
) -> tuple[dict[str, str], dict[str, str], SnapshotInfo, SnapshotInfo]:
    """Keys under `first_prefix`, a backup, keys under `later_prefix`, another backup (through another member):
    the keys of each and the two snapshots, newest first."""
    asg = backed.asg
    first = put_keys(asg, first_prefix, 10)
    backed.backup(asg.nodes[0])
    later = put_keys(asg, later_prefix, 10)
    backed.backup(asg.nodes[1])
    newest, older = backed.store.list_snapshots()
    return first, later, newest, older


def cluster_id(asg: SimulatedAsg, node: Node | None = None) -> str:
    return str(asg.member_list(node)["header"]["cluster_id"])


def replace_everyone(asg: SimulatedAsg) -> list[Node]:
    """Every instance dies at once (etcd killed) and the ASG replaces each: the data goes with the instances."""
    old = list(asg.nodes)
    for node in old:
        asg.stop_etcd(node, kill=True)
    for node in old:
        asg.terminate(node, replace=True)
    new = asg.nodes
    assert len(new) == 3 and not {n.instance_id for n in new} & {n.instance_id for n in old}
    return new


def run_concurrently(
    asg: SimulatedAsg, nodes: Sequence[Node], env: dict[str, str], timeout: float = AGENT_TIMEOUT
) -> dict[str, tuple[int, str]]:
    """Start the agent on every node at once and wait for all of them: instance id -> (exit code, stderr)."""
    procs = [(node, asg.start_agent(node, env=env)) for node in nodes]
    deadline = time.monotonic() + timeout
    results: dict[str, tuple[int, str]] = {}
    for node, proc in procs:
        _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        asg.registry.forget(proc.pid)
        results[node.instance_id] = (proc.returncode, err)
    return results


def restored_key(stderr: str) -> str:
    for line in stderr.splitlines():
        if "restore: restored " in line:
            return line.split("restore: restored ", 1)[1].split()[0]
    raise AssertionError(f"no 'restore: restored' line in:\n{stderr}")


def leader_name(asg: SimulatedAsg) -> str:
    node = asg.nodes[0]
    status = requests.post(f"{node.client_url}/v3/maintenance/status", json={}, timeout=5).json()
    leader = str(status["leader"])
    return next(str(m["name"]) for m in asg.members(node) if str(m["ID"]) == leader)


def full_replacement_restores(backed: Backed) -> tuple[dict[str, str], str]:
    """Replace every instance, run the three agents at once, start etcd from their files; each agent's stderr and
    the one snapshot key they all restored."""
    asg = backed.asg
    new = replace_everyone(asg)
    results = run_concurrently(asg, new, backed.env)
    logs = {}
    for node in new:
        code, err = results[node.instance_id]
        assert code == 0, f"agent on {node} exited {code}:\n{err}"
        # An agent that decided before another's record write landed lost the record's conditional write and
        # decided again (seen on a loaded machine: it read the new layout's key just before the other wrote it).
        made = decisions(err)
        assert made[-1] == "restore", err
        assert err.count("another instance wrote it first); deciding again") == len(made) - 1, err
        assert env(node)["ETCD_INITIAL_CLUSTER_STATE"] == "new"
        logs[node.instance_id] = err
    chosen = {restored_key(err) for err in logs.values()}
    assert len(chosen) == 1, f"the agents restored different snapshots: {chosen}"
    for node in new:
        asg.start_etcd(node)
    members = asg.wait_healthy(3, timeout=60)
    assert sorted(str(m["name"]) for m in members) == sorted(n.instance_id for n in new)
    return logs, chosen.pop()


# -- the guarantees -----------------------------------------------------------------------------------------------


@pytest.mark.etcd_matrix
def test_full_replacement_after_a_backup_restores_every_key(sim: SimFactory, etcd_binary: Path, moto_url: str) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    asg = backed.asg
    written = put_keys(asg, "/app", 30)
    old_cluster = cluster_id(asg)
    backed.backup(asg.nodes[0])
    (snapshot,) = backed.store.list_snapshots()
    asg.put("/after-the-snapshot", "lost")  # written after the snapshot: the one thing a restore cannot bring back

    logs, chosen = full_replacement_restores(backed)

    assert chosen == snapshot.key
    for key, value in written.items():
        assert asg.get(key) == value, key
    assert asg.get("/after-the-snapshot") is None
    assert cluster_id(asg) != old_cluster  # a restore makes a new cluster (same data, new id)
    record = backed.store.read_record()
    assert record is not None and record.newest_snapshot == snapshot.key
    assert {i for i, _ in record.members} == {n.instance_id for n in asg.nodes}
    assert all("decision=new" not in err for err in logs.values())


def test_outage_with_one_instance_replaced_joins_the_original_cluster(
    sim: SimFactory, etcd_binary: Path, moto_url: str
) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    asg = backed.asg
    written = put_keys(asg, "/app", 10)
    backed.backup(asg.nodes[0])
    original = cluster_id(asg)
    for node in asg.nodes:  # the whole cluster goes down
        asg.stop_etcd(node, kill=True)
    *survivors, victim = asg.nodes
    (replacement,) = asg.terminate(victim)

    log = replacement.workdir / "agent.log"
    proc = asg.start_agent(replacement, env=backed.env, log_path=log)  # the replacement boots first
    wait_for_log(proc, log, "still in the ASG: waiting for them")
    assert proc.poll() is None, "the replacement's agent did not wait for the survivors"
    assert not replacement.env_file.exists()
    for node in survivors:  # the survivors come back (slower: they replay their WAL)
        result = run_ok(asg, node, env=backed.env)
        assert decision(result.stderr) == "restart"
    # One at a time: while only one answers (etcd 3.5 lists members without a quorum) the replacement keeps waiting:
    # once a look of it found that etcd up (answering, or silent until a quorum), it starts another.
    seen = len(log.read_text(errors="replace"))
    asg.start_etcd(survivors[0])
    wait_listening(survivors[0])
    up = rf"etcd on {survivors[0].instance_id} .*: (?!.*refused the connection)"
    probed = wait_for_log(proc, log, up, after=seen)
    wait_for_log(proc, log, rf"ASG {asg.name}: desired", after=probed)
    assert proc.poll() is None, "the replacement's agent stopped waiting while the cluster had no quorum"
    asg.start_etcd(survivors[1])
    err = wait_for_exit(proc, log, timeout=AGENT_TIMEOUT)
    asg.registry.forget(proc.pid)
    assert proc.returncode == 0, err
    assert "waiting" in err and "still in the ASG" in err, err
    assert decision(err) == "join", err
    assert "decision=new" not in err and "decision=restore" not in err
    assert env(replacement)["ETCD_INITIAL_CLUSTER_STATE"] == "existing"
    asg.start_etcd(replacement)
    members = asg.wait_healthy(3, timeout=60)
    assert sorted(str(m["name"]) for m in members) == sorted(n.instance_id for n in asg.nodes)
    assert {cluster_id(asg, node) for node in asg.nodes} == {original}
    for key, value in written.items():
        assert asg.get(key, node=replacement) == value, key


def test_record_without_a_readable_snapshot_is_refused(sim: SimFactory, etcd_binary: Path, moto_url: str) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    asg = backed.asg
    put_keys(asg, "/app", 5)
    backed.backup(asg.nodes[0])
    snapshots = [k for k in backed.object_keys() if k.startswith(backed.store.snapshot_prefix)]
    assert len(snapshots) == 2  # the .db and its manifest
    backed.s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in snapshots]})
    record_before = backed.s3.get_object(Bucket=BUCKET, Key=backed.store.record_key)["Body"].read()

    new = replace_everyone(asg)
    results = run_concurrently(asg, new, backed.env)

    for node in new:
        code, err = results[node.instance_id]
        assert code == 6, f"agent on {node} exited {code}:\n{err}"
        assert "decision=refuse" in err and "refusing to start an empty cluster" in err, err
        assert "restore --list" in err and "delete the record" in err, err  # says what to do
        assert not node.env_file.exists()
        assert not node.data_dir.exists() or not any(node.data_dir.iterdir())
    assert backed.s3.get_object(Bucket=BUCKET, Key=backed.store.record_key)["Body"].read() == record_before
    assert backed.snapshot_objects() == []


@pytest.mark.etcd_also("3.6")
def test_corrupt_newest_snapshot_falls_back_to_the_one_before(
    sim: SimFactory, etcd_binary: Path, moto_url: str
) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    asg = backed.asg
    older, newer, newest, before = two_snapshots(backed, "/older", "/newer")
    assert newest.revision > before.revision
    # The newest object (compressed) rots in place: same size, so only the checksums can tell (its manifest is
    # untouched).
    backed.s3.put_object(
        Bucket=BUCKET, Key=newest.key, Body=b"\x00garbage" * (newest.size // 8) + b"!" * (newest.size % 8)
    )
    assert backed.s3.head_object(Bucket=BUCKET, Key=newest.key)["ContentLength"] == newest.size

    logs, chosen = full_replacement_restores(backed)

    assert chosen == before.key  # every agent restored the one before
    # An agent that looked first found the newest corrupt and said so; one that looked after an earlier agent
    # had restored and recorded the older snapshot takes that one directly (it says which, and why).
    said_corrupt = [err for err in logs.values() if f"snapshot s3://{BUCKET}/{newest.key} is corrupt" in err]
    assert said_corrupt, logs
    assert all("trying the snapshot before it" in err for err in said_corrupt)
    others = [err for err in logs.values() if err not in said_corrupt]
    assert all("restoring the same one" in err for err in others), others
    for key, value in older.items():
        assert asg.get(key) == value, key
    assert all(asg.get(key) is None for key in newer)


def test_scheduled_backup_uploads_once_per_period_and_retention_keeps_only_what_it_should(
    sim: SimFactory, etcd_binary: Path, moto_url: str
) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    asg = backed.asg
    for n in range(3):  # three backups by hand, keys written between them
        put_keys(asg, f"/round{n}", 3)
        backed.backup(asg.nodes[n])
    hand = list(reversed(backed.store.list_snapshots()))  # oldest first
    assert len(hand) == 3
    # Age them: 3 h, 2 h and 1 h old (the manifest carries the time; the agent trusts nothing else).
    now = datetime.now(timezone.utc)
    for hours, info in zip((3, 2, 1), hand):
        aged = dataclasses.replace(info, taken_at=now - timedelta(hours=hours))
        backed.s3.put_object(
            Bucket=BUCKET, Key=BackupStore.manifest_key(info.key), Body=records.snapshot_to_json(aged).encode()
        )
    strangers = [
        f"{backed.store.snapshot_prefix}notes.txt",
        f"{backed.store.snapshot_prefix}other-tool.db",
        "etcd/readme",
    ]
    for key in strangers:
        backed.s3.put_object(Bucket=BUCKET, Key=key, Body=b"not etcd-aws-cluster's")
    before = set(backed.object_keys())
    schedule = {
        "ETCD_AWS_CLUSTER_BACKUP_INTERVAL": "60",
        "ETCD_AWS_CLUSTER_BACKUP_KEEP_LAST": "2",
        "ETCD_AWS_CLUSTER_BACKUP_KEEP_DAILY_DAYS": "0",
    }
    leader = leader_name(asg)

    for node in asg.nodes:  # the timer fires on every member
        backed.backup(node, "--scheduled", extra=schedule)

    after = set(backed.object_keys())
    added = sorted(after - before - {backed.store.record_key})
    assert len(added) == 2, added  # one snapshot and its manifest
    (uploaded,) = (k for k in added if k.endswith(".db.zst"))
    new_info = backed.store.list_snapshots()[0]
    assert new_info.key == uploaded and new_info.source_instance == leader
    deleted = before - after
    assert deleted == {k for info in hand[:2] for k in (info.key, BackupStore.manifest_key(info.key))}
    assert set(strangers) <= after
    assert [i.key for i in backed.store.list_snapshots()] == [uploaded, hand[2].key]

    for node in asg.nodes:  # the same period again: nothing is due
        result = backed.backup(node, "--scheduled", extra=schedule)
        assert result.stdout == ""
    assert set(backed.object_keys()) == after


def test_restore_list_shows_the_snapshots_newest_first_with_the_marker(
    sim: SimFactory, etcd_binary: Path, moto_url: str
) -> None:
    backed = backed_sim(sim, etcd_binary, moto_url)  # listing needs no etcd
    node = backed.asg.nodes[0]
    now = datetime.now(timezone.utc)
    taken = [(now - timedelta(minutes=30), 40), (now - timedelta(minutes=5), 90), (now - timedelta(hours=2), 7)]
    infos: list[SnapshotInfo] = []
    for when, revision in taken:
        meta = SnapshotMeta(when, revision, 0xC0FFEE, "3.5.1", (), node.instance_id)
        infos.append(backed.store.upload(iter([b"x" * (1000 + revision)]), meta))
    result = run_ok(backed.asg, node, "restore", "--list", env=backed.env)
    lines = result.stdout.splitlines()
    header = ["KEY", "TAKEN", "AGE", "REVISION", "DB-SIZE", "STORED", "CODEC", "CLUSTER", "ETCD"]
    assert lines[0].split() == header
    rows = [line for line in lines[1:] if backed.store.snapshot_prefix in line]
    expected = sorted(infos, key=lambda i: i.revision, reverse=True)
    assert [row.split()[-9] for row in rows] == [i.key for i in expected]
    assert rows[0].startswith("* ") and all(row.startswith("  ") for row in rows[1:])
    assert [int(row.split()[-6]) for row in rows] == [90, 40, 7]
    # both sizes: the db's, and the compressed object's (a run of one byte compresses to a few dozen)
    assert [int(row.split()[-5]) for row in rows] == [1090, 1040, 1007]
    assert all(int(row.split()[-4]) < 100 and row.split()[-3] == "zstd" for row in rows), rows
    assert "c0ffee" in rows[0] and "5m" in rows[0]
    assert lines[-1].startswith("* the one a boot would restore")
    assert not node.env_file.exists()  # --list changes nothing


# -- lineages and the layout before the region (issue 15) ----------------------------------------------------------


def age_snapshot(backed: Backed, info: SnapshotInfo, hours: float) -> None:
    """Rewrite a manifest as if the snapshot were `hours` old (the manifest carries the time)."""
    aged = dataclasses.replace(info, taken_at=datetime.now(timezone.utc) - timedelta(hours=hours))
    backed.s3.put_object(
        Bucket=BUCKET, Key=BackupStore.manifest_key(info.key), Body=records.snapshot_to_json(aged).encode()
    )


@pytest.mark.etcd_also("3.6")
def test_a_start_over_followed_by_a_second_loss_restores_the_new_clusters_data(
    sim: SimFactory, etcd_binary: Path, moto_url: str
) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    asg = backed.asg
    abandoned = put_keys(asg, "/abandoned", 40)  # many writes: the abandoned cluster's revisions are the higher
    backed.backup(asg.nodes[0])
    (old_snapshot,) = backed.store.list_snapshots()
    old_record = backed.store.read_record()
    assert old_record is not None and old_record.lineage is not None
    assert old_snapshot.lineage == old_record.lineage

    # Every instance is lost; the operator starts empty on purpose, as the agent's refusal of a record without
    # a snapshot says: delete cluster.json (the abandoned cluster's snapshot stays in the bucket).
    new = replace_everyone(asg)
    backed.s3.delete_object(Bucket=BUCKET, Key=backed.store.record_key)
    logs = boot(asg, new, env=backed.env)
    # An agent that runs once two etcds formed the cluster (a loaded machine) finds it answering: "member" is right
    made = {decision(err) for err in logs.values()}
    assert "new" in made and made <= {"new", "member"}, logs
    asg.wait_healthy(3, timeout=60)
    assert all(asg.get(key) is None for key in abandoned)
    started = backed.store.read_record()
    assert started is not None and started.lineage not in (None, old_record.lineage)
    asg.put("/started-over", "the new cluster's data")
    backed.backup(asg.nodes[1])
    new_snapshot = backed.store.list_snapshots()[1]  # newest first by revision: the abandoned one is higher
    assert new_snapshot.lineage == started.lineage and new_snapshot.revision < old_snapshot.revision

    logs_after, chosen = full_replacement_restores(backed)  # every instance is lost again

    assert chosen == new_snapshot.key, logs_after
    assert asg.get("/started-over") == "the new cluster's data"
    assert all(asg.get(key) is None for key in abandoned)
    record = backed.store.read_record()
    assert record is not None and record.lineage == started.lineage  # the restore continued the new lineage

    listing = run_ok(asg, asg.nodes[0], "restore", "--list", env=backed.env).stdout
    assert f"lineage {started.lineage} (current: the cluster record)" in listing
    assert f"lineage {old_record.lineage}\n" in listing and old_snapshot.key in listing
    marked = [line for line in listing.splitlines() if line.startswith("* ") and "/snapshots/" in line]
    assert len(marked) == 1 and new_snapshot.key in marked[0]

    # Retention: keep 2. The abandoned snapshot's higher revision does not push the new cluster's out.
    age_snapshot(backed, new_snapshot, hours=1)  # so that the scheduled backup is due
    schedule = {
        "ETCD_AWS_CLUSTER_BACKUP_INTERVAL": "60",
        "ETCD_AWS_CLUSTER_BACKUP_KEEP_LAST": "2",
        "ETCD_AWS_CLUSTER_BACKUP_KEEP_DAILY_DAYS": "0",
    }
    for node in asg.nodes:
        backed.backup(node, "--scheduled", extra=schedule)
    left = backed.store.list_snapshots()
    assert len(left) == 3, [i.key for i in left]
    assert {new_snapshot.key, old_snapshot.key} <= {i.key for i in left}
    assert {i.lineage for i in left} == {started.lineage, old_record.lineage}


@pytest.mark.etcd_also("3.6")
def test_a_record_and_a_snapshot_of_the_layout_before_the_region_are_found_and_restored(
    sim: SimFactory, etcd_binary: Path, moto_url: str
) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    asg = backed.asg
    written = put_keys(asg, "/app", 20)
    backed.backup(asg.nodes[0])
    (info,) = backed.store.list_snapshots()
    record = backed.store.read_record()
    assert record is not None
    # Rewrite both as an agent before the region and lineages wrote them, under <prefix>/<asg>/, and remove the
    # new layout's objects: what a bucket looks like right after the upgrade.
    old_key = backed.store.legacy_snapshot_prefix + info.key.rsplit("/", 1)[1]
    old_info = dataclasses.replace(info, key=old_key, lineage=None)
    old_record = dataclasses.replace(record, newest_snapshot=old_key, lineage=None)
    body = backed.s3.get_object(Bucket=BUCKET, Key=info.key)["Body"].read()
    backed.s3.put_object(Bucket=BUCKET, Key=old_key, Body=body)
    backed.s3.put_object(
        Bucket=BUCKET, Key=BackupStore.manifest_key(old_key), Body=records.snapshot_to_json(old_info).encode()
    )
    backed.s3.put_object(
        Bucket=BUCKET, Key=backed.store.legacy_record_key, Body=records.record_to_json(old_record).encode()
    )
    assert "lineage" not in records.record_to_json(old_record)  # today's shape
    stale = [k for k in backed.object_keys() if k.startswith(backed.store.base + "/")]
    backed.s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in stale]})
    assert backed.store.list_snapshots() == (old_info,)

    logs, chosen = full_replacement_restores(backed)

    assert chosen == old_key, logs
    for key, value in written.items():
        assert asg.get(key) == value, key
    new_record = backed.s3.get_object(Bucket=BUCKET, Key=backed.store.record_key)["Body"].read()
    restored = records.record_from_json(new_record, "new key")
    assert restored.newest_snapshot == old_key and restored.lineage is None  # continues the legacy lineage
    left = backed.s3.get_object(Bucket=BUCKET, Key=backed.store.legacy_record_key)["Body"].read()
    assert records.record_from_json(left, "old key") == old_record  # the old record is left as it was


@pytest.mark.etcd_also("3.6")
def test_a_record_whose_lineage_has_no_snapshot_is_refused_and_restore_by_hand_takes_the_other_lineage(
    sim: SimFactory, etcd_binary: Path, moto_url: str
) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    asg = backed.asg
    put_keys(asg, "/app", 5)
    backed.backup(asg.nodes[0])
    (info,) = backed.store.list_snapshots()
    other = "20200101T000000Z-00c0ffee"  # the snapshot is re-labelled as another lineage's (an abandoned cluster)
    backed.s3.put_object(
        Bucket=BUCKET,
        Key=BackupStore.manifest_key(info.key),
        Body=records.snapshot_to_json(dataclasses.replace(info, lineage=other)).encode(),
    )

    new = replace_everyone(asg)
    results = run_concurrently(asg, new, backed.env)

    for node in new:
        code, err = results[node.instance_id]
        assert code == 6, f"agent on {node} exited {code}:\n{err}"
        assert "decision=refuse" in err and "refusing to start an empty cluster" in err, err
        assert "has no snapshot" in err and other in err, err
        assert "restore --list" in err and "restore --snapshot KEY" in err, err
        assert not node.env_file.exists()
    listing = run_ok(asg, new[0], "restore", "--list", env=backed.env).stdout
    assert f"lineage {other}\n" in listing and info.key in listing
    shown = asg.run_agent(new[0], "status", env=backed.env).stdout  # no etcd answers: status says so, exit != 0
    assert "backups: none yet of the record's lineage" in shown and "1 of other lineages (restore --list)" in shown

    # Following the message: `restore --snapshot KEY` on every instance takes the other lineage's snapshot, and
    # the record it writes continues that lineage.
    for node in new:
        result = run_ok(asg, node, "restore", "--snapshot", info.key, env=backed.env)
        assert f"restored {info.key}" in result.stdout
    for node in new:
        asg.start_etcd(node)
    asg.wait_healthy(3, timeout=60)
    assert asg.get("/app/0") == "/app-value-0"
    record = backed.store.read_record()
    assert record is not None and record.lineage == other and record.newest_snapshot == info.key


@pytest.mark.etcd_also("3.6")
def test_a_restore_whose_record_write_lost_the_race_decides_again_and_follows_the_winner(
    sim: SimFactory, etcd_binary: Path, moto_url: str
) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    asg = backed.asg
    first, later, newest, older = two_snapshots(backed, "/first", "/later")
    new = replace_everyone(asg)
    lone, *others = new

    proc = asg.start_agent(lone, env=backed.env)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # the agent has decided to restore the newest snapshot and is downloading it
        seen.append(line)
        if "restore: using" in line:
            break
    # Meanwhile another writer records another decision: these same instances restore the older snapshot.
    members = tuple(sorted((n.instance_id, n.peer_url) for n in new))
    rival = records.ClusterRecord(asg.name, None, members, older.key, datetime.now(timezone.utc), older.lineage)
    backed.s3.put_object(Bucket=BUCKET, Key=backed.store.record_key, Body=records.record_to_json(rival).encode())
    _, rest = proc.communicate(timeout=AGENT_TIMEOUT)
    asg.registry.forget(proc.pid)
    err = "".join(seen) + rest
    assert proc.returncode == 0, err
    assert "changed since this run read it" in err and "deciding again" in err, err
    assert "restoring the same one" in err and restored_key(err.split("deciding again", 1)[1]) == older.key, err
    assert list(lone.workdir.glob("data.stale-*")), "the data restored for the losing decision was not moved aside"

    results = run_concurrently(asg, others, backed.env)  # the others follow the record too
    for node in others:
        code, other_err = results[node.instance_id]
        assert code == 0 and restored_key(other_err) == older.key, other_err
    for node in new:
        asg.start_etcd(node)
    asg.wait_healthy(3, timeout=60)
    assert all(asg.get(key) == value for key, value in first.items())
    assert all(asg.get(key) is None for key in later)  # the winner's decision, not the lone agent's first one
    assert newest.key != older.key
