"""Deltas replayed onto a snapshot in a throwaway etcd (app/replay.py, adapters/throwaway_etcd.py, adapters/etcd/kv.py)
against real etcd: revisions, leases and values come back exactly as the original cluster had them."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from etcd_aws_cluster.adapters import restore_tool, snapshot_save, throwaway_etcd
from etcd_aws_cluster.adapters.etcd import EtcdClient, Tls
from etcd_aws_cluster.app.replay import Point, Replayed, Replayer
from etcd_aws_cluster.base.deadline import Deadline
from etcd_aws_cluster.base.errors import AgentError
from etcd_aws_cluster.core.deltas import DamagedDeltaError, Delta, DeltaInfo, Op
from etcd_aws_cluster.core.records import SnapshotInfo
from tests.harness import etcd_binaries
from tests.harness.deltas import history, make_delta, split
from tests.harness.fixtures import SimFactory

pytestmark = pytest.mark.integration

LINEAGE = "20261207T000000Z-0badcafe"
INSTANCE = "i-0123456789abcdef0"
ALL = {"key": base64.b64encode(b"\0").decode(), "range_end": base64.b64encode(b"\0").decode()}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = requests.post(f"{url}/v3/{path}", json=body, timeout=5)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def put(url: str, key: str, value: str, lease: int = 0) -> int:
    body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        body["lease"] = str(lease)
    return int(post(url, "kv/put", body)["header"]["revision"])


def everything(url: str, revision: int | None = None) -> list[tuple[str, str, int, int, int, int]]:
    """Every live key (at `revision`) with its value, create and mod revisions, version and lease."""
    body: dict[str, Any] = dict(ALL)
    if revision is not None:
        body["revision"] = str(revision)
    kvs = post(url, "kv/range", body).get("kvs", [])
    return [
        (
            base64.b64decode(kv["key"]).decode(),
            base64.b64decode(kv.get("value", "")).decode(),
            int(kv["create_revision"]),
            int(kv["mod_revision"]),
            int(kv["version"]),
            int(kv.get("lease", "0")),
        )
        for kv in kvs
    ]


def info_of(delta: Delta, n: int) -> DeltaInfo:
    return DeltaInfo(
        key=f"deltas/{LINEAGE}/{n}",
        lineage=LINEAGE,
        first=delta.header.first,
        last=delta.header.last,
        last_at=delta.last_at,
        instance=INSTANCE,
        sha256="0" * 64,
        size=1,
    )


def replayer(etcd_binary: Path) -> tuple[Replayer, restore_tool.RestoreTool]:
    path = etcd_binaries.snapshot_tool(etcd_binary)
    assert path is not None
    tool = restore_tool.find_tool(path, {"PATH": str(etcd_binary.parent)})
    etcd = throwaway_etcd.find_etcd(tool, "3.4.0", {"PATH": "/nonexistent"})
    assert etcd.path.parent == etcd_binary.parent
    client = EtcdClient(requests.Session(), Tls(), "v3")
    return Replayer(client, tool, etcd, snapshot_save.find_etcdctl(path, {}), Deadline(120), 5.0), tool


@pytest.mark.etcd_also("3.6")
def test_a_replay_keeps_revisions_leases_and_values(sim: SimFactory, etcd_binary: Path, tmp_path: Path) -> None:
    asg = sim(1, etcd_binary)
    asg.bootstrap_static()
    url = asg.nodes[0].client_url
    client = EtcdClient(requests.Session(), Tls(), "v3")
    old_lease = 0x1111
    assert client.grant_lease(url, old_lease, 3600, 5) is True
    assert client.grant_lease(url, old_lease, 3600, 5) is False  # it exists: said, not raised
    put(url, "/before/plain", "a")
    put(url, "/before/leased", "b", old_lease)
    snapshot = tmp_path / "snap.db"
    snapshot.write_bytes(b"".join(client.snapshot(url, 5)))
    start = client.revision(url, 5)

    # after the snapshot: a new lease, overwrites, one transaction of several keys, deletes
    new_lease = 0x2222
    client.grant_lease(url, new_lease, 30, 5)
    put(url, "/after/1", "one")
    put(url, "/before/plain", "a2")
    multi = client.txn(url, [Op("put", b"/after/2", b"two", new_lease), Op("put", b"/after/3", b"three")], 5)
    put(url, "/after/1", "one-again", old_lease)
    deleted = client.txn(url, [Op("delete", b"/after/3"), Op("delete", b"/before/leased")], 5)
    for n in range(20):
        put(url, f"/after/many/{n}", f"v{n}")
    end = client.revision(url, 5)
    assert multi == start + 3 and deleted == start + 5 and end == start + 25
    assert client.key_count(url, start, 5) == 2 and client.key_count(url, end, 5) == 23

    revisions = history(url, start + 1, at=datetime.now(timezone.utc), step=timedelta(seconds=1))
    assert [r.revision for r in revisions] == list(range(start + 1, end + 1))
    assert len(revisions[2].ops) == 2 and len(revisions[4].ops) == 2  # one revision, one transaction
    leases = ((old_lease, 3600), (new_lease, 30))
    parts = split(revisions, 10)
    deltas = [
        make_delta(part, lineage=LINEAGE, cluster_id=1, leases=leases, keys=23 if n == len(parts) - 1 else None)
        for n, part in enumerate(parts)
    ]
    chain = [info_of(d, n) for n, d in enumerate(deltas)]
    by_key = {info.key: delta for info, delta in zip(chain, deltas)}

    def read(delta_info: DeltaInfo) -> Delta:
        return by_key[delta_info.key]

    status = restore_tool.db_status(replayer(etcd_binary)[1], snapshot)
    info = SnapshotInfo(
        "snap", revisions[0].at, status.revision, 1, "3.4.0", "0" * 64, snapshot.stat().st_size, (), INSTANCE
    )
    replay, tool = replayer(etcd_binary)

    # the whole chain: every key as the original has it, revisions and leases included
    whole = replay.run(snapshot, info, chain, read, tmp_path / ".replay-1", tmp_path / "whole.db")
    assert (whole.progress.base, whole.progress.revision, whole.progress.revisions) == (start, end, 25)
    assert whole.progress.deltas == 3 and whole.progress.stopped is None
    assert whole.progress.at == revisions[-1].at
    assert not (tmp_path / ".replay-1").exists()
    assert restore_tool.db_status(tool, tmp_path / "whole.db").revision == end
    assert served(replay, tool, whole, tmp_path / ".check-1") == everything(url)

    # to a point in time (and to a revision): exactly the original's state there
    point = revisions[4].at + timedelta(milliseconds=500)
    cut = replay.run(snapshot, info, chain[:1], read, tmp_path / ".replay-2", tmp_path / "cut.db", Point(at=point))
    assert cut.progress.revision == start + 5 and cut.progress.stopped is None
    assert served(replay, tool, cut, tmp_path / ".check-2") == everything(url, start + 5)
    cut = replay.run(snapshot, info, chain[:2], read, tmp_path / ".replay-3", tmp_path / "cut2.db", Point(start + 12))
    assert cut.progress.revision == start + 12

    # a damaged second delta: the replay keeps the first delta's revisions and says why it stopped
    def damaged(delta_info: DeltaInfo) -> Delta:
        if delta_info.key == chain[1].key:
            raise DamagedDeltaError(f"delta {delta_info.key} is damaged: its lines do not match")
        return by_key[delta_info.key]

    short = replay.run(snapshot, info, chain, damaged, tmp_path / ".replay-4", tmp_path / "short.db")
    assert short.progress.revision == chain[0].last and short.progress.revisions == 10
    assert short.progress.stopped is not None and "damaged" in short.progress.stopped
    assert served(replay, tool, short, tmp_path / ".check-4") == everything(url, chain[0].last)


def served(replay: Replayer, tool: restore_tool.RestoreTool, result: Replayed, workdir: Path) -> object:
    """What a throwaway etcd started from the replay's snapshot serves (and that it is gone afterwards)."""
    assert result.snapshot is not None
    with throwaway_etcd.running(
        result.snapshot, tool, replay.etcd, workdir, ready=lambda u: replay.client.revision(u, 2), timeout=30
    ) as etcd:
        found = everything(etcd.client_url)
        pid = etcd.pid
    assert not workdir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    return found


