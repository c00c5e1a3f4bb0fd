"""Issue 15's restore guarantees end to end, on real etcd with moto S3: revisions only go forward, the right tool
or none, the db checked against its manifest, restores where etcd's data lives (a mount point, a read-only
parent), and a SIGTERM or a kill that leaves no partial files behind."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from etcd_aws_cluster.adapters.restore_tool import BUMP_REVISION
from etcd_aws_cluster.core import records
from tests.harness import etcd_binaries
from tests.harness.fixtures import SimFactory
from tests.harness.sim import Node
from tests.integration.helpers import boot, decision, env
from tests.integration.test_backup_restore import (
    BUCKET,
    Backed,
    backed_sim,
    booted,
    full_replacement_restores,
    put_keys,
    replace_everyone,
    restored_key,
    run_concurrently,
)

pytestmark = pytest.mark.integration

SCRATCH_MARKS = (".restoring-", ".snapshot-", ".handoff-", ".spool-", ".part")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def put_revision(node: Node, key: str, value: str) -> int:
    """Put through the JSON gateway; the revision the write got."""
    answer = requests.post(f"{node.client_url}/v3/kv/put", json={"key": b64(key), "value": b64(value)}, timeout=5)
    return int(answer.json()["header"]["revision"])


def scratch_left(*directories: Path) -> list[Path]:
    found = []
    for directory in directories:
        if directory.is_dir():
            found += [p for p in directory.iterdir() if any(mark in p.name for mark in SCRATCH_MARKS)]
    return found


def can_bump(etcd_binary: Path) -> bool:
    tool = etcd_binaries.snapshot_tool(etcd_binary)
    assert tool is not None
    done = subprocess.run(
        [str(tool), "snapshot", "restore", "--help"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    return "--bump-revision" in done.stdout + done.stderr


def cannot_bump_line(etcd_binary: Path) -> str:
    """What the agent says of this release's tool: `... cannot bump revisions (etcdctl 3.4.23)`."""
    tool = etcd_binaries.snapshot_tool(etcd_binary)
    assert tool is not None
    version = subprocess.run([str(tool), "version"], capture_output=True, text=True, check=True).stdout.split()[2]
    return f"restores on this host cannot bump revisions ({tool.name} {version}): watchers"


# -- (a) revisions only go forward --------------------------------------------------------------------------------


@pytest.mark.etcd_also("3.6")
def test_after_a_full_replacement_the_next_write_gets_a_revision_above_the_old_clusters(
    sim: SimFactory, etcd_binary: Path, moto_url: str
) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    asg = backed.asg
    put_keys(asg, "/app", 20)
    backed.backup(asg.nodes[0])
    (snapshot,) = backed.store.list_snapshots()
    old_revision = max(put_revision(asg.nodes[0], f"/lost/{i}", "x") for i in range(30))  # lost with the cluster

    logs, chosen = full_replacement_restores(backed)

    assert chosen == snapshot.key
    new_revision = put_revision(asg.nodes[0], "/after-the-restore", "y")
    if can_bump(etcd_binary):
        assert new_revision > old_revision, (new_revision, old_revision)
        assert new_revision > snapshot.revision + BUMP_REVISION
        assert all("cannot bump revisions" not in err for err in logs.values())
        # the revisions below are compacted: a watcher of the old cluster is told so and re-lists
        answer = requests.post(
            f"{asg.nodes[1].client_url}/v3/kv/range",
            json={"key": b64("/app/1"), "revision": snapshot.revision},
            timeout=5,
        )
        assert "compacted" in answer.text, answer.text
    else:  # etcd 3.4's etcdctl, etcdutl 3.5.1: documented as not possible, and said at restore time
        assert new_revision <= old_revision
        for err in logs.values():
            assert cannot_bump_line(etcd_binary) in err, err


def test_status_says_when_restores_on_this_host_cannot_bump_revisions(
    sim: SimFactory, etcd_binary: Path, moto_url: str
) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    result = backed.asg.run_agent(backed.asg.nodes[0], "status", env=backed.env)
    assert result.returncode == 0, result.stderr
    if can_bump(etcd_binary):
        assert "cannot bump revisions" not in result.stdout, result.stdout
    else:
        assert cannot_bump_line(etcd_binary) in result.stdout, result.stdout
        assert "after a restore" in result.stdout
    report = json.loads(backed.asg.run_agent(backed.asg.nodes[0], "status", "--json", env=backed.env).stdout)
    assert ("cannot bump revisions" in report["restores"]) is not can_bump(etcd_binary)


