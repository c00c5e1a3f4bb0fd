"""The default command: discover, decide, change membership, write the env file (or, in proxy mode, a client
configuration for another ASG's cluster)."""

from __future__ import annotations

import argparse
import logging
import sys

from etcd_aws_cluster.adapters import atomic_file, local_etcd
from etcd_aws_cluster.adapters.hostfs import host_lock
from etcd_aws_cluster.app.boot import Outcome, Runner
from etcd_aws_cluster.app.context import Context
from etcd_aws_cluster.base.errors import AgentError, AwsError, ConfigError
from etcd_aws_cluster.base.retry import LOOK_AGAIN, attempts
from etcd_aws_cluster.core import proxy

log = logging.getLogger(__name__)


def describe_plan(outcome: Outcome) -> str:
    plan = outcome.plan
    lines = [
        f"# decision: {plan.decision.value} ({plan.reason})",
        f"# instance: {outcome.me.instance_id} {outcome.me.private_ip}",
    ]
    for member in plan.remove:
        name = member.name or "(unstarted)"
        lines.append(f"# would remove member {member.hex_id} {name} {','.join(member.peer_urls)}")
    if plan.add_self:
        lines.append("# would add this instance as a member")
    if plan.move_data_aside:
        lines.append("# would move the stale data dir aside")
    return "\n".join(lines) + "\n"


def run(ctx: Context, args: argparse.Namespace) -> int:
    dry_run = bool(getattr(args, "dry_run", False))
    if ctx.settings.proxy_asg:  # proxy mode: write a client configuration for that ASG's cluster, never join
        return run_proxy(ctx, ctx.settings.proxy_asg, dry_run=dry_run)
    outcome = Runner(ctx).run(dry_run=dry_run)
    if outcome is None:
        return 0
    if dry_run:
        sys.stdout.write(describe_plan(outcome) + outcome.text)
    return 0


def _find_cluster(ctx: Context, group: str) -> proxy.Cluster:
    """The cluster of ASG `group`, looking again (under the deadline) while it has no instance to name."""
    for _ in attempts(ctx.deadline, LOOK_AGAIN):
        asg = ctx.find_asg(group)
        mine = asg.find(ctx.me.instance_id)
        if mine is not None and not mine.is_gone:
            raise ConfigError(
                f"this instance is in ASG {group}, the cluster's own group; unset proxy_asg on its members"
            )
        cluster = proxy.discover(ctx.observe(asg))
        if cluster is not None:
            return cluster
    raise AwsError(f"gave up: ASG {group} has no InService or Pending instance with a private IP")


def _proxy_flavour(ctx: Context, cluster: proxy.Cluster) -> str:
    """v2-proxy or gateway, by the proxy_mode setting; auto: the local etcd's version, else the cluster's."""
    if ctx.settings.proxy_mode != "auto":
        return ctx.settings.proxy_mode
    version = local_etcd.local_version()
    source = "the local etcd"
    if version is None:
        source = "the cluster"
        for url in cluster.client_urls[:2]:
            try:
                status = ctx.etcd.endpoint_status(url, ctx.call_timeout)
            except AgentError:
                continue
            if status is not None and (version := local_etcd.parse_version(status.version)) is not None:
                break
    flavour = proxy.flavour_for(version)
    shown = ".".join(map(str, version)) if version else "unknown"
    log.info("proxy mode: etcd version %s (from %s): %s", shown, source if version else "nowhere", flavour)
    return flavour


def run_proxy(ctx: Context, group: str, *, dry_run: bool = False) -> int:
    """Find the cluster of ASG `group`, write the client configuration (or print it with dry_run)."""
    settings = ctx.settings
    cluster = _find_cluster(ctx, group)
    tls_files = {
        "ETCDCTL_CACERT": settings.ca_file,
        "ETCDCTL_CERT": settings.cert_file,
        "ETCDCTL_KEY": settings.key_file,
    }
    flavour = _proxy_flavour(ctx, cluster)
    values = proxy.variables(
        ctx.me, cluster, ctx.endpoints, listen_loopback=settings.listen_loopback, tls_files=tls_files, flavour=flavour
    )
    text = proxy.render(values)
    log.info(
        "proxy mode (%s): %d members of ASG %s (from the %s); client URLs %s",
        flavour,
        len(cluster.initial_cluster),
        group,
        cluster.source,
        values["ETCDCTL_ENDPOINTS"],
    )
    if dry_run:
        sys.stdout.write(f"# proxy mode: a client of ASG {group}, members from the {cluster.source}\n{text}")
        return 0
    with host_lock(settings.lock_file, ctx.deadline):
        atomic_file.write(settings.output, text)
    ctx.metrics.decided("proxy")
    if settings.output != "-":
        log.info("wrote %s: proxy configuration for %s", settings.output, ctx.me.instance_id)
    return 0
