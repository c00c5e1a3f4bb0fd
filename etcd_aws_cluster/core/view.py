"""One view of the cluster per run: who is who, the member list the peers agree on, healthy voters, and quorum now
and after a change. Pure: built from the ASG view and the member-list probes; no I/O, no clock.

Every command reasons through this one type (the boot plan, reconcile, leave, status, proxy mode, backup and
restore), so each rule below exists once:
- a member's instance (`owner`): a started member named after an instance id belongs to that instance only (its IP
  may since have gone to a new instance); any other member to the instance holding one of its IPs, preferring one
  that counts as a member;
- the agreed member list: the list most answers give; ties go to the longer list, then by member ids (so every
  command and every node picks the same one);
- answers from two clusters are a conflict (`require_one_cluster`);
- a member is healthy when the etcd on one of its hosts answered this run's probe;
- quorum counts voting members only (learners never), as etcd's IsReadyToAdd/RemoveVotingMember do;
- silent voters: voting members whose etcd did not answer this run's probe (`silent_voters`);
- the ASG is complete (a new cluster, or a restored one, may be formed of it) when its desired capacity is at least
  1 and exactly that many instances count as members, each with a private IP (`incomplete`).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from etcd_aws_cluster.base import validate
from etcd_aws_cluster.base.errors import UnsafeError
from etcd_aws_cluster.core.model import AsgInstance, AsgView, Endpoints, Identity, Member, Probe
from etcd_aws_cluster.core.records import ClusterRecord, Handoff, SnapshotInfo


def quorum(voters: int) -> int:
    return voters // 2 + 1


def url_host(url: str) -> str:
    return urlsplit(url).hostname or ""


def member_hosts(member: Member) -> frozenset[str]:
    """The hosts of a member's peer and client URLs."""
    return frozenset(h for h in (url_host(u) for u in (*member.peer_urls, *member.client_urls)) if h)


def is_me(member: Member, me: Identity, endpoints: Endpoints) -> bool:
    return member.name == me.instance_id or endpoints.peer_url(me.private_ip) in member.peer_urls


def ready_instances(asg: AsgView) -> tuple[AsgInstance, ...]:
    """The instances a cluster can be formed of: those that count as members (InService/Pending) and have a private
    IP, sorted by instance id."""
    return tuple(i for i in asg.members() if i.private_ip)


def initial_peers(asg: AsgView, endpoints: Endpoints) -> tuple[tuple[str, str], ...]:
    """`(instance id, peer URL)` of the ready instances, sorted: the initial cluster of a cluster formed of the ASG."""
    ready = ready_instances(asg)
    return tuple(sorted((i.instance_id, endpoints.peer_url(i.private_ip)) for i in ready if i.private_ip))


def incomplete(asg: AsgView) -> str:
    """Why the ASG is not complete enough to form a new cluster (or restore one) of its instances, or "" when it is:
    a desired capacity of at least 1, and exactly that many instances that count as members, each with a private
    IP. Two instances that formed a cluster from different views of the group would start two clusters that never
    merge; `status` calls a group that is not complete degraded."""
    if asg.desired_capacity < 1:
        return f"ASG {asg.name} has desired capacity {asg.desired_capacity}"
    ready = len(ready_instances(asg))
    if ready != asg.desired_capacity or ready != len(asg.members()):
        return (
            f"ASG {asg.name} view is incomplete: {ready} of {asg.desired_capacity} desired instances are "
            "InService/Pending with a private IP"
        )
    return ""


def render_initial_cluster(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f"{name}={url}" for name, url in pairs)


@dataclass(frozen=True)
class Count:
    """Healthy voting members out of all voting members, and whether that is a quorum."""

    up: int
    voters: int

    @property
    def needed(self) -> int:
        return quorum(self.voters)

    @property
    def ok(self) -> bool:
        return self.voters > 0 and self.up >= self.needed

    def __str__(self) -> str:
        return f"{self.up} of {self.voters} voting members healthy"


