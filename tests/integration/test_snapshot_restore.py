"""Snapshots streamed from real etcd 3.4 and 3.5, read and restored by etcd's own tools."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from etcd_aws_cluster.adapters.etcd import EtcdClient, Tls
from etcd_aws_cluster.adapters.restore_tool import RestoreTarget, RestoreTool, db_status, find_tool, restore
from etcd_aws_cluster.adapters.s3 import BackupStore, connect_s3
from etcd_aws_cluster.base.errors import ConfigError, EtcdError, UnsafeError
from etcd_aws_cluster.core.records import SnapshotMeta, newest_valid
from tests.harness import etcd_binaries
from tests.harness.fixtures import SimFactory
from tests.harness.moto_server import FAKE_CREDENTIALS
from tests.harness.sim import initial_cluster

pytestmark = pytest.mark.integration


def tool_for(etcd_binary: Path) -> RestoreTool:
    path = etcd_binaries.snapshot_tool(etcd_binary)
    if path is None:
        pytest.skip(f"no etcdutl/etcdctl beside {etcd_binary}")
    return find_tool(path)


def put(url: str, key: str, value: str) -> int:
    """Put a key through the JSON gateway; the revision it created."""
    body = {"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(value.encode()).decode()}
    answer = requests.post(f"{url}/v3/kv/put", json=body, timeout=5).json()
    return int(answer["header"]["revision"])


def test_snapshot_streams_a_db_the_tools_read(sim: SimFactory, etcd_binary: Path, tmp_path: Path) -> None:
    asg = sim(1, etcd_binary)
    asg.bootstrap_static()
    url = asg.nodes[0].client_url
    revision = max(put(url, f"/k/{i}", "v" * 1000) for i in range(200))
    chunks = list(EtcdClient(requests.Session(), Tls()).snapshot(url, 5))
    db = b"".join(chunks)
    assert len(chunks) > 2  # streamed in etcd's chunks, not one blob
    assert hashlib.sha256(db[:-32]).digest() == db[-32:]
    path = tmp_path / "snap.db"
    path.write_bytes(db)
    assert db_status(tool_for(etcd_binary), path).revision == revision


def test_revision_of_a_live_members_db_copy(sim: SimFactory, etcd_binary: Path, tmp_path: Path) -> None:
    asg = sim(1, etcd_binary)
    asg.bootstrap_static()
    node = asg.nodes[0]
    revision = max(put(node.client_url, f"/k/{i}", "x") for i in range(20))
    # etcd commits its backend in batches (every 100 ms): a copy of the live bolt file taken while a write is in
    # flight may be torn (as a survivor's copy never is: the agent copies before etcd starts), so copy until one
    # reads. The live copy may lag the last puts until etcd commits its batch; it is never ahead.
    copy = tmp_path / "db"
    deadline = time.monotonic() + 30
    copied = 0
    while copied != revision:
        assert time.monotonic() < deadline, f"no copy of the live db showed revision {revision} (last: {copied})"
        shutil.copyfile(node.data_dir / "member" / "snap" / "db", copy)
        try:
            copied = db_status(tool_for(etcd_binary), copy).revision
        except EtcdError:  # torn
            continue
        assert copied <= revision
    asg.stop_etcd(node)
    assert db_status(tool_for(etcd_binary), node.data_dir / "member" / "snap" / "db").revision == revision


def test_find_tool_prefers_the_setting_then_etcdutl_then_etcdctl(tmp_path: Path) -> None:
    etcdctl = Path("/usr/bin/etcdctl")
    etcdutl = next((p for b in etcd_binaries.available().values() if (p := b.parent / "etcdutl").is_file()), None)
    if not etcdctl.is_file() or etcdutl is None:
        pytest.skip("needs Debian's etcdctl and an etcdutl")
    both, only_ctl = tmp_path / "both", tmp_path / "ctl"
    for directory, tools in ((both, (etcdctl, etcdutl)), (only_ctl, (etcdctl,))):
        directory.mkdir()
        for tool in tools:
            (directory / tool.name).symlink_to(tool)
    assert find_tool(None, {"PATH": str(both)}).kind == "etcdutl"
    assert find_tool(None, {"PATH": str(only_ctl)}).kind == "etcdctl"
    assert find_tool(etcdctl, {"PATH": str(both)}).path == etcdctl
    with pytest.raises(ConfigError, match="etcdutl .* was not found"):
        find_tool(None, {"PATH": str(tmp_path / "nothing")})
    with pytest.raises(ConfigError, match="not an executable"):
        find_tool(tmp_path / "missing", {"PATH": str(both)})
    with pytest.raises(ConfigError, match="neither etcdutl nor etcdctl"):
        find_tool(Path("/bin/true"), {})


def test_restore_refuses_a_data_dir_with_data_and_cleans_up_a_failed_one(
    sim: SimFactory, etcd_binary: Path, tmp_path: Path
) -> None:
    tool = tool_for(etcd_binary)
    target = RestoreTarget(tmp_path / "data", "n1", "n1=http://127.0.0.1:2380", "tok", "http://127.0.0.1:2380")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep").write_text("mine")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(UnsafeError, match="holds data"):
        restore(tool, garbage, target)
    assert (tmp_path / "data" / "keep").read_text() == "mine"
    (tmp_path / "data" / "keep").unlink()
    with pytest.raises(EtcdError, match="failed"):
        restore(tool, garbage, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "garbage.db"]  # no staging dir left
    assert not any((tmp_path / "data").iterdir())


def test_snapshot_to_s3_and_back_restores_a_three_node_cluster(
    sim: SimFactory, etcd_binary: Path, tmp_path: Path, moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = tool_for(etcd_binary)
    env = {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": moto_url}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s3 = connect_s3("us-east-1", env, timeout=10, max_attempts=2)
    s3.create_bucket(Bucket="backups")
    store = BackupStore(s3, "s3://backups/etcd", "etcd-sim", region="us-east-1")

    asg = sim(3, etcd_binary)
    asg.bootstrap_static()
    first = asg.nodes[0]
    revision = max(put(first.client_url, f"/app/{i}", f"value-{i}") for i in range(50))
    old_cluster = asg.member_list()["header"]["cluster_id"]
    client = EtcdClient(requests.Session(), Tls())
    taken = SnapshotMeta(datetime.now(timezone.utc), revision, int(old_cluster), "3.5.0", (), "i-0123456789abcdef0")
    store.upload(client.snapshot(first.client_url, 5), taken)

    for node in asg.nodes:  # every member gone: their data with them
        asg.stop_etcd(node, kill=True)
        node.data_dir.rename(node.data_dir.with_name("data.lost"))
    chosen = newest_valid(store.list_snapshots())
    assert chosen is not None and chosen.revision == revision
    snapshot_file = tmp_path / "restore.db"
    store.download(chosen, snapshot_file)
    assert db_status(tool, snapshot_file).revision == revision
    cluster = initial_cluster(asg.nodes)
    for node in asg.nodes:
        restore(tool, snapshot_file, RestoreTarget(node.data_dir, node.name, cluster, "restored", node.peer_url))

    asg.write_static_env(state="new", token="restored")
    for node in asg.nodes:
        asg.start_etcd(node)
    asg.wait_healthy(3, timeout=60)
    assert {asg.get(f"/app/{i}", node=asg.nodes[i % 3]) for i in range(50)} == {f"value-{i}" for i in range(50)}
    cluster_ids = {asg.member_list(node)["header"]["cluster_id"] for node in asg.nodes}
    assert len(cluster_ids) == 1 and cluster_ids != {old_cluster}
