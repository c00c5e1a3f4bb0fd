"""Command line: argv -> settings -> command -> exit code.

Heavy imports (pydantic, boto3, requests) wait until after parsing, so --help is fast. Each command lives in
`etcd_aws_cluster.commands.<name>` with `run(context, args) -> int`, imported only when chosen; the context
(settings, deadline, clients, the way to the cluster view) is built here, once.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from etcd_aws_cluster import __version__
from etcd_aws_cluster.base.errors import EXIT_CODES, AgentError, ErrorKind

if TYPE_CHECKING:
    from etcd_aws_cluster.app.context import Context

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


# name -> one-line help; the module etcd_aws_cluster.commands.<name> implements it
COMMANDS = {
    "run": "discover, decide, change membership and write the env file (the default)",
    "promote": "promote this instance's learner member to a voter once it has caught up (learner = true)",
    "ready": "complete this instance's launching lifecycle action once its member is a healthy voter (the hook's unit)",
    "reconcile": "remove members whose instance left the ASG, and failed joins, under the quorum guard (timer)",
    "status": "the ASG's instances and the cluster's members side by side; exit 0 healthy, 10 degraded, 11 no quorum",
    "leave": "remove this instance's own member (at termination); refuses with exit 6 if that would break quorum",
    "backup": "snapshot the cluster through this member and upload it to backup_url (--scheduled: the timer's run; "
    "--follow: deltas of every change, until stopped; --verify: a restore drill of the newest backup)",
    "restore": "list the snapshots and restorable ranges under backup_url (--list), or restore one (and its deltas, "
    "or to a point in time: --at, --revision) on this instance (every instance)",
}


def _common_options() -> argparse.ArgumentParser:
    """Options every command takes, before or after the command name."""
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        type=Path,
        help="config file (default: /etc/etcd-aws-cluster/config.toml, or $ETCD_AWS_CLUSTER_CONFIG)",
    )
    common.add_argument("--asg-name", metavar="NAME", help="use this Auto Scaling group instead of the instance's own")
    common.add_argument("--timeout", metavar="SECONDS", type=float, help="deadline for the whole run (default: 180)")
    common.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return common


def _output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="env file to write, '-' for stdout (default: /etc/sysconfig/etcd-cluster)",
    )


def _run_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    _output_option(options)
    options.add_argument(
        "--dry-run",
        action="store_true",
        help="decide and print the plan and the file it would write; change nothing",
    )
    return options


def build_parser() -> argparse.ArgumentParser:
    common, run_options = _common_options(), _run_options()
    parser = argparse.ArgumentParser(
        prog="etcd-aws-cluster",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common, run_options],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands (default: run)")
    for name, summary in COMMANDS.items():
        parents = [common, run_options] if name == "run" else [common]
        sub = commands.add_parser(name, help=summary, description=summary, parents=parents)
        add_arguments = COMMAND_ARGUMENTS.get(name)
        if add_arguments:
            add_arguments(sub)
    return parser


# Extra arguments of a command, defined here so --help needs no import of the command's module.
COMMAND_ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}


def _dry_run_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    # SUPPRESS: `etcd-aws-cluster --dry-run <command>` stays a dry run
    parser.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS, help=help_text)


def _reconcile_options(parser: argparse.ArgumentParser) -> None:
    _dry_run_option(parser, "print what it would remove and why; change nothing")


def _status_options(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = """\
One table joining this instance's Auto Scaling group (or asg_name / asg_tag / proxy_asg) and its etcd cluster:
instance id, IP, lifecycle state (with the lifecycle hook holding it in a wait state), member id, started,
learner, reachable, leader; members that belong to no instance of the group get rows of their own. Then one
summary line and the reasons behind it. Read only.
Colour only on a terminal, never with NO_COLOR set."""
    parser.epilog = """\
