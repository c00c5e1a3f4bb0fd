"""etcd's own snapshot tooling on the host: `etcdutl` (etcd >= 3.5) or `etcdctl` (3.4, ETCDCTL_API=3).

The right tool or none: a tool older (major.minor) than the snapshot's etcd or than the etcd on this host exits
0 and leaves a cluster that is broken or healthy and empty, so such a tool is never used, and a restore refuses
before the data dir is touched when there is no other. The `etcdutl` beside the local `etcd` comes first.

A restore writes into a staging dir inside the data dir (`.restoring-<pid>`, the same filesystem even when the
data dir is a mount point or its parent is read-only) and its `member` dir is renamed into place only when
complete, so a failed or killed restore never leaves a half-written data dir for etcd to start from, and existing
data is never touched: the data dir must hold no etcd data.

Finding the tool starts Go programs (`version`, `snapshot restore --help`, the local etcds' `--version`): they run
side by side, and each file's answers are remembered for the run, so a restore waits for about one program start.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from etcd_aws_cluster.adapters import local_etcd, scratch
from etcd_aws_cluster.adapters.hostfs import STALE_PREFIX
from etcd_aws_cluster.adapters.local_etcd import Version
from etcd_aws_cluster.base import validate
from etcd_aws_cluster.base.errors import ConfigError, EtcdError, UnsafeError

log = logging.getLogger(__name__)
TOOL_TIMEOUT = 20.0
# Revisions only go forward: a restore adds this to the snapshot's revision (--bump-revision) and marks the
# revisions up to there compacted (--mark-compacted), so a watcher of the old cluster gets "compacted" and
# re-lists instead of silently missing writes. It must exceed the writes the old cluster made after the snapshot
# (lost with it): 10^9 covers 10,000 writes/s for more than a day past backup_interval, etcd's disaster-recovery
# guide suggests a value of this size, and it leaves room for 9*10^9 restores below the int64 revision limit.
BUMP_REVISION = 1_000_000_000
# Besides `lost+found` (a fresh filesystem's) and the agent's own, these may be in a data dir a restore writes to.
NOT_DATA = ("lost+found",)


@dataclass(frozen=True)
class RestoreTool:
    path: Path
    kind: str  # "etcdutl" or "etcdctl"
    version: Version
    can_bump: bool = False  # `snapshot restore` has --bump-revision and --mark-compacted

    def argv(self, *args: str) -> list[str]:
        return [str(self.path), *args]

    def environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        env = {k: v for k, v in environ.items() if not k.startswith("ETCDCTL_")}
        if self.kind == "etcdctl":
            env["ETCDCTL_API"] = "3"
        return env

    def __str__(self) -> str:
        return f"{self.path} ({self.kind} {local_etcd.shown(self.version)})"


def _ask(path: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [str(path), *args],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"cannot run {path} to restore etcd snapshots: {validate.shown(exc, 160)}") from None


@functools.lru_cache(maxsize=32)
def _identified(path: Path, _mtime_ns: int, _size: int) -> RestoreTool:
    # The help is asked beside the version (both only print): its answer counts only for a tool the version names.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="restore --help") as pool:
        helping = pool.submit(_ask, path, ["snapshot", "restore", "--help"])
        done = _ask(path, ["version"])
        found = [(kind, local_etcd.program_version(done.stdout, kind)) for kind in ("etcdutl", "etcdctl")]
        kind, version = next(((k, v) for k, v in found if v is not None), ("", None))
        if done.returncode != 0 or version is None:
            raise ConfigError(f"{path} is neither etcdutl nor etcdctl (`{path} version` said {done.stdout[:80]!r})")
        helped = helping.result()
    usage = helped.stdout + helped.stderr
    return RestoreTool(path, kind, version, "--bump-revision" in usage and "--mark-compacted" in usage)


def identify(path: Path) -> RestoreTool:
    """What the tool at `path` is (its kind, version, and whether it can bump revisions); cached per file."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot run {path} to restore etcd snapshots: {exc.strerror or exc}") from None
    return _identified(path, info.st_mtime_ns, info.st_size)


def candidates(environ: Mapping[str, str]) -> list[Path]:
    """Where to look, best first: beside the local etcd (symlink or not), then every etcdutl on PATH, then every
    etcdctl (a too-old first one must not hide a fit one later)."""
    places: list[Path] = []
    etcd = local_etcd.on_path("etcd", environ)
    if etcd is not None:
        for directory in (etcd.parent, etcd.resolve().parent):
            places += [directory / "etcdutl", directory / "etcdctl"]
    path_dirs = [Path(d) for d in environ.get("PATH", os.defpath).split(os.pathsep) if d]
    places += [d / name for name in ("etcdutl", "etcdctl") for d in path_dirs]
    unique = dict.fromkeys(p for p in places if p.is_file() and os.access(p, os.X_OK))
    return list(unique)


