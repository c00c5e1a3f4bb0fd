"""`etcd-aws-cluster leave`: remove this instance's own member from the cluster, for termination.

Idempotent (a member that is already gone is success), bounded by the run's deadline, and guarded like a join:
it refuses (exit 6) when removing this member would leave the remaining voting members without quorum, or when
the cluster has no quorum to begin with. Run it while this node's etcd still runs, then stop etcd: a removed
member's etcd shuts itself down, and cannot restart on its old data (the next boot's agent moves it aside).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace

from etcd_aws_cluster.app.context import Context
from etcd_aws_cluster.base.errors import EtcdError, UnsafeError

log = logging.getLogger(__name__)


def run(ctx: Context, args: argparse.Namespace) -> int:
    dry_run = bool(getattr(args, "dry_run", False))
    me = ctx.me
    if getattr(args, "if_terminating", False):
        state = ctx.imds.target_lifecycle_state()
        if state != "Terminated":
            log.info("target lifecycle state is %s, not Terminated: staying in the cluster", state or "not set")
            return 0
        log.info("target lifecycle state is Terminated: leaving the cluster")

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
