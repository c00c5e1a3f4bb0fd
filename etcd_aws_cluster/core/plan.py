"""The boot decision, as a pure function of the facts: no I/O, no clock, no randomness.

Everything that could split a cluster or lose quorum is refused here, with a reason an operator can act on. The
reasoning about who is who and about quorum lives in `view`; this module only decides.
"""

from __future__ import annotations

from etcd_aws_cluster.base import validate
from etcd_aws_cluster.base.errors import UnsafeError
from etcd_aws_cluster.core import recovery
from etcd_aws_cluster.core.model import Decision, EtcdFailure, Member, Plan
from etcd_aws_cluster.core.view import ClusterView, Facts, incomplete, initial_peers


def _bootstrap(facts: Facts) -> Plan:
    """No peer answers: restart from local data, start a new cluster (or, when the cluster record says one
    existed, wait for its survivors or restore it; when they are fewer than a quorum, restore the newest data
    once each has handed off; never restart on data the record superseded; see recovery.py), or wait for a
    complete view."""
    asg = facts.asg
    expected = initial_peers(asg, facts.endpoints)
    if facts.has_local_data and not recovery.survivors_lack_quorum(facts) and not recovery.data_superseded(facts):
        return Plan(
            Decision.RESTART,
            "no peer answers and this node has member data: etcd restarts from its data dir",
            "existing",
            expected,
        )
    record = facts.record
    joining = recovery.joining_restore(facts, record, expected) if record is not None else None
    if joining is not None and joining.decision is Decision.RESTORE:
        # Its own members may already run the restored etcd, silent until a quorum of them does (a restored etcd
        # 3.6 does not say on its peer port that it is forming): take part all the same.
        return joining
    expected_urls = frozenset(url for _, url in expected)
    silent = [
        p
        for p in facts.view.probes
        if p.error is not None and p.error is not EtcdFailure.REFUSED and p.bootstrapping != expected_urls
    ]
    if silent:
        names = ", ".join(f"{p.instance_id} ({p.failure})" for p in silent)
        return Plan(Decision.WAIT, f"no member list yet, but etcd may be running on {names}")
    if joining is not None:
        return joining
    if facts.record is not None:
        waiting = recovery.with_record(facts, facts.record)
        if waiting is not None:
            return waiting
    shortfall = incomplete(asg)
    if shortfall:
        return Plan(Decision.WAIT, shortfall)
    if facts.me.instance_id not in {name for name, _ in expected}:
        return Plan(Decision.WAIT, f"this instance is not yet InService/Pending in ASG {asg.name}")
    if facts.record is not None:
        return recovery.restore_plan(facts, facts.snapshots, expected)
    return Plan(
        Decision.NEW,
        f"no etcd answers on any of the {len(expected)} ASG instances and the ASG is complete",
        "new",
        expected,
    )


def _removal_order(member: Member) -> tuple[int, int]:
    # Unstarted members and learners do not count toward quorum: removing them first never hurts it.
    return (0 if not member.started else 1 if member.is_learner else 2, member.id)


def _my_member(facts: Facts) -> tuple[Member | None, list[Member]]:
    """This instance's member, if any, and the members with its peer URL that belong to a gone instance.

    Refuses when the member list contradicts itself about this instance."""
    me, view = facts.me, facts.view
    my_peer = facts.endpoints.peer_url(me.private_ip)
    mine: list[Member] = []
    replaced: list[Member] = []
    for member in view.claiming(me):
        if member.name == me.instance_id and my_peer not in member.peer_urls:
            raise UnsafeError(
                f"member {member.hex_id} is named {me.instance_id} but has peer URLs "
                f"{validate.shown(','.join(member.peer_urls))}, not {my_peer}; fix it with etcdctl member update"
            )
        owner = view.owner(member)
        if member.started and member.name != me.instance_id:
            if owner is not None and not owner.is_gone and owner.instance_id != me.instance_id:
                raise UnsafeError(
                    f"member {validate.shown(member.name)} of live instance {owner.instance_id} has this "
                    f"instance's peer URL {my_peer}; refusing"
                )
            replaced.append(member)  # a gone instance once had this IP
            continue
        mine.append(member)
    if len(mine) > 1:
        raise UnsafeError(f"{len(mine)} members claim this instance; remove the extra ones with etcdctl")
    return (mine[0] if mine else None), replaced


def _stale_reason(facts: Facts, mine: Member | None) -> str:
    """Why this node's own member cannot start from this node's data dir, or "" when it can."""
    if not facts.has_local_data:
        if mine is not None and mine.serving:
            return f"this node has no etcd data for its member {mine.hex_id}, which has run before (data dir lost)"
        return ""
    if mine is None:
        return "this node has etcd data but is not a member of the running cluster"
    if facts.local_ids is None:
        return ""
    local_member, local_cluster = facts.local_ids
    cluster_id = facts.view.cluster_id
    # Data of another cluster never starts as a member of this one, whether that member has started or not (a
    # restored cluster's member of a survivor that looked late has not).
    if cluster_id is not None and local_cluster != cluster_id:
        return f"this node's etcd data belongs to cluster {local_cluster:x}, not {cluster_id:x}"
    if not mine.started:
        return ""
    if local_member != mine.id:
        return f"this node's etcd data is of member {local_member:x}, not of its member {mine.hex_id}"
    return ""