exit codes:
  0   healthy: every member reachable, a leader, each InService/Pending instance exactly one member
  10  degraded: quorum and a leader, but a member is unreachable, unstarted or belongs to no instance,
      an instance has no member, or the group is not complete (its desired capacity, at least 1, of
      InService/Pending instances, each with a private IP)
  11  no quorum: too few voting members reachable, no leader, or no etcd answers
  1-8 the agent's errors (e.g. 3 instance metadata, 4 AWS), as for run"""
    parser.add_argument("--json", action="store_true", help="print the report as JSON (member ids in hex)")


def _leave_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--if-terminating",
        action="store_true",
        help="leave only when instance metadata autoscaling/target-lifecycle-state is Terminated; else do nothing",
    )
    parser.add_argument(
        "--on-termination",
        action="store_true",
        help="wait until instance metadata says Terminated, leave (holding a terminating lifecycle action with "
        "heartbeats while that would break quorum), run stop_etcd_command, then complete the action",
    )
    _dry_run_option(parser, "check and print what it would remove; change nothing")


def _backup_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scheduled",
        action="store_true",
        help="upload only from the leader, and only when the newest snapshot is older than backup_interval; "
        "then apply retention (what etcd-aws-cluster-backup.timer runs on every member)",
    )
    parser.add_argument(
        "--follow",
        action="store_true",
        help="run until stopped, on every member: the leader watches every change and uploads it as a delta every "
        "backup_delta_interval seconds (sooner past backup_delta_max_bytes), and a full snapshot every "
        "backup_interval; the others stand by and take over when they lead, without a gap in revisions. "
        "SIGTERM uploads what is pending, then exits 0. --timeout bounds each step, not the run "
        "(etcd-aws-cluster-backup-follow.service)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="a restore drill: restore the newest snapshot and its deltas into scratch with etcd's own tools, "
        "check revision, db hash and key count against what was recorded, and store the result beside the "
        "snapshot (`status` shows it); exit 9 when the drill fails. With --scheduled only the leader drills "
        "(etcd-aws-cluster-verify.timer)",
    )


def _restore_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--list",
        action="store_true",
        help="list the snapshots by lineage, newest first, and each lineage's restorable range; change nothing",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--snapshot",
        metavar="KEY",
        help="exactly this snapshot, of any lineage, without deltas (default: the newest of the cluster record's "
        "lineage and the deltas after it)",
    )
    which.add_argument(
        "--at",
        metavar="TIME",
        type=_utc_time,
        help="point in time (ISO 8601 UTC, e.g. 2026-12-07T10:15:00Z): the snapshot at or before it and the deltas "
        "up to it, uploaded as a new lineage",
    )
    which.add_argument(
        "--revision",
        metavar="N",
        type=_positive_int,
        help="point in time as etcd's revision N: like --at",
    )
    _output_option(parser)


def _utc_time(text: str) -> datetime.datetime:
    """An ISO 8601 time with an explicit UTC offset (Z or +00:00): a restore must not guess a time zone."""
    try:
        value = datetime.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time (e.g. 2026-12-07T10:15:00Z)") from None
    if value.tzinfo is None or value.utcoffset() != datetime.timedelta(0):
        raise argparse.ArgumentTypeError(f"{text!r} names no UTC offset: write it in UTC, ending in Z")
    return value.astimezone(datetime.timezone.utc)


