"""`etcd-aws-cluster leave`: remove this instance's own member from the cluster, for termination.

Idempotent (a member that is already gone is success), bounded by the run's deadline, and guarded like a join:
it refuses (exit 6) when removing this member would leave the remaining voting members without quorum, or when
the cluster has no quorum to begin with. Run it while this node's etcd still runs, then stop etcd: a removed
member's etcd shuts itself down, and cannot restart on its old data (the next boot's agent moves it aside).

`--on-termination` (the leave unit's ExecStart=) does what a terminating lifecycle hook needs, in this order:
it waits until instance metadata says Terminated, leaves, stops etcd (stop_etcd_command), then completes the
terminating lifecycle action. While leaving would break quorum (another member is down) it holds the termination
with heartbeats, up to termination_hold; then it completes the action anyway, and says so: the instance goes
regardless, and the replacement's boot removes the dead member once quorum allows.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace

from etcd_aws_cluster.adapters import local_etcd
from etcd_aws_cluster.adapters import systemd_notify as notify
from etcd_aws_cluster.app.context import Context
from etcd_aws_cluster.app.lifecycle import LifecycleAction, find_hook
from etcd_aws_cluster.base.errors import AgentError, EtcdError, UnsafeError
from etcd_aws_cluster.core.lifecycle import TERMINATING, TERMINATION_WAIT, may_hold

log = logging.getLogger(__name__)

# Seconds between two looks at instance metadata while waiting for termination, and between two attempts to leave
# while leaving would break quorum.
POLL_INTERVAL = 5.0
# What a run keeps of its deadline for leaving, stopping etcd and completing the action, besides the hold.
LEAVE_RESERVE = 90.0
STOP_TIMEOUT = 60.0


def run(ctx: Context, args: argparse.Namespace) -> int:
    if getattr(args, "on_termination", False):
        return on_termination(ctx)
    dry_run = bool(getattr(args, "dry_run", False))
    if getattr(args, "if_terminating", False):
        state = ctx.imds.target_lifecycle_state()
        if state != "Terminated":
            log.info("target lifecycle state is %s, not Terminated: staying in the cluster", state or "not set")
            return 0
        log.info("target lifecycle state is Terminated: leaving the cluster")
    return leave(ctx, dry_run)


def leave(ctx: Context, dry_run: bool = False) -> int:
    me = ctx.me
    # This node's own etcd too: the probes skip instances on their way out, which is what this one is.
    own = ctx.probe(me.instance_id, ctx.endpoints.client_url(me.private_ip), me.private_ip)
    cluster = ctx.observe(ctx.find_asg(), extra=(own,))
    cluster.require_one_cluster()
    if not cluster.answered:
        raise EtcdError(
            f"no etcd answers on the {len(cluster.probes)} instances of ASG {cluster.asg.name}; "
            "cannot tell whether this instance is still a member"
        )
    mine = cluster.claiming(me)
    if not mine:
        log.info("this instance is not a member of the cluster (already left): nothing to do")
        return 0
    if len(mine) > 1:
        raise UnsafeError(f"{len(mine)} members claim this instance; remove the extra ones with etcdctl")
    member = mine[0]
    cluster.check_change((member,), add_voter=False)  # quorum now, and after this member is gone

    label = f"this instance's member {member.hex_id} ({member.name or 'not started'})"
    if dry_run:
        sys.stdout.write(f"# would remove {label} from a cluster of {len(cluster.members)} members\n")
        return 0
    backups = ctx.backups(cluster.asg.name)
    change = backups.guard_change(cluster, f"removing {label}") if backups is not None else None
    # Through the other members first: this node's etcd stops itself once it sees its own removal.
    removed = ctx.remove_member(f"removing {label}", member.id, cluster.client_urls(last=[me.private_ip]))
    if change is not None:
        change.record(replace(cluster, members=tuple(m for m in cluster.members if m.id != member.id)))
    log.info("removed %s; stop etcd on this instance now" if removed else "%s was already gone", label)
    return 0


def on_termination(ctx: Context) -> int:
    """Wait for Terminated, leave (holding the termination while that is unsafe), stop etcd, complete the action.

    Waiting ends, with exit 0, when no more than the hold and LEAVE_RESERVE are left of the run's deadline: the
    unit starts the next run (Restart=always)."""
    reserve = ctx.settings.termination_hold + LEAVE_RESERVE
    while (state := ctx.imds.target_lifecycle_state()) != "Terminated":
        notify.status(f"waiting for termination (target lifecycle state {state or 'not set'})")
        if ctx.deadline.remaining() < reserve + POLL_INTERVAL:
            log.info("target lifecycle state is %s, not Terminated: nothing to do yet", state or "not set")
            return 0
        ctx.deadline.pause(POLL_INTERVAL)
    log.info("target lifecycle state is Terminated: leaving the cluster")
    asg = ctx.find_asg()
    mine = asg.find(ctx.me.instance_id)
    hook = find_hook(ctx, asg.name, TERMINATING, ctx.settings.termination_hook)
    action = None
    if hook is not None and mine is not None and mine.lifecycle_state == TERMINATION_WAIT:
        action = LifecycleAction(ctx, asg.name, hook)
    refusal = _leave_holding(ctx, action)
    if refusal is not None and action is None:
        raise refusal  # nothing holds the instance: etcd stops with it, and the unit's next run tries again
    command = ctx.settings.stop_etcd_command
    if command:
        failure = local_etcd.stop(command, ctx.deadline.cap(STOP_TIMEOUT))
        if failure is not None:
            log.warning("stopping etcd: %s", failure)
        else:
            log.info("stopped etcd (%s)", command)
    if action is None:
        log.info("no terminating lifecycle action holds this instance: nothing to complete")
        return 0
    action.complete("CONTINUE")
    if refusal is not None:
        log.warning(
            "completed the termination without leaving: %s; the replacement's boot (or reconcile) removes this "
            "member once quorum allows",
            refusal,
        )
    return 0


def _leave_holding(ctx: Context, action: LifecycleAction | None) -> AgentError | None:
    """Leave; while that would break quorum, hold the termination with heartbeats as long as may_hold allows.
    Returns the last refusal when it never became safe, or why no member could be asked (no etcd answers)."""
    started = ctx.deadline.elapsed()
    while True:
        try:
            leave(ctx)
            return None
        except UnsafeError as exc:
            held = ctx.deadline.elapsed() - started
            if action is None or not may_hold(held, ctx.settings.termination_hold, action.hook):
                return exc
            if ctx.deadline.remaining() < LEAVE_RESERVE:
                return exc
            action.heartbeat_if_due(f"leaving now would break quorum ({exc})")
            notify.status(f"holding the termination: {exc}")
            ctx.deadline.pause(POLL_INTERVAL)
        except EtcdError as exc:  # nothing to wait for: the instance goes all the same
            return exc
