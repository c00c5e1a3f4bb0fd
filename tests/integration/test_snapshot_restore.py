"""Snapshots streamed from real etcd 3.4 and 3.5, read and restored by etcd's own tools."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from pathlib import Path

import pytest
import requests

from etcd_aws_cluster.errors import ConfigError, EtcdError, UnsafeError
from etcd_aws_cluster.etcd import EtcdClient, Tls
from etcd_aws_cluster.restore_tool import RestoreTarget, RestoreTool, db_revision, find_tool, restore
from tests.harness import etcd_binaries
from tests.harness.fixtures import SimFactory

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
    assert db_revision(tool_for(etcd_binary), path) == revision


def test_revision_of_a_live_members_db_copy(sim: SimFactory, etcd_binary: Path, tmp_path: Path) -> None:
    asg = sim(1, etcd_binary)
    asg.bootstrap_static()
    node = asg.nodes[0]
    revision = max(put(node.client_url, f"/k/{i}", "x") for i in range(20))
    copy = tmp_path / "db"
    shutil.copyfile(node.data_dir / "member" / "snap" / "db", copy)
    # The live copy may lag the last puts until etcd commits its batch; it is never ahead.
    assert 1 <= db_revision(tool_for(etcd_binary), copy) <= revision
    asg.stop_etcd(node)
    assert db_revision(tool_for(etcd_binary), node.data_dir / "member" / "snap" / "db") == revision


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
