"""Boot decisions when the cluster record says a cluster existed: never an empty cluster where one with data existed.

Pure, like the plan it is part of. Every instance that sees no etcd answer reads the same record and the same
listing of snapshots. No backup can write either while no etcd answers (backups go through a live member); the
only writer is an instance that decided first (`new` or a restore), and it records exactly what it decided (the
current instances, the snapshot, no cluster id yet), which the others recognise and follow (`joining_restore`).
So every instance comes to the same decision without talking to the others:
- some recorded member's instance is still in the ASG: wait for it to come back with its data, and join the
  cluster it forms (a new instance never starts a cluster of its own);
- none is: restore the newest snapshot (by revision, then time, then key) whose checksum holds, with the current
  ASG instances as the initial cluster;
- no snapshot at all: refuse, and say what to do.

When some are left but fewer than a quorum of the recorded members (their etcd could never elect a leader), the
newest data wins, and every instance must pick the same: each survivor publishes a hand-off (its db revision and
cluster id), uploading its own db as a snapshot *first* when that revision is newer than the newest snapshot.
Every instance waits until every survivor has handed off; from then on nothing uploads, so every instance reads
the same listing and restores the same newest snapshot (a survivor moves its own data aside first).

Data a restore replaced never restarts. A restore's record names the clusters whose data it replaced (`replaces`:
the recorded cluster, the survivors' and the restorer's own); once a member reports the restored cluster's id, any
other cluster id is foreign. A node with such data that looks after the restore was recorded takes part in it
while that record is followed (restores the same snapshot), waits while the restored cluster is not up, and joins
it as a new member once it answers (plan.py's stale-data path moves the data aside). No timing is involved: an
instance that looks again after the record changed under it comes to the same restore from the new record.

A record without a cluster id is followed only while it is recent (`follow_window`: twice `timeout`, so an
instance whose boot started up to a `timeout` after the writer's still takes part) or while an etcd of the group
is seen forming its cluster; an older one is what it may be, a cluster that exists: its members are waited for.
"""

from __future__ import annotations

from datetime import timedelta

from etcd_aws_cluster.base import validate
from etcd_aws_cluster.base.errors import UnsafeError
from etcd_aws_cluster.core.model import AsgView, Decision, Plan
from etcd_aws_cluster.core.records import ClusterRecord, Handoff, SnapshotInfo, format_time
from etcd_aws_cluster.core.view import Facts, quorum


def alive_recorded(asg: AsgView, record: ClusterRecord) -> tuple[str, ...]:
    """Recorded members' instances still in the ASG as members (InService/Pending: `counts_as_member`), this one
    included, each once, sorted. The one rule for who is left of the recorded cluster."""
    alive = (i for i, _ in record.members if (found := asg.find(i)) is not None and found.counts_as_member)
    return tuple(sorted(set(alive)))


def survivors(facts: Facts, record: ClusterRecord) -> tuple[str, ...]:
    """`alive_recorded` other than this instance: those it waits for."""
    return tuple(i for i in alive_recorded(facts.asg, record) if i != facts.me.instance_id)


def describe(info: SnapshotInfo) -> str:
    return f"{info.key} (revision {info.revision}, taken {format_time(info.taken_at)})"


def recovery_command(facts: Facts, snapshots: tuple[SnapshotInfo, ...]) -> str:
    if not snapshots:
        return "no snapshot exists under backup_url to restore from"
    return (
        f"to restore the newest snapshot {describe(snapshots[0])}, stop etcd and run "
        f"`etcd-aws-cluster restore --snapshot {snapshots[0].key}` on every instance of ASG "
        f"{validate.shown(facts.asg.name)} (it moves local data aside), then start etcd"
    )