def _member(facts: Facts, member: Member) -> Plan:
    """This instance already has a member: write its settings, or wait for an earlier instance to start first."""
    view, me = facts.view, facts.me
    if not member.serving:
        # Two etcds that start with "existing" at the same moment each wait for the other's not-yet-serving peer
        # port to answer /version (stuck for over a minute with 3.4.23 and 3.5.1): one at a time, lowest id first.
        # This holds for added members and for late members of a new cluster's initial list alike.
        earlier = sorted(
            owner.instance_id
            for m in view.members
            if not m.serving
            and m is not member
            and (owner := view.owner(m)) is not None
            and owner.counts_as_member
            and owner.instance_id < me.instance_id
        )
        if earlier:
            return Plan(
                Decision.WAIT,
                f"this instance's member {member.hex_id} is not started yet, nor is that of {earlier[0]}: "
                "members start one at a time, it goes first",
                members=view.members,
            )
    state = "serving" if member.serving else "not started yet"
    return Plan(
        Decision.MEMBER,
        f"this instance is already member {member.hex_id} ({state})",
        "existing",
        view.initial_cluster(view.members, me),
        members=view.members,
    )


def _departed(view: ClusterView, member: Member) -> bool:
    """Its instance is gone, or it never started and its instance is not one that joins (e.g. Standby)."""
    owner = view.owner(member)
    return owner is None or owner.is_gone or (not member.started and not owner.counts_as_member)


def _joining_instance(facts: Facts, remove: list[Member]) -> Plan | None:
    """WAIT while another live instance is mid-join: etcd (3.4) adds one member at a time."""
    view = facts.view
    for member in view.members:
        owner = view.owner(member)
        if member in remove or owner is None or member.serving or owner.instance_id == facts.me.instance_id:
            continue
        return Plan(
            Decision.WAIT,
            f"instance {owner.instance_id} is joining (member {member.hex_id} not started yet); "
            "waiting for it to start before adding this one",
            members=view.members,
        )
    return None


def _existing_cluster(facts: Facts, stale_data: str, as_learner: bool) -> Plan:
    view, me = facts.view, facts.me
    view.require_one_cluster()
    mine, remove = _my_member(facts)
    stale = _stale_reason(facts, mine)
    if mine is not None and not stale:
        return _member(facts, mine)
    if mine is not None:
        remove.append(mine)  # the old entry cannot start on this data dir: replace it
    remove += [m for m in view.members if m not in remove and _departed(view, m)]
    waiting = _joining_instance(facts, remove)
    if waiting is not None:
        return waiting

    if facts.record is not None:
        waiting = recovery.wait_for_quorum(facts)
        if waiting is not None:
            return waiting
    ordered = tuple(sorted(remove, key=_removal_order))
    view.check_change(ordered, add_voter=not as_learner)
    move_aside = facts.has_local_data and bool(stale)
    if move_aside and stale_data != "move":
        raise UnsafeError(f"{stale}; stale_data=refuse is set, so move the data dir aside by hand and rerun")

    remaining = [m for m in view.members if m not in ordered]
    gone = ", ".join(m.name or m.hex_id for m in ordered) or "none"
    my_peer = facts.endpoints.peer_url(me.private_ip)
    return Plan(
        Decision.JOIN,
        f"a cluster of {len(view.members)} members answers and this instance is not one of them"
        f"{' (' + stale + ')' if stale else ''}; removing gone: {gone}",
        "existing",
        tuple(sorted(view.initial_cluster(remaining, me) + ((me.instance_id, my_peer),))),
        remove=ordered,
        add_self=True,
        move_data_aside=move_aside,
        members=view.members,
    )


def decide(facts: Facts, *, stale_data: str = "move", as_learner: bool = False) -> Plan:
    """Derive the plan for this run from what was found. Raises UnsafeError where any doubt remains."""
    mine = facts.asg.find(facts.me.instance_id)
    if mine is None:
        raise UnsafeError(f"instance {facts.me.instance_id} is not in ASG {validate.shown(facts.asg.name)}")
    if not mine.counts_as_member:
        raise UnsafeError(
            f"instance {facts.me.instance_id} is {mine.lifecycle_state} in ASG {validate.shown(facts.asg.name)}; "
            "only InService or Pending instances take part"
        )
    if facts.view.answered:
        return _existing_cluster(facts, stale_data, as_learner)
    return _bootstrap(facts)
