"""Which members `reconcile` removes, and why: a pure function of the ASG view, the member list, which members
answered and since when unstarted members have been seen. No I/O, no clock (the caller passes `now`).

A member is removed when its instance is gone: not in the ASG, Terminated, or in a lifecycle state the
`reconcile_remove_states` setting names (Terminating, Detaching, Standby, ...). A member that was added but never
started (a failed join) is removed once it has been seen unstarted for longer than the grace period. The member
this runs on is never removed, and every removal must pass the same quorum arithmetic as the boot plan: the
cluster must have a quorum of answering voting members before any change, and after each one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from etcd_aws_cluster.base import validate
from etcd_aws_cluster.base.errors import UnsafeError
from etcd_aws_cluster.core.model import AsgInstance, AsgView, Identity, Member
from etcd_aws_cluster.core.view import ClusterView, Count, Facts, is_me

# Lifecycle states the setting may name; InService/Pending instances are members and are never removed.
REMOVABLE_STATES = frozenset(
    {
        "Terminating",
        "Terminating:Wait",
        "Terminating:Proceed",
        "Terminated",
        "Detaching",
        "Detached",
        "EnteringStandby",
        "Standby",
    }
)
ALWAYS_REMOVED = "Terminated"


def parse_states(value: str | Iterable[str] | None) -> frozenset[str]:
    """Lifecycle states from a comma-separated string (or a TOML list); ValueError names a bad one."""
    if value is None:
        return frozenset()
    items = value.split(",") if isinstance(value, str) else list(value)
    states = set()
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{item!r} is not a lifecycle state")
        state = item.strip()
        if not state:
            continue
        if state not in REMOVABLE_STATES:
            allowed = ", ".join(sorted(REMOVABLE_STATES))
            raise ValueError(f"{state!r} is not a state reconcile may remove members of (one of: {allowed})")
        states.add(state)
    return frozenset(states)


@dataclass(frozen=True)
class Policy:
    """What reconcile may remove: extra lifecycle states (besides Terminated) and the failed-join grace."""

    remove_states: frozenset[str] = frozenset()
    grace: float = 600.0

    def removes(self, lifecycle_state: str) -> bool:
        """Terminated always; a named state also covers its `:Wait`/`:Proceed` forms."""
        base = lifecycle_state.split(":", 1)[0]
        return lifecycle_state == ALWAYS_REMOVED or lifecycle_state in self.remove_states or base in self.remove_states


@dataclass(frozen=True)
class Removal:
    member: Member
    reason: str

    def describe(self) -> str:
        name = self.member.name or "(unstarted)"
        return f"member {self.member.hex_id} {name} {','.join(self.member.peer_urls)}: {self.reason}"


@dataclass(frozen=True)
class Unstarted:
    """An added-but-unstarted member still inside its grace period."""

    member: Member
    seen_for: float
    grace: float

    def describe(self) -> str:
        return (
            f"member {self.member.hex_id} {','.join(self.member.peer_urls)}: added but not started for "
            f"{self.seen_for:.0f}s of the {self.grace:.0f}s grace period; kept for now"
        )


@dataclass(frozen=True)
class Reconciliation:
    members: tuple[Member, ...]
    count: Count  # answering voting members of all, before any removal
    # In order; each allowed by the quorum guard after the ones before it.
    remove: tuple[Removal, ...] = ()
    # Gone, but removing them would leave the cluster below quorum.
    blocked: tuple[Removal, ...] = ()
    waiting: tuple[Unstarted, ...] = ()
    # First time each currently unstarted member was seen unstarted (member id -> seconds since the epoch).
    unstarted_since: tuple[tuple[int, float], ...] = ()

    def summary(self) -> str:
        return (
            f"{len(self.members)} members, {self.count.up} of {self.count.voters} voting members answer "
            f"(quorum {self.count.needed}); remove {len(self.remove)}, blocked {len(self.blocked)}, "
            f"unstarted within grace {len(self.waiting)}"
        )


def _gone_reason(member: Member, instance: AsgInstance | None, asg: AsgView, policy: Policy) -> str | None:
    unstarted = "" if member.started else "unstarted; "
    if instance is None:
        if member.started and validate.INSTANCE_ID.fullmatch(member.name):
            return f"{unstarted}instance {member.name} is no longer in ASG {asg.name}"
        urls = validate.shown(",".join(member.peer_urls))
        return f"{unstarted}no instance of ASG {asg.name} has its peer URL {urls}"
    if policy.removes(instance.lifecycle_state):
        setting = "" if instance.lifecycle_state == ALWAYS_REMOVED else " (reconcile_remove_states)"
        return f"{unstarted}instance {instance.instance_id} is {instance.lifecycle_state}{setting}"
    return None


def _order(member: Member, view: ClusterView) -> tuple[int, int]:
    # What cannot lower the count of answering voters goes first: unstarted members, learners, silent voters;
    # answering voters (gone only by the setting) last, when the removals before them have shrunk the quorum.
    if not member.started:
        rank = 0
    elif member.is_learner:
        rank = 1
    else:
        rank = 2 if member in view.silent_voters else 3
    return (rank, member.id)


def _candidates(
    view: ClusterView, me: Identity, policy: Policy, since: Mapping[int, float], now: float
) -> tuple[list[Removal], list[Unstarted]]:
    """Members that reconcile would remove (with the reason), and failed joins still within their grace."""
    candidates: list[Removal] = []
    waiting: list[Unstarted] = []
    for member in view.members:
        if is_me(member, me, view.endpoints):
            continue  # never the member this runs on
        reason = _gone_reason(member, view.owner(member), view.asg, policy)
        if reason is None and not member.started:
            seen_for = now - since[member.id]
            if seen_for >= policy.grace:
                reason = f"added {seen_for:.0f}s ago and never started (a failed join; grace {policy.grace:.0f}s)"
            else:
                waiting.append(Unstarted(member, seen_for, policy.grace))
        if reason is not None:
            candidates.append(Removal(member, reason))
    return candidates, waiting


def _guarded(view: ClusterView, candidates: list[Removal]) -> tuple[list[Removal], list[Removal]]:
    """The removals the quorum guard allows, in order, and those it blocks."""
    remove: list[Removal] = []
    blocked: list[Removal] = []
    removed: list[int] = []
    for candidate in sorted(candidates, key=lambda r: _order(r.member, view)):
        if candidate.member.is_learner:
            remove.append(candidate)
            continue
        after = view.count([*removed, candidate.member.id])
        if after.ok:
            removed.append(candidate.member.id)
            remove.append(candidate)
        else:
            reason = (
                f"{candidate.reason}; removing it would leave {after.up} of {after.voters} voting members answering"
            )
            blocked.append(Removal(candidate.member, reason))
    return remove, blocked


def decide(facts: Facts, policy: Policy, seen_unstarted: Mapping[int, float], now: float) -> Reconciliation:
    """Compare the cluster with the ASG. Raises UnsafeError when no quorum answers or the view is inconsistent."""
    me, view = facts.me, facts.view
    asg = view.asg
    if asg.find(me.instance_id) is None:
        raise UnsafeError(f"this instance {me.instance_id} is not in ASG {asg.name}'s view; refusing to act on it")
    if not view.answered:
        raise UnsafeError(
            f"no etcd of ASG {asg.name} answers; the cluster has no quorum here. Refusing to change membership"
        )
    view.require_one_cluster()
    if not view.claiming(me):
        raise UnsafeError(f"this instance {me.instance_id} is not a member of the cluster; run reconcile from a member")
    view.require_quorum("change membership")
    since = {m.id: min(seen_unstarted.get(m.id, now), now) for m in view.members if not m.started}
    candidates, waiting = _candidates(view, me, policy, since, now)
    remove, blocked = _guarded(view, candidates)
    return Reconciliation(
        members=view.members,
        count=view.count(),
        remove=tuple(remove),
        blocked=tuple(blocked),
        waiting=tuple(waiting),
        unstarted_since=tuple(sorted(since.items())),
    )