# -- (b) the right tool or none -----------------------------------------------------------------------------------


def tool_dir(tmp_path: Path, name: str, programs: dict[str, Path]) -> Path:
    """A directory of scripts that run `programs` (not symlinks: the agent also looks beside a link's target)."""
    directory = tmp_path / name
    directory.mkdir()
    for program, target in programs.items():
        (directory / program).write_text(f'#!/bin/sh\nexec "{target}" "$@"\n')
        (directory / program).chmod(0o755)
    return directory


@pytest.mark.etcd_also("3.6", "3.7")
def test_a_restore_tool_older_than_the_local_etcd_refuses_before_the_data_dir_is_touched(
    sim: SimFactory, etcd_binary: Path, moto_url: str, tmp_path: Path
) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    asg = backed.asg
    put_keys(asg, "/app", 5)
    backed.backup(asg.nodes[0])
    version = etcd_binaries.version_of(etcd_binary)
    assert version is not None
    if version.startswith("3.4."):
        # nothing is older than 3.4: the wrong tool is a newer etcdctl, which cannot restore at all since 3.6
        newer = etcd_binaries.etcdctl("3.6")
        assert newer is not None
        wrong, expected = tool_dir(tmp_path, "wrong", {"etcdctl": newer}), "Install etcdctl 3.4 (Debian: etcd-client)"
        reason = "cannot restore snapshots since etcd 3.6"
    else:  # Debian's etcdctl 3.4 first on PATH, this release's etcd on PATH too
        wrong = tool_dir(tmp_path, "wrong", {"etcdctl": etcd_binaries.DEBIAN_ETCDCTL})
        minor = ".".join(version.split(".")[:2])
        expected, reason = f"Install etcdutl {minor} or newer (Debian: etcd-server {minor}", "is older than"
    local_etcd = tool_dir(tmp_path, "etcd-bin", {"etcd": etcd_binary})
    agent_env = {k: v for k, v in backed.env.items() if k != "ETCD_AWS_CLUSTER_ETCDUTL"}
    agent_env["PATH"] = os.pathsep.join([str(wrong), str(local_etcd)])  # /bin is /usr/bin: Debian's etcdctl

    new = replace_everyone(asg)
    results = run_concurrently(asg, new, agent_env)

    for node in new:
        code, err = results[node.instance_id]
        assert code == 2, f"agent on {node} exited {code}:\n{err}"
        assert "no restore tool fits" in err and reason in err and expected in err, err
        assert not node.env_file.exists()
        assert not node.data_dir.exists()  # never touched: not even created
        assert not scratch_left(node.workdir)


# -- (c) restores where etcd's data lives -------------------------------------------------------------------------