def _positive_int(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 2**63:
        raise argparse.ArgumentTypeError(f"{text!r} is not a revision (a positive integer)")
    return int(text)


COMMAND_ARGUMENTS["backup"] = _backup_options
COMMAND_ARGUMENTS["restore"] = _restore_options
COMMAND_ARGUMENTS["reconcile"] = _reconcile_options
COMMAND_ARGUMENTS["status"] = _status_options
COMMAND_ARGUMENTS["leave"] = _leave_options


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    return {name: getattr(args, name, None) for name in ("output", "asg_name", "timeout")}


def entry() -> None:
    """Console-script and `python -m` entry: run, flush, and exit without tearing the interpreter down.

    A boot-path process that has written its file gains nothing from Python's orderly shutdown, which costs about
    0.15 s with botocore's models loaded; the collector is off for the same reason (the run is short and bounded).
    """
    gc.disable()
    signal.signal(signal.SIGTERM, _terminate)  # here, not in main(): that runs inside the tests' process too
    try:
        code = main()
    except Terminated:  # before main's own handler (parsing the command line): nothing written yet
        code = 143
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 1
    os._exit(code)


class Terminated(BaseException):
    """SIGTERM (systemd stopping the unit, an instance shutting down): unwinds the run like an error, so every
    `finally` removes its partial files (a download, a restore's staging dir, a spool) before the agent exits.
    A BaseException, so that no `except Exception` on the way swallows it."""


def _terminate(signum: int, _frame: object) -> None:
    signal.signal(signum, signal.SIG_IGN)  # one unwind: a second SIGTERM must not cut the cleanup short
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    from etcd_aws_cluster.adapters import journal as logs

    errors_on_stderr = logs.setup(getattr(args, "verbose", False))
    started = time.monotonic()
    run = _Run()
    code = _main(args, command, errors_on_stderr, run)
    if run.context is not None and _records_metrics(command, args):
        from etcd_aws_cluster.app import metrics

        ctx = run.context
        end = metrics.Finish(
            command, code, run.error, started, ctx.metrics, ctx.settings, ctx.environ, ctx.deadline.remaining()
        )
        metrics.finish(end)
    return code


class _Run:
    """What main's hook needs to know of the run once it has ended: its context (once built) and its error."""

    def __init__(self) -> None:
        self.context: Context | None = None
        self.error: BaseException | None = None


def _records_metrics(command: str, args: argparse.Namespace) -> bool:
    """Every command updates the metrics file, but those that change nothing: status, a dry run, restore --list."""
    return command != "status" and not getattr(args, "dry_run", False) and not getattr(args, "list", False)


def _main(args: argparse.Namespace, command: str, errors_on_stderr: bool, run: _Run) -> int:
    try:
        from etcd_aws_cluster.app import settings as settings_module

        settings = settings_module.load(_overrides(args), getattr(args, "config", None))
        for name in settings_module.unknown_env(os.environ):
            log.warning("ignoring unknown setting %s (check its spelling)", name)
        module = importlib.import_module(f"etcd_aws_cluster.commands.{command}")
        from etcd_aws_cluster.app.context import Context

        run.context = Context(settings)
        code: int = module.run(run.context, args)
        return code
    except AgentError as exc:
        run.error = exc
        return _report(exc.kind, str(exc), errors_on_stderr)
    except KeyboardInterrupt:
        print("etcd-aws-cluster: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("etcd-aws-cluster: terminated (SIGTERM); its partial files are removed", file=sys.stderr)
        return 143
    except Exception as exc:  # the last line of defence: one line and exit 1, never a traceback (but with -v)
        log.debug("traceback of the unexpected error:", exc_info=True)
        return _report(_unexpected_kind(exc), _describe_unexpected(exc), errors_on_stderr)


def _report(kind: ErrorKind, what: str, errors_on_stderr: bool) -> int:
    message = f"error ({kind.label}): {what}"
    log.error("%s", message)
    if not errors_on_stderr:
        print(f"etcd-aws-cluster: {message}", file=sys.stderr)
    return kind.exit_code


def _unexpected_kind(exc: BaseException) -> ErrorKind:
    return ErrorKind.SYSTEM if isinstance(exc, OSError) else ErrorKind.INTERNAL


def _describe_unexpected(exc: BaseException) -> str:
    """One line for an error no command turned into an AgentError: an OS error names the file, a bug its type."""
    if isinstance(exc, OSError) and exc.strerror:
        where = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name is not None)
        return f"{exc.strerror}{': ' + where if where else ''} (run with -v for the traceback)"
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}{': ' + text if text else ''} (run with -v for the traceback)"
