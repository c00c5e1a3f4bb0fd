"""Issue 17 items 3 (the restore side) and 4 end to end: the agent, real etcd, S3 in moto, deltas written by
`backup --follow` or built from the cluster's own history (tests/harness/deltas.py, where a test needs them exact).

A key written after the newest snapshot and captured in a delta comes back after every instance is lost, with the
revisions it had; `restore` by hand stops at a damaged delta and says so; `restore --at` and `--revision` restore a
point in time as a new lineage, and refuse a point out of reach before anything moves.
"""

from __future__ import annotations

import base64
import shutil
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from etcd_aws_cluster.adapters.restore_tool import BUMP_REVISION, find_tool
from etcd_aws_cluster.core.deltas import DeltaInfo, chain
from etcd_aws_cluster.core.records import SnapshotInfo, format_time
from tests.harness import etcd_binaries
from tests.harness.deltas import current_revision, history, make_delta, split
from tests.harness.fixtures import SimFactory
from tests.harness.sim import Node, SimulatedAsg
from tests.integration.helpers import boot, decisions, leader_of
from tests.integration.test_backup_follow import Followers, covered_within
from tests.integration.test_backup_restore import (
    BUCKET,
    Backed,
    backed_sim,
    booted,
    put_keys,
    replace_everyone,
    run_concurrently,
)

pytestmark = pytest.mark.integration


def kv(node: Node, key: str) -> dict[str, Any] | None:
    """The key as etcd serves it (value, revisions, version, lease), or None."""
    body = {"key": base64.b64encode(key.encode()).decode()}
    kvs = requests.post(f"{node.client_url}/v3/kv/range", json=body, timeout=5).json().get("kvs", [])
    return dict(kvs[0]) if kvs else None


def restored_keys(stderr: str) -> list[str]:
    return [
        line.split("restore: restored ", 1)[1].split()[0]
        for line in stderr.splitlines()
        if "restore: restored " in line
    ]


def can_bump(etcd_binary: Path) -> bool:
    tool = etcd_binaries.snapshot_tool(etcd_binary)
    assert tool is not None
    return find_tool(tool, {"PATH": str(etcd_binary.parent)}).can_bump


def upload_deltas(backed: Backed, snapshot: SnapshotInfo, size: int) -> list[DeltaInfo]:
    """The cluster's history after `snapshot` as deltas of `size` revisions, stamped 1 s apart from now, uploaded;
    like the follower's, the first covers from the revision after the snapshot's, each next from the last's + 1."""
    url = backed.asg.nodes[0].client_url
    start = snapshot.revision + 1
    revisions = history(url, start, step=timedelta(seconds=1))
    uploaded = []
    for part in split(revisions, size):
        delta = make_delta(part, lineage=snapshot.lineage, cluster_id=snapshot.cluster_id, first=start)
        uploaded.append(backed.store.put_delta(delta))
        start = delta.header.last + 1
    return uploaded


@pytest.mark.etcd_also("3.6")
def test_a_key_written_seconds_before_every_instance_is_lost_comes_back(
    sim: SimFactory, etcd_binary: Path, moto_url: str, tmp_path: Path
) -> None:
    """The issue's case, with `backup --follow` on every member writing the deltas."""
    backed = booted(sim, etcd_binary, moto_url)
    asg = backed.asg
    before = put_keys(asg, "/before", 5)
    followers = Followers(backed, tmp_path, {**backed.env, "ETCD_AWS_CLUSTER_BACKUP_DELTA_INTERVAL": "1"})
    followers.start()
    try:
        followers.wait(leader_of(asg.nodes), r"following from revision \d+, after the snapshot just taken")
        (snapshot,) = backed.store.list_snapshots()
        after = put_keys(asg, "/after", 12)  # written after the newest snapshot: only the deltas hold them
        last = current_revision(asg.nodes[0].client_url)
        covered_within(backed, last, timeout=30)
    finally:
        for proc in followers.procs.values():  # the instances are lost: nothing flushes
            proc.kill()
            proc.wait()
            asg.registry.forget(proc.pid)
    originals = {key: kv(asg.nodes[0], key) for key in after}
    found = chain(snapshot.revision, backed.store.list_deltas(), snapshot.lineage)
    assert found.last == last and found.deltas

    new = replace_everyone(asg)
    results = run_concurrently(asg, new, backed.env)
    chosen = set()
    for node in new:
        code, err = results[node.instance_id]
        assert code == 0 and decisions(err)[-1] == "restore", err
        chosen.add(restored_keys(err)[-1])
    (consolidated,) = chosen  # every instance restored the same snapshot: the one with the deltas applied
    assert consolidated != snapshot.key
    logs = "".join(err for _, err in results.values())
    assert f"snapshot {snapshot.key} + {len(found.deltas)} deltas up to revision {last}" in logs, logs
    assert "the follower counted" not in logs and "stop early" not in logs, logs  # the key count held
    for node in new:
        asg.start_etcd(node)
    asg.wait_healthy(3, timeout=60)

    for key, value in {**before, **after}.items():
        assert asg.get(key) == value, key
    for key, original in originals.items():  # revisions kept: each key as the original cluster had it
        restored = kv(asg.nodes[0], key)
        assert original is not None and restored is not None
        for field in ("mod_revision", "create_revision", "version", "value"):
            assert restored[field] == original[field], (key, field)
    if can_bump(etcd_binary):  # and revisions only go forward from there
        assert current_revision(asg.nodes[0].client_url) >= last + BUMP_REVISION
    record = backed.store.read_record()
    assert record is not None and record.newest_snapshot == consolidated and record.lineage == snapshot.lineage
    stored = {info.key: info for info in backed.store.list_snapshots()}
    assert stored[consolidated].revision == last and stored[consolidated].lineage == snapshot.lineage
    assert stored[consolidated].taken_at == backed.store.read_delta(found.deltas[-1]).last_at  # its last revision's
    # an instance that lost the record race deleted its own upload: one snapshot holds the deltas' revisions
    assert [info.key for info in stored.values() if info.revision == last] == [consolidated]


