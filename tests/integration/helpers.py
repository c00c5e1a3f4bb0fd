"""Shared steps of the integration tests: run agents like systemd would, then start etcd from their files."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

from tests.harness.sim import Node, SimulatedAsg, parse_env_file


def member_status(node: Node) -> dict[str, Any]:
    """POST /v3/maintenance/status to `node`'s etcd (no proxy): `leader` and `header.member_id` (decimal strings)."""
    session = requests.Session()
    session.trust_env = False
    with session:
        answer = session.post(f"{node.client_url}/v3/maintenance/status", json={}, timeout=5)
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result


def leader_of(nodes: Sequence[Node]) -> Node:
    """The node whose member etcd calls the leader (AssertionError when none is)."""
    for node in nodes:
        info = member_status(node)
        if info.get("leader") and info["leader"] == info["header"]["member_id"]:
            return node
    raise AssertionError(f"no leader among {list(nodes)}")


def run_ok(
    sim: SimulatedAsg, node: Node, *args: str, timeout: float = 90, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = sim.run_agent(node, *args, timeout=timeout, env=env)
    assert result.returncode == 0, f"agent on {node} exited {result.returncode}:\n{result.stderr}"
    return result


def boot(
    sim: SimulatedAsg, nodes: Sequence[Node], timeout: float = 120, env: dict[str, str] | None = None
) -> dict[str, str]:
    """Start the agent on every node at once; start each node's etcd as soon as its agent has written the file,
    as `Before=etcd.service` does. Returns each node's agent stderr."""
    procs = {node.instance_id: (node, sim.start_agent(node, env=env)) for node in nodes}
    logs: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while procs:
        for instance_id, (node, proc) in list(procs.items()):
            if proc.poll() is None:
                continue
            _, err = proc.communicate()
            logs[instance_id] = err
            assert proc.returncode == 0, f"agent on {node} exited {proc.returncode}:\n{err}"
            sim.start_etcd(node)
            del procs[instance_id]
        assert time.monotonic() < deadline, f"agents still running: {sorted(procs)}"
        time.sleep(0.05)
    return logs


def decision(stderr: str) -> str:
    for line in stderr.splitlines():
        if "decision=" in line:
            return line.split("decision=", 1)[1].split()[0]
    raise AssertionError(f"no decision line in:\n{stderr}")


def decisions(stderr: str) -> list[str]:
    """Every decision an agent logged, in order (it decides again after losing the cluster record's race)."""
    return [line.split("decision=", 1)[1].split()[0] for line in stderr.splitlines() if "decision=" in line]


def env(node: Node) -> dict[str, str]:
    return parse_env_file(node.env_file)


def member_change(sim: SimulatedAsg, node: Node, action: str, body: dict[str, Any], timeout: float = 30) -> Any:
    """POST /v3/cluster/member/<action> by hand, retried while etcd refuses member changes in a young cluster
    ("unhealthy cluster", 503, for about 5 s after it forms or changes)."""
    deadline = time.monotonic() + timeout
    while True:
        response = requests.post(f"{node.client_url}/v3/cluster/member/{action}", json=body, timeout=5)
        if response.status_code == 200 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            return response.json()
        time.sleep(0.5)


def wait_for_log(proc: subprocess.Popen[str], log: Path, pattern: str, *, after: int = 0, timeout: float = 60) -> int:
    """Wait until the agent started with ``log_path=log`` has logged a match of the regular expression ``pattern``
    (multi-line) past offset ``after`` of its log: the state a test checks next, instead of a fixed sleep. Fails if
    the agent exits first. Returns the offset where the match ends."""
    expression = re.compile(pattern, re.M)
    deadline = time.monotonic() + timeout
    while True:
        logged = log.read_text(errors="replace") if log.exists() else ""
        found = expression.search(logged, after)
        if found:
            return found.end()
        assert proc.poll() is None, f"agent exited {proc.returncode} before logging {pattern!r}:\n{logged}"
        assert time.monotonic() < deadline, f"agent did not log {pattern!r} within {timeout}s:\n{logged}"
        time.sleep(0.05)


def wait_for_exit(proc: subprocess.Popen[str], log: Path, timeout: float) -> str:
    """Wait for an agent started with ``log_path=log`` to exit; returns its log (its stdout and stderr)."""
    proc.wait(timeout=timeout)
    return log.read_text(errors="replace")


def wait_listening(node: Node, *ports: int, timeout: float = 30) -> None:
    """Wait until ``node``'s ``ports`` (default: its etcd client and peer ports) accept connections: its etcd is up,
    whether or not it answers (a member waiting for quorum accepts and stays silent)."""
    deadline = time.monotonic() + timeout
    for port in ports or (node.client_port, node.peer_port):
        while True:
            try:
                socket.create_connection((node.ip, port), timeout=1).close()
                break
            except OSError as exc:
                assert time.monotonic() < deadline, f"nothing listens on {node.ip}:{port} after {timeout}s: {exc}"
                time.sleep(0.05)