def joining_restore(facts: Facts, record: ClusterRecord, initial: tuple[tuple[str, str], ...]) -> Plan | None:
    """Another instance of this same ASG restored (or created) the cluster first and recorded it: take part.

    The instance that restores first writes the record at once (members: the current ASG instances, the snapshot
    it restored, no cluster id yet, as only a restore writes it). The others, booting at the same time, read that
    record; its members are their own silent peers, so without this rule they would wait for survivors that hold
    no data yet (and, if etcd starts only after every agent, wait forever). Same instances, same snapshot: restore
    it too, so all of them start the one restored cluster. Followed only while the record is recent (`unfollowed`);
    a recorded restore also while the restorers' etcd is already up and silent (plan.py)."""
    if record.cluster_id is not None:
        return None
    if tuple(sorted(record.members)) != initial or facts.me.instance_id not in {name for name, _ in initial}:
        return None
    if unfollowed(facts, record):
        return None
    if record.newest_snapshot is None:
        # Only a `new` decision writes such a record: a peer created this cluster of these very instances.
        return Plan(
            Decision.NEW,
            f"the cluster record says the current {len(initial)} ASG instances, this one included, are creating "
            "a new cluster (no snapshot, no cluster id yet): taking part",
            "new",
            initial,
        )
    snapshots = facts.snapshots
    start = next((n for n, info in enumerate(snapshots) if info.key == record.newest_snapshot), None)
    if start is None:
        return None
    return Plan(
        Decision.RESTORE,
        f"the cluster record says the current {len(initial)} ASG instances, this one included, are restoring "
        f"snapshot {describe(snapshots[start])} as a new cluster: restoring the same one",
        "new",
        initial,
        restore=snapshots[start:],
        move_data_aside=facts.has_local_data,  # a survivor that handed its data off and looked late
    )


def applies_deltas(record: ClusterRecord | None, first: SnapshotInfo) -> bool:
    """Whether a restore that begins with snapshot `first` applies the deltas after it. Not when it follows a
    restore another instance recorded (no cluster id yet, that very snapshot): that one already holds the deltas it
    could reach, and every instance must restore exactly its bytes, even where this one could read a delta that
    the other could not."""
    return record is None or record.cluster_id is not None or record.newest_snapshot != first.key


def follow_window(timeout: float) -> timedelta:
    """How long a record without a cluster id is followed: twice the run's `timeout` (6 min by default), so that an
    instance whose boot started up to a `timeout` after the writer's still takes part in what it decided."""
    return timedelta(seconds=2 * timeout)


def _forming(facts: Facts, record: ClusterRecord) -> bool:
    """An etcd of the group is forming the recorded cluster: its peer port names the recorded members' peer URLs."""
    urls = frozenset(url for _, url in record.members)
    return any(p.bootstrapping == urls for p in facts.view.probes)


def unfollowed(facts: Facts, record: ClusterRecord) -> str:
    """Why a record without a cluster id (a `new` or a restore that another instance decided) is not followed, or
    "" (it has an id, it is recent, or an etcd is seen forming its cluster)."""
    if record.cluster_id is not None or _forming(facts, record):
        return ""
    now = facts.now
    if now is not None and abs(now - record.updated_at) <= facts.follow_window:
        return ""
    age = "age unknown" if now is None else f"{(now - record.updated_at).total_seconds():.0f}s ago"
    what = f"a restore of {record.newest_snapshot}" if record.newest_snapshot else "a new cluster"
    return (
        f"the cluster record of {what} (written {format_time(record.updated_at)}, {age}) has no cluster id yet and "
        f"is older than {facts.follow_window.total_seconds():.0f}s (twice `timeout`) with no etcd seen forming it: "
        "not taking part in that decision; its members are waited for as a cluster that may exist"
    )


def superseded(record: ClusterRecord, local_ids: tuple[int, int] | None) -> str:
    """Why this node's data must never restart under `record`, or "": it belongs to another cluster than the
    recorded one, or (a restore's record, no cluster id yet) to a cluster that the restore replaced."""
    if local_ids is None:
        return ""
    if record.cluster_id is not None:
        return foreign_data(record, local_ids)
    if local_ids[1] in record.replaces:
        return (
            f"this node's etcd data belongs to cluster {local_ids[1]:x}, which the restore of "
            f"{record.newest_snapshot} recorded at {format_time(record.updated_at)} replaced"
        )
    return ""


def data_superseded(facts: Facts) -> str:
    """`superseded` for this node's data under the record, "" without either."""
    if facts.record is None or not facts.has_local_data:
        return ""
    return superseded(facts.record, facts.local_ids)


def replaced_clusters(
    record: ClusterRecord | None, handoffs: tuple[Handoff, ...] = (), local_ids: tuple[int, int] | None = None
) -> tuple[int, ...]:
    """The clusters a restore replaces: the recorded one (or those a recorded restore replaced), the survivors'
    (from their hand-offs of this record) and that of this node's own data."""
    replaced: set[int] = set()
    if record is not None:
        replaced.update(record.replaces if record.cluster_id is None else (record.cluster_id,))
        replaced.update(h.cluster_id for h in current_handoffs(record, handoffs).values() if h.cluster_id)
    if local_ids is not None:
        replaced.add(local_ids[1])
    return tuple(sorted(replaced))


