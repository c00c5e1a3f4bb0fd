"""Command line: argv -> settings -> run -> exit code. Heavy imports wait until after parsing, so --help is fast."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from etcd_aws_cluster import __version__
from etcd_aws_cluster.errors import EXIT_CODES, AgentError

log = logging.getLogger("etcd_aws_cluster")

DESCRIPTION = """\
Bootstrap or join an etcd cluster on an AWS Auto Scaling group, then write the env file etcd starts from.

Run once at boot, before etcd (etcd-aws-cluster.service does this). It reads this instance's identity from the
instance metadata service (IMDSv2), finds its Auto Scaling group and the group's instances, asks their etcd for
the member list, and decides:
  new       no etcd answers and the group is complete: start a new cluster of all its instances
  member    this instance is already a member: write its settings, change nothing
  join      a cluster answers: remove members whose instance left the group (only while quorum holds),
            add this instance, state "existing"
  restart   no etcd answers but this node has etcd data: etcd restarts from it
Anything that could split the cluster or lose quorum is refused with a message and a non-zero exit; an
existing output file is then left exactly as it was.
"""

EPILOG = (
    """\
settings (highest priority first): command-line options, environment variables ETCD_AWS_CLUSTER_<NAME>,
drop-ins <config dir>/config.d/*.toml (sorted, later wins), the config file (default
/etc/etcd-aws-cluster/config.toml, or ETCD_AWS_CLUSTER_CONFIG), then defaults. See etcd-aws-cluster(8)
and the README for every setting. AWS_ENDPOINT_URL(_AUTO_SCALING|_EC2) and AWS_EC2_METADATA_SERVICE_ENDPOINT
point the agent at other endpoints.

exit codes:
"""
    + "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES)
    + "\n"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="etcd-aws-cluster",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", nargs="?", default="run", choices=["run"], help="what to do (default: run)")
    parser.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="env file to write, '-' for stdout (default: /etc/sysconfig/etcd-cluster)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="decide and print the plan and the file it would write; change nothing",
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        type=Path,
        help="config file (default: /etc/etcd-aws-cluster/config.toml, or $ETCD_AWS_CLUSTER_CONFIG)",
    )
    parser.add_argument("--asg-name", metavar="NAME", help="use this Auto Scaling group instead of the instance's own")
    parser.add_argument("--timeout", metavar="SECONDS", type=float, help="deadline for the whole run (default: 180)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"output": args.output, "asg_name": args.asg_name, "timeout": args.timeout}


def _describe_plan(outcome: Any) -> str:
    plan = outcome.plan
    lines = [
        f"# decision: {plan.decision.value} ({plan.reason})",
        f"# instance: {outcome.me.instance_id} {outcome.me.private_ip}",
    ]
    for member in plan.remove:
        lines.append(
            f"# would remove member {member.hex_id} {member.name or '(unstarted)'} {','.join(member.peer_urls)}"
        )
    if plan.add_self:
        lines.append("# would add this instance as a member")
    if plan.move_data_aside:
        lines.append("# would move the stale data dir aside")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from etcd_aws_cluster import logs

    errors_on_stderr = logs.setup(args.verbose)
    try:
        from etcd_aws_cluster import settings as settings_module
        from etcd_aws_cluster.runner import Runner

        settings = settings_module.load(_overrides(args), args.config)
        for name in settings_module.unknown_env(__import__("os").environ):
            log.warning("ignoring unknown setting %s (check its spelling)", name)
        outcome = Runner(settings).run(dry_run=args.dry_run)
        if args.dry_run:
            sys.stdout.write(_describe_plan(outcome) + outcome.text)
    except AgentError as exc:
        message = f"error ({exc.kind}): {exc}"
        log.error("%s", message)
        if not errors_on_stderr:
            print(f"etcd-aws-cluster: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("etcd-aws-cluster: interrupted", file=sys.stderr)
        return 130
    return 0
