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

from etcd_aws_cluster import plan as planner
from etcd_aws_cluster import validate
from etcd_aws_cluster.errors import UnsafeError
from etcd_aws_cluster.model import AsgInstance, AsgView, Facts, Member

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
    healthy: frozenset[int]
    # In order; each allowed by the quorum guard after the ones before it.
    remove: tuple[Removal, ...] = ()
    # Gone, but removing them would leave the cluster below quorum.
    blocked: tuple[Removal, ...] = ()
    waiting: tuple[Unstarted, ...] = ()
    # First time each currently unstarted member was seen unstarted (member id -> seconds since the epoch).
    unstarted_since: tuple[tuple[int, float], ...] = ()

    @property
    def voters(self) -> int:
        return sum(1 for m in self.members if not m.is_learner)

    @property
    def healthy_voters(self) -> int:
        return sum(1 for m in self.members if not m.is_learner and m.id in self.healthy)

    def summary(self) -> str:
        return (
            f"{len(self.members)} members, {self.healthy_voters} of {self.voters} voting members answer "
            f"(quorum {planner.quorum(self.voters)}); remove {len(self.remove)}, blocked {len(self.blocked)}, "
            f"unstarted within grace {len(self.waiting)}"
        )


def owner(member: Member, asg: AsgView) -> AsgInstance | None:
    """The ASG instance a member belongs to, in any lifecycle state.

    A started member named after an instance id belongs to that instance only: its IP may since have been given
    to a new instance. Otherwise as the boot plan sees it (`plan.instance_of`), falling back to an instance in any
    state that holds one of its peer IPs (e.g. an unstarted member of a Standby instance).
    """
    if member.started and validate.INSTANCE_ID.fullmatch(member.name):
        return asg.find(member.name)
    found = planner.instance_of(member, asg)
    if found is not None:
        return found
    hosts = {planner.url_host(u) for u in member.peer_urls}
    return next((i for i in asg.instances if i.private_ip and i.private_ip in hosts), None)


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


def _order(member: Member, healthy: frozenset[int]) -> tuple[int, int]:
    # What cannot lower the count of answering voters goes first: unstarted members, learners, silent voters;
    # answering voters (gone only by the setting) last, when the removals before them have shrunk the quorum.
    if not member.started:
        rank = 0
    elif member.is_learner:
        rank = 1
    else:
        rank = 2 if member.id not in healthy else 3
    return (rank, member.id)


def decide(facts: Facts, policy: Policy, seen_unstarted: Mapping[int, float], now: float) -> Reconciliation:
    """Compare the cluster with the ASG. Raises UnsafeError when no quorum answers or the view is inconsistent."""
    me, asg, endpoints = facts.me, facts.asg, facts.endpoints
    if asg.find(me.instance_id) is None:
        raise UnsafeError(f"this instance {me.instance_id} is not in ASG {asg.name}'s view; refusing to act on it")
    if not any(p.answered for p in facts.probes):
        raise UnsafeError(
            f"no etcd of ASG {asg.name} answers; the cluster has no quorum here. Refusing to change membership"
        )
    members = planner.agreed_member_list(facts).members
    if not any(planner.is_me(m, me, endpoints) for m in members):
        raise UnsafeError(f"this instance {me.instance_id} is not a member of the cluster; run reconcile from a member")
    answered_ips = {p.ip for p in facts.probes if p.answered}
    healthy = frozenset(m.id for m in members if any(planner.url_host(u) in answered_ips for u in m.peer_urls))
    voters = [m for m in members if not m.is_learner]
    up = sum(1 for m in voters if m.id in healthy)
    if up < planner.quorum(len(voters)):
        raise UnsafeError(
            f"the cluster has no quorum: {up} of {len(voters)} voting members answer. Restore the missing "
            "members' instances, or recover the cluster from a snapshot; refusing to change membership"
        )

    since = {m.id: min(seen_unstarted.get(m.id, now), now) for m in members if not m.started}
    candidates: list[Removal] = []
    waiting: list[Unstarted] = []
    for member in members:
        if planner.is_me(member, me, endpoints):
            continue  # never the member this runs on
        reason = _gone_reason(member, owner(member, asg), asg, policy)
        if reason is None and not member.started:
            seen_for = now - since[member.id]
            if seen_for >= policy.grace:
                reason = f"added {seen_for:.0f}s ago and never started (a failed join; grace {policy.grace:.0f}s)"
            else:
                waiting.append(Unstarted(member, seen_for, policy.grace))
        if reason is not None:
            candidates.append(Removal(member, reason))

    remove: list[Removal] = []
    blocked: list[Removal] = []
    for candidate in sorted(candidates, key=lambda r: _order(r.member, healthy)):
        if candidate.member.is_learner:
            remove.append(candidate)
            continue
        after = [v for v in voters if v.id != candidate.member.id]
        up_after = sum(1 for v in after if v.id in healthy)
        if after and up_after >= planner.quorum(len(after)):
            voters = after
            remove.append(candidate)
        else:
            reason = f"{candidate.reason}; removing it would leave {up_after} of {len(after)} voting members answering"
            blocked.append(Removal(candidate.member, reason))
    return Reconciliation(
        members=members,
        healthy=healthy,
        remove=tuple(remove),
        blocked=tuple(blocked),
        waiting=tuple(waiting),
        unstarted_since=tuple(sorted(since.items())),
    )
