"""A throwaway single-member etcd on loopback, started from a snapshot: what a replay of deltas writes into.

The snapshot is restored with etcd's own tool WITHOUT a revision bump (the deltas' revisions must follow the
snapshot's), into a scratch dir inside etcd's data dir (`.replay-<pid>`, the same filesystem, swept when a killed
run leaves it). The host's etcd binary runs it on 127.0.0.1 ports chosen free, fsync off where etcd offers that
(3.5+: it is thrown away; what counts is the snapshot saved from it). It is stopped and its dir removed on every
way out: a `with` block, SIGTERM of the agent (which unwinds it), and the agent's own death (the kernel kills
the child: PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from etcd_aws_cluster.adapters import local_etcd, restore_tool
from etcd_aws_cluster.adapters.local_etcd import Version
from etcd_aws_cluster.adapters.restore_tool import RestoreTool
from etcd_aws_cluster.base import validate
from etcd_aws_cluster.base.errors import AgentError, ConfigError, EtcdError

log = logging.getLogger(__name__)
NAME = "replay"
TOKEN = "etcd-aws-cluster-replay"
STOP_WAIT = 10.0  # seconds etcd gets to stop on SIGTERM before SIGKILL
START_ATTEMPTS = 3  # a port taken between choosing it and etcd binding it: choose again
# etcd refuses writes past its backend quota (2 GiB by default): give a restored db room to grow by the deltas.
QUOTA_FLOOR = 8 * 1024**3
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class EtcdBinary:
    path: Path
    version: Version

    def __str__(self) -> str:
        return f"{self.path} (etcd {local_etcd.shown(self.version)})"


def find_etcd(tool: RestoreTool, snapshot_version: str, environ: Mapping[str, str] | None = None) -> EtcdBinary:
    """The etcd to replay with: the one beside the restore tool (one release), then the one on PATH; never one
    older (major.minor) than the snapshot's etcd, nor newer than the tool (it writes the data etcd starts from).
    ConfigError when the host has none that fits."""
    env = os.environ if environ is None else environ
    found = local_etcd.local_etcds(env, beside=(tool.path, tool.path.resolve()))
    preferred = sorted(found, key=lambda path: path.parent not in (tool.path.parent, tool.path.resolve().parent))
    needed = local_etcd.parse_version(snapshot_version) or (3, 4, 0)
    refused = []
    for path in preferred:
        version = found[path]
        if version[:2] < needed[:2]:
            refused.append(f"{path} is etcd {local_etcd.shown(version)}, older than the snapshot's")
        elif version[:2] > tool.version[:2]:
            refused.append(f"{path} is etcd {local_etcd.shown(version)}, newer than {tool}")
        else:
            return EtcdBinary(path, version)
    why = "; ".join(refused) if refused else "no etcd binary beside it or on PATH"
    raise ConfigError(f"applying deltas needs an etcd of {local_etcd.shown(needed)} to {tool}: {why}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(frozen=True)
class Throwaway:
    """A running throwaway etcd: where to reach it and what it writes to."""

    client_url: str
    data_dir: Path
    log_file: Path
    binary: EtcdBinary
    pid: int


@contextmanager
def running(
    snapshot: Path,
    tool: RestoreTool,
    binary: EtcdBinary,
    workdir: Path,
    *,
    ready: Callable[[str], object],
    timeout: float,
    skip_hash_check: bool = False,
    db_bytes: int = 0,
) -> Iterator[Throwaway]:
    """Restore `snapshot` (no revision bump) into `workdir` (must not exist; removed on the way out, whatever
    happens) and run `binary` on it until the block ends. `ready(client_url)` raises AgentError while etcd does
    not serve yet; `timeout` bounds the restore and the start together."""
    if workdir.exists():
        raise EtcdError(f"refusing to replay into {workdir}: it exists (left by another run?)")
    started = time.monotonic()
    workdir.mkdir(mode=0o700)
    proc: subprocess.Popen[bytes] | None = None
    try:
        for attempt in range(START_ATTEMPTS):
            client_port, peer_port = free_port(), free_port()
            client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
            data_dir, log_file = workdir / "data", workdir / "etcd.log"
            shutil.rmtree(data_dir, ignore_errors=True)
            left = max(1.0, timeout - (time.monotonic() - started))
            _restore(tool, snapshot, data_dir, peer_url, skip_hash_check, left)
            proc = _start(binary, data_dir, client_url, peer_url, log_file, max(QUOTA_FLOOR, 2 * db_bytes))
            throwaway = Throwaway(client_url, data_dir, log_file, binary, proc.pid)
            try:
                _wait_ready(proc, throwaway, ready, started + timeout)
            except _Exited as exc:
                if attempt + 1 < START_ATTEMPTS and "address already in use" in str(exc):
                    log.info("replay: a port was taken (%s); trying other ports", exc)
                    proc = None
                    continue
                raise EtcdError(str(exc)) from None
            log.info("replay: %s serves %s from %s", binary, client_url, data_dir)
            yield throwaway
            return
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _restore(tool: RestoreTool, snapshot: Path, data_dir: Path, peer_url: str, skip_hash: bool, timeout: float) -> None:
    args = ["snapshot", "restore", str(snapshot), "--data-dir", str(data_dir), "--name", NAME]
    args += ["--initial-cluster", f"{NAME}={peer_url}", "--initial-cluster-token", TOKEN]
    args += ["--initial-advertise-peer-urls", peer_url]
    if skip_hash:
        args.append("--skip-hash-check")
    restore_tool.run_tool(tool, args, f"restoring {snapshot} for the replay", timeout)


def _start(
    binary: EtcdBinary, data_dir: Path, client_url: str, peer_url: str, log_file: Path, quota: int
) -> subprocess.Popen[bytes]:
    args = [str(binary.path), "--name", NAME, "--data-dir", str(data_dir)]
    args += ["--listen-client-urls", client_url, "--advertise-client-urls", client_url]
    args += ["--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url]
    args += ["--initial-cluster", f"{NAME}={peer_url}", "--initial-cluster-token", TOKEN]
    args += ["--quota-backend-bytes", str(quota), "--logger", "zap", "--log-level", "warn"]
    if binary.version >= (3, 5, 0):
        args.append("--unsafe-no-fsync")
    # Nothing of the host's etcd configuration (ETCD_* from an environment file) may reach the throwaway.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
    with log_file.open("ab") as out:
        try:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - one prctl before exec, in the main thread
            )
        except OSError as exc:
            raise EtcdError(f"replay: cannot run {binary.path}: {validate.shown(exc, 160)}") from None


class _Exited(Exception):
    pass


def _wait_ready(
    proc: subprocess.Popen[bytes], throwaway: Throwaway, ready: Callable[[str], object], until: float
) -> None:
    while True:
        code = proc.poll()
        if code is not None:
            raise _Exited(f"replay: {throwaway.binary} exited {code} at its start: {log_tail(throwaway.log_file)}")
        try:
            ready(throwaway.client_url)
            return
        except AgentError as exc:
            if time.monotonic() >= until:
                raise EtcdError(
                    f"replay: {throwaway.binary} did not serve {throwaway.client_url} in time ({exc}); "
                    f"{log_tail(throwaway.log_file)}"
                ) from None
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after STOP_WAIT; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def log_tail(path: Path, limit: int = 400) -> str:
    """The end of a throwaway etcd's log, shown safely."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - limit))
            text = handle.read().decode("utf-8", "replace").strip()
    except OSError:
        return "(no log)"
    return f"its log ends: {validate.shown(text, limit)}" if text else "(its log is empty)"
