"""A small registry of the subprocesses the harness starts, so that every one of them is ended by PID.

Each process runs in its own session (so its PID is also its process-group id and a signal to the group
reaches anything it forked, and a Ctrl-C in the terminal does not hit it twice). ``stop`` sends SIGTERM
(plus SIGCONT, so a paused process can act on it), waits, then SIGKILLs. A registry is a context manager;
every registry that is still open at interpreter exit is stopped by an ``atexit`` hook, so a failing test
or an aborted demo leaves nothing behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.harness import workers

_OPEN_REGISTRIES: set[ProcessRegistry] = set()


class ProcessRegistry:
    """Starts subprocesses and remembers them by PID until they are stopped."""

    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen[str]] = {}
        self._logs: dict[int, Path] = {}
        self._lock = threading.Lock()
        _OPEN_REGISTRIES.add(self)

    # -- starting ---------------------------------------------------------------------------------------
    def start(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[str]:
        """Start ``argv`` in a new session.

        With ``log_path`` stdout and stderr both go (appended) to that file; without it they are pipes
        (text mode) for ``communicate()``. stdin is always /dev/null.
        """
        args = [os.fspath(a) for a in argv]
        _OPEN_REGISTRIES.add(self)
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("a", encoding="utf-8") as log:
                proc = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                    start_new_session=True,
                    text=True,
                )
        else:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                text=True,
            )
        with self._lock:
            self._procs[proc.pid] = proc
            if log_path is not None:
                self._logs[proc.pid] = log_path
        return proc

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion with captured text output; on timeout stop it and raise TimeoutExpired."""
        proc = self.start(argv, env=env, cwd=cwd)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.stop(proc.pid)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(proc.args, timeout, output=out, stderr=err) from exc
        finally:
            if proc.poll() is not None:
                self.forget(proc.pid)
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    # -- inspecting -------------------------------------------------------------------------------------
    def get(self, pid: int) -> subprocess.Popen[str] | None:
        with self._lock:
            return self._procs.get(pid)

    def pids(self) -> list[int]:
        with self._lock:
            return list(self._procs)

    def log_path(self, pid: int) -> Path | None:
        with self._lock:
            return self._logs.get(pid)

    def is_running(self, pid: int) -> bool:
        proc = self.get(pid)
        return proc is not None and proc.poll() is None

    def forget(self, pid: int) -> None:
        """Drop a process that has already exited (and been reaped) from the registry."""
        with self._lock:
            proc = self._procs.get(pid)
            if proc is not None and proc.poll() is not None:
                del self._procs[pid]
                self._logs.pop(pid, None)

    # -- signalling -------------------------------------------------------------------------------------
    def _signal_group(self, proc: subprocess.Popen[str], sig: signal.Signals) -> None:
        # Only while the leader has not been reaped: then its PID (= group id) cannot have been reused.
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)

    def pause(self, pid: int, timeout: float = 10.0) -> None:
        """SIGSTOP the process group: the process keeps its sockets open but answers nothing (a hung etcd).

        Returns once every thread of the process is stopped: kill() only queues the stop, and a thread running on
        another CPU can still answer a request for a moment (seen with etcd on a loaded machine)."""
        proc = self._require(pid)
        self._signal_group(proc, signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while not _all_threads_stopped(pid):
            if proc.poll() is not None:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"process {pid} not stopped {timeout}s after SIGSTOP")
            time.sleep(0.005)

    def resume(self, pid: int) -> None:
        """SIGCONT the process group."""
        proc = self._require(pid)
        self._signal_group(proc, signal.SIGCONT)

    def kill(self, pid: int) -> int | None:
        """SIGKILL the process group at once (a crash, no graceful shutdown) and reap it."""
        return self.stop(pid, timeout=0.0, sig=signal.SIGKILL)

    def stop(self, pid: int, timeout: float = 10.0, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """SIGTERM (+SIGCONT), wait up to ``timeout``, then SIGKILL. Returns the exit code (None if unknown)."""
        proc = self.get(pid)
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                self._signal_group(proc, sig)
                self._signal_group(proc, signal.SIGCONT)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._signal_group(proc, signal.SIGKILL)
                    proc.wait(timeout=10)
            return proc.returncode
        finally:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None and not stream.closed:
                    with contextlib.suppress(OSError):
                        stream.close()
            with self._lock:
                self._procs.pop(pid, None)
                self._logs.pop(pid, None)

    def stop_many(self, pids: Sequence[int], timeout: float = 10.0, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop several processes in parallel: signal (+SIGCONT) all first, then wait for each."""
        procs = [p for p in (self.get(pid) for pid in pids) if p is not None]
        for proc in procs:
            self._signal_group(proc, sig)
            self._signal_group(proc, signal.SIGCONT)
        for proc in procs:
            self.stop(proc.pid, timeout=timeout, sig=sig)

    def stop_all(self, timeout: float = 10.0) -> None:
        """Stop every process still registered (in parallel)."""
        self.stop_many(self.pids(), timeout=timeout)

    def close(self) -> None:
        self.stop_all()
        _OPEN_REGISTRIES.discard(self)

    def _require(self, pid: int) -> subprocess.Popen[str]:
        proc = self.get(pid)
        if proc is None:
            raise KeyError(f"process {pid} was not started by this registry (or was already stopped)")
        return proc

    def __enter__(self) -> ProcessRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@atexit.register
def _stop_everything_at_exit() -> None:
    for registry in list(_OPEN_REGISTRIES):
        with contextlib.suppress(Exception):
            registry.close()


def _all_threads_stopped(pid: int) -> bool:
    """Every thread of ``pid`` is in state T (stopped by a signal), as /proc shows it."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        # the state follows the ")" that ends the command name, which may itself hold spaces or parentheses
        states = [(task / "stat").read_text().rpartition(")")[2].split()[0] for task in tasks]
    except (OSError, IndexError):
        return False
    return bool(states) and all(state == "T" for state in states)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _can_bind(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", *, also_free_on: Sequence[str] = (), exclude: Sequence[int] = ()) -> int:
    """A TCP port that can be bound on ``host`` (and on every address in ``also_free_on``) right now.

    Ports are picked below the kernel's ephemeral range, so an outgoing connection cannot grab the port
    between this check and the server binding it, and from this xdist worker's slice of that range, so two
    workers of a run cannot both pick a port between the check and the bind.
    """
    low, _ = _ephemeral_range()
    start, stop = workers.port_slice(20000, max(20001, low))
    rng = random.Random()
    hosts = [host, *also_free_on]
    for _ in range(200):
        port = rng.randrange(start, stop)
        if port not in exclude and all(_can_bind(h, port) for h in hosts):
            return port
    # Fall back on the kernel's choice.
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in exclude and all(_can_bind(h, port) for h in hosts):
            return port
    raise RuntimeError(f"no free port on {hosts}")