def _needed(tool_path: Path, environ: Mapping[str, str], snapshot_versions: Iterable[str]) -> tuple[Version, str]:
    """The oldest major.minor a tool may have: the newest of the snapshots' etcd and this host's etcd binaries."""
    needs: list[tuple[Version, str]] = [((3, 4, 0), "etcd 3.4")]
    for text in snapshot_versions:
        version = local_etcd.parse_version(text)
        if version is not None:
            needs.append((version, f"a snapshot of etcd {local_etcd.shown(version)}"))
    for etcd, version in local_etcd.local_etcds(environ, beside=(tool_path, tool_path.resolve())).items():
        needs.append((version, f"etcd {local_etcd.shown(version)} at {etcd}"))
    return max(needs, key=lambda need: need[0][:2])


def _unfit(tool: RestoreTool, needed: Version, why: str) -> str | None:
    if tool.kind == "etcdctl" and tool.version >= (3, 6, 0):
        return f"{tool} cannot restore snapshots since etcd 3.6"
    if tool.version[:2] < needed[:2]:
        return f"{tool} is older than {why}"
    return None


def find_tool(
    configured: Path | None, environ: Mapping[str, str] | None = None, snapshot_versions: Iterable[str] = ()
) -> RestoreTool:
    """The restore tool for snapshots of `snapshot_versions` on this host: the setting `etcdutl` if set, else the
    first fit of `candidates`; one that is older than the snapshots' etcd or the local etcd is never chosen.
    ConfigError, naming what to install, when there is none."""
    env = os.environ if environ is None else environ
    versions = tuple(snapshot_versions)
    if configured is not None and not (configured.is_file() and os.access(configured, os.X_OK)):
        raise ConfigError(f"etcdutl = {configured} is not an executable file")
    paths = [configured] if configured is not None else candidates(env)
    if not paths:
        raise ConfigError(
            "restoring a snapshot needs etcd's own tool: etcdutl (etcd >= 3.5) or etcdctl (3.4) was not found on "
            "PATH; install it (Debian: etcd-server ships etcdutl, etcd-client ships etcdctl) or set `etcdutl`"
        )
    refused: list[str] = []
    needed: tuple[Version, str] = ((3, 4, 0), "etcd 3.4")
    for path in paths:
        # The local etcds' versions are asked while the tool says what it is: both are program starts.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="local etcds") as pool:
            needs = pool.submit(_needed, path, env, versions)
            try:
                tool = identify(path)
            except ConfigError as exc:
                if configured is not None:
                    raise
                refused.append(str(exc))
                continue
            needed = max(needed, needs.result(), key=lambda need: need[0][:2])
        reason = _unfit(tool, *needed)
        if reason is None:
            return tool
        refused.append(reason)
    raise ConfigError(f"no restore tool fits: {'; '.join(refused)}. Install {_what_to_install(needed[0])}")


def _what_to_install(needed: Version) -> str:
    wanted = local_etcd.minor(needed)
    if needed[:2] <= (3, 4):
        return "etcdctl 3.4 (Debian: etcd-client) or etcdutl, or set `etcdutl`"
    return (
        f"etcdutl {wanted} or newer (Debian: etcd-server {wanted} or newer ships it; or the etcdutl of etcd's "
        f"v{wanted} release, beside etcd), or set `etcdutl` to it"
    )


def run_tool(tool: RestoreTool, args: list[str], what: str, timeout: float) -> str:
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


@dataclass(frozen=True)
class DbStatus:
    revision: int
    hash: int  # `snapshot status`'s crc32 of the db's keys and values: the same from every tool version


