"""`etcd-aws-cluster status`: the Auto Scaling group and the etcd cluster side by side; the exit code is the verdict.

Read only: it asks IMDS (for the region and, unless asg_name is set, the instance's group), AWS and every
member's etcd, and changes nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import replace

from etcd_aws_cluster.adapters import restore_tool
from etcd_aws_cluster.app import metrics
from etcd_aws_cluster.app.backups import Backups, utc_age
from etcd_aws_cluster.app.context import Context
from etcd_aws_cluster.base.errors import AgentError
from etcd_aws_cluster.core import deltas, status, view
from etcd_aws_cluster.core.lifecycle import WAIT_TRANSITIONS, Hook
from etcd_aws_cluster.core.model import AsgView, EndpointStatus
from etcd_aws_cluster.core.records import SnapshotInfo
from etcd_aws_cluster.core.view import ClusterView, url_host

log = logging.getLogger(__name__)


def use_colour(stream: object, environ: Mapping[str, str]) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org) or TERM=dumb."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not environ.get("NO_COLOR") and environ.get("TERM") != "dumb"


def _outside_probes(ctx: Context, first: ClusterView, pool: concurrent.futures.Executor) -> ClusterView:
    """The view again, with the members that belong to no ASG instance asked at their own client URL: they count
    for quorum too."""
    asked = {p.ip for p in first.probes}
    outside = {
        url_host(m.client_urls[0]): m.client_urls[0]
        for m in first.orphans
        if m.client_urls and url_host(m.client_urls[0]) not in asked
    }
    if not outside:
        return first
    probes = pool.map(lambda host: ctx.probe("", outside[host], host), sorted(outside))
    return view.build(first.asg, (*first.probes, *probes), first.endpoints)


def backups_lines(ctx: Context, group: str) -> tuple[str, tuple[str, ...]]:
    """What protects the data: the newest snapshot under backup_url, or that nothing does; and the recovery point
    and last drill (recovery_lines)."""
    backups = ctx.backups(group)
    if backups is None:
        return "backups: off (backup_url is not set): nothing restores the data if every member is lost", ()
    where = backups.store.where(backups.store.snapshot_prefix)
    try:
        newest = backups.newest()
        others = 0 if newest is not None else len(backups.store.list_snapshots())  # of other lineages then
    except AgentError as exc:
        return f"backups: cannot list {where}: {exc}", ()
    if newest is None:
        if others:
            return (
                f"backups: none yet of the record's lineage under {where}; {others} of other lineages (restore --list)"
            ), ()
        return f"backups: none yet under {where}", ()
    age = utc_age(ctx.now(), newest.taken_at)
    line = f"backups: newest {backups.store.where(newest.key)}, {age} old, revision {newest.revision}"
    return line, recovery_lines(ctx, backups, newest)


def recovery_lines(ctx: Context, backups: Backups, newest: SnapshotInfo) -> tuple[str, ...]:
    """How far the newest snapshot's deltas reach (the recovery point now), and the last drill's result."""
    lines = []
    try:
        reach = deltas.chain(newest.revision, backups.store.list_deltas(), newest.lineage)
        drill = backups.store.read_last_verification()
    except AgentError as exc:
        return (f"recovery point: cannot list the deltas: {exc}",)
    if reach.deltas and reach.last_at is not None:
        gap = (
            f"; a gap after revision {reach.gap_after} (the deltas beyond it are unreachable)"
            if reach.gap_after
            else ""
        )
        lines.append(
            f"recovery point: revision {reach.last} ({utc_age(ctx.now(), reach.last_at)} ago) through "
            f"{len(reach.deltas)} deltas after the newest snapshot{gap}"
        )
    else:
        lines.append("recovery point: the newest snapshot (no deltas after it: is `backup --follow` running?)")
    if drill is None:
        lines.append("restore drill: none yet (`backup --verify`)")
    else:
        verdict = "passed" if drill.ok else "FAILED"
        lines.append(
            f"restore drill: {verdict} {utc_age(ctx.now(), drill.verified_at)} ago, last verified recovery point "
            f"revision {drill.revision} ({utc_age(ctx.now(), drill.recovered_at)} old): {drill.verdict}"
        )
    return tuple(lines)


def restores_line(ctx: Context) -> str:
    """What a restore on this host could not do (bump revisions), or why it would refuse; "" when all is well."""
    if not ctx.settings.backup_url:
        return ""
    try:
        tool = restore_tool.find_tool(ctx.settings.etcdutl)
    except AgentError as exc:
        return f"restores on this host would refuse: {exc}"
    return restore_tool.bump_warning(tool) or ""


def collect(ctx: Context, group: str) -> status.Report:
    """Ask every instance's etcd for the member list, members outside the ASG too, then each member's status."""
    asg = ctx.find_asg(group)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        cluster = _outside_probes(ctx, ctx.observe(asg), pool)

        def ask_status(ip: str) -> EndpointStatus | None:
            try:
                return ctx.etcd.endpoint_status(ctx.endpoints.client_url(ip), ctx.call_timeout)
            except AgentError as exc:
                log.debug("status of %s: %s", ip, exc)
                return None

        answers = list(pool.map(ask_status, sorted(cluster.answered_ips)))
    return status.build(cluster, [a for a in answers if a is not None], _hooks(ctx, asg))


def _hooks(ctx: Context, asg: AsgView) -> tuple[Hook, ...]:
    """The group's lifecycle hooks, asked only when an instance is in a wait state; none when they cannot be read
    (an older IAM policy without DescribeLifecycleHooks): the table then shows the state alone."""
    if not any(i.lifecycle_state in WAIT_TRANSITIONS for i in asg.instances):
        return ()
    try:
        return ctx.aws.lifecycle_hooks(asg.name)
    except AgentError as exc:
        log.warning("cannot name the lifecycle hooks holding instances: %s", exc)
        return ()


def run(ctx: Context, args: argparse.Namespace) -> int:
    if not getattr(args, "verbose", False):
        logging.getLogger("etcd_aws_cluster").setLevel(logging.WARNING)  # the table says it all
    settings = ctx.settings
    # a client of the cluster (proxy_asg) shows the cluster it uses
    group = settings.asg_name or getattr(settings, "proxy_asg", None) or ctx.asg_name
    backups, recovery = backups_lines(ctx, str(group))
    report = replace(collect(ctx, str(group)), backups=backups, recovery=recovery, restores=restores_line(ctx))
    if getattr(args, "json", False):
        data = status.to_json(report)
        data["metrics"] = metrics.recorded(settings)  # what the other commands last recorded on this host
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(status.render_text(report, colour=use_colour(sys.stdout, os.environ)))
    sys.stdout.flush()
    return report.exit_code