def test_the_throwaway_etcd_is_removed_when_it_cannot_start(tmp_path: Path) -> None:
    binary = etcd_binaries.etcd34()
    if binary is None:
        pytest.skip("etcd 3.4 (Debian etcd-server) not installed")
    path = etcd_binaries.snapshot_tool(binary)
    assert path is not None
    tool = restore_tool.find_tool(path, {"PATH": str(binary.parent)})
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(hashlib.sha256(b"x").digest() * 100)
    etcd = throwaway_etcd.EtcdBinary(binary, (3, 4, 23))
    workdir = tmp_path / ".replay-9"
    with pytest.raises(AgentError, match="restoring"):  # noqa: SIM117 - Python 3.9 has no parenthesized with
        with throwaway_etcd.running(garbage, tool, etcd, workdir, ready=lambda u: None, timeout=20):
            raise AssertionError("it started from garbage")
    assert not (tmp_path / ".replay-9").exists()


CHILD = """
import signal, sys, time
from pathlib import Path
from etcd_aws_cluster import cli
from etcd_aws_cluster.adapters import restore_tool, throwaway_etcd
from etcd_aws_cluster.adapters.etcd import EtcdClient, Tls
import requests

signal.signal(signal.SIGTERM, cli._terminate)
snapshot, tool_path, binary, workdir = map(Path, sys.argv[1:5])
tool = restore_tool.find_tool(tool_path, {"PATH": str(tool_path.parent)})
etcd = throwaway_etcd.EtcdBinary(binary, (3, 4, 0))
client = EtcdClient(requests.Session(), Tls(), "v3")
try:
    with throwaway_etcd.running(snapshot, tool, etcd, workdir, ready=lambda u: client.revision(u, 2), timeout=30) as t:
        print(t.pid, flush=True)
        time.sleep(60)
except cli.Terminated:
    sys.exit(143)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_the_throwaway_etcd_goes_with_the_agent(signum: int, sim: SimFactory, tmp_path: Path) -> None:
    """SIGTERM unwinds the agent, which stops etcd and removes its dir; SIGKILL leaves the dir (the next run's
    sweep removes it) but the kernel kills etcd with its parent."""
    binary = etcd_binaries.etcd34()
    if binary is None:
        pytest.skip("etcd 3.4 (Debian etcd-server) not installed")
    tool = etcd_binaries.snapshot_tool(binary)
    assert tool is not None
    asg = sim(1, binary)
    asg.bootstrap_static()
    snapshot = tmp_path / "snap.db"
    snapshot.write_bytes(b"".join(EtcdClient(requests.Session(), Tls()).snapshot(asg.nodes[0].client_url, 5)))
    workdir = tmp_path / ".replay-77"
    argv = [sys.executable, "-c", CHILD, str(snapshot), str(tool), str(binary), str(workdir)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2]) as child:
        try:
            assert child.stdout is not None
            etcd_pid = int(child.stdout.readline())
            os.kill(etcd_pid, 0)  # running
            child.send_signal(signum)
            assert child.wait(30) == (143 if signum == signal.SIGTERM else -signal.SIGKILL)
        finally:
            if child.poll() is None:
                child.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pid_alive(etcd_pid):
        time.sleep(0.1)
    assert not pid_alive(etcd_pid)
    assert workdir.exists() == (signum == signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (not yet reaped by init) is dead too
    state = (
        Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] if Path(f"/proc/{pid}/stat").exists() else "X"
    )
    return state not in ("Z", "X")


def test_a_short_lease_of_the_snapshot_outlives_a_slow_replay(sim: SimFactory, tmp_path: Path) -> None:
    """A lease of 2 s in the snapshot, a replay that takes longer (a slow delta read): the lease keeper keeps it
    alive, so etcd revokes nothing of its own and every revision lands where it was."""
    binary = etcd_binaries.available().get(etcd_binaries.etcd_provision.SID_ETCD_VERSION)
    assert binary is not None
    asg = sim(1, binary)
    asg.bootstrap_static()
    url = asg.nodes[0].client_url
    client = EtcdClient(requests.Session(), Tls(), "v3")
    client.grant_lease(url, 0x77, 2, 5)
    put(url, "/short-lived", "x", 0x77)
    snapshot = tmp_path / "snap.db"
    snapshot.write_bytes(b"".join(client.snapshot(url, 5)))
    start = client.revision(url, 5)
    for n in range(4):
        put(url, f"/k/{n}", "v")
    revisions = history(url, start + 1)
    deltas = [make_delta(part, lineage=LINEAGE, cluster_id=1) for part in split(revisions, 2)]
    chain = [info_of(d, n) for n, d in enumerate(deltas)]

    def slow(delta_info: DeltaInfo) -> Delta:
        if delta_info.key == chain[1].key:
            time.sleep(4)  # twice the lease's TTL
        return deltas[chain.index(delta_info)]

    replay, tool = replayer(binary)
    info = SnapshotInfo("snap", revisions[0].at, start, 1, "3.5.30", "0" * 64, 1, (), INSTANCE)
    result = replay.run(snapshot, info, chain, slow, tmp_path / ".replay-5", tmp_path / "slow.db")
    assert result.progress.revision == start + 4 and result.progress.stopped is None
    assert [kv[0] for kv in served(replay, tool, result, tmp_path / ".check-5")][:1] == ["/k/0"]
