"""The decision, as a pure function of the facts: no I/O, no clock, no randomness.

Everything that could split a cluster or lose quorum is refused here, with a reason an operator can act on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from urllib.parse import urlsplit

from etcd_aws_cluster import validate
from etcd_aws_cluster.errors import UnsafeError
from etcd_aws_cluster.model import (
    AsgInstance,
    AsgView,
    Decision,
    Endpoints,
    Facts,
    Identity,
    Member,
    MemberList,
    Plan,
)


def quorum(voters: int) -> int:
    return voters // 2 + 1


def url_host(url: str) -> str:
    return urlsplit(url).hostname or ""


def instance_of(member: Member, asg: AsgView) -> AsgInstance | None:
    """The ASG instance a member belongs to: by name (instance id), else by the IP in its peer URLs."""
    by_name = asg.find(member.name) if member.name else None
    if by_name is not None:
        return by_name
    hosts = {url_host(u) for u in member.peer_urls}
    return next((i for i in asg.instances if i.private_ip and i.private_ip in hosts and i.counts_as_member), None)


def is_me(member: Member, me: Identity, endpoints: Endpoints) -> bool:
    return member.name == me.instance_id or endpoints.peer_url(me.private_ip) in member.peer_urls


def initial_cluster(
    members: Iterable[Member], asg: AsgView, me: Identity, endpoints: Endpoints
) -> tuple[tuple[str, str], ...]:
    """`name=peer-url` pairs for ETCD_INITIAL_CLUSTER, sorted so every node computes the same string.

    An added but unstarted member has no name yet: it is named after the ASG instance that owns its peer URL,
    which is the name that instance's agent will give it. One that no live instance owns (its instance died
    before it started) gets `member-<hex id>`: etcd matches the other members by peer URL, and only this node's
    own name must be right. Reconcile removes such members.
    """
    pairs: set[tuple[str, str]] = set()
    for member in members:
        if is_me(member, me, endpoints):
            name = me.instance_id
        elif member.started:
            name = member.name
        else:
            owner = instance_of(member, asg)
            name = owner.instance_id if owner is not None else f"member-{member.hex_id}"
        validate.member_name(name, "the etcd member list")
        for peer_url in member.peer_urls:
            pairs.add((name, validate.url(peer_url, "the etcd member list")))
    return tuple(sorted(pairs))


def render_initial_cluster(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f"{name}={url}" for name, url in pairs)


def agreed_member_list(facts: Facts) -> MemberList:
    """The member list the answering peers agree on; refuses answers from two different clusters."""
    answers = [p.answer for p in facts.probes if p.answer is not None]
    cluster_ids = {a.cluster_id for a in answers if a.cluster_id is not None}
    if len(cluster_ids) > 1:
        ids = ", ".join(f"{c:x}" for c in sorted(cluster_ids))
        raise UnsafeError(
            f"peers answer for different etcd clusters ({ids}); refusing to pick one. "
            "Stop the etcd that should not exist and rerun"
        )
    # Lists differ only briefly while another node changes membership; the most common view wins.
    counts = Counter(frozenset(a.members) for a in answers)
    best = max(counts, key=lambda members: (counts[members], len(members)))
    cluster_id = next(iter(cluster_ids), None)
    return MemberList(tuple(sorted(best, key=lambda m: m.id)), cluster_id)


def _bootstrap(facts: Facts) -> Plan:
    """No peer answers: restart from local data, start a new cluster, or wait for a complete view."""
    asg, endpoints = facts.asg, facts.endpoints
    candidates = asg.members()
    expected = tuple((i.instance_id, endpoints.peer_url(i.private_ip)) for i in candidates if i.private_ip)
    if facts.has_local_data:
        return Plan(
            Decision.RESTART,
            "no peer answers and this node has member data: etcd restarts from its data dir",
            "existing",
            expected,
        )
    expected_urls = frozenset(url for _, url in expected)
    silent = [
        p for p in facts.probes if p.error is not None and p.error != "refused" and p.bootstrapping != expected_urls
    ]
    if silent:
        names = ", ".join(f"{p.instance_id} ({p.error})" for p in silent)
        return Plan(Decision.WAIT, f"no member list yet, but etcd may be running on {names}")
    if asg.desired_capacity < 1:
        return Plan(Decision.WAIT, f"ASG {asg.name} has desired capacity {asg.desired_capacity}")
    if len(expected) != asg.desired_capacity or len(candidates) != len(expected):
        return Plan(
            Decision.WAIT,
            f"ASG {asg.name} view is incomplete: {len(expected)} of {asg.desired_capacity} "
            "desired instances are InService/Pending with a private IP",
        )
    if facts.me.instance_id not in {name for name, _ in expected}:
        return Plan(Decision.WAIT, f"this instance is not yet InService/Pending in ASG {asg.name}")
    return Plan(
        Decision.NEW,
        f"no etcd answers on any of the {len(expected)} ASG instances and the ASG is complete",
        "new",
        tuple(sorted(expected)),
    )


def _removal_order(member: Member) -> tuple[int, int]:
    # Unstarted members and learners do not count toward quorum: removing them first never hurts it.
    return (0 if not member.started else 1 if member.is_learner else 2, member.id)


def check_quorum(members: tuple[Member, ...], healthy: set[int], remove: tuple[Member, ...], as_learner: bool) -> None:
    """etcd's IsReadyToRemoveVotingMember / IsReadyToAddVotingMember, counting only members that answered.

    Raises UnsafeError when the cluster has no quorum now, when a removal in `remove` (in order) would leave
    fewer healthy voters than a quorum, or when adding one voter (unless `as_learner`) would.
    """
    voters = [m for m in members if not m.is_learner]
    up = sum(1 for m in voters if m.id in healthy)
    if up < quorum(len(voters)):
        raise UnsafeError(
            f"the cluster has no quorum: {up} of {len(voters)} voting members answer. Restore the missing "
            "members' instances, or recover the cluster from a snapshot (etcdutl snapshot restore); "
            "refusing to change membership or start a second cluster"
        )
    for member in remove:
        if member.is_learner or not any(v.id == member.id for v in voters):
            continue
        voters = [v for v in voters if v.id != member.id]
        up = sum(1 for v in voters if v.id in healthy)
        if up < quorum(len(voters)):
            raise UnsafeError(
                f"removing member {member.name or member.hex_id} would leave {up} of {len(voters)} "
                "voting members healthy, below quorum; refusing"
            )
    if as_learner:
        return
    after = len(voters) + 1
    if up < quorum(after) and not (up == 1 and after == 2):
        raise UnsafeError(
            f"adding this instance would need {quorum(after)} healthy voting members, only {up} answer; refusing"
        )


def _existing_cluster(facts: Facts, stale_data: str, as_learner: bool) -> Plan:
    me, asg, endpoints = facts.me, facts.asg, facts.endpoints
    listing = agreed_member_list(facts)
    members = listing.members
    my_peer = endpoints.peer_url(me.private_ip)
    answered_ips = {p.ip for p in facts.probes if p.answered}

    mine = [m for m in members if is_me(m, me, endpoints)]
    remove: list[Member] = []
    for member in mine:
        if member.name == me.instance_id and my_peer not in member.peer_urls:
            raise UnsafeError(
                f"member {member.hex_id} is named {me.instance_id} but has peer URLs "
                f"{validate.shown(','.join(member.peer_urls))}, not {my_peer}; fix it with etcdctl member update"
            )
        if member.started and member.name != me.instance_id:
            owner = asg.find(member.name)
            if owner is not None and not owner.is_gone:
                raise UnsafeError(
                    f"member {validate.shown(member.name)} of live instance {owner.instance_id} has this "
                    f"instance's peer URL {my_peer}; refusing"
                )
            remove.append(member)  # a gone instance once had this IP
    mine = [m for m in mine if m not in remove]
    if len(mine) > 1:
        raise UnsafeError(f"{len(mine)} members claim this instance; remove the extra ones with etcdctl")

    stale = ""
    if facts.has_local_data:
        if not mine:
            stale = "this node has etcd data but is not a member of the running cluster"
        elif facts.local_ids is not None and mine[0].started:
            local_member, local_cluster = facts.local_ids
            if listing.cluster_id is not None and local_cluster != listing.cluster_id:
                stale = f"this node's etcd data belongs to cluster {local_cluster:x}, not {listing.cluster_id:x}"
            elif local_member != mine[0].id:
                stale = f"this node's etcd data is of member {local_member:x}, not of its member {mine[0].hex_id}"
            if stale:
                remove.extend(mine)  # the old entry cannot start on this data: replace it
                mine = []

    if mine:
        member = mine[0]
        state = "serving" if member.serving else "not started yet"
        if not member.serving:
            # Two etcds that start with "existing" at the same moment each wait for the other's not-yet-serving peer
            # port to answer /version (stuck for over a minute with 3.4.23 and 3.5.1): one at a time, lowest id first.
            # This holds for added members and for late members of a new cluster's initial list alike.
            earlier = sorted(
                owner.instance_id
                for m in members
                if not m.serving
                and m is not member
                and (owner := instance_of(m, asg)) is not None
                and owner.counts_as_member
                and owner.instance_id < me.instance_id
            )
            if earlier:
                return Plan(
                    Decision.WAIT,
                    f"this instance's member {member.hex_id} is not started yet, nor is that of {earlier[0]}: "
                    "members start one at a time, it goes first",
                    members=members,
                )
        return Plan(
            Decision.MEMBER,
            f"this instance is already member {member.hex_id} ({state})",
            "existing",
            initial_cluster(members, asg, me, endpoints),
            members=members,
        )

    for member in members:
        owner = instance_of(member, asg)
        if member in remove:
            continue
        if owner is None or owner.is_gone:
            remove.append(member)
        elif not member.serving and owner.instance_id != me.instance_id:
            return Plan(
                Decision.WAIT,
                f"instance {owner.instance_id} is joining (member {member.hex_id} not started yet); "
                "waiting for it to start before adding this one",
                members=members,
            )

    healthy = {m.id for m in members if any(url_host(u) in answered_ips for u in m.peer_urls)}
    ordered = tuple(sorted(remove, key=_removal_order))
    check_quorum(members, healthy, ordered, as_learner)

    if stale and stale_data != "move":
        raise UnsafeError(f"{stale}; stale_data=refuse is set, so move the data dir aside by hand and rerun")

    remaining = tuple(m for m in members if m not in ordered)
    gone = ", ".join(m.name or m.hex_id for m in ordered) or "none"
    return Plan(
        Decision.JOIN,
        f"a cluster of {len(members)} members answers and this instance is not one of them"
        f"{' (' + stale + ')' if stale else ''}; removing gone: {gone}",
        "existing",
        tuple(sorted(initial_cluster(remaining, asg, me, endpoints) + ((me.instance_id, my_peer),))),
        remove=ordered,
        add_self=True,
        move_data_aside=bool(stale),
        members=members,
    )


def decide(facts: Facts, *, stale_data: str = "move", as_learner: bool = False) -> Plan:
    """Derive the plan for this run from what was found. Raises UnsafeError where any doubt remains."""
    mine = facts.asg.find(facts.me.instance_id)
    if mine is None:
        raise UnsafeError(f"instance {facts.me.instance_id} is not in ASG {facts.asg.name}")
    if not mine.counts_as_member:
        raise UnsafeError(
            f"instance {facts.me.instance_id} is {mine.lifecycle_state} in ASG {facts.asg.name}; "
            "only InService or Pending instances take part"
        )
    if any(p.answered for p in facts.probes):
        return _existing_cluster(facts, stale_data, as_learner)
    return _bootstrap(facts)
