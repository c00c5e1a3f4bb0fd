"""Shared steps of the integration tests: run agents like systemd would, then start etcd from their files."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from typing import Any

import requests

from tests.harness.sim import Node, SimulatedAsg, parse_env_file


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
