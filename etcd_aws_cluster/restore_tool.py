"""etcd's own snapshot tooling on the host: `etcdutl` (etcd >= 3.5) or `etcdctl` (3.4, ETCDCTL_API=3).

A restore writes into a fresh staging dir beside the data dir and is moved into place only when complete, so a
failed or killed restore never leaves a half-written data dir for etcd to start from, and existing data is never
touched: the data dir must be absent or empty.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from etcd_aws_cluster import validate
from etcd_aws_cluster.errors import ConfigError, EtcdError, UnsafeError

VERSION_LINE = re.compile(r"^(etcdutl|etcdctl) version:\s*([0-9]+)\.([0-9]+)\.([0-9]+)", re.M)
TOOL_TIMEOUT = 20.0


@dataclass(frozen=True)
class RestoreTool:
    path: Path
    kind: str  # "etcdutl" or "etcdctl"
    version: tuple[int, int, int]

    def argv(self, *args: str) -> list[str]:
        return [str(self.path), *args]

    def environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        env = {k: v for k, v in environ.items() if not k.startswith("ETCDCTL_")}
        if self.kind == "etcdctl":
            env["ETCDCTL_API"] = "3"
        return env

    def __str__(self) -> str:
        return f"{self.path} ({self.kind} {'.'.join(map(str, self.version))})"


def _identify(path: Path) -> RestoreTool:
    try:
        done = subprocess.run(
            [str(path), "version"],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"cannot run {path} to restore etcd snapshots: {validate.shown(exc, 160)}") from None
    match = VERSION_LINE.search(done.stdout)
    if done.returncode != 0 or match is None:
        raise ConfigError(f"{path} is neither etcdutl nor etcdctl (`{path} version` said {done.stdout[:80]!r})")
    tool = RestoreTool(path, match[1], (int(match[2]), int(match[3]), int(match[4])))
    if tool.kind == "etcdctl" and tool.version >= (3, 6, 0):
        raise ConfigError(f"{tool} cannot restore snapshots since etcd 3.6: install etcdutl or set `etcdutl`")
    return tool


def find_tool(configured: Path | None, environ: Mapping[str, str] | None = None) -> RestoreTool:
    """The setting `etcdutl` if set, else `etcdutl` on PATH, else `etcdctl` on PATH; ConfigError if none."""
    env = os.environ if environ is None else environ
    if configured is not None:
        if not (configured.is_file() and os.access(configured, os.X_OK)):
            raise ConfigError(f"etcdutl = {configured} is not an executable file")
        return _identify(configured)
    for name in ("etcdutl", "etcdctl"):
        found = shutil.which(name, path=env.get("PATH", os.defpath))
        if found:
            return _identify(Path(found))
    raise ConfigError(
        "restoring a snapshot needs etcd's own tool: etcdutl (etcd >= 3.5) or etcdctl (3.4) was not found on "
        "PATH; install it (Debian: etcd-server ships etcdutl, etcd-client ships etcdctl) or set `etcdutl`"
    )


def _run(tool: RestoreTool, args: list[str], what: str, timeout: float) -> str:
    try:
        done = subprocess.run(
            tool.argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            env=tool.environment(os.environ),
        )
    except subprocess.TimeoutExpired:
        raise EtcdError(f"{what}: {tool.path} did not finish within {timeout:.0f}s") from None
    except OSError as exc:
        raise EtcdError(f"{what}: cannot run {tool.path}: {validate.shown(exc, 160)}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise EtcdError(f"{what}: {tool.path} failed (exit {done.returncode}): {validate.shown(last, 300)}")
    return done.stdout


def db_revision(tool: RestoreTool, db_path: Path, timeout: float = 60.0) -> int:
    """The revision stored in a snapshot or a member's `member/snap/db` (`snapshot status -w json`).

    etcd must not be running on that db: bolt's file lock would make the tool wait; use a copy of a live one.
    """
    out = _run(tool, ["snapshot", "status", str(db_path), "-w", "json"], f"reading the revision of {db_path}", timeout)
    try:
        revision = json.loads(out)["revision"]
    except (ValueError, KeyError, TypeError):
        raise EtcdError(f"{tool.path} snapshot status {db_path} answered {validate.shown(out, 120)}") from None
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
        raise EtcdError(f"{tool.path} snapshot status {db_path} gave revision {validate.shown(revision)}")
    return revision


@dataclass(frozen=True)
class RestoreTarget:
    """Who this member is in the restored cluster (the same initial cluster and token on every member)."""

    data_dir: Path
    name: str
    initial_cluster: str
    token: str
    peer_url: str


def restore(
    tool: RestoreTool,
    snapshot_file: Path,
    target: RestoreTarget,
    *,
    skip_hash_check: bool = False,
    timeout: float = 600.0,
) -> None:
    """Restore `snapshot_file` into `target.data_dir` (absent or empty), via a staging dir moved into place."""
    data_dir = target.data_dir
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise UnsafeError(f"refusing to restore into {data_dir}: it holds data (move it aside first)")
    owner_of = data_dir if data_dir.exists() else data_dir.parent
    staging = data_dir.with_name(f".{data_dir.name}.restoring-{os.getpid()}")
    if staging.exists():
        raise UnsafeError(f"refusing to restore: {staging} exists (left by another restore?)")
    args = [
        "snapshot",
        "restore",
        str(snapshot_file),
        "--data-dir",
        str(staging),
        "--name",
        target.name,
        "--initial-cluster",
        target.initial_cluster,
        "--initial-cluster-token",
        target.token,
        "--initial-advertise-peer-urls",
        target.peer_url,
    ]
    if skip_hash_check:
        args.append("--skip-hash-check")
    try:
        _run(tool, args, f"restoring {snapshot_file} into {data_dir}", timeout)
        _chown_tree(staging, owner_of.stat())
        if data_dir.exists():
            data_dir.rmdir()  # empty, checked above; rmdir refuses otherwise
        os.rename(staging, data_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)  # our own partial output, never the data dir


def _chown_tree(root: Path, owner: os.stat_result) -> None:
    """Give the restored files the owner of the place they go (etcd runs as user etcd on Debian)."""
    if os.geteuid() != 0 or (owner.st_uid, owner.st_gid) == (os.geteuid(), os.getegid()):
        return
    for directory, _dirs, files in os.walk(root):
        os.chown(directory, owner.st_uid, owner.st_gid)
        for name in files:
            os.chown(os.path.join(directory, name), owner.st_uid, owner.st_gid)
