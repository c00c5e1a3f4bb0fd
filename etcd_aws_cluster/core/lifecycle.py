"""This instance's lifecycle in its Auto Scaling group: what its state means for a boot, and the decisions of
the lifecycle hooks (which hook, is the launch done, when to heartbeat, how long to hold a termination)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from etcd_aws_cluster.base.errors import ConfigError
from etcd_aws_cluster.core.model import AsgView, Identity
from etcd_aws_cluster.core.view import ClusterView


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


LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
# Where the group holds an instance for a hook of each transition (a warm pool's launch too).
LAUNCH_WAIT = "Pending:Wait"
WARM_POOL_WAIT = "Warmed:Pending:Wait"
TERMINATION_WAIT = "Terminating:Wait"
# AWS ends any wait after 100 heartbeat timeouts (or 48 hours), however many heartbeats it gets.
GLOBAL_TIMEOUT_FACTOR = 100
GLOBAL_TIMEOUT_LIMIT = 48 * 3600.0


@dataclass(frozen=True)
class Hook:
    """One lifecycle hook of the group, as DescribeLifecycleHooks lists it."""

    name: str
    transition: str
    heartbeat_timeout: float
    default_result: str

    @property
    def global_timeout(self) -> float:
        return min(GLOBAL_TIMEOUT_FACTOR * self.heartbeat_timeout, GLOBAL_TIMEOUT_LIMIT)


def choose_hook(hooks: Sequence[Hook], transition: str, configured: str | None) -> Hook | None:
    """The hook of `transition` this instance completes: the one named by the setting, else the group's only one.

    None: the group has no hook of that transition, and there is nothing to complete. Raises ConfigError when the
    setting names a hook the group does not have, or when the group has several and no setting says which.
    """
    of_transition = [h for h in hooks if h.transition == transition]
    if configured:
        named = next((h for h in of_transition if h.name == configured), None)
        if named is None:
            found = ", ".join(sorted(h.name for h in of_transition)) or "none"
            raise ConfigError(f"the group has no {transition} hook named {configured} (it has: {found})")
        return named
    if len(of_transition) > 1:
        names = ", ".join(sorted(h.name for h in of_transition))
        raise ConfigError(f"the group has {len(of_transition)} {transition} hooks ({names}): set which one to complete")
    return of_transition[0] if of_transition else None


def readiness(cluster: ClusterView, me: Identity) -> str | None:
    """Why this instance's launch is not done yet, or None when it is: its member has started, is a voter (a
    learner is promoted first), answers, and the cluster is healthy with it (every voter answers, one member
    list). Only then may the group count the instance healthy and go on, e.g. terminate the next old voter."""
    mine = cluster.claiming(me)
    if not mine:
        return "this instance has no member in the cluster yet"
    member = mine[0]
    label = f"member {member.hex_id}"
    if not member.started:
        return f"{label} has not started yet"
    if member.is_learner:  # before its answer: a learner's etcd refuses the member list until it is promoted
        return f"{label} is a learner catching up with the leader (not promoted yet)"
    if not cluster.is_healthy(member):
        return f"{label}'s etcd does not answer"
    if cluster.lists_differ:
        return "the members answer different member lists (a membership change in progress)"
    silent = cluster.silent_voters
    if silent:
        names = ", ".join(m.name or m.hex_id for m in silent)
        return f"{len(silent)} voting member(s) do not answer: {names}"
    return None


def heartbeat_due(last: float | None, now: float, heartbeat_timeout: float) -> bool:
    """Whether to record a heartbeat now: at once, then every third of the heartbeat timeout, so that one lost
    or late heartbeat never lets the hook time out."""
    return last is None or now - last >= heartbeat_timeout / 3


def may_hold(held_for: float, hold_limit: float, hook: Hook) -> bool:
    """Whether a termination may still be held (with heartbeats) after `held_for` seconds: up to `hold_limit`,
    and never into the last heartbeat timeout before the group's own global timeout, which no heartbeat extends."""
    return held_for < min(hold_limit, hook.global_timeout - hook.heartbeat_timeout)


# The wait states, by the transition of the hooks that hold an instance in them.
WAIT_TRANSITIONS = {
    LAUNCH_WAIT: LAUNCHING,
    WARM_POOL_WAIT: LAUNCHING,
    TERMINATION_WAIT: TERMINATING,
    "Warmed:Terminating:Wait": TERMINATING,
}


def holding_hooks(lifecycle_state: str, hooks: Sequence[Hook]) -> str | None:
    """The name(s) of the hook(s) that hold an instance in `lifecycle_state`, or None when it is in no wait state
    (or the group has no such hook)."""
    transition = WAIT_TRANSITIONS.get(lifecycle_state)
    names = sorted(h.name for h in hooks if h.transition == transition) if transition else []
    return ",".join(names) or None
