"""`etcd-aws-cluster backup`: a snapshot of the cluster through this instance's member, uploaded to backup_url.

By hand it always takes one. With `--scheduled` (the backup timer, on every member) only the leader uploads,
and only when the newest snapshot is older than backup_interval, so a group of five uploads one copy per
period; retention then deletes what backup_keep_last / backup_keep_daily_days do not keep.

`--verify` (etcd-aws-cluster-verify.timer) is a restore drill: the newest snapshot and its deltas restored into
scratch with etcd's own tools and checked against what was recorded (app/drill.py); exit 9 when it fails.

`--follow` (etcd-aws-cluster-backup-follow.service, on every member) runs until stopped: the leader's follower
uploads every change as deltas between full snapshots (app/follow.py). Its run's timeout bounds each step of the
loop, not the loop; SIGTERM makes it upload what it has and exit 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from etcd_aws_cluster.app.backups import Backups
from etcd_aws_cluster.app.context import Context
from etcd_aws_cluster.base.errors import ConfigError, EtcdError
from etcd_aws_cluster.core.records import format_time
from etcd_aws_cluster.core.view import ClusterView

log = logging.getLogger(__name__)
# A timer that fires a little late must not skip a period: a snapshot this much younger than the interval is due.
SCHEDULE_SLACK = 0.9


def require_backups(ctx: Context) -> Backups:
    backups = ctx.backups()
    if backups is None:
        raise ConfigError("backup_url is not set: there is nowhere to back up to or restore from")
    return backups


def _is_leader(ctx: Context) -> bool:
    status = ctx.etcd.endpoint_status(ctx.endpoints.client_url(ctx.me.private_ip), ctx.call_timeout)
    return status is not None and status.leader != 0 and status.leader == status.member_id


def _due(ctx: Context, backups: Backups) -> bool:
    newest = backups.newest()
    if newest is None:
        return True
    age = backups.age(newest)
    ctx.metrics.newest_snapshot(ctx.asg_name, newest.taken_at.timestamp(), age)
    if age < ctx.settings.backup_interval * SCHEDULE_SLACK:
        log.info(
            "the newest snapshot %s is %.0fs old (backup_interval %.0fs): none due",
            newest.key,
            age,
            ctx.settings.backup_interval,
        )
        return False
    return True


def _local_member(ctx: Context, cluster: ClusterView) -> None:
    cluster.require_one_cluster()
    if not cluster.claiming(ctx.me):
        raise EtcdError(f"{ctx.me.instance_id} is not a member of the cluster; back up from a member")
    if ctx.me.private_ip not in cluster.answered_ips:
        raise EtcdError(f"this instance's etcd ({ctx.endpoints.client_url(ctx.me.private_ip)}) does not answer")


def run(ctx: Context, args: argparse.Namespace) -> int:
    if getattr(args, "follow", False) and getattr(args, "verify", False):
        raise ConfigError("--follow and --verify are two different runs: give one")
    if getattr(args, "follow", False):
        return follow(ctx)
    if getattr(args, "verify", False):
        return verify(ctx, scheduled=bool(getattr(args, "scheduled", False)))
    backups = require_backups(ctx)
    ctx.metrics.backup_interval(ctx.asg_name, ctx.settings.backup_interval)
    cluster = ctx.observe(ctx.find_asg())
    _local_member(ctx, cluster)
    scheduled = bool(getattr(args, "scheduled", False))
    if scheduled:
        if not _is_leader(ctx):
            log.info("scheduled backup: this member is not the leader; the leader uploads")
            return 0
        if not _due(ctx, backups):
            return 0
    started = ctx.deadline.elapsed()
    info = backups.take(cluster, ctx.me.private_ip)
    ctx.metrics.backed_up(ctx.asg_name, info, ctx.deadline.elapsed() - started)
    if scheduled:
        backups.prune()
    sys.stdout.write(
        f"{backups.store.where(info.key)} revision {info.revision} {info.db_bytes} bytes, {info.size} stored "
        f"sha256 {info.sha256}\n"
    )
    return 0


def follow(ctx: Context) -> int:
    """Follow the changes until SIGTERM (or SIGINT): then upload what is pending and return 0."""
    from etcd_aws_cluster.app.follow import Follower, Timing

    backups = require_backups(ctx)
    ctx.metrics.backup_interval(ctx.asg_name, ctx.settings.backup_interval)
    stop = threading.Event()

    def stopping(signum: int, _frame: FrameType | None) -> None:
        log.info("follow: %s: uploading what is pending, then exiting", signal.Signals(signum).name)
        # From another thread: the handler runs in the main thread, which may hold the event's lock right now
        threading.Thread(target=stop.set, name="stop").start()

    previous = {signum: signal.signal(signum, stopping) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        timing = Timing.of(ctx.settings)
        log.info(
            "follow: deltas every %.0fs (or past %d bytes), full snapshots every %.0fs, from the leader only",
            timing.interval,
            timing.max_bytes,
            timing.snapshot_interval,
        )
        return Follower(ctx, backups, stop, timing).run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def verify(ctx: Context, *, scheduled: bool) -> int:
    """A restore drill of the newest snapshot and its deltas (app/drill.py); 0 when it passed, 9 when not."""
    from etcd_aws_cluster.app import drill

    backups = require_backups(ctx)
    if scheduled:
        cluster = ctx.observe(ctx.find_asg())
        _local_member(ctx, cluster)
        if not _is_leader(ctx):
            log.info("scheduled drill: this member is not the leader; the leader drills")
            return 0
    result = drill.verify(backups)
    ctx.metrics.verified(ctx.asg_name, result)
    where = backups.store.where(result.snapshot)
    log.info("drill of %s: %s: %s", where, "passed" if result.ok else "FAILED", result.verdict)
    drill.require_passed(result, where)
    sys.stdout.write(
        f"drill passed: {where} + {result.deltas} deltas restore to revision {result.revision} "
        f"({format_time(result.recovered_at)}), {result.keys} keys\n"
    )
    return 0
