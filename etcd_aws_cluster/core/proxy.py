"""Proxy / client mode (setting `proxy_asg`): a client configuration for the cluster of another ASG, no join.

On an instance outside the etcd cluster's Auto Scaling group the agent writes, instead of a member's settings,
for etcd 3.4 and 3.5 (flavour v2-proxy: etcd itself runs as the proxy, through etcd.service):

  ETCD_NAME                this instance's id
  ETCD_PROXY=on            etcd 2's proxy mode (`etcd --proxy on`, still in etcd 3.4 and 3.5: a v2 HTTP proxy,
                           which also forwards the v3 JSON gateway)
  ETCD_INITIAL_CLUSTER     name=peer-URL of the cluster's members: where that proxy finds the cluster
  ETCD_LISTEN_CLIENT_URLS  where that proxy listens: this instance's IP, and 127.0.0.1 with listen_loopback
  ETCDCTL_ENDPOINTS        the members' client URLs, for etcdctl and `etcd gateway start --endpoints=...`
  ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY   only when ca_file / cert_file / key_file are set

For etcd 3.6 and later (flavour gateway; v2 proxy mode is gone there, and etcd ignores ETCD_PROXY), settings for
`etcd gateway start`, a TCP proxy run by etcd-aws-cluster-gateway.service (which stops etcd.service):

  ETCD_NAME                 this instance's id
  ETCD_GATEWAY_ENDPOINTS    the members' client host:port
  ETCD_GATEWAY_LISTEN_ADDR  where the gateway listens: this instance's IP, or 0.0.0.0 with listen_loopback
  ETCDCTL_ENDPOINTS, ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY   as above (TLS passes through the gateway)

The setting proxy_mode picks the flavour; `auto` asks the local `etcd --version`, else the cluster's version.
The members come from the member list when a member answers, else from the ASG (InService/Pending instances with
a private IP). Pure: the command (`commands/run.py`, `run_proxy`) gathers the facts and writes the file like the
member mode does: rendered by the boot file's renderer (envfile.EnvFile: every value validated, keys in the order
declared here), written atomically, the old file untouched on failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from etcd_aws_cluster.base import validate
from etcd_aws_cluster.core.envfile import EnvFile, listen_client_urls
from etcd_aws_cluster.core.model import AsgView, Endpoints, Identity
from etcd_aws_cluster.core.view import ClusterView, initial_peers, ready_instances, render_initial_cluster

V2_PROXY, GATEWAY = "v2-proxy", "gateway"
KEYS = ("ETCD_NAME", "ETCD_PROXY", "ETCD_INITIAL_CLUSTER", "ETCD_LISTEN_CLIENT_URLS", "ETCDCTL_ENDPOINTS")
GATEWAY_KEYS = ("ETCD_NAME", "ETCD_GATEWAY_ENDPOINTS", "ETCD_GATEWAY_LISTEN_ADDR", "ETCDCTL_ENDPOINTS")
TLS_KEYS = ("ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY")
HEADER = "# Written by etcd-aws-cluster at boot (proxy mode: a client of the cluster); changes are overwritten.\n"
FILES = {
    V2_PROXY: EnvFile("proxy env file", HEADER, KEYS, TLS_KEYS),
    GATEWAY: EnvFile("proxy env file", HEADER, GATEWAY_KEYS, TLS_KEYS),
}


@dataclass(frozen=True)
class Cluster:
    """What a client needs to know about the cluster, and where it was learned."""

    initial_cluster: tuple[tuple[str, str], ...]  # (name, peer URL), sorted
    client_urls: tuple[str, ...]  # sorted
    source: str  # "member list" or "ASG"


def from_members(view: ClusterView) -> Cluster:
    """The cluster as its member list describes it: every member's peer URLs, the started members' client URLs."""
    client_urls = {validate.url(u, "the etcd member list") for m in view.members for u in m.client_urls}
    return Cluster(view.initial_cluster(view.members), tuple(sorted(client_urls)), "member list")


def from_asg(asg: AsgView, endpoints: Endpoints) -> Cluster:
    """The cluster as the ASG describes it: its InService/Pending instances with a private IP."""
    return Cluster(
        initial_peers(asg, endpoints),
        tuple(sorted(endpoints.client_url(i.private_ip) for i in ready_instances(asg) if i.private_ip)),
        "ASG",
    )


def discover(view: ClusterView) -> Cluster | None:
    """The member list the members agree on, else the ASG's view; None while neither names a member."""
    view.require_one_cluster()
    if view.members:
        cluster = from_members(view)
        if cluster.client_urls:
            return cluster
    cluster = from_asg(view.asg, view.endpoints)
    return cluster if cluster.initial_cluster else None


def variables(
    me: Identity,
    cluster: Cluster,
    endpoints: Endpoints,
    *,
    listen_loopback: bool,
    tls_files: Mapping[str, Path | None] | None = None,
    flavour: str = V2_PROXY,
) -> dict[str, str]:
    """The client configuration. `tls_files` maps ETCDCTL_CACERT/CERT/KEY to paths; unset ones are left out.

    `flavour` v2-proxy: etcd's own proxy mode (`ETCD_PROXY=on`, etcd 3.4/3.5). gateway: settings for `etcd gateway
    start` (etcd-aws-cluster-gateway.service), a TCP proxy that every etcd version has and the only one left in 3.6+,
    where ETCD_PROXY is ignored and an etcd started from a v2-proxy file would run as a member.
    """
    if flavour == GATEWAY:
        listen = "0.0.0.0" if listen_loopback else me.private_ip
        values = {
            "ETCD_NAME": me.instance_id,
            "ETCD_GATEWAY_ENDPOINTS": ",".join(urlsplit(u).netloc for u in cluster.client_urls),
            "ETCD_GATEWAY_LISTEN_ADDR": f"{listen}:{endpoints.client_port}",
            "ETCDCTL_ENDPOINTS": ",".join(cluster.client_urls),
        }
    else:
        values = {
            "ETCD_NAME": me.instance_id,
            "ETCD_PROXY": "on",
            "ETCD_INITIAL_CLUSTER": render_initial_cluster(cluster.initial_cluster),
            "ETCD_LISTEN_CLIENT_URLS": listen_client_urls(me, endpoints, listen_loopback=listen_loopback),
            "ETCDCTL_ENDPOINTS": ",".join(cluster.client_urls),
        }
    for key in TLS_KEYS:
        path = (tls_files or {}).get(key)
        if path is not None:
            values[key] = str(path)
    return values


def render(values: Mapping[str, str]) -> str:
    """The file's text (`envfile.EnvFile.render`): the gateway's when the values name its endpoints, else the v2
    proxy's."""
    return FILES[GATEWAY if "ETCD_GATEWAY_ENDPOINTS" in values else V2_PROXY].render(values)


def flavour_for(version: tuple[int, int, int] | None) -> str:
    """gateway for etcd 3.6 and later (no v2 proxy there); the v2 proxy before, and when the version is unknown."""
    return GATEWAY if version is not None and version >= (3, 6, 0) else V2_PROXY