@pytest.fixture
def mounts() -> Iterator[Callable[..., None]]:
    """`mount(*args, target)`: real mounts (a bind mount is what an EBS volume, `docker -v` or systemd's
    ReadWritePaths= give etcd's data dir), all undone after the test. Needs root (CI runs as root)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8)")
    mounted: list[Path] = []

    def mount(*args: str) -> None:
        subprocess.run(["mount", *args], check=True)
        mounted.append(Path(args[-1]))

    try:
        yield mount
    finally:
        for target in reversed(mounted):
            if subprocess.run(["mountpoint", "-q", str(target)], check=False).returncode == 0:
                subprocess.run(["umount", "--lazy", str(target)], check=True)


@pytest.mark.etcd_also("3.6")
def test_a_restore_into_a_mount_point_and_under_a_read_only_parent_succeeds_and_etcd_starts(
    sim: SimFactory, etcd_binary: Path, moto_url: str, tmp_path: Path, mounts: Callable[..., None]
) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    asg = backed.asg
    written = put_keys(asg, "/app", 20)
    backed.backup(asg.nodes[0])
    on_mount, under_ro, plain = replace_everyone(asg)

    # a volume of its own: the data dir is a mount point (renaming it fails with EBUSY), with lost+found
    volume = tmp_path / "volume"
    (volume / "lost+found").mkdir(parents=True)
    (volume / ".stale-20261201T000000Z" / "member" / "wal").mkdir(parents=True)  # an earlier move-aside
    on_mount.data_dir.mkdir()
    mounts("--bind", str(volume), str(on_mount.data_dir))
    # the unit's sandbox: the parent read-only (ProtectSystem=strict), the data dir a writable mount inside it
    parent = under_ro.workdir / "var-lib"
    data_dir = parent / "etcd"
    data_dir.mkdir(parents=True)
    mounts("--bind", str(parent), str(parent))
    mounts("-o", "remount,ro,bind", str(parent))
    (tmp_path / "rw").mkdir()
    mounts("--bind", str(tmp_path / "rw"), str(data_dir))
    with pytest.raises(OSError, match="Read-only file system"):
        (parent / "probe").write_text("x")
    per_node = {under_ro.instance_id: {"ETCD_AWS_CLUSTER_DATA_DIR": str(data_dir)}}

    procs = [(n, asg.start_agent(n, env={**backed.env, **per_node.get(n.instance_id, {})})) for n in asg.nodes]
    for node, proc in procs:
        _, err = proc.communicate(timeout=150)
        asg.registry.forget(proc.pid)
        assert proc.returncode == 0, f"agent on {node} exited {proc.returncode}:\n{err}"
        assert decision(err) == "restore", err
        assert "restore: restored " in err
    assert sorted(p.name for p in on_mount.data_dir.iterdir()) == [".stale-20261201T000000Z", "lost+found", "member"]
    assert sorted(p.name for p in data_dir.iterdir()) == ["member"]
    assert not scratch_left(on_mount.data_dir, on_mount.workdir, data_dir, plain.data_dir, plain.workdir)

    for node in (on_mount, plain):
        asg.start_etcd(node)
    asg.start_etcd(under_ro, extra_env={"ETCD_DATA_DIR": str(data_dir)})
    asg.wait_healthy(3, timeout=60)
    for key, value in written.items():
        assert asg.get(key, node=on_mount) == value and asg.get(key, node=under_ro) == value, key


# -- (d) the db must be the one its manifest names ----------------------------------------------------------------


@pytest.mark.etcd_also("3.6")
def test_a_snapshot_whose_db_does_not_match_its_manifest_falls_back_to_the_one_before(
    sim: SimFactory, etcd_binary: Path, moto_url: str
) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    asg = backed.asg
    older = put_keys(asg, "/older", 10)
    backed.backup(asg.nodes[0])
    put_keys(asg, "/newer", 10)
    backed.backup(asg.nodes[1])
    newest, before = backed.store.list_snapshots()
    # a backup from a member spools its snapshot and reads the db's exact revision and hash into the manifest
    assert newest.db_hash is not None and before.db_hash is not None and newest.db_hash != before.db_hash
    # the newest object is replaced by the older one, its manifest's checksums and sizes (of the stored bytes and
    # of the db) made to match: only the tool's look at the db (revision and hash against the manifest) can tell
    older_object = backed.s3.get_object(Bucket=BUCKET, Key=before.key)["Body"].read()
    backed.s3.put_object(Bucket=BUCKET, Key=newest.key, Body=older_object)
    forged = dataclasses.replace(
        newest, sha256=before.sha256, size=before.size, db_sha256=before.db_sha256, db_size=before.db_size
    )
    backed.s3.put_object(
        Bucket=BUCKET, Key=backed.store.manifest_key(newest.key), Body=records.snapshot_to_json(forged).encode()
    )

    logs, chosen = full_replacement_restores(backed)

    assert chosen == before.key
    said = [err for err in logs.values() if f"s3://{BUCKET}/{newest.key} is corrupt: its db is at revision" in err]
    assert said, logs
    assert all("trying the snapshot before it" in err for err in said)
    for key, value in older.items():
        assert asg.get(key) == value, key
    assert asg.get("/newer/1") is None


# -- (e) SIGTERM and kill during a restore ------------------------------------------------------------------------


def slow_tool(tmp_path: Path, real: Path) -> Path:
    """The real tool, but a `snapshot restore` that has written its staging dir then hangs (exec: one process,
    its pid in slow.pid)."""
    path = tmp_path / real.name
    path.write_text(
        f'#!/bin/sh\n[ "$1 $2" = "snapshot restore" ] && [ "$3" != --help ] && {{ "{real}" "$@" || exit $?; '
        f'echo $$ > "{tmp_path}/slow.pid"; exec sleep 600; }}\n'
        f'exec "{real}" "$@"\n'
    )
    path.chmod(0o755)
    return path


def one_node_backed(sim: SimFactory, etcd_binary: Path, moto_url: str) -> tuple[Backed, Node]:
    backed = backed_sim(sim, etcd_binary, moto_url, size=1)
    asg = backed.asg
    boot(asg, asg.nodes, env=backed.env)
    asg.wait_healthy(1, timeout=60)
    put_keys(asg, "/app", 10)
    backed.backup(asg.nodes[0])
    (old,) = asg.nodes
    asg.stop_etcd(old, kill=True)
    (new,) = asg.terminate(old, replace=True)
    return backed, new


def wait_for_staging(node: Node, proc: subprocess.Popen[str], pid_file: Path) -> None:
    """Until the slow tool has written the staging dir and hangs (its pid in `pid_file`)."""
    deadline = time.monotonic() + 90
    while not pid_file.exists() or not any((p / "member").is_dir() for p in node.data_dir.glob(".restoring-*")):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the restore never reached its staging dir"
        time.sleep(0.05)


@pytest.mark.etcd_also("3.6")
def test_sigterm_during_a_restore_leaves_no_partial_files_and_a_kill_is_swept_by_the_next_run(
    sim: SimFactory, etcd_binary: Path, moto_url: str, tmp_path: Path
) -> None:
    backed, node = one_node_backed(sim, etcd_binary, moto_url)
    asg = backed.asg
    real_tool = Path(backed.env["ETCD_AWS_CLUSTER_ETCDUTL"])
    slow = {**backed.env, "ETCD_AWS_CLUSTER_ETCDUTL": str(slow_tool(tmp_path, real_tool))}
    pid_file = tmp_path / "slow.pid"

    pid_file.unlink(missing_ok=True)
    proc = asg.start_agent(node, env=slow)
    wait_for_staging(node, proc, pid_file)
    assert scratch_left(node.data_dir)  # the download and the staging dir, both inside the data dir
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    asg.registry.forget(proc.pid)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err
    assert not scratch_left(node.data_dir, node.workdir), list(node.data_dir.iterdir())
    assert not (node.data_dir / "member").exists() and not node.env_file.exists()

    pid_file.unlink(missing_ok=True)
    proc = asg.start_agent(node, env=slow)
    wait_for_staging(node, proc, pid_file)
    proc.kill()  # SIGKILL: no cleanup can run
    proc.communicate(timeout=30)
    asg.registry.forget(proc.pid)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the hung tool the kill orphaned
    assert scratch_left(node.data_dir)

    result = asg.run_agent(node, env=backed.env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "left by a run that was killed" in result.stderr
    assert restored_key(result.stderr)
    assert not scratch_left(node.data_dir, node.workdir)
    assert env(node)["ETCD_INITIAL_CLUSTER_STATE"] == "new"
    asg.start_etcd(node)
    asg.wait_healthy(1, timeout=60)
    assert asg.get("/app/3", node=node) == "/app-value-3"


@pytest.mark.etcd_also("3.6")
def test_a_restore_without_room_for_the_download_refuses_with_nothing_written(
    sim: SimFactory, etcd_binary: Path, moto_url: str, mounts: Callable[..., None]
) -> None:
    backed, node = one_node_backed(sim, etcd_binary, moto_url)
    node.data_dir.mkdir()
    mounts("-t", "tmpfs", "-o", "size=8m", "tmpfs", str(node.data_dir))  # a volume too small for a restore

    result = backed.asg.run_agent(node, env=backed.env, timeout=120)

    assert result.returncode == 6, result.stderr
    assert f"{node.data_dir} has 8 MiB free, " in result.stderr and " MiB needed" in result.stderr, result.stderr
    assert list(node.data_dir.iterdir()) == [] and not node.env_file.exists()