def never_restart(facts: Facts, record: ClusterRecord, why: str) -> Plan:
    """No etcd answers and this node's data is not the recorded cluster's: WAIT for the recorded members to bring
    it up (then this node joins it as a new member); refuse when no other recorded member is left."""
    others = survivors(facts, record)
    if not others:
        raise UnsafeError(
            f"{why}; no other recorded member's instance is left to bring the recorded cluster up: refusing to "
            "restart on this data or to restore over it. If this data is the one to keep, back it up first "
            "(the runbook's step 3); otherwise " + recovery_command(facts, facts.snapshots)
        )
    note = unfollowed(facts, record)
    return Plan(
        Decision.WAIT,
        f"{why}: it never restarts on it. Waiting for {', '.join(others)} to bring the recorded cluster up; once "
        "it answers, this node joins it as a new member, its data moved aside (kept)" + (f"; {note}" if note else ""),
    )


def wait_for_survivors(facts: Facts, record: ClusterRecord, snapshots: tuple[SnapshotInfo, ...]) -> Plan | None:
    alive = survivors(facts, record)
    if not alive:
        return None
    note = unfollowed(facts, record)
    return Plan(
        Decision.WAIT,
        f"the cluster record names {len(record.members)} members and {', '.join(alive)} "
        f"{'is' if len(alive) == 1 else 'are'} still in the ASG: waiting for {'it' if len(alive) == 1 else 'them'} "
        "to come back with their data and form the cluster (a new cluster would lose it)"
        + (f" ({note})" if note else "")
        + ". If they cannot: "
        + recovery_command(facts, snapshots),
    )


def with_record(facts: Facts, record: ClusterRecord) -> Plan | None:
    """No etcd answers, a record exists and this instance does not take part in a recorded decision
    (`joining_restore`): never restart on data the record superseded; wait for the survivors or their hand-offs.
    None when the newest snapshot may be restored."""
    lacking = survivors_lack_quorum(facts)
    why = "" if lacking else data_superseded(facts)
    if why:
        return never_restart(facts, record, why)
    waiting = wait_for_handoffs(facts, record) if lacking else wait_for_survivors(facts, record, facts.snapshots)
    if waiting is not None:
        return waiting
    require_snapshot(facts, record, facts.snapshots)
    return None


def wait_for_quorum(facts: Facts) -> Plan | None:
    """A cluster answers without a quorum while silent voters' instances are still in the ASG (a whole-cluster
    outage, its members coming back one by one): wait for them rather than refuse at once."""
    cluster = facts.view
    count = cluster.count()
    if count.ok:
        return None
    silent = sorted(
        owner.instance_id
        for m in cluster.silent_voters
        if (owner := cluster.owner(m)) is not None and owner.counts_as_member
    )
    if not silent:
        return None
    return Plan(
        Decision.WAIT,
        f"the cluster answers without a quorum ({count}); {', '.join(silent)} still in the ASG: waiting for "
        "them to come back with their data",
        members=cluster.members,
    )


def require_snapshot(facts: Facts, record: ClusterRecord, snapshots: tuple[SnapshotInfo, ...]) -> None:
    if snapshots:
        return
    members = ", ".join(instance_id for instance_id, _ in record.members) or "none"
    raise UnsafeError(
        f"the cluster record says a cluster existed on ASG {validate.shown(facts.asg.name)} (members {members}), "
        "none of its instances is left, and no snapshot is stored under backup_url: refusing to start an empty "
        "cluster. Upload a snapshot (`etcd-aws-cluster restore --list` shows what exists) or, to start empty on "
        "purpose, delete the record (cluster.json under backup_url) and rerun"
    )


def restore_plan(facts: Facts, snapshots: tuple[SnapshotInfo, ...], initial: tuple[tuple[str, str], ...]) -> Plan:
    why = "none of its members' instances is left"
    if survivors_lack_quorum(facts) and facts.record is not None:
        alive = alive_recorded(facts.asg, facts.record)
        why = f"{_few(alive, facts.record)} and every one has handed off its data"
    return Plan(
        Decision.RESTORE,
        f"the cluster record says a cluster existed and {why}: restoring the newest valid snapshot "
        f"{describe(snapshots[0])} on all {len(initial)} ASG instances"
        f"{'; this node moves its own data aside first' if facts.has_local_data else ''}",
        "new",
        initial,
        move_data_aside=facts.has_local_data,
        restore=snapshots,
    )


# -- survivors that cannot form a quorum ----------------------------------------------------------------------


def lacks_quorum(alive: tuple[str, ...], record: ClusterRecord) -> bool:
    """Some recorded members' instances are left, but fewer than a quorum of the recorded members."""
    return 0 < len(alive) < quorum(len(record.members))


