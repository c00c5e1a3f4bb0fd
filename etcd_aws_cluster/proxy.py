"""Proxy / client mode (setting `proxy_asg`): a client configuration for the cluster of another ASG, no join.

On an instance outside the etcd cluster's Auto Scaling group the agent writes, instead of a member's settings:

  ETCD_NAME                this instance's id
  ETCD_PROXY=on            etcd 2's proxy mode (`etcd --proxy on`, still in etcd 3.4 and 3.5: a v2 HTTP proxy,
                           which also forwards the v3 JSON gateway)
  ETCD_INITIAL_CLUSTER     name=peer-URL of the cluster's members: where that proxy finds the cluster
  ETCD_LISTEN_CLIENT_URLS  where that proxy listens: this instance's IP, and 127.0.0.1 with listen_loopback
  ETCDCTL_ENDPOINTS        the members' client URLs, for etcdctl and `etcd gateway start --endpoints=...`
  ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY   only when ca_file / cert_file / key_file are set

The members come from the member list when a member answers, else from the ASG (InService/Pending instances with
a private IP). Everything above `run` is pure; `run` gathers the facts and writes the file like the member mode
does: every value validated, written atomically, the old file untouched on failure.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from etcd_aws_cluster import validate
from etcd_aws_cluster.errors import UnsafeError
from etcd_aws_cluster.model import AsgView, Endpoints, Identity, Member, Probe
from etcd_aws_cluster.plan import render_initial_cluster, url_host

if TYPE_CHECKING:
    from etcd_aws_cluster.settings import Settings

log = logging.getLogger(__name__)

KEYS = ("ETCD_NAME", "ETCD_PROXY", "ETCD_INITIAL_CLUSTER", "ETCD_LISTEN_CLIENT_URLS", "ETCDCTL_ENDPOINTS")
TLS_KEYS = ("ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY")
HEADER = "# Written by etcd-aws-cluster at boot (proxy mode: a client of the cluster); changes are overwritten.\n"


@dataclass(frozen=True)
class Cluster:
    """What a client needs to know about the cluster, and where it was learned."""

    initial_cluster: tuple[tuple[str, str], ...]  # (name, peer URL), sorted
    client_urls: tuple[str, ...]  # sorted
    source: str  # "member list" or "ASG"


def _owner_name(member: Member, asg: AsgView) -> str:
    """The name to list an unstarted member under: its ASG instance's id (what its agent will name it)."""
    hosts = {url_host(u) for u in member.peer_urls}
    owner = next((i for i in asg.instances if i.private_ip and i.private_ip in hosts), None)
    return owner.instance_id if owner is not None else member.hex_id


def from_members(members: Iterable[Member], asg: AsgView) -> Cluster:
    """The cluster as its member list describes it: every member's peer URLs, the started members' client URLs."""
    pairs: set[tuple[str, str]] = set()
    client_urls: set[str] = set()
    for member in members:
        name = validate.member_name(member.name or _owner_name(member, asg), "the etcd member list")
        pairs.update((name, validate.url(u, "the etcd member list")) for u in member.peer_urls)
        client_urls.update(validate.url(u, "the etcd member list") for u in member.client_urls)
    return Cluster(tuple(sorted(pairs)), tuple(sorted(client_urls)), "member list")


def from_asg(asg: AsgView, endpoints: Endpoints) -> Cluster:
    """The cluster as the ASG describes it: its InService/Pending instances with a private IP."""
    instances = [i for i in asg.members() if i.private_ip]
    return Cluster(
        tuple(sorted((i.instance_id, endpoints.peer_url(i.private_ip)) for i in instances if i.private_ip)),
        tuple(sorted(endpoints.client_url(i.private_ip) for i in instances if i.private_ip)),
        "ASG",
    )


def discover(asg: AsgView, probes: Iterable[Probe], endpoints: Endpoints) -> Cluster | None:
    """The member list most members agree on, else the ASG's view; None while neither names a member."""
    answers = [p.answer for p in probes if p.answer is not None]
    cluster_ids = {a.cluster_id for a in answers if a.cluster_id is not None}
    if len(cluster_ids) > 1:
        ids = ", ".join(f"{c:x}" for c in sorted(cluster_ids))
        raise UnsafeError(f"the instances of ASG {asg.name} answer for different etcd clusters ({ids}); refusing")
    lists = [frozenset(a.members) for a in answers if a.members]
    if lists:
        best = max(set(lists), key=lambda members: (lists.count(members), len(members)))
        cluster = from_members(sorted(best, key=lambda m: m.id), asg)
        if cluster.client_urls:
            return cluster
    cluster = from_asg(asg, endpoints)
    return cluster if cluster.initial_cluster else None