def agree(probes: Iterable[Probe]) -> tuple[tuple[Member, ...], tuple[int, ...], bool]:
    """The member list most answers give (sorted by id), every cluster id seen, and whether the lists differ."""
    answers = [p.answer for p in probes if p.answer is not None]
    if not answers:
        return (), (), False
    counts = Counter(frozenset(a.members) for a in answers)
    best = max(counts, key=lambda members: (counts[members], len(members), sorted(m.id for m in members)))
    cluster_ids = tuple(sorted({a.cluster_id for a in answers if a.cluster_id is not None}))
    return tuple(sorted(best, key=lambda m: m.id)), cluster_ids, len(counts) > 1


@dataclass(frozen=True)
class ClusterView:
    asg: AsgView
    endpoints: Endpoints
    probes: tuple[Probe, ...]
    members: tuple[Member, ...]  # the agreed list, sorted by id; () when no etcd answered
    cluster_ids: tuple[int, ...]  # every cluster id the answers named
    lists_differ: bool  # the answers gave different member lists (a membership change in progress)

    # --- the answers ---------------------------------------------------------------------------------------
    @property
    def answered(self) -> bool:
        return any(p.answered for p in self.probes)

    @functools.cached_property
    def answered_ips(self) -> frozenset[str]:
        return frozenset(p.ip for p in self.probes if p.answered)

    @functools.cached_property
    def failed_ips(self) -> frozenset[str]:
        return frozenset(p.ip for p in self.probes if not p.answered)

    @property
    def cluster_id(self) -> int | None:
        return self.cluster_ids[0] if len(self.cluster_ids) == 1 else None

    def require_one_cluster(self) -> None:
        """Refuse when the answers come from two clusters: picking one could destroy the other."""
        if len(self.cluster_ids) > 1:
            ids = ", ".join(f"{c:x}" for c in self.cluster_ids)
            raise UnsafeError(
                f"the instances of ASG {validate.shown(self.asg.name)} answer for different etcd clusters ({ids}); "
                "refusing to pick one. Stop the etcd that should not exist and rerun"
            )

    def client_urls(self, first: str | None = None, last: Iterable[str] = ()) -> list[str]:
        """Client URLs of the etcds that answered: the one on IP `first` first, those on the IPs in `last` last."""
        late = set(last)
        ips = sorted(self.answered_ips, key=lambda ip: (ip in late, ip != first, ip))
        return [self.endpoints.client_url(ip) for ip in ips]

    # --- who is who ----------------------------------------------------------------------------------------
    def owner(self, member: Member) -> AsgInstance | None:
        """The ASG instance a member belongs to, in any lifecycle state (see the module's docstring)."""
        if member.started and validate.INSTANCE_ID.fullmatch(member.name):
            return self.asg.find(member.name)
        hosts = {url_host(u) for u in member.peer_urls}
        holders = [i for i in self.asg.instances if i.private_ip and i.private_ip in hosts]
        return next((i for i in holders if i.counts_as_member), holders[0] if holders else None)

    def is_gone(self, member: Member) -> bool:
        """Its instance left the ASG or is leaving it for good."""
        found = self.owner(member)
        return found is None or found.is_gone

    def members_of(self, instance_id: str) -> tuple[Member, ...]:
        return tuple(m for m in self.members if (o := self.owner(m)) is not None and o.instance_id == instance_id)

    @property
    def orphans(self) -> tuple[Member, ...]:
        """Members that belong to no instance of the ASG."""
        return tuple(m for m in self.members if self.owner(m) is None)

    def claiming(self, me: Identity) -> tuple[Member, ...]:
        """Members that are this instance: named after it, or with its peer URL."""
        return tuple(m for m in self.members if is_me(m, me, self.endpoints))

    def name_for(self, member: Member, me: Identity | None = None) -> str:
        """The name a member goes by in ETCD_INITIAL_CLUSTER: this instance's id for its own member, the started
        member's name, else the id of the live instance that owns its peer URL (what that instance's agent will name
        it), else `member-<hex id>` (etcd matches the other members by peer URL; only a node's own name must be
        right)."""
        if me is not None and is_me(member, me, self.endpoints):
            name = me.instance_id
        elif member.started:
            name = member.name
        else:
            found = self.owner(member)
            name = found.instance_id if found is not None and not found.is_gone else f"member-{member.hex_id}"
        return validate.member_name(name, "the etcd member list")

    def initial_cluster(self, members: Iterable[Member], me: Identity | None = None) -> tuple[tuple[str, str], ...]:
        """`name=peer-url` pairs, sorted so every node computes the same string."""
        pairs = {
            (self.name_for(m, me), validate.url(url, "the etcd member list")) for m in members for url in m.peer_urls
        }
        return tuple(sorted(pairs))

    # --- health and quorum ---------------------------------------------------------------------------------
    def is_healthy(self, member: Member) -> bool:
        return bool(member_hosts(member) & self.answered_ips)

    def reachable(self, member: Member) -> bool | None:
        """True: it answered; False: it was asked and did not; None: nobody asked it."""
        if self.is_healthy(member):
            return True
        return False if member_hosts(member) & self.failed_ips else None

    @functools.cached_property
    def healthy(self) -> frozenset[int]:
        return frozenset(m.id for m in self.members if self.is_healthy(m))

    @property
    def voters(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if not m.is_learner)

    @functools.cached_property
    def silent_voters(self) -> tuple[Member, ...]:
        """Voting members whose etcd did not answer this run's probe (or was not asked), unstarted ones included:
        each counts toward quorum without adding to it, and etcd 3.4 adds no member while one is not connected."""
        return tuple(m for m in self.voters if not self.is_healthy(m))

    def count(self, removed: Iterable[int] = (), added_voters: int = 0) -> Count:
        """Healthy voters out of voters, once the members with ids in `removed` are gone and `added_voters`
        (not yet started, so not healthy) have joined."""
        gone = set(removed)
        voters = [m for m in self.voters if m.id not in gone]
        return Count(sum(1 for m in voters if m.id in self.healthy), len(voters) + added_voters)

    def require_quorum(self, action: str) -> Count:
        now = self.count()
        if not now.ok:
            raise UnsafeError(
                f"the cluster has no quorum: {now.up} of {now.voters} voting members answer. Restore the missing "
                "members' instances, or recover the cluster from a snapshot (etcdutl snapshot restore); "
                f"refusing to {action}"
            )
        return now

    def check_change(self, remove: Iterable[Member], add_voter: bool) -> None:
        """etcd's IsReadyToRemoveVotingMember / IsReadyToAddVotingMember over the members that answered: quorum
        now, after each removal in order, and after adding one voter (when `add_voter`). Raises UnsafeError."""
        self.require_quorum("change membership or start a second cluster")
        removed: list[int] = []
        for member in remove:
            if member.is_learner or member.id not in {v.id for v in self.voters}:
                continue
            removed.append(member.id)
            after = self.count(removed)
            if not after.ok:
                raise UnsafeError(
                    f"removing member {member.name or member.hex_id} would leave {after}, below quorum; refusing"
                )
        if add_voter:
            after = self.count(removed, added_voters=1)
            # etcd allows the second member of a one-member cluster: 1 started of 2.
            if not after.ok and not (after.up == 1 and after.voters == 2):
                raise UnsafeError(
                    f"adding this instance would need {after.needed} healthy voting members, only {after.up} "
                    "answer; refusing"
                )


def build(asg: AsgView, probes: Iterable[Probe], endpoints: Endpoints) -> ClusterView:
    probes = tuple(probes)
    members, cluster_ids, differ = agree(probes)
    return ClusterView(asg, endpoints, probes, members, cluster_ids, differ)


@dataclass(frozen=True)
class Facts:
    """What one boot run knows: this instance, the cluster view, and this node's own etcd data."""

    me: Identity
    view: ClusterView
    has_local_data: bool = False
    # (member id, cluster id) from the local WAL, when it could be read
    local_ids: tuple[int, int] | None = None
    # With backup_url, when no etcd answers: the cluster record, and the snapshots newest first
    record: ClusterRecord | None = None
    snapshots: tuple[SnapshotInfo, ...] = ()
    # Only when the recorded members' instances left are fewer than a quorum: their hand-offs (recovery.py)
    handoffs: tuple[Handoff, ...] = ()
    # When this run looked, and how long a record without a cluster id is followed (recovery.follow_window);
    # without a time no such record is followed
    now: datetime | None = None
    follow_window: timedelta = timedelta(minutes=6)

    @property
    def asg(self) -> AsgView:
        return self.view.asg

    @property
    def endpoints(self) -> Endpoints:
        return self.view.endpoints