def survivors_lack_quorum(facts: Facts) -> bool:
    record = facts.record
    return record is not None and lacks_quorum(alive_recorded(facts.asg, record), record)


def _few(alive: tuple[str, ...], record: ClusterRecord) -> str:
    return (
        f"only {', '.join(alive)} of its {len(record.members)} members' instances "
        f"{'is' if len(alive) == 1 else 'are'} left, fewer than a quorum ({quorum(len(record.members))})"
    )


def current_handoffs(record: ClusterRecord, handoffs: tuple[Handoff, ...]) -> dict[str, Handoff]:
    """The hand-offs of this record (an earlier incident's, keyed to an older record, do not count)."""
    return {h.instance_id: h for h in handoffs if h.record_updated_at == record.updated_at}


def missing_handoffs(alive: tuple[str, ...], record: ClusterRecord, handoffs: tuple[Handoff, ...]) -> tuple[str, ...]:
    current = current_handoffs(record, handoffs)
    return tuple(i for i in alive if i not in current)


def foreign_data(record: ClusterRecord, local_ids: tuple[int, int] | None) -> str:
    """Why this node's data is not the recorded cluster's, or "" when it is (or the record names no id yet)."""
    if local_ids is None or record.cluster_id is None or local_ids[1] == record.cluster_id:
        return ""
    return (
        f"this node's etcd data belongs to cluster {local_ids[1]:x}, not to the recorded cluster {record.cluster_id:x}"
    )


def _shown(handoff: Handoff | None, instance_id: str) -> str:
    if handoff is None:
        return f"{instance_id} (no hand-off)"
    if not handoff.has_data:
        return f"{instance_id} (no data)"
    return f"{instance_id} (revision {handoff.revision}{', uploaded' if handoff.uploaded else ''})"


def wait_for_handoffs(facts: Facts, record: ClusterRecord) -> Plan | None:
    """In the survivors' case: WAIT for missing hand-offs; refuse where the newest data cannot be chosen safely;
    None when every instance may restore the newest snapshot."""
    alive = alive_recorded(facts.asg, record)
    if facts.has_local_data and facts.me.instance_id in alive and foreign_data(record, facts.local_ids):
        raise UnsafeError(f"{foreign_data(record, facts.local_ids)}; refusing to hand it off or restore over it")
    missing = missing_handoffs(alive, record, facts.handoffs)
    current = current_handoffs(record, facts.handoffs)
    if missing:
        have = ", ".join(_shown(current.get(i), i) for i in alive if i in current) or "none yet"
        return Plan(
            Decision.WAIT,
            f"the cluster record says a cluster existed and {_few(alive, record)}: waiting for the hand-off of "
            f"{', '.join(missing)} (its db revision, and its db uploaded when newer than the newest snapshot) "
            f"before restoring the newest data; handed off: {have}",
        )
    problem = _unsafe_choice(record, [current[i] for i in alive], facts.snapshots)
    if problem:
        survivors = ", ".join(_shown(current[i], i) for i in alive)
        newest = describe(facts.snapshots[0]) if facts.snapshots else "none"
        raise UnsafeError(
            f"the cluster record says a cluster existed and {_few(alive, record)}, but {problem}: refusing to "
            f"choose. Survivors: {survivors}; newest snapshot: {newest}. To recover: "
            + recovery_command(facts, facts.snapshots)
        )
    return None


def _unsafe_choice(record: ClusterRecord, handoffs: list[Handoff], snapshots: tuple[SnapshotInfo, ...]) -> str:
    """Why the newest snapshot is not safely the newest data, or ""."""
    keys = {info.key for info in snapshots}
    for handoff in handoffs:
        if record.cluster_id is not None and handoff.cluster_id not in (None, record.cluster_id):
            return f"{handoff.instance_id} holds data of cluster {handoff.cluster_id:x}, not {record.cluster_id:x}"
        if handoff.uploaded is not None and handoff.uploaded not in keys:
            return (
                f"the snapshot {handoff.instance_id} uploaded ({handoff.uploaded}) is not listed (deleted, or invalid)"
            )
    revisions = [h.revision for h in handoffs if h.revision is not None]
    if not snapshots and not revisions:
        return "no survivor has data and no snapshot is stored (never an empty cluster)"
    if revisions and (not snapshots or max(revisions) > snapshots[0].revision):
        return f"a survivor's data (revision {max(revisions)}) is newer than the newest snapshot and was not uploaded"
    return ""