def variables(
    me: Identity,
    cluster: Cluster,
    endpoints: Endpoints,
    *,
    listen_loopback: bool,
    tls_files: Mapping[str, Path | None] | None = None,
) -> dict[str, str]:
    """The client configuration. `tls_files` maps ETCDCTL_CACERT/CERT/KEY to paths; unset ones are left out."""
    listen = [endpoints.client_url(me.private_ip)]
    if listen_loopback:
        listen.append(endpoints.client_url("127.0.0.1"))
    values = {
        "ETCD_NAME": me.instance_id,
        "ETCD_PROXY": "on",
        "ETCD_INITIAL_CLUSTER": render_initial_cluster(cluster.initial_cluster),
        "ETCD_LISTEN_CLIENT_URLS": ",".join(listen),
        "ETCDCTL_ENDPOINTS": ",".join(cluster.client_urls),
    }
    for key in TLS_KEYS:
        path = (tls_files or {}).get(key)
        if path is not None:
            values[key] = str(path)
    return values


def render(values: Mapping[str, str]) -> str:
    """The file's text; raises UnsafeError naming the first value outside the allowed charset."""
    unknown = set(values) - set(KEYS) - set(TLS_KEYS)
    if unknown or not set(KEYS) <= set(values):
        raise ValueError(f"proxy env file needs {', '.join(KEYS)} and optionally {', '.join(TLS_KEYS)}")
    lines = [f"{key}={validate.env_value(key, values[key])}" for key in (*KEYS, *TLS_KEYS) if key in values]
    return HEADER + "\n".join(lines) + "\n"


# --- the run: facts -> client configuration -> file ------------------------------------------------------------
def run(settings: Settings, *, dry_run: bool = False) -> int:
    """Find the cluster of ASG `proxy_asg`, write the client configuration (or print it with dry_run)."""
    from etcd_aws_cluster import envfile
    from etcd_aws_cluster.deadline import backoff
    from etcd_aws_cluster.errors import AwsError, ConfigError
    from etcd_aws_cluster.runner import Runner, host_lock

    group = settings.proxy_asg
    if not group:
        raise ConfigError("proxy mode needs proxy_asg")
    runner = Runner(settings)
    me = runner.identity()
    aws = runner.connect_aws(me.region)
    attempt = 0
    while True:
        asg = aws.describe(group)
        mine = asg.find(me.instance_id)
        if mine is not None and not mine.is_gone:
            raise ConfigError(
                f"this instance is in ASG {group}, the cluster's own group; unset proxy_asg on its members"
            )
        cluster = discover(asg, runner.probe_all(asg), runner.endpoints)
        if cluster is not None:
            break
        if not runner.deadline.pause(backoff(attempt, base=0.5, cap=3.0)):
            raise AwsError(f"gave up: ASG {group} has no InService or Pending instance with a private IP")
        attempt += 1
    tls_files = {
        "ETCDCTL_CACERT": settings.ca_file,
        "ETCDCTL_CERT": settings.cert_file,
        "ETCDCTL_KEY": settings.key_file,
    }
    values = variables(me, cluster, runner.endpoints, listen_loopback=settings.listen_loopback, tls_files=tls_files)
    text = render(values)
    log.info(
        "proxy mode: %d members of ASG %s (from the %s); client URLs %s",
        len(cluster.initial_cluster),
        group,
        cluster.source,
        values["ETCDCTL_ENDPOINTS"],
    )
    if dry_run:
        sys.stdout.write(f"# proxy mode: a client of ASG {group}, members from the {cluster.source}\n{text}")
        return 0
    with host_lock(settings.lock_file, runner.deadline):
        envfile.write(settings.output, text)
    if settings.output != "-":
        log.info("wrote %s: proxy configuration for %s", settings.output, me.instance_id)
    return 0
