"""`backup --follow` end to end (issue 17 item 3): real etcd on 3.4, 3.5.30 and 3.6, S3 in moto, a follower on
every member of a 3-node group.

One scenario checks, in order: with no snapshot yet the leader takes one first and follows from it; a write is in
a listed delta within the delta interval plus the upload; a leader change during steady writes loses no revision
(the deltas cover every revision without a hole, and revisions held twice hold the same events); SIGTERM uploads
what is pending and exits 0 on every member; a start revision etcd has compacted starts a full snapshot at once,
and deltas go on after it; a restore drill (`backup --verify`) of the snapshot and its deltas passes and `status`
shows it, and fails with exit 9 once a delta is damaged.
"""

from __future__ import annotations

import base64
import contextlib
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from etcd_aws_cluster.core import deltas
from etcd_aws_cluster.core.deltas import Delta, Revision
from etcd_aws_cluster.core.metrics import parse
from tests.harness.fixtures import SimFactory
from tests.harness.sim import Node
from tests.integration.helpers import leader_of, member_status, run_ok, wait_for_log
from tests.integration.test_backup_restore import BUCKET, Backed, booted

pytestmark = [pytest.mark.integration, pytest.mark.etcd_also("3.6")]

INTERVAL = 1.0  # backup_delta_interval, its minimum
# What a write may wait before its delta is listed: the interval, the upload to moto on loopback, and a loaded
# 2-CPU machine's scheduling.
LAG_ALLOWED = INTERVAL + 4.0


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def put(node: Node, key: str, value: str) -> int:
    """Write through `node`'s etcd; the revision the write made."""
    answer = requests.post(f"{node.client_url}/v3/kv/put", json={"key": b64(key), "value": b64(value)}, timeout=5)
    answer.raise_for_status()
    return int(answer.json()["header"]["revision"])


class Followers:
    """`backup --follow` on every node, each logging to its own file."""

    def __init__(self, backed: Backed, logs: Path, env: dict[str, str]) -> None:
        self.backed = backed
        self.logs = logs
        self.env = env
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        for node in self.backed.asg.nodes:
            log = self.log(node)
            self.procs[node.instance_id] = self.backed.asg.start_agent(
                node, "backup", "--follow", env=self.env, log_path=log
            )

    def log(self, node: Node) -> Path:
        return self.logs / f"follow-{node.instance_id}-{self.starts}.log"

    def text(self, node: Node) -> str:
        return self.log(node).read_text(errors="replace")

    def wait(self, node: Node, pattern: str, after: int = 0, timeout: float = 60) -> int:
        return wait_for_log(self.procs[node.instance_id], self.log(node), pattern, after=after, timeout=timeout)

    def terminate(self) -> dict[str, int]:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        return {instance_id: proc.wait(timeout=60) for instance_id, proc in self.procs.items()}


def covered_within(backed: Backed, revision: int, timeout: float) -> float:
    """Seconds until a listed delta covers `revision`."""
    started = time.monotonic()
    while not any(d.first <= revision <= d.last for d in backed.store.list_deltas()):
        assert time.monotonic() - started < timeout, f"no delta covers revision {revision} after {timeout}s"
        time.sleep(0.05)
    return time.monotonic() - started


def revisions_of(backed: Backed, lineage: str | None) -> tuple[list[Delta], dict[int, list[Revision]]]:
    """Every delta of `lineage`, read back, and each revision they hold (once per delta that holds it)."""
    read = [backed.store.read_delta(info) for info in deltas.of_lineage(backed.store.list_deltas(), lineage)]
    held: dict[int, list[Revision]] = {}
    for delta in read:
        for revision in delta.revisions:
            held.setdefault(revision.revision, []).append(revision)
    return read, held


