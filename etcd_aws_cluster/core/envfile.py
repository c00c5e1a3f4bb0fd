"""Render and validate the env files the agent writes (adapters.atomic_file writes them): the boot file etcd reads,
and, through the same renderer, proxy mode's files (core/proxy.py declares those).

A file is plain `KEY=VALUE` lines under a header comment: systemd `EnvironmentFile=`, shell `.`/`eval` and `docker
run --env-file` all read it unchanged, because every value is checked against a charset that none of them treats
specially. Each kind of file declares its keys once (`EnvFile`), in the order they are written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from etcd_aws_cluster.base import validate
from etcd_aws_cluster.core.model import Endpoints, Identity, Plan
from etcd_aws_cluster.core.view import render_initial_cluster


@dataclass(frozen=True)
class EnvFile:
    """One kind of env file: what it is called in errors, its header comment, the keys it always has and those it
    may have, each in the order they are written."""

    what: str
    header: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()

    def render(self, values: Mapping[str, str]) -> str:
        """The file's text; raises UnsafeError naming the first value outside the allowed charset, ValueError when
        a required key is missing or a key is not one of this file's."""
        keys = (*self.required, *self.optional)
        if set(values) - set(keys) or not set(self.required) <= set(values):
            needs = ", ".join(self.required)
            if self.optional:
                raise ValueError(f"{self.what} needs {needs} and optionally {', '.join(self.optional)}")
            raise ValueError(f"{self.what} needs exactly {needs}")
        lines = [f"{key}={validate.env_value(key, values[key])}" for key in keys if key in values]
        return self.header + "\n".join(lines) + "\n"


KEYS = (
    "ETCD_NAME",
    "ETCD_INITIAL_CLUSTER_STATE",
    "ETCD_INITIAL_CLUSTER",
    "ETCD_INITIAL_ADVERTISE_PEER_URLS",
    "ETCD_ADVERTISE_CLIENT_URLS",
    "ETCD_LISTEN_PEER_URLS",
    "ETCD_LISTEN_CLIENT_URLS",
)
BOOT = EnvFile("env file", "# Written by etcd-aws-cluster at boot; changes are overwritten.\n", KEYS)


def listen_client_urls(me: Identity, endpoints: Endpoints, *, listen_loopback: bool) -> str:
    """Where this instance's etcd (a member or a v2 proxy) listens for clients: its IP, and 127.0.0.1 with
    listen_loopback."""
    urls = [endpoints.client_url(me.private_ip)]
    if listen_loopback:
        urls.append(endpoints.client_url("127.0.0.1"))
    return ",".join(urls)


def variables(me: Identity, plan: Plan, endpoints: Endpoints, *, listen_loopback: bool) -> dict[str, str]:
    return {
        "ETCD_NAME": me.instance_id,
        "ETCD_INITIAL_CLUSTER_STATE": plan.cluster_state,
        "ETCD_INITIAL_CLUSTER": render_initial_cluster(plan.initial_cluster),
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": endpoints.peer_url(me.private_ip),
        "ETCD_ADVERTISE_CLIENT_URLS": endpoints.client_url(me.private_ip),
        "ETCD_LISTEN_PEER_URLS": endpoints.peer_url(me.private_ip),
        "ETCD_LISTEN_CLIENT_URLS": listen_client_urls(me, endpoints, listen_loopback=listen_loopback),
    }


def render(values: Mapping[str, str]) -> str:
    """The boot file's text (`EnvFile.render`)."""
    return BOOT.render(values)


def parse(text: str) -> dict[str, str]:
    """Read a file written by `render` (used by `status`, tests and the demo)."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key] = value
    return values