def lone_cluster(sim: SimFactory, etcd_binary: Path, moto_url: str) -> Backed:
    backed = backed_sim(sim, etcd_binary, moto_url, size=1)
    boot(backed.asg, backed.asg.nodes, env=backed.env)
    backed.asg.wait_healthy(1, timeout=60)
    return backed


def restore(asg: SimulatedAsg, backed: Backed, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    node = asg.nodes[0]
    result = asg.run_agent(node, "restore", *args, timeout=120, env={**backed.env, **(env or {})})
    return result.returncode, result.stdout, result.stderr


def back_to_lineage(backed: Backed, snapshot: SnapshotInfo) -> None:
    """The record follows `snapshot`'s lineage again (as after its restore), so that the next restore applies its
    deltas: a restore that forked a new lineage left them behind on purpose."""
    record, etag = backed.store.read_record_tagged()
    assert record is not None
    backed.store.write_record(replace(record, lineage=snapshot.lineage, newest_snapshot=snapshot.key), etag)


def restart_from_restore(asg: SimulatedAsg) -> None:
    asg.start_etcd(asg.nodes[0])
    asg.wait_healthy(1, timeout=60)


def test_restore_by_hand_stops_at_a_damaged_delta_and_restores_points_in_time(
    sim: SimFactory, moto_url: str, tmp_path: Path
) -> None:
    binary = etcd_binaries.available().get(etcd_binaries.etcd_provision.SID_ETCD_VERSION)
    assert binary is not None
    backed = lone_cluster(sim, binary, moto_url)
    asg, node = backed.asg, backed.asg.nodes[0]
    put_keys(asg, "/base", 3)
    backed.backup(node)
    (snapshot,) = backed.store.list_snapshots()
    first = put_keys(asg, "/first", 10)  # one delta each
    second = put_keys(asg, "/second", 10)
    third = put_keys(asg, "/third", 10)
    deltas = upload_deltas(backed, snapshot, 10)
    assert [(d.first, d.last) for d in deltas] == [
        (snapshot.revision + 1 + 10 * n, snapshot.revision + 10 * (n + 1)) for n in range(3)
    ]

    # the list shows the range the lineage can restore
    code, out, err = restore(asg, backed, "--list")
    assert code == 0, err
    assert (
        f"restorable: revision {snapshot.revision} ({format_time(snapshot.taken_at)}) to revision {deltas[-1].last}"
        in out
    ), out
    assert "3 deltas" in out, out

    # a point out of reach is refused before anything moves, even with etcd running
    code, out, err = restore(asg, backed, "--revision", str(deltas[-1].last + 100))
    assert code == 6 and "is outside what lineage" in err and f"to revision {deltas[-1].last}" in err, err
    code, out, err = restore(asg, backed, "--at", format_time(snapshot.taken_at - timedelta(hours=1)))
    assert code == 6 and "is outside what lineage" in err, err
    assert asg.etcd_running(node) and asg.get("/third/9") == third["/third/9"]

    # no etcd that fits the snapshot on this host (a restore tool alone in its dir; the PATH's etcd is older, or
    # none): the deltas cannot be applied, and the snapshot alone is restored, loudly
    lone_tool = tmp_path / "tool-alone" / "etcdutl"
    lone_tool.parent.mkdir()
    shutil.copy2(backed.env["ETCD_AWS_CLUSTER_ETCDUTL"], lone_tool)
    asg.stop_etcd(node)
    code, out, err = restore(asg, backed, env={"ETCD_AWS_CLUSTER_ETCDUTL": str(lone_tool)})
    assert code == 0, err
    assert f"the deltas after {snapshot.key} could not be applied" in err and "snapshot ALONE" in err, err
    assert f"restored {snapshot.key} (revision {snapshot.revision})" not in out and "could NOT be applied" in out, out
    restart_from_restore(asg)
    assert asg.get("/base/2") is not None and asg.get("/first/0") is None
    # the data lacks the deltas of its lineage: it begins a lineage of its own, so no later restore carries it
    # forward with the deltas it left out
    alone = backed.store.read_record()
    assert alone is not None and alone.lineage not in (None, snapshot.lineage), alone
    assert "a new lineage" in err and f"uploaded as s3://{BUCKET}/{alone.newest_snapshot}" in err, err
    back_to_lineage(backed, snapshot)

    # the second delta rots in S3: the restore keeps the first delta's revisions and says where and why it stopped
    rotten = deltas[1]
    backed.s3.put_object(Bucket=BUCKET, Key=rotten.key, Body=b"\x28\xb5\x2f\xfd" + b"\x00" * (rotten.size - 4))
    asg.stop_etcd(node)
    code, out, err = restore(asg, backed)
    assert code == 0, err
    assert f"the deltas after {snapshot.key} stop early" in err and rotten.key in err, err
    assert f"up to revision {deltas[0].last}" in out and "the deltas stopped early" in out, out
    assert "restore --snapshot" in out, out
    restart_from_restore(asg)
    assert all(asg.get(key) == value for key, value in first.items())
    assert all(asg.get(key) is None for key in second)
    record = backed.store.read_record()
    assert record is not None and record.lineage not in (None, snapshot.lineage)  # short of the deltas: a fork
    assert {i.revision for i in backed.store.list_snapshots() if i.key == record.newest_snapshot} == {deltas[0].last}
    back_to_lineage(backed, snapshot)

    # to a time: the revisions received up to then (the deltas' revisions are 1 s apart from the first's time)
    at = deltas[0].last_at - timedelta(seconds=4.5)  # revision first+4's time + 0.5 s
    asg.stop_etcd(node)
    code, out, err = restore(asg, backed, "--at", format_time(at))
    assert code == 0, err
    assert f"+ 1 deltas up to revision {deltas[0].first + 4}" in out and "new lineage" in out, out
    restart_from_restore(asg)
    assert [asg.get(f"/first/{n}") for n in range(7)] == [first[f"/first/{n}"] for n in range(5)] + [None, None]
    forked = backed.store.read_record()
    assert forked is not None and forked.lineage not in (None, snapshot.lineage)
    assert {info.lineage for info in backed.store.list_snapshots() if info.key == forked.newest_snapshot} == {
        forked.lineage
    }

    # to a revision of the old lineage, which the record no longer follows: refused, named
    code, out, err = restore(asg, backed, "--revision", str(deltas[0].first + 2))
    assert code == 6 and f"lineage {forked.lineage}" in err, err


@pytest.mark.etcd_also("3.6")
def test_restore_to_a_revision(sim: SimFactory, etcd_binary: Path, moto_url: str) -> None:
    backed = lone_cluster(sim, etcd_binary, moto_url)
    asg, node = backed.asg, backed.asg.nodes[0]
    backed.backup(node)
    (snapshot,) = backed.store.list_snapshots()
    written = put_keys(asg, "/k", 8)
    wanted = kv(node, "/k/3")
    assert wanted is not None
    target = int(wanted["mod_revision"])
    deltas = upload_deltas(backed, snapshot, 3)
    asg.stop_etcd(node)
    started = time.monotonic()
    code, out, err = restore(asg, backed, "--revision", str(target))
    took = time.monotonic() - started
    assert code == 0, err
    assert f"up to revision {target}" in out and f"The point asked was revision {target}" in out, out
    restart_from_restore(asg)
    assert [asg.get(f"/k/{n}") for n in range(8)] == [written[f"/k/{n}"] for n in range(4)] + [None] * 4
    assert kv(node, "/k/3") == wanted  # the very key, revisions and all
    assert len(deltas) == 3 and took < 60
