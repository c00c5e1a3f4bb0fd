"""The default command: discover, decide, change membership, write the env file."""

from __future__ import annotations

import argparse
import sys

from etcd_aws_cluster.runner import Outcome, Runner
from etcd_aws_cluster.settings import Settings


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


def run(settings: Settings, args: argparse.Namespace) -> int:
    dry_run = bool(getattr(args, "dry_run", False))
    if settings.proxy_asg:  # proxy mode: write a client configuration for that ASG's cluster, never join
        from etcd_aws_cluster import proxy

        return proxy.run(settings, dry_run=dry_run)
    outcome = Runner(settings).run(dry_run=dry_run)
    if dry_run:
        sys.stdout.write(describe_plan(outcome) + outcome.text)
    return 0
