"""What this instance's own lifecycle state means for a boot, before anything else is decided."""

from __future__ import annotations

from etcd_aws_cluster.core.model import AsgView, Identity


def warm_pool_boot(asg: AsgView, me: Identity) -> str | None:
    """Why this boot must change nothing, or None to go on.

    An instance in the group's warm pool (Warmed:*) boots once to warm up and is then stopped or hibernated; it
    is no cluster member yet. Joining now would add a member that goes away in minutes, and a written file would
    start etcd with it: such a boot changes nothing and exits 0. The instance joins when it boots again, out of
    the pool (Pending, then InService).
    """
    mine = asg.find(me.instance_id)
    if mine is None or not mine.in_warm_pool:
        return None
    return (
        f"instance {me.instance_id} is {mine.lifecycle_state} in the warm pool of ASG {asg.name}: "
        "not joining and not writing the file; it joins when it leaves the pool"
    )