def db_status(tool: RestoreTool, db_path: Path, timeout: float = 60.0) -> DbStatus:
    """The revision and hash of a snapshot or a member's `member/snap/db` (`snapshot status -w json`).

    etcd must not be running on that db: bolt's file lock would make the tool wait; use a copy of a live one.
    """
    out = run_tool(
        tool, ["snapshot", "status", str(db_path), "-w", "json"], f"reading the status of {db_path}", timeout
    )
    try:
        answer = json.loads(out)
        revision, db_hash = answer["revision"], answer["hash"]
    except (ValueError, KeyError, TypeError):
        raise EtcdError(f"{tool.path} snapshot status {db_path} answered {validate.shown(out, 120)}") from None
    for name, value, upper in (("revision", revision, 2**63), ("hash", db_hash, 2**32)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < upper:
            raise EtcdError(f"{tool.path} snapshot status {db_path} gave {name} {validate.shown(value)}")
    return DbStatus(revision, db_hash)


def bump_warning(tool: RestoreTool) -> str | None:
    """What a restore with `tool` cannot do, for the restore's log and `status`; None when it can bump."""
    if tool.can_bump:
        return None
    return (
        f"restores on this host cannot bump revisions ({tool.kind} {local_etcd.shown(tool.version)}): watchers of the "
        "old cluster (Kubernetes informers, etcd watch clients) see revisions go backwards after a restore and must "
        "be restarted; etcdutl 3.5.30 or newer bumps them"
    )


@dataclass(frozen=True)
class RestoreTarget:
    """Who this member is in the restored cluster (the same initial cluster and token on every member)."""

    data_dir: Path
    name: str
    initial_cluster: str
    token: str
    peer_url: str


def holds_data(data_dir: Path) -> bool:
    """Whether `data_dir` holds anything but what a restore may write beside: lost+found, the agent's stale
    copies (.stale-*) and its own scratch files."""
    if not data_dir.exists():
        return False
    if not data_dir.is_dir():
        return True
    return any(
        not (name in NOT_DATA or name.startswith(STALE_PREFIX) or scratch.is_scratch(name))
        for name in os.listdir(data_dir)
    )


def prepare_data_dir(data_dir: Path) -> None:
    """Check that `data_dir` holds no data and create it (owned like its parent) when it is absent."""
    if holds_data(data_dir):
        raise UnsafeError(f"refusing to restore into {data_dir}: it holds data (move it aside first)")
    if not data_dir.exists():
        data_dir.mkdir(mode=0o700, parents=True)
        _chown_tree(data_dir, data_dir.parent.stat())


def restore(
    tool: RestoreTool,
    snapshot_file: Path,
    target: RestoreTarget,
    *,
    skip_hash_check: bool = False,
    timeout: float = 600.0,
    verify: Callable[[], None] | None = None,
) -> None:
    """Restore `snapshot_file` into `target.data_dir` (no data in it), via a staging dir inside it. `verify`
    (a check of the snapshot file that raises, e.g. its `snapshot status` against its manifest) runs while the
    tool restores, and nothing moves into place unless it passed: its error is the one raised."""
    data_dir = target.data_dir
    prepare_data_dir(data_dir)
    staging = scratch.scratch_path(data_dir, scratch.STAGING_PREFIX)
    if staging.exists():
        raise UnsafeError(f"refusing to restore: {staging} exists (left by another restore?)")
    args = ["snapshot", "restore", str(snapshot_file), "--data-dir", str(staging), "--name", target.name]
    args += ["--initial-cluster", target.initial_cluster, "--initial-cluster-token", target.token]
    args += ["--initial-advertise-peer-urls", target.peer_url]
    if skip_hash_check:
        args.append("--skip-hash-check")
    warning = bump_warning(tool)
    if warning is None:
        args += ["--bump-revision", str(BUMP_REVISION), "--mark-compacted"]
    else:
        log.warning("restore: %s", warning)
    try:
        _run_verified(lambda: run_tool(tool, args, f"restoring {snapshot_file} into {data_dir}", timeout), verify)
        _chown_tree(staging, data_dir.stat())
        for name in sorted(os.listdir(staging)):
            os.rename(staging / name, data_dir / name)  # the same filesystem: atomic, nothing copied
    finally:
        if staging.exists():
            shutil.rmtree(staging)  # our own partial output, never the data dir


def _run_verified(work: Callable[[], object], verify: Callable[[], None] | None) -> None:
    """`work`, with `verify` beside it in a thread (both mostly wait on a tool); `verify`'s error first."""
    if verify is None:
        work()
        return
    failed: list[BaseException] = []

    def check() -> None:
        try:
            verify()
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)

    checker = threading.Thread(target=check, name="snapshot check", daemon=True)
    checker.start()
    try:
        work()
    except BaseException:
        checker.join()
        if failed:
            raise failed[0] from None
        raise
    checker.join()
    if failed:
        raise failed[0]


def _chown_tree(root: Path, owner: os.stat_result) -> None:
    """Give the restored files the owner of the place they go (etcd runs as user etcd on Debian)."""
    if os.geteuid() != 0 or (owner.st_uid, owner.st_gid) == (os.geteuid(), os.getegid()):
        return
    for directory, _dirs, files in os.walk(root):
        os.chown(directory, owner.st_uid, owner.st_gid)
        for name in files:
            os.chown(os.path.join(directory, name), owner.st_uid, owner.st_gid)