def test_follow_uploads_deltas_hands_over_without_a_gap_flushes_on_sigterm_and_snapshots_after_compaction(
    sim: SimFactory, etcd_binary: Path, moto_url: str, tmp_path: Path
) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    asg = backed.asg
    nodes = asg.nodes
    env = {**backed.env, "ETCD_AWS_CLUSTER_BACKUP_DELTA_INTERVAL": str(INTERVAL)}
    followers = Followers(backed, tmp_path, env)
    followers.start()
    try:
        # -- no snapshot yet: the leader takes one, then follows after it; the others stand by
        first_leader = leader_of(nodes)
        followers.wait(first_leader, r"following from revision \d+, after the snapshot just taken")
        (snapshot,) = backed.store.list_snapshots()
        for node in nodes:
            if node is not first_leader:
                followers.wait(node, r"standing by: this member \(\w+\) is not the leader")

        # -- a write is listed in a delta within the interval plus the upload
        lags = [covered_within(backed, put(nodes[n % 3], f"/lag/{n}", "v"), timeout=30) for n in range(5)]
        print(f"delta lag (write -> delta listed), interval {INTERVAL}s: {', '.join(f'{s:.2f}s' for s in lags)}")
        assert max(lags) < LAG_ALLOWED, lags

        # -- a leader change during steady writes
        written: dict[int, str] = {}
        stop_writing = threading.Event()

        def write_steadily() -> None:
            n = 0
            while not stop_writing.is_set():
                key = f"/steady/{n}"
                # A write during the election may fail (then its revision, if it made one, is checked as any other)
                with contextlib.suppress(requests.RequestException):
                    written[put(nodes[2], key, f"value-{n}")] = key
                n += 1
                time.sleep(0.02)

        writer = threading.Thread(target=write_steadily, daemon=True)
        writer.start()
        time.sleep(1.5)
        target = next(n for n in nodes if n is not first_leader)
        target_id = member_status(target)["header"]["member_id"]
        moved = requests.post(
            f"{first_leader.client_url}/v3/maintenance/transfer-leadership", json={"targetID": target_id}, timeout=10
        )
        assert moved.status_code == 200, moved.text
        assert leader_of(nodes) is target
        followers.wait(first_leader, r"lost the leadership; uploading the pending revisions")
        followers.wait(target, r"following from revision \d+: the newest snapshot is at revision")
        time.sleep(2.5)
        stop_writing.set()
        writer.join(10)
        assert len(written) > 50

        # -- SIGTERM: the leader uploads what it holds at once and every follower exits 0
        last_write = put(nodes[0], "/last", "before SIGTERM")
        exits = followers.terminate()
        assert set(exits.values()) == {0}, exits
        assert "SIGTERM: uploading what is pending" in followers.text(target)
        assert any(d.first <= last_write <= d.last for d in backed.store.list_deltas())

        lineage = snapshot.lineage
        found = deltas.chain(snapshot.revision, backed.store.list_deltas(), lineage)
        assert found.gap_after is None and found.last >= last_write
        read, held = revisions_of(backed, lineage)
        # Every revision from the snapshot's on, but 1: a new cluster's first revision is its empty store, no change
        every = range(max(snapshot.revision, 1) + 1, last_write + 1)
        assert [r for r in every if r not in held] == [], "revisions no delta holds"
        for revision, copies in held.items():
            assert all(c.ops == copies[0].ops for c in copies), f"revision {revision} held twice, differently"
        twice = sorted(r for r, copies in held.items() if len(copies) > 1)
        print(f"{len(read)} deltas, revisions {snapshot.revision + 1}..{last_write}; held twice: {twice}")
        assert len(twice) <= 200  # an overlap around the hand-over only
        for revision, key in written.items():
            (op,) = held[revision][0].ops
            assert (op.kind, op.key, op.value) == ("put", key.encode(), f"value-{key.rsplit('/', 1)[1]}".encode())

        # -- compaction past where the followers stopped: a full snapshot at once, deltas after it
        for n in range(20):
            put(nodes[1], f"/while-stopped/{n}", "v")
        compact_at = put(nodes[1], "/compacted", "v")
        compacted = requests.post(
            f"{nodes[1].client_url}/v3/kv/compaction", json={"revision": str(compact_at), "physical": True}, timeout=10
        )
        assert compacted.status_code == 200, compacted.text
        followers.start()
        leader = leader_of(nodes)
        followers.wait(leader, r"cannot watch from revision \d+: etcd has compacted its history", timeout=90)
        followers.wait(leader, r"full snapshot at revision \d+; following from revision \d+")
        newest = max(backed.store.list_snapshots(), key=lambda s: s.revision)
        assert newest.revision >= compact_at and newest.lineage == lineage
        after = put(nodes[0], "/after-compaction", "v")
        covered_within(backed, after, timeout=30)
        again = deltas.chain(newest.revision, backed.store.list_deltas(), lineage)
        assert again.gap_after is None and again.last >= after

        # the leader's metrics say how far its deltas reach, written as it uploads (not only at the run's end)
        def reached() -> float:
            text = leader.metrics_file.read_text() if leader.metrics_file.exists() else ""
            found = [s.value for s in parse(text) if s.name == "etcd_aws_cluster_backup_delta_last_revision"]
            return found[0] if found else 0.0

        waited = time.monotonic() + 10
        while reached() < after:
            assert time.monotonic() < waited, f"the metrics file says the deltas reach {reached()}, not {after}"
            time.sleep(0.05)
        assert set(followers.terminate().values()) == {0}

        # -- a restore drill of the newest snapshot and its deltas passes; status shows the proved recovery point
        drilled = backed.backup(nodes[0], "--verify")
        assert "drill passed" in drilled.stdout, drilled.stdout
        result = backed.store.read_last_verification()
        reach = deltas.chain(newest.revision, backed.store.list_deltas(), lineage)
        assert result is not None and result.ok, result
        assert (result.snapshot, result.revision) == (newest.key, reach.last) and result.deltas >= 1
        assert result.revision >= after and result.keys is not None and result.keys > 50
        shown = run_ok(asg, nodes[1], "status", env=backed.env).stdout
        assert f"recovery point: revision {reach.last}" in shown and "restore drill: passed" in shown, shown

        # -- a damaged delta: the drill fails (exit 9), stores why, and the metric says so
        damaged = reach.deltas[-1]
        backed.s3.put_object(Bucket=BUCKET, Key=damaged.key, Body=b"not a delta")
        failed = asg.run_agent(nodes[0], "backup", "--verify", env=backed.env, timeout=90)
        assert failed.returncode == 9, failed.stderr
        assert "error (drill failed)" in failed.stderr and "stopped early" in failed.stderr, failed.stderr
        result = backed.store.read_last_verification()
        assert result is not None and not result.ok and result.revision < damaged.last
        success = [
            s.value for s in parse(nodes[0].metrics_file.read_text()) if s.name.endswith("_verification_success")
        ]
        assert success == [0.0]
    finally:
        for proc in followers.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in followers.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
