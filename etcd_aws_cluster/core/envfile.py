"""Render and validate the env file etcd reads (adapters.atomic_file writes it).

The file is plain `KEY=VALUE` lines: systemd `EnvironmentFile=`, shell `.`/`eval` and `docker run --env-file`
all read it unchanged, because every value is checked against a charset that none of them treats specially.
"""

from __future__ import annotations

from collections.abc import Mapping

from etcd_aws_cluster.base import validate
from etcd_aws_cluster.core.model import Endpoints, Identity, Plan
from etcd_aws_cluster.core.view import render_initial_cluster

KEYS = (
    "ETCD_NAME",
    "ETCD_INITIAL_CLUSTER_STATE",
    "ETCD_INITIAL_CLUSTER",
    "ETCD_INITIAL_ADVERTISE_PEER_URLS",
    "ETCD_ADVERTISE_CLIENT_URLS",
    "ETCD_LISTEN_PEER_URLS",
    "ETCD_LISTEN_CLIENT_URLS",
)


def variables(me: Identity, plan: Plan, endpoints: Endpoints, *, listen_loopback: bool) -> dict[str, str]:
    client_url = endpoints.client_url(me.private_ip)
    listen_clients = [client_url]
    if listen_loopback:
        listen_clients.append(endpoints.client_url("127.0.0.1"))
    return {
        "ETCD_NAME": me.instance_id,
        "ETCD_INITIAL_CLUSTER_STATE": plan.cluster_state,
        "ETCD_INITIAL_CLUSTER": render_initial_cluster(plan.initial_cluster),
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": endpoints.peer_url(me.private_ip),
        "ETCD_ADVERTISE_CLIENT_URLS": client_url,
        "ETCD_LISTEN_PEER_URLS": endpoints.peer_url(me.private_ip),
        "ETCD_LISTEN_CLIENT_URLS": ",".join(listen_clients),
    }


def render(values: Mapping[str, str]) -> str:
    """The file's text; raises UnsafeError naming the first value outside the allowed charset."""
    if set(values) != set(KEYS):
        raise ValueError(f"env file needs exactly {', '.join(KEYS)}")
    lines = [f"{key}={validate.env_value(key, values[key])}" for key in KEYS]
    return "# Written by etcd-aws-cluster at boot; changes are overwritten.\n" + "\n".join(lines) + "\n"


def parse(text: str) -> dict[str, str]:
    """Read a file written by `render` (used by `status`, tests and the demo)."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key] = value
    return values
